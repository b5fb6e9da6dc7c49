"""The quart-trio application: routes wired to their dependencies, errors turned into answers."""

from __future__ import annotations

import re
from typing import Any

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from quart import Response
from quart_trio import QuartTrio

from tr_vault.errors import IntakeError
from tr_vault.web.calls import calls_blueprint
from tr_vault.web.context import WebContext
from tr_vault.web.health import health_blueprint
from tr_vault.web.uploads import upload_blueprint

_SLASHES = re.compile(r"/{2,}")


def create_app(ctx: WebContext) -> QuartTrio:
    app = QuartTrio("tr_vault")
    # Uploads stream their body themselves and count its size; quart's own buffer cap
    # would cut a fast client whose chunks pile up while the handler writes.
    app.config["MAX_CONTENT_LENGTH"] = None
    app.register_blueprint(upload_blueprint(ctx))
    app.register_blueprint(health_blueprint(ctx))
    app.register_blueprint(calls_blueprint(ctx))

    @app.errorhandler(IntakeError)
    async def intake_error(exc: IntakeError) -> Response:
        response = Response(exc.body, status=exc.status, content_type="text/plain; charset=utf-8")
        if exc.status == 503:
            response.headers["Retry-After"] = "30"
        if exc.close:
            response.headers["Connection"] = "close"
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
