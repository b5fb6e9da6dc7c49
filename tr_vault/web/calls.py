"""Reads: call listing, one call with its events, playback, the journal summary, metrics.

Playback serves the cached file (Range, ETag, Last-Modified, 304) or redirects (307) to a
presigned S3 URL. Who may read (README "Security"): with TR_VAULT_READ_KEYS set, a read key;
with none set, anyone when the server is private (loopback, not `TR_VAULT_PUBLIC`, no trusted
proxy) or told `TR_VAULT_ALLOW_ANONYMOUS`, otherwise an upload key. A scoped key
(`KEY:11|metro`) sees only calls whose `system` is in its scope: the listing, one call, its
audio (another system's call is a 404, as if it did not exist) and the summary's counts. The
audio also takes a playback token (`?token=`, tr_vault.web.playback) that
`POST /api/calls/{id}/playback` mints for the key in its header: a player's `<audio src>`
cannot send the header, and the key itself never goes into a URL the web page makes.

Every parameter is parsed as ASCII and range-checked here: a bad one is a 400 with a JSON error
that starts with its name.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import asdict
from pathlib import PurePosixPath
from typing import Any

from prometheus_client import generate_latest
from quart import Blueprint, Response, g, jsonify, request, send_file

from tr_vault.audio_types import FALLBACK, is_stored_type, stored_type
from tr_vault.auth import EVERY_SYSTEM, Scope
from tr_vault.call import CallRow
from tr_vault.errors import ConfigError
from tr_vault.forward.config import load_destinations
from tr_vault.forward.queue import forward_summary
from tr_vault.intake import fields as f
from tr_vault.journal import CallFilter
from tr_vault.storage.base import call_object
from tr_vault.timefmt import from_db
from tr_vault.web import playback
from tr_vault.web.context import WebContext

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
STATES = ("pending", "done", "failed", "lost")
MAX_CURSOR = 128  # ours are ~60 characters
_CURSOR_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
AUDIO_ENDPOINT = "calls.audio"
JSON_PATHS = ("/api/calls", "/api/journal")  # every read route but /metrics answers JSON


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


# -- parameters ----------------------------------------------------------------------------


def _arg(name: str) -> str | None:
    """A query parameter; absent or empty is None (no filter)."""
    value = request.args.get(name)
    return None if value is None or value == "" else value


def parse_id(name: str, value: str, what: str) -> int:
    """ASCII digits only, 1 to a SQLite INTEGER's maximum (`str.isdigit()` alone takes '²')."""
    allowed = f"{what}: {f.ID_RANGE}"
    if not (value.isascii() and value.isdigit()):
        raise ReadError(400, f"{name}: {f.shown(value)} is not {allowed}")
    try:
        number = f.positive_int(value)
    except f.OutOfRange:
        raise ReadError(400, f"{name}: {f.shown(value)} is out of range: {allowed}") from None
    if number is None:  # 0
        raise ReadError(400, f"{name}: {f.shown(value)} is not {allowed}")
    return number


def parse_limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    allowed = f"limit: {f.shown(value)} is not a whole number from 1 to {MAX_LIMIT}"
    if not (value.isascii() and value.isdigit()) or len(value) > 3:
        raise ReadError(400, allowed)
    limit = int(value)
    if not 1 <= limit <= MAX_LIMIT:
        raise ReadError(400, allowed)
    return limit


def parse_time(name: str, value: str | None) -> float | None:
    if value is None:
        return None
    parsed = f.unix_or_rfc3339(value) if value.isascii() else None
    if parsed is None:
        raise ReadError(
            400,
            f"{name}: {f.shown(value)} is not Unix seconds or an RFC 3339 date-time"
            " (2025-11-24T16:20:34Z) from 1970 to 9999",
        )
    return parsed


def parse_state(value: str | None) -> str | None:
    if value is not None and value not in STATES:
        raise ReadError(400, f"state: {f.shown(value)} is not one of {', '.join(STATES)}")
    return value


def make_cursor(row: CallRow) -> str:
    return base64.urlsafe_b64encode(f"{row.start_time}|{row.id}".encode()).decode()


