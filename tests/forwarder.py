"""A TCP forwarder for tests: another address in front of a server, bytes passed unchanged.

What a reverse proxy or CDN that preserves `Host`, path and query looks like to the server
behind it: the server sees exactly the request the client sent, under whatever name the client
used. (`tests/faultproxy.py` parses HTTP to inject faults and listens on 127.0.0.1 only.)

    async with open_forwarder(("127.0.0.1", store_port), host="127.0.0.2") as fwd:
        ...  # fwd.url is http://127.0.0.2:PORT, answered by the server at 127.0.0.1:store_port

Linux routes all of 127.0.0.0/8 to the loopback interface, so 127.0.0.2 is a second name for
this machine without any set-up; where it cannot be bound, `open_forwarder` falls back to
another port of 127.0.0.1 (the `Host` then differs by its port, which a signature covers too).
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["Forwarder", "open_forwarder"]

_RECEIVE_SIZE = 65536


class Forwarder:
    """Pipes each connection accepted on `listeners` to `upstream`, both ways, unchanged."""

    def __init__(self, upstream: tuple[str, int], listeners: list[trio.SocketListener]) -> None:
        self.upstream = upstream
        self.listeners = listeners
        self.host, self.port = listeners[0].socket.getsockname()[:2]
        self.connections = 0  # accepted so far: a test can tell its request came this way

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.netloc}"

    async def serve(self, client: trio.SocketStream) -> None:
        """One client connection: open one upstream connection and copy both ways."""
        self.connections += 1
        async with client:
            try:
                upstream = await trio.open_tcp_stream(*self.upstream)
            except OSError:
                return  # the client sees the connection closed, as with a dead backend
            async with upstream, trio.open_nursery() as nursery:
                nursery.start_soon(_pipe, client, upstream)
                nursery.start_soon(_pipe, upstream, client)


async def _pipe(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    """Copy until `source` ends, then pass the end on (a half-close, as TCP does)."""
    try:
        while data := await source.receive_some(_RECEIVE_SIZE):
            await sink.send_all(data)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        # One side went away: close both, so the other direction ends too.
        await source.aclose()
        await sink.aclose()


async def _listen(host: str) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(0, host=host)
    except OSError as exc:
        if exc.errno != errno.EADDRNOTAVAIL or host == "127.0.0.1":
            raise
        return await trio.open_tcp_listeners(0, host="127.0.0.1")


@asynccontextmanager
async def open_forwarder(
    upstream: tuple[str, int], *, host: str = "127.0.0.2"
) -> AsyncIterator[Forwarder]:
    """A `Forwarder` on a free port of `host` (of 127.0.0.1 if `host` cannot be bound here),
    serving for the duration of the block."""
    forwarder = Forwarder(upstream, await _listen(host))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, forwarder.serve, forwarder.listeners)
        try:
            yield forwarder
        finally:
            nursery.cancel_scope.cancel()
