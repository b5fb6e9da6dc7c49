"""The Broadcastify Calls exchange, served from ASGI events next to `UploadRoutes`.

trunk-recorder's broadcastify_uploader posts a call's metadata to `broadcastifyCallsServer`
(`/api/broadcastify/call-upload` here) and, on `0 <URL>`, PUTs the audio to that URL. tr_vault
answers with a one-time URL of its own, `/api/broadcastify/audio/{token}`, whose token names
the validated metadata in `PendingUploads` (`web/pending.py`). A signed token could not stand
in for that memory: the PUT carries only the audio, so the metadata has to wait somewhere.

The plugin does not read the PUT's status: it counts the call as sent whenever curl completes
the request. So every refusal of a PUT (unknown or expired token, busy, disk full, journal
busy) is sent as an unfinished response, its body one byte shorter than its Content-Length,
and the connection closed: curl reports a partial transfer, the plugin logs an error and
retries the whole exchange, which gets a fresh token. A restart between the two requests (the
tokens are gone) ends the same way. Only a stored call, or one stored before, gets `200`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope

from tr_vault.cache import TempAudio
from tr_vault.errors import IntakeError, JournalError
from tr_vault.intake import broadcastify
from tr_vault.intake import fields as f
from tr_vault.intake.form import FormLimits, read_form, too_large
from tr_vault.web.client import client_address
from tr_vault.web.context import WebContext
from tr_vault.web.pending import PendingUploads
from tr_vault.web.slots import NoSlot, UploadSlots
from tr_vault.web.uploads import (
    BROWSER_REFUSED,
    ASGIApp,
    _answer,
    _body,
    _content_length,
    _headers,
)

log = logging.getLogger(__name__)

CALL_UPLOAD = "/api/broadcastify/call-upload"
AUDIO_PREFIX = "/api/broadcastify/audio/"
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


class BroadcastifyRoutes:
    """ASGI wrapper: the two Broadcastify routes here, everything else to `app`."""

    def __init__(self, ctx: WebContext, app: ASGIApp, slots: UploadSlots) -> None:
        self.ctx = ctx
        self.app = app
        self.slots = slots
        if ctx.pending_uploads is None:  # the app's context holds the store (app.py makes it)
            ctx.pending_uploads = PendingUploads.from_settings(ctx.settings)
        self.pending = ctx.pending_uploads
        self.limits = FormLimits(ctx.settings.max_upload_bytes, ctx.settings.idle_timeout)
        self.proxies = ctx.settings.proxies
        self.keys = ctx.settings.keys

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if path == CALL_UPLOAD:
            assert scope["type"] == "http"
            await self._metadata(scope, receive, send)
        elif path.startswith(AUDIO_PREFIX):
            assert scope["type"] == "http"
            await self._audio(scope, receive, send)
        else:
            await self.app(scope, receive, send)  # type: ignore[misc]

    def _count(self, result: str) -> None:
        self.ctx.metrics.calls_received.labels(protocol=broadcastify.PROTOCOL, result=result).inc()

    # -- the metadata POST ----------------------------------------------------------------

    async def _metadata(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        try:
            answer = await self._accept_metadata(scope, receive)
        except IntakeError as exc:
            self._count(str(exc.status))
            await _answer(send, exc.status, exc.body, close=exc.close)
            return
        await _answer(send, 200, answer)

    async def _accept_metadata(self, scope: HTTPScope, receive: ASGIReceiveCallable) -> str:
        """`0 <upload URL>`, or `1 SKIPPED…` for a call already stored; raises the refusal."""
        headers = _headers(scope)
        declared = self._before_body(scope, headers, "POST")
        async with self._slot(scope):
            async with aclosing(_body(receive)) as body:
                form = await read_form(
                    body,
                    content_type=headers.get("content-type"),
                    content_length=declared,
                    cache=self.ctx.cache,
                    audio_field=broadcastify.NO_AUDIO,
                    limits=self.limits,
                )
            try:
                meta = broadcastify.call_metadata(form, self.keys)
            finally:
                form.discard()
        url_base = self._audio_base(scope, headers)
        try:
            existing = await self.ctx.journal.call(broadcastify.already_received, meta)
        except JournalError as exc:
            log.warning("journal read failed, broadcastify metadata refused with 503: %s", exc)
            raise IntakeError(
                503, "The server could not check the journal (busy); retry later\n"
            ) from None
        if existing is not None:
            self._count("duplicate")
            log.info(
                "broadcastify skipped: already received as id=%d system=%s talkgroup=%d",
                existing,
                meta.system,
                meta.talkgroup,
            )
            return broadcastify.SKIPPED
        return f"0 {url_base}{self.pending.add(meta)}"

    def _audio_base(self, scope: HTTPScope, headers: dict[str, str]) -> str:
        """`{scheme}://{Host}{root}/api/broadcastify/audio/`: the Host the recorder reached us
        by (AllowedHosts has let it in), the scheme a trusted proxy forwards for."""
        host = headers.get("host", "")
        if not _HOST.fullmatch(host):
            raise IntakeError(
                400, f"Missing or invalid Host header {f.shown(host)}: the upload URL needs it\n"
            )
        scheme = scope.get("scheme", "http")
        peer = scope.get("client")
        if peer and self.proxies.trusts(str(peer[0])):
            # the last entry is the one the trusted proxy wrote
            values = [
                v.decode("latin-1")
                for k, v in scope["headers"]
                if k.lower() == b"x-forwarded-proto"
            ]
            forwarded = ",".join(values).rsplit(",", 1)[-1].strip().lower()
            if forwarded in ("http", "https"):
                scheme = forwarded
        return f"{scheme}://{host}{scope.get('root_path', '')}{AUDIO_PREFIX}"

    # -- the audio PUT --------------------------------------------------------------------

    async def _audio(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        try:
            duplicate = await self._accept_audio(scope, receive)
        except IntakeError as exc:
            self._count(str(exc.status))
            log.warning("broadcastify audio refused (%d): %s", exc.status, exc.body.strip())
            await _answer_unfinished(send, exc.status, exc.body)
            return
        self._count("duplicate" if duplicate else "stored")
        await _answer(send, 200, "")

    async def _accept_audio(self, scope: HTTPScope, receive: ASGIReceiveCallable) -> bool:
        """Store the audio of a pending call durably; True when it was stored before."""
        headers = _headers(scope)
        declared = self._before_body(scope, headers, "PUT")
        if declared is None or "transfer-encoding" in headers:
            raise IntakeError(
                411, "Length required: PUT the audio with a Content-Length, not chunked\n"
            )
        if not declared:
            raise IntakeError(400, "Missing audio: the PUT's body is empty\n")
        meta = self.pending.take(scope["path"].removeprefix(AUDIO_PREFIX))
        metadata = dict(meta.metadata)
        f.keep_part_type(headers.get("content-type"), meta.content_type, metadata)
        meta = dataclasses.replace(meta, metadata=metadata)
        async with self._slot(scope):
            temp = await self._spool(receive, declared)
            try:
                accepted = await self.ctx.intake.store(meta, temp)
            except JournalError as exc:
                log.warning("journal write failed, broadcastify audio refused: %s", exc)
                raise IntakeError(
                    503, "The server could not record the call (journal busy); retry later\n"
                ) from None
            finally:
                temp.discard()
        return accepted.duplicate

    async def _spool(self, receive: ASGIReceiveCallable, declared: int) -> TempAudio:
        """The body into a cache temp file, hashed as it comes, cut when it stalls."""
        temp = self.ctx.cache.new_temp()
        try:
            async with aclosing(_body(receive)) as body:
                iterator = aiter(body)
                while True:
                    try:
                        with trio.fail_after(self.limits.idle_timeout):
                            chunk = await anext(iterator)
                    except StopAsyncIteration:
                        break
                    except trio.TooSlowError:
                        raise IntakeError(
                            408, f"Upload stalled: no data for {self.limits.idle_timeout:g} s\n"
                        ) from None
                    temp.write(chunk)
            if temp.size != declared:
                raise IntakeError(400, "The body does not match its Content-Length\n")
        except OSError as exc:
            temp.discard()
            raise IntakeError(
                507, f"The server could not write the audio ({exc.strerror}); retry later\n"
            ) from None
        except BaseException:
            temp.discard()
            raise
        temp.close()
        return temp

    # -- what both check before the body ------------------------------------------------

    def _before_body(self, scope: HTTPScope, headers: dict[str, str], method: str) -> int | None:
        """Method, Origin, declared length and free disk, before any byte is read."""
        if scope["method"] != method:
            raise IntakeError(405, "Unsupported method\n", close=True)
        if "origin" in headers:
            raise IntakeError(403, BROWSER_REFUSED, close=True)
        declared = _content_length(headers.get("content-length"))
        if declared is not None and declared > self.limits.max_bytes:
            raise too_large(self.limits)
        if self.ctx.cache.free_bytes() < self.ctx.settings.min_free_mb * 1024 * 1024:
            raise IntakeError(
                507,
                "Insufficient storage on the server: the call was not stored, retry later\n",
                close=True,
            )
        return declared

    @asynccontextmanager
    async def _slot(self, scope: HTTPScope) -> AsyncIterator[None]:
        """An upload slot, as for the other upload routes, or `503`."""
        client = client_address(scope, self.proxies) or "unknown"
        try:
            async with self.slots.hold(client, patience=self.ctx.settings.inflight_wait):
                yield
        except NoSlot:
            raise IntakeError(
                503, "Server busy: too many uploads in flight, retry later\n", close=True
            ) from None


async def _answer_unfinished(send: ASGISendCallable, status: int, body: str) -> None:
    """A refusal curl reports as an error: the status and message, one byte short of the
    declared length, then the connection closes (hypercorn closes an unfinished response)."""
    data = body.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(data) + 1).encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"content-security-policy", b"default-src 'none'; sandbox"),
        (b"connection", b"close"),
    ]
    if status == 503:
        headers.append((b"retry-after", b"30"))
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data, "more_body": True})
    except (OSError, trio.BrokenResourceError, trio.BusyResourceError, trio.ClosedResourceError):
        log.debug("client gone before the answer %d", status)
