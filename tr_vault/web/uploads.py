"""Upload routes, served straight from ASGI events: rdio-scanner's two call-upload endpoints and
OpenMHz's `/{short_name}/upload`.

They bypass quart on purpose. quart reads a request body into memory as fast as the client
sends it, whatever the handler is doing; here the body is pulled from `receive()` only as
fast as it is written to disk, and not at all before the upload holds a slot. Meanwhile
hypercorn's small per-request queue fills and it stops reading the socket, so a request that
waits costs a socket and a few chunks, never its body. Before any byte of the body is read:
the method, an `Origin` header (browsers send one, recorders never do), the declared length,
free disk and the slot. Every other path goes on to the quart app.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope

from tr_vault.call import CallMeta
from tr_vault.errors import IntakeError, JournalError
from tr_vault.intake import openmhz, rdio
from tr_vault.intake.form import FormLimits, UploadForm, read_form, too_large
from tr_vault.web.client import client_address
from tr_vault.web.context import WebContext
from tr_vault.web.slots import NoSlot, UploadSlots

log = logging.getLogger(__name__)

ASGIApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], object]
_OPENMHZ = re.compile(r"^/(.+)/upload$")
BROWSER_REFUSED = (
    "Uploads from web browsers are refused: this request carries an Origin header, which"
    " recorders never send. Upload from trunk-recorder, SDRTrunk or a script instead\n"
)


@dataclass(frozen=True)
class Route:
    protocol: str
    audio_field: str
    before_audio: Callable[[UploadForm], None]
    validate: Callable[[UploadForm], CallMeta]
    success: str


class UploadRoutes:
    """ASGI wrapper: the upload routes here, everything else to `app`."""

    def __init__(self, ctx: WebContext, app: ASGIApp, slots: UploadSlots) -> None:
        self.ctx = ctx
        self.app = app
        self.slots = slots
        self.limits = FormLimits(ctx.settings.max_upload_bytes, ctx.settings.idle_timeout)
        self.proxies = ctx.settings.proxies  # behind one, the client is whom it forwards for
        self.keys = keys = ctx.settings.keys  # parsed once, not per request
        self.fixed_routes = {
            "/api/call-upload": Route(
                "rdio",
                rdio.AUDIO_FIELD,
                rdio.early_key_check(keys),
                lambda form: rdio.call_upload(form, keys),
                rdio.SUCCESS,
            ),
            "/api/trunk-recorder-call-upload": Route(
                "rdio-tr",
                rdio.AUDIO_FIELD,
                rdio.early_key_check(keys),
                lambda form: rdio.trunk_recorder_call_upload(form, keys),
                rdio.SUCCESS,
            ),
        }

    def route(self, path: str) -> Route | None:
        """The upload route `path` names, or None (then the quart app serves it)."""
        fixed = self.fixed_routes.get(path)
        if fixed is not None:
            return fixed
        keys = self.keys
        match = _OPENMHZ.match(path)
        if match is None or path.startswith("/api/"):
            return None
        segment = match.group(1)

        def validate(form: UploadForm) -> CallMeta:
            return openmhz.upload(openmhz.short_name(segment), form, keys)

        def before_audio(form: UploadForm) -> None:
            openmhz.early_key_check(openmhz.short_name(segment), keys)(form)

        return Route("openmhz", openmhz.AUDIO_FIELD, before_audio, validate, openmhz.SUCCESS)

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        route = self.route(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)  # type: ignore[misc]
            return
        assert scope["type"] == "http"
        try:
            duplicate = await self._accept(route, scope, receive)
        except IntakeError as exc:
            self._count(route, str(exc.status))
            await _answer(send, exc.status, exc.body, close=exc.close)
            return
        self._count(route, "duplicate" if duplicate else "stored")
        await _answer(send, 200, route.success)

    def _count(self, route: Route, result: str) -> None:
        self.ctx.metrics.calls_received.labels(protocol=route.protocol, result=result).inc()

    async def _accept(self, route: Route, scope: HTTPScope, receive: ASGIReceiveCallable) -> bool:
        """Check, read, validate and durably store one upload; True for a duplicate."""
        settings = self.ctx.settings
        headers = _headers(scope)
        # Refusals before the body is read close the connection: its rest was never read.
        if scope["method"] != "POST":
            raise IntakeError(405, "Unsupported method\n", close=True)
        if "origin" in headers:
            raise IntakeError(403, BROWSER_REFUSED, close=True)
        declared = _content_length(headers.get("content-length"))
        if declared is not None and declared > self.limits.max_bytes:
            raise too_large(self.limits)
        if self.ctx.cache.free_bytes() < settings.min_free_mb * 1024 * 1024:
            raise IntakeError(
                507,
                "Insufficient storage on the server: the call was not stored, retry later\n",
                close=True,
            )
        try:
            client = client_address(scope, self.proxies) or "unknown"
            async with self.slots.hold(client, patience=settings.inflight_wait):
                return await self._receive(route, headers, declared, receive)
        except NoSlot:
            raise IntakeError(
                503, "Server busy: too many uploads in flight, retry later\n", close=True
            ) from None

    async def _receive(
        self,
        route: Route,
        headers: dict[str, str],
        declared: int | None,
        receive: ASGIReceiveCallable,
    ) -> bool:
        async with aclosing(_body(receive)) as body:
            form = await read_form(
                body,
                content_type=headers.get("content-type"),
                content_length=declared,
                cache=self.ctx.cache,
                audio_field=route.audio_field,
                limits=self.limits,
                before_audio=route.before_audio,
            )
        try:
            meta = route.validate(form)
            assert form.audio is not None
            accepted = await self.ctx.intake.store(meta, form.audio)
        except JournalError as exc:
            log.warning("journal write failed, call refused with 503: %s", exc)
            raise IntakeError(
                503, "The server could not record the call (journal busy); retry later\n"
            ) from None
        finally:
            form.discard()
        log.debug("accepted call_id=%d duplicate=%s", accepted.call_id, accepted.duplicate)
        return accepted.duplicate


def _headers(scope: HTTPScope) -> dict[str, str]:
    """Request headers by lower-case name; the first of a repeated header wins (SDRTrunk
    sends two Content-Types, the multipart one first)."""
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        out.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return out


def _content_length(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        raise IntakeError(400, f"Invalid Content-Length {value[:40]!r}\n", close=True)
    return int(text)


async def _body(receive: ASGIReceiveCallable) -> AsyncGenerator[bytes, None]:
    """The request body, pulled one ASGI message at a time (no read-ahead)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise IntakeError(400, "The client went away before the upload was complete\n")
        chunk = message.get("body", b"")
        if chunk:
            yield chunk  # type: ignore[misc]
        if not message.get("more_body", False):
            return


async def _answer(send: ASGISendCallable, status: int, body: str, *, close: bool = False) -> None:
    data = body.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(data)).encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"content-security-policy", b"default-src 'none'; sandbox"),
    ]
    if status == 503:
        headers.append((b"retry-after", b"30"))
    if close:
        headers.append((b"connection", b"close"))
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data, "more_body": False})
    except (OSError, trio.BrokenResourceError, trio.BusyResourceError, trio.ClosedResourceError):
        log.debug("client gone before the answer %d", status)
