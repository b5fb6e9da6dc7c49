"""A fault-injecting HTTP/1.1 proxy for tests: sits between an S3 client and an S3 server.

moto has no fault injection, so tests put this proxy in front of it and ask for the failures a
real object store produces: S3-style error responses (503 SlowDown, 500), connections reset in
the middle of a request body, responses held back past the client's timeout, a request body
with one byte flipped, and a server that is down (connections refused).

    async with open_fault_proxy("127.0.0.1", moto_port) as proxy:
        proxy.fail_next(2, status=503)  # the next two requests get 503 SlowDown
        ...  # point the S3 client at proxy.url

Faults wait in one queue and are taken, in the order they were queued, by the requests that
arrive next and match their `methods` (None matches any method); a request takes at most one.
Requests without a fault are forwarded unchanged (Host included, so SigV4 signatures made
for the proxy's address stay valid), one upstream connection per request, while client
connections stay alive across requests.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from collections.abc import Set as AbstractSet
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal
from xml.sax.saxutils import escape

import h11
import trio

__all__ = ["FaultProxy", "open_fault_proxy"]

# Status recorded in `FaultProxy.seen` when the proxy sent no response (reset, or a connection
# cut while the response was being relayed).
NO_RESPONSE = 0

# Headers that describe one hop, not the message (RFC 9110 §7.6.1). Framing headers
# (Content-Length, Transfer-Encoding) are kept: h11 frames each hop from them.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade", b"expect"}
)
_RECEIVE_SIZE = 65536

_FaultKind = Literal["fail", "reset", "delay", "corrupt"]


@dataclass(frozen=True)
class _Fault:
    kind: _FaultKind
    methods: frozenset[str] | None
    status: int = 503
    code: str = ""
    message: str = ""
    after_body_bytes: int = 0
    seconds: float = 0.0

    def matches(self, method: str) -> bool:
        return self.methods is None or method in self.methods


class FaultProxy:
    """An HTTP/1.1 proxy to `upstream_host:upstream_port` that injects the faults it is told to.

    Start it with `await nursery.start(proxy.run)` (or `open_fault_proxy`); it listens on a
    free port of 127.0.0.1 until cancelled. Every request it answers is appended to `seen` as
    `(method, target, status sent to the client)` (target: path and query as sent), with
    status `NO_RESPONSE` (0) when the connection was cut instead. An unreachable or broken
    upstream is answered with 502 `BadGateway`.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.seen: list[tuple[str, str, int]] = []
        self._faults: list[_Fault] = []
        self._down = False
        self._port: int | None = None
        self._nursery: trio.Nursery | None = None
        self._listener: trio.SocketListener | None = None
        self._connections: dict[trio.SocketStream, trio.CancelScope] = {}

    @property
    def port(self) -> int:
        """The port the proxy listens on (kept across `set_down`)."""
        if self._port is None:
            raise RuntimeError("FaultProxy is not running: start it with nursery.start(proxy.run)")
        return self._port

    @property
    def url(self) -> str:
        """The proxy's base URL, `http://127.0.0.1:PORT`."""
        return f"http://127.0.0.1:{self.port}"

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on 127.0.0.1 (a free port, passed to `task_status.started`) until cancelled.

        Every socket the proxy opened is closed when this returns.
        """
        if self._nursery is not None:
            raise RuntimeError("FaultProxy.run is already running")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._listen()
                if self._down:
                    self._stop_listening()
                task_status.started(self.port)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._stop_listening()

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 503,
        code: str = "SlowDown",
        message: str = "Please reduce your request rate.",
        methods: AbstractSet[str] | None = None,
    ) -> None:
        """Answer the next `count` matching requests with an S3 XML error, without forwarding.

        The request body is read in full first, so the client sees a clean response on a
        connection it can reuse.
        """
        self._queue(count, _Fault("fail", _methods(methods), status, code, message))

    def reset_next(
        self,
        count: int = 1,
        *,
        after_body_bytes: int = 1024,
        methods: AbstractSet[str] | None = None,
    ) -> None:
        """Abort the next `count` matching requests with a TCP reset, without forwarding.

        The proxy reads the head and at least `after_body_bytes` of the body (or all of a
        shorter body), then closes with SO_LINGER 0 so the client gets a RST.
        """
        self._queue(count, _Fault("reset", _methods(methods), after_body_bytes=after_body_bytes))

    def delay_next(
        self, count: int = 1, *, seconds: float, methods: AbstractSet[str] | None = None
    ) -> None:
        """Forward the next `count` matching requests, but hold each response back `seconds`.

        The request reaches the upstream at once (a PUT is stored); only the answer is late,
        and it enters `seen` when released. The wait is a `trio.sleep`, so it follows a
        `MockClock`.
        """
        self._queue(count, _Fault("delay", _methods(methods), seconds=seconds))

    def corrupt_next(
        self, count: int = 1, *, methods: AbstractSet[str] | None = frozenset({"PUT"})
    ) -> None:
        """Forward the next `count` matching requests with one byte in the middle of the body
        flipped (the length is kept, so only a checksum can tell)."""
        self._queue(count, _Fault("corrupt", _methods(methods)))

    def reset_faults(self) -> None:
        """Drop every queued fault (does not change `set_down` or `seen`)."""
        self._faults.clear()

    @property
    def faults_pending(self) -> int:
        """How many queued faults no request has taken yet."""
        return len(self._faults)

    def set_down(self, down: bool) -> None:
        """Take the proxy down (stop listening, cut open connections) or bring it back up.

        While down, connecting gives "connection refused" at once. It listens again on the same
        port when brought up. Takes effect before this returns, so a pooled keep-alive
        connection is already closed when the client next looks at it.
        """
        self._down = down
        if self._nursery is None:
            return  # not running: `run` honours the flag when it starts
        if down:
            self._stop_listening()
            for stream, scope in list(self._connections.items()):
                scope.cancel()
                stream.socket.close()  # synchronous: the peer sees EOF now, not at our next turn
        elif self._listener is None:
            self._listen()

    def _queue(self, count: int, fault: _Fault) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        self._faults.extend([fault] * count)

    def _take_fault(self, method: str) -> _Fault | None:
        for index, fault in enumerate(self._faults):
            if fault.matches(method):
                return self._faults.pop(index)
        return None

    def _listen(self) -> None:
        assert self._nursery is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self._port or 0))
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        self._listener = listener
        self._nursery.start_soon(self._accept_loop, listener)

    def _stop_listening(self) -> None:
        if self._listener is not None:
            self._listener.socket.close()
            self._listener = None

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except trio.ClosedResourceError:
                    return  # set_down closed it
                assert self._nursery is not None
                self._nursery.start_soon(self._serve_connection, stream)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        """Serve requests on one client connection until it closes or cannot be reused."""
        with trio.CancelScope() as scope:
            self._connections[stream] = scope
            try:
                async with stream:
                    conn = h11.Connection(h11.SERVER)
                    while True:
                        event = await _next_event(conn, stream)
                        if not isinstance(event, h11.Request):
                            return  # ConnectionClosed: the client is done
                        if not await self._handle(conn, stream, event):
                            return
                        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                            return  # Connection: close, or a message left half-read
                        conn.start_next_cycle()
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
                return  # the client went away or spoke broken HTTP: just drop the connection
            finally:
                del self._connections[stream]

    async def _handle(
        self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request
    ) -> bool:
        """Answer one request; False when the connection must not be reused."""
        method = request.method.decode("ascii")
        target = request.target.decode("ascii", errors="replace")
        fault = self._take_fault(method)
        if fault is None or fault.kind in ("delay", "corrupt"):
            return await self._forward(conn, stream, request, fault)
        if fault.kind == "reset":
            await _read_body(conn, stream, limit=fault.after_body_bytes)
            self.seen.append((method, target, NO_RESPONSE))
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await stream.aclose()
            return False
        await _read_body(conn, stream)
        await self._send_error(conn, stream, request, fault.status, fault.code, fault.message)
        return True

    async def _forward(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        request: h11.Request,
        fault: _Fault | None,
    ) -> bool:
        """Relay one request to the upstream and its response back, applying `fault`."""
        method = request.method.decode("ascii")
        target = request.target.decode("ascii", errors="replace")
        try:
            upstream = await trio.open_tcp_stream(self.upstream_host, self.upstream_port)
        except OSError:
            await _read_body(conn, stream)
            await self._send_error(conn, stream, request, 502, "BadGateway", "upstream refused")
            return True
        async with upstream:
            up = h11.Connection(h11.CLIENT)
            headers = [(n, v) for n, v in request.headers.raw_items() if not _hop_by_hop(n)]
            headers.append((b"Connection", b"close"))
            relay = _Relay(up, upstream)
            await relay.send(
                h11.Request(method=request.method, target=request.target, headers=headers)
            )
            if fault is not None and fault.kind == "corrupt":
                body = bytearray(await _read_body(conn, stream))
                if body:
                    body[len(body) // 2] ^= 0xFF
                    await relay.send(h11.Data(data=bytes(body)))
            else:
                while (chunk := await _next_chunk(conn, stream)) is not None:
                    await relay.send(h11.Data(data=chunk))
            await relay.send(h11.EndOfMessage())
            response = await relay.response()
            if response is None:
                await self._send_error(conn, stream, request, 502, "BadGateway", relay.error)
                return True
            if fault is not None and fault.kind == "delay":
                await trio.sleep(fault.seconds)
            self.seen.append((method, target, response.status_code))
            await _send(
                conn,
                stream,
                h11.Response(
                    status_code=response.status_code,
                    reason=response.reason,
                    headers=[(n, v) for n, v in response.headers.raw_items() if not _hop_by_hop(n)],
                ),
            )
            while True:
                try:
                    event = await _next_event(up, upstream)
                except (trio.BrokenResourceError, h11.ProtocolError):
                    return False  # upstream cut the body short: cut the client too
                if isinstance(event, h11.Data):
                    await _send(conn, stream, h11.Data(data=event.data))
                elif isinstance(event, h11.EndOfMessage):
                    await _send(conn, stream, h11.EndOfMessage())
                    return True
                else:
                    return False

    async def _send_error(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        request: h11.Request,
        status: int,
        code: str,
        message: str,
    ) -> None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
            "<RequestId>faultproxy</RequestId></Error>"
        ).encode()
        self.seen.append(
            (request.method.decode("ascii"), request.target.decode("ascii", "replace"), status)
        )
        headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
        await _send(conn, stream, h11.Response(status_code=status, headers=headers))
        if request.method != b"HEAD":
            await _send(conn, stream, h11.Data(data=body))
        await _send(conn, stream, h11.EndOfMessage())


class _Relay:
    """The upstream side of one forwarded request; remembers the first failure.

    After a failure, sends are dropped so the client's body can still be read to its end
    and answered with a 502.
    """

    def __init__(self, conn: h11.Connection, stream: trio.SocketStream) -> None:
        self.conn = conn
        self.stream = stream
        self.error = ""

    async def send(self, event: h11.Event) -> None:
        if self.error:
            return
        try:
            await _send(self.conn, self.stream, event)
        except (trio.BrokenResourceError, h11.ProtocolError) as exc:
            self.error = f"upstream failed while sending the request: {exc!r}"

    async def response(self) -> h11.Response | None:
        """The upstream's final response head, or None (and `error` set) if there is none."""
        if self.error:
            return None
        try:
            while True:
                event = await _next_event(self.conn, self.stream)
                if isinstance(event, h11.Response):
                    return event
                if not isinstance(event, h11.InformationalResponse):
                    self.error = f"upstream closed without a response: {event!r}"
                    return None
        except (trio.BrokenResourceError, h11.ProtocolError) as exc:
            self.error = f"upstream failed while answering: {exc!r}"
            return None


