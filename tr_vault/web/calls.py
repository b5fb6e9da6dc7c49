"""Reads: call listing, one call with its events, playback, the journal summary, metrics.

Playback serves the cached file (Range, ETag, Last-Modified, 304) or redirects (307) to a
presigned S3 URL. Reads need a key from TR_VAULT_READ_KEYS when one is set; with none set they
are open on a loopback address (or with TR_VAULT_ALLOW_ANONYMOUS) and otherwise take any upload
key, so a public server never serves recordings to strangers by default.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict
from pathlib import PurePosixPath
from typing import Any

from quart import Blueprint, Response, jsonify, redirect, request, send_file

from tr_vault.call import CallRow
from tr_vault.intake.fields import unix_or_rfc3339
from tr_vault.journal import CallFilter
from tr_vault.storage.base import audio_object_key
from tr_vault.timefmt import from_db
from tr_vault.web.context import WebContext

MAX_LIMIT = 500
DEFAULT_LIMIT = 50


class ReadError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def call_json(row: CallRow) -> dict[str, Any]:
    data = asdict(row)
    data["metadata"] = json.loads(row.metadata)
    data.pop("claimed_by")
    data["audio_url"] = f"/api/calls/{row.id}/audio"
    return data


def _cursor(row: CallRow) -> str:
    return base64.urlsafe_b64encode(f"{row.start_time}|{row.id}".encode()).decode()


def _parse_cursor(text: str) -> tuple[str, int]:
    try:
        start, _, ident = base64.urlsafe_b64decode(text.encode()).decode().rpartition("|")
        from_db(start)
        return start, int(ident)
    except ValueError:
        raise ReadError(400, "cursor: not a cursor this server returned") from None


def _time(name: str) -> float | None:
    value = request.args.get(name)
    if value is None or value == "":
        return None
    parsed = unix_or_rfc3339(value)
    if parsed is None:
        raise ReadError(400, f"{name}: use Unix seconds or RFC 3339 (2025-11-24T16:20:34Z)")
    return parsed


def calls_blueprint(ctx: WebContext) -> Blueprint:
    bp = Blueprint("calls", __name__)
    settings = ctx.settings
    readers = settings.readers if settings.readers else settings.keys

    @bp.errorhandler(ReadError)
    async def read_error(exc: ReadError) -> tuple[Response, int]:
        return jsonify(error=exc.message), exc.status

    @bp.before_request
    async def check_reader() -> None:
        if request.endpoint and request.endpoint.endswith("metrics"):
            return
        if settings.open_reads:
            return
        auth = request.headers.get("Authorization", "")
        key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
        key = key or request.args.get("key")
        if not readers.known(key):
            raise ReadError(401, "a read key is required: 'Authorization: Bearer KEY' or ?key=KEY")

    @bp.get("/api/calls")
    async def list_calls() -> Response:
        try:
            limit = int(request.args.get("limit", DEFAULT_LIMIT))
        except ValueError:
            raise ReadError(400, "limit: a whole number from 1 to 500") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise ReadError(400, "limit: a whole number from 1 to 500")
        talkgroup = request.args.get("talkgroup")
        if talkgroup is not None and not talkgroup.isdigit():
            raise ReadError(400, "talkgroup: a talkgroup id (digits)")
        state = request.args.get("state")
        if state is not None and state not in ("pending", "done", "failed"):
            raise ReadError(400, "state: one of pending, done, failed")
        flt = CallFilter(
            system=request.args.get("system") or None,
            talkgroup=int(talkgroup) if talkgroup else None,
            since=_time("since"),
            until=_time("until"),
            state=state,
        )
        cursor = request.args.get("cursor")
        after = _parse_cursor(cursor) if cursor else None
        rows = await ctx.journal.list_calls(flt, limit=limit + 1, after=after)
        page, more = rows[:limit], len(rows) > limit
        return jsonify(
            calls=[call_json(r) for r in page],
            next_cursor=_cursor(page[-1]) if more and page else None,
        )

    @bp.get("/api/calls/<int:call_id>")
    async def one_call(call_id: int) -> Response:
        row = await ctx.journal.get_call(call_id)
        if row is None:
            raise ReadError(404, f"no call {call_id}")
        events = await ctx.journal.events(call_id)
        return jsonify(call=call_json(row), events=[asdict(e) for e in events])

    @bp.get("/api/calls/<int:call_id>/audio")
    async def audio(call_id: int) -> Response:
        row = await ctx.journal.get_call(call_id)
        if row is None:
            raise ReadError(404, f"no call {call_id}")
        name = PurePosixPath(row.key).name
        path = ctx.cache.path(row.key)
        if row.cached and path.is_file():
            response = await send_file(path, mimetype=row.content_type, add_etags=False)
            response.set_etag(row.sha256)
            response.last_modified = from_db(row.received_at)  # type: ignore[assignment]
            response.headers["Content-Disposition"] = f'inline; filename="{name}"'
            response.headers["Accept-Ranges"] = "bytes"
            await response.make_conditional(request, accept_ranges=True, complete_length=row.size)
            return response
        if row.state == "done" and ctx.store is not None:
            url = ctx.store.presign_get(
                audio_object_key(row.key),
                expires_in=settings.s3_presign_expiry,
                content_type=row.content_type,
                filename=name,
            )
            return redirect(url, 307)  # type: ignore[return-value]
        if row.state == "done":
            raise ReadError(404, f"call {call_id}: its audio file is missing from the cache")
        raise ReadError(
            404,
            f"call {call_id} is not cached and not in S3 yet (state {row.state}"
            + (f", last error: {row.last_error}" if row.last_error else "")
            + ")",
        )

    async def journal_summary() -> dict[str, Any]:
        s = await ctx.journal.summary()
        if ctx.health is not None:  # the live state; the journal's copy may lag a probe
            s["store"] = ctx.health.status.as_dict()
        return s

    @bp.get("/api/journal/summary")
    async def summary() -> Response:
        return jsonify(await journal_summary())

    @bp.get("/metrics")
    async def metrics() -> Response:
        s = await ctx.journal.summary()
        body = ctx.metrics.render(
            pending=s["states"]["pending"]["calls"],
            failed=s["states"]["failed"]["calls"],
            cached_bytes=s["cached"]["bytes"],
            store=ctx.health.status if ctx.health is not None else None,
        )
        return Response(body, content_type="text/plain; version=0.0.4; charset=utf-8")

    return bp