def parse_cursor(text: str | None) -> tuple[str, int] | None:
    """The (start_time, id) of a `next_cursor` this server returned; 400 for anything else."""
    if text is None:
        return None
    bad = ReadError(400, "cursor: not a cursor this server returned (pass next_cursor back)")
    if len(text) > MAX_CURSOR or not text.isascii():
        raise bad
    try:
        decoded = base64.b64decode(text.encode(), altchars=b"-_", validate=True).decode("ascii")
        start, _, ident = decoded.rpartition("|")
        if not _CURSOR_TIME.fullmatch(start):
            raise bad
        from_db(start)  # a real date
    except (binascii.Error, ValueError):
        raise bad from None
    try:
        return start, parse_id("cursor", ident, "a call id")
    except ReadError:
        raise bad from None


def _download_name(key: str) -> str:
    """The file name for Content-Disposition: a journal row of an old version may hold
    anything, so only the characters tr_vault's own names use."""
    return _UNSAFE_NAME.sub("_", PurePosixPath(key).name) or "call"


# -- the blueprint -------------------------------------------------------------------------


def _destination_kinds(path: str) -> dict[str, str]:
    """Each configured destination's kind, for the summary (the journal has only names)."""
    try:
        return {d.name: d.kind for d in load_destinations(path)}
    except ConfigError:  # start-up has refused the file already; the summary still answers
        return {}


