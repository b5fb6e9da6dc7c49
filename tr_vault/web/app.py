"""The quart-trio application: routes wired to their dependencies, errors turned into answers."""

from __future__ import annotations

import re
from typing import Any

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from tr_vault.web.calls import JSON_PATHS, calls_blueprint
from tr_vault.web.context import WebContext
from tr_vault.web.health import health_blueprint
from tr_vault.web.page import PAGE_ENDPOINT, page_blueprint, page_headers

_SLASHES = re.compile(r"/{2,}")

# On every answer of the quart app, whatever route (or error handler) made it: no browser may
# sniff a body into something it renders, and none may run anything from it (a recording, a
# JSON body, a text that echoes a client's value): no scripts, no subresources, no origin.
# The one exception is the web page's own document (`/`), whose policy allows its own script
# and style and nothing else (tr_vault.web.page).
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}


def create_app(ctx: WebContext) -> QuartTrio:
    """The quart app of every route but the uploads (see `tr_vault.web.uploads`)."""
    app = QuartTrio("tr_vault")
    app.register_blueprint(health_blueprint(ctx))
    app.register_blueprint(calls_blueprint(ctx))
    app.register_blueprint(page_blueprint())
    for_the_page = page_headers(ctx.settings)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response | HTTPException:
        """The framework's own answers (no such route, method not allowed, a bad Range, a
        500) are JSON on the read routes, like every other answer there."""
        if not request.path.startswith(JSON_PATHS):
            return exc
        response = jsonify(error=f"{exc.code} {exc.name}".lower())
        response.status_code = exc.code or 500
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.after_request
    async def security_headers(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        if request.endpoint == PAGE_ENDPOINT and response.status_code in (200, 304):
            response.headers.update(for_the_page)
        return response

    return app


class CollapseSlashes:
    """ASGI wrapper: `//api/call-upload` (a server URL configured with a trailing slash) is
    served as `/api/call-upload`, not redirected: trunk-recorder's curl does not follow."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "http" and "//" in scope["path"]:
            path = _SLASHES.sub("/", scope["path"])
            scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)
