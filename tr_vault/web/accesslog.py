"""The access log (TR_VAULT_ACCESS_LOG): one INFO line per HTTP request, once it is answered.

Off by default: intake already logs one line per call, and a recorder's uploads, SDRTrunk's
connection tests and health probes would otherwise add one line each. The line carries the
path without its query string (playback URLs may hold a read key, `?key=`) and no header.
Our own ASGI wrapper rather than hypercorn's access log, which logs some keep-alive requests
twice (once without a status).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

from tr_vault.web.client import TrustedProxies, client_address

log = logging.getLogger("tr_vault.access")

ASGIApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Any]


class AccessLog:
    """ASGI wrapper: `access client=... method=... path=... status=... bytes=... seconds=...`;
    `status=-` when no answer was sent (the client went away first)."""

    def __init__(self, app: ASGIApp, proxies: TrustedProxies) -> None:
        self.app = app
        self.proxies = proxies

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status: int | None = None
        sent = 0

        async def counted(message: Any) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            log.info(
                "access client=%s method=%s path=%s status=%s bytes=%d seconds=%.3f",
                client_address(scope, self.proxies) or "-",
                scope["method"],
                scope["path"].replace(" ", "%20"),
                status if status is not None else "-",
                sent,
                time.monotonic() - started,
            )