@asynccontextmanager
async def open_fault_proxy(upstream_host: str, upstream_port: int) -> AsyncIterator[FaultProxy]:
    """Run a `FaultProxy` to the upstream for the duration of the block."""
    proxy = FaultProxy(upstream_host, upstream_port)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()


def _methods(methods: AbstractSet[str] | None) -> frozenset[str] | None:
    return None if methods is None else frozenset(m.upper() for m in methods)


def _hop_by_hop(name: bytes) -> bool:
    return name.lower() in _HOP_BY_HOP


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> h11.Event:
    """The next event from the peer, receiving as much as it takes."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(_RECEIVE_SIZE))
        elif event is h11.PAUSED:
            raise h11.LocalProtocolError("peer pipelined a request before our response")
        else:
            assert isinstance(event, h11.Event)
            return event


async def _send(conn: h11.Connection, stream: trio.SocketStream, event: h11.Event) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


async def _next_chunk(conn: h11.Connection, stream: trio.SocketStream) -> bytes | None:
    """The next piece of the client's request body, or None at its end."""
    if conn.they_are_waiting_for_100_continue:
        await _send(conn, stream, h11.InformationalResponse(status_code=100, headers=[]))
    event = await _next_event(conn, stream)
    if isinstance(event, h11.Data):
        return bytes(event.data)
    if isinstance(event, h11.EndOfMessage):
        return None
    raise h11.RemoteProtocolError(f"unexpected {event!r} in a request body")


async def _read_body(
    conn: h11.Connection, stream: trio.SocketStream, *, limit: int | None = None
) -> bytes:
    """Read the client's request body: all of it, or stop once `limit` bytes are in."""
    chunks: list[bytes] = []
    size = 0
    while limit is None or size < limit:
        chunk = await _next_chunk(conn, stream)
        if chunk is None:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
