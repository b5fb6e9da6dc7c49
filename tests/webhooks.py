"""Webhook receivers of our own, standing in for the services tr_vault forwards to.

`WebhookSink` answers in-process (an httpx transport, so trio's mock clock can run an outage
of hours in no time); `WebhookServer` is a real HTTP server on 127.0.0.1 in a thread, for
servers run whole (`serve`, subprocesses). Both record every request and answer what the
test says: 200 by default, or a status (e.g. 503 for an outage, 401 for a wrong key).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import trio


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int  # what was answered


@dataclass
class WebhookSink:
    """In-process receivers, by URL host; `answer(host, body)` picks the status."""

    received: list[Received] = field(default_factory=list)
    status: dict[str, int] = field(default_factory=dict)  # host -> status while set
    delay: dict[str, float] = field(default_factory=dict)  # host -> seconds before answering
    answer: Callable[[str, dict[str, Any]], int | None] | None = None
    arrivals: list[tuple[str, int]] = field(default_factory=list)  # (host, call id) on arrival

    def accepted(self, host: str) -> list[dict[str, Any]]:
        return [r.body for r in self.received if r.path == host and 200 <= r.status < 300]

    def attempts(self, host: str) -> int:
        return sum(1 for r in self.received if r.path == host)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        body = json.loads(await request.aread())
        self.arrivals.append((host, body["id"]))  # before answering: a cut-off request counts
        delay = self.delay.pop(host, 0.0)
        if delay:
            await trio.sleep(delay)
        status = (self.answer(host, body) if self.answer else None) or self.status.get(host, 200)
        self.received.append(Received(host, dict(request.headers), body, status))
        return httpx.Response(status, text="ok" if status < 300 else f"status {status}")

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))


class WebhookServer:
    """A real webhook receiver on 127.0.0.1 (a thread); `status` is what it answers."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.status = 200
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with sink._lock:
                    status = sink.status
                    sink.received.append(Received(self.path, dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def accepted(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.body for r in self.received if 200 <= r.status < 300]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