def calls_blueprint(ctx: WebContext) -> Blueprint:
    bp = Blueprint("calls", __name__)
    settings = ctx.settings
    readers = settings.read_access
    kinds = _destination_kinds(settings.forward_file)

    @bp.errorhandler(ReadError)
    async def read_error(exc: ReadError) -> tuple[Response, int]:
        return jsonify(error=exc.message), exc.status

    def request_key() -> str | None:
        """The key the request carries: `Authorization: Bearer KEY`, else `?key=KEY`."""
        auth = request.headers.get("Authorization", "")
        key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
        return key or request.args.get("key")

    def read_scope() -> Scope:
        """What this request may read; 401 without a key that may read."""
        if settings.open_reads:
            return EVERY_SYSTEM
        scope = readers.scope(request_key())
        token = request.args.get("token")
        if scope is None and token is not None and request.endpoint == AUDIO_ENDPOINT:
            scope = token_scope(token)
            if scope is None:
                raise ReadError(
                    401,
                    "token: expired or not valid for this call: ask"
                    " POST /api/calls/{id}/playback (with the key) for a new link",
                )
        if scope is None:  # an unknown key, or no key configured at all: nothing is open
            raise ReadError(401, "a read key is required: 'Authorization: Bearer KEY' or ?key=KEY")
        return scope

    def token_scope(token: str) -> Scope | None:
        """The scope of a playback token (tr_vault.web.playback) for the call in the path."""
        raw_id = (request.view_args or {}).get("call_id", "")
        try:
            call_id = parse_id("id", raw_id, "a call id")
        except ReadError:
            return None
        return playback.token_scope(readers, token, call_id, time.time())

    @bp.before_request
    async def check_reader() -> None:
        if request.endpoint == f"{bp.name}.metrics":
            return
        g.read_scope = read_scope()

    def scope() -> Scope:
        found: Scope = g.read_scope
        return found

    async def visible_call(raw_id: str) -> CallRow:
        """The call, or 404 when there is none or it is outside the reader's scope (the same
        answer, so ids of other systems do not leak)."""
        call_id = parse_id("id", raw_id, "a call id")
        row = await ctx.journal.get_call(call_id)
        if row is None or not scope().allows(row.system):
            raise ReadError(404, f"no call {call_id}")
        return row

    @bp.after_request
    async def audio_types_only(response: Response) -> Response:
        """Playback serves only the stored audio types, whatever a row holds."""
        if (
            request.endpoint == AUDIO_ENDPOINT
            and response.status_code in (200, 206)
            and not is_stored_type(response.mimetype)
        ):
            response.mimetype = FALLBACK
        return response

    @bp.get("/api/calls")
    async def list_calls() -> Response:
        limit = parse_limit(_arg("limit"))
        talkgroup = _arg("talkgroup")
        flt = CallFilter(
            system=_arg("system"),
            systems=scope().systems,
            talkgroup=parse_id("talkgroup", talkgroup, "a talkgroup id") if talkgroup else None,
            since=parse_time("since", _arg("since")),
            until=parse_time("until", _arg("until")),
            state=parse_state(_arg("state")),
        )
        after = parse_cursor(_arg("cursor"))
        rows = await ctx.journal.list_calls(flt, limit=limit + 1, after=after)
        page, more = rows[:limit], len(rows) > limit
        return jsonify(
            calls=[call_json(r) for r in page],
            next_cursor=make_cursor(page[-1]) if more and page else None,
        )

    @bp.get("/api/calls/<call_id>")
    async def one_call(call_id: str) -> Response:
        row = await visible_call(call_id)
        events = await ctx.journal.events(row.id)
        return jsonify(call=call_json(row), events=[asdict(e) for e in events])

    @bp.post("/api/calls/<call_id>/playback")
    async def playback_link(call_id: str) -> Response:
        """A link to the call's audio for players that cannot send the key (an `<audio src>`):
        with keys, the audio URL with a short-lived token signed by the request's key."""
        row = await visible_call(call_id)
        url = f"/api/calls/{row.id}/audio"
        key = None if settings.open_reads else request_key()
        if key is None:  # open reads: the plain URL plays
            response = jsonify(url=url, expires_in=None)
        else:
            token = playback.mint(key, row.id, time.time())
            response = jsonify(url=f"{url}?token={token}", expires_in=playback.TOKEN_TTL)
        response.headers["Cache-Control"] = "no-store"
        return response

    @bp.get("/api/calls/<call_id>/audio")
    async def audio(call_id: str) -> Response:
        row = await visible_call(call_id)
        name = _download_name(row.key)
        content_type = stored_type(row.content_type, row.key)
        path = ctx.cache.path(row.key)
        if row.cached and path.is_file():
            response = await send_file(path, mimetype=content_type, add_etags=False)
            response.set_etag(row.sha256)
            response.last_modified = from_db(row.received_at)  # type: ignore[assignment]
            response.headers["Content-Disposition"] = f'inline; filename="{name}"'
            response.headers["Accept-Ranges"] = "bytes"
            await response.make_conditional(request, accept_ranges=True, complete_length=row.size)
            return response
        if row.state == "done" and ctx.store is not None:
            url = ctx.store.presign_get(
                call_object(row.key, row.bucket, row.object_key),
                expires_in=settings.s3_presign_expiry,
                content_type=content_type,
                filename=name,
            )
            # No body, so nothing of this answer is for a browser to render.
            response = Response(b"", status=307, headers={"Location": url})
            del response.headers["Content-Type"]
            return response
        if row.state == "done":
            raise ReadError(404, f"call {row.id}: its audio file is missing from the cache")
        raise ReadError(
            404,
            f"call {row.id} is not cached and not in S3 yet (state {row.state}"
            + (f", last error: {row.last_error}" if row.last_error else "")
            + ")",
        )

    @bp.get("/api/journal/summary")
    async def summary() -> Response:
        s = await ctx.journal.summary(scope().systems)
        if ctx.health is not None:  # the live state; the journal's copy may lag a probe
            s["store"] = ctx.health.status.as_dict()
        if ctx.replica is not None:  # likewise for the journal's replica
            s["replica"] = ctx.replica.status.as_dict()
        # The relay's destinations (counts over every system): for readers of every system.
        s["forward"] = (
            [
                {**row, "kind": kinds.get(row["name"])}
                for row in await ctx.journal.call(forward_summary, ctx.journal.clock())
            ]
            if scope().systems is None
            else []
        )
        return jsonify(s)

    @bp.get("/metrics")
    async def metrics() -> Response:
        s = await ctx.journal.summary()
        body = ctx.metrics.render(
            pending=s["states"]["pending"]["calls"],
            failed=s["states"]["failed"]["calls"],
            lost=s["states"]["lost"]["calls"],
            cached_bytes=s["cached"]["bytes"],
            store=ctx.health.status if ctx.health is not None else None,
            replica=ctx.replica.status if ctx.replica is not None else None,
        )
        ctx.metrics.set_forward(await ctx.journal.call(forward_summary, ctx.journal.clock()))
        body = generate_latest(ctx.metrics.registry)
        return Response(body, content_type="text/plain; version=0.0.4; charset=utf-8")

    return bp
