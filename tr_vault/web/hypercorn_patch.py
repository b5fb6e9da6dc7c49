"""A work-around for hypercorn 0.18's trio server: a send racing the connection's close.

When a client half-closes while its answer is being sent (a body shorter than its
Content-Length, then FIN, to a route that answers without reading the body), hypercorn's
`_close()` sends EOF outside its send lock, and the answer's `send_all` meets
`trio.BusyResourceError`. `TCPServer.protocol_send` catches only Broken/ClosedResourceError,
so this one escapes and ends `hypercorn.trio.serve`: one unauthenticated request stopped the
whole server. The peer is going away either way, so it is handled like the errors hypercorn
already handles: the connection is closed. Applied once, when tr_vault's app module loads.
"""

from __future__ import annotations

from typing import Any

import trio
from hypercorn.events import Closed, Event
from hypercorn.trio.tcp_server import TCPServer

_original_send = TCPServer.protocol_send


async def _protocol_send(self: Any, event: Event) -> None:
    try:
        await _original_send(self, event)
    except trio.BusyResourceError:
        await self.protocol.handle(Closed())


def apply() -> None:
    """Install the work-around (idempotent)."""
    TCPServer.protocol_send = _protocol_send  # type: ignore[method-assign]
