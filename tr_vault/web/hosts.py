"""The Host header check: a keyless server on loopback answers only to loopback names.

A web page can make the browser send requests to `http://127.0.0.1:8080` directly, or, by DNS
rebinding, to a name of the attacker's that now resolves to 127.0.0.1. The second kind carries
the attacker's name in `Host`, so checking it closes that door; the `Origin` check on uploads
closes the first (see `uploads.py`). Other requests go on unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

ASGIApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], object]
HostAllowed = Callable[[str], bool]


def host_name(header: str) -> str:
    """The name of a Host header value, lower-case, without port or IPv6 brackets."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class AllowedHosts:
    """ASGI wrapper: `403` for a request whose Host the settings do not allow."""

    def __init__(self, app: ASGIApp, allowed: HostAllowed) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "http":
            host = next((v for k, v in scope["headers"] if k.lower() == b"host"), b"")
            name = host_name(host.decode("latin-1"))
            if not self.allowed(name):
                body = (
                    f"Host {name!r} is not allowed here (TR_VAULT_ALLOWED_HOSTS): a keyless"
                    " server on loopback answers only to loopback names\n"
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [
                            (b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            (b"x-content-type-options", b"nosniff"),
                            (b"connection", b"close"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
        await self.app(scope, receive, send)  # type: ignore[misc]
