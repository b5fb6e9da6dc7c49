"""The web page: `/`, its script and its style, served from the package's data (`static/`).

No build step and nothing from a CDN: three files, read once at start-up, served with an ETag.
The page talks to the read API only (README "Web page"). Its document gets a Content-Security-
Policy of its own (`page_headers`): scripts and styles from this origin only, no inline code,
Trusted Types with no policy (so no string ever becomes HTML), fetches to this origin only, and
media from this origin and from the origin of the presigned S3 URLs that playback redirects to.
Every other answer keeps the API's `default-src 'none'; sandbox` (`tr_vault.web.app`).
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from urllib.parse import urlsplit

from quart import Blueprint, Response, request

from tr_vault.config import Settings, StorageMode

PAGE_ENDPOINT = "page.index"
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")


def _static(name: str) -> bytes:
    return (resources.files("tr_vault.web") / "static" / name).read_bytes()


def _origin(url: str) -> str | None:
    """`scheme://host[:port]` of an http(s) URL, or None when it cannot be a CSP source (an
    IPv6 literal, odd characters): a source list must never take text it cannot parse."""
    parts = urlsplit(url)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or host is None or not _HOST.fullmatch(host):
        return None
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def playback_origins(settings: Settings) -> list[str]:
    """Where a `307` from `/api/calls/{id}/audio` may send the player: the origin of
    `S3_PRESIGN_ENDPOINT`, else of `S3_ENDPOINT`, else AWS's URL for the bucket (virtual-hosted;
    path-style for a dotted name), as `S3Store.presign_get` builds them."""
    if settings.storage_mode is StorageMode.LOCAL:
        return []
    endpoint = settings.s3_presign_endpoint or settings.s3_endpoint
    bucket, region = settings.s3_bucket, settings.s3_region or "us-east-1"
    if endpoint:
        url = endpoint
    elif "." in bucket:
        url = f"https://s3.{region}.amazonaws.com/"
    else:
        url = f"https://{bucket}.s3.{region}.amazonaws.com/"
    origin = _origin(url)
    return [origin] if origin else []


def page_csp(settings: Settings) -> str:
    """The page's Content-Security-Policy (README "Web page")."""
    media = " ".join(["'self'", *playback_origins(settings)])
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            f"media-src {media}",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "require-trusted-types-for 'script'",
            "trusted-types 'none'",
        ]
    )


def page_headers(settings: Settings) -> dict[str, str]:
    """What the page's document carries instead of the API's headers (its 304s too: a browser
    updates the stored page with a 304's headers)."""
    return {
        "Content-Security-Policy": page_csp(settings),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
    }


def page_blueprint() -> Blueprint:
    bp = Blueprint("page", __name__)
    files = {"index.html": "text/html; charset=utf-8", **ASSETS}
    bodies = {name: _static(name) for name in files}
    etags = {name: hashlib.sha256(body).hexdigest()[:32] for name, body in bodies.items()}

    async def serve(name: str) -> Response:
        response = Response(bodies[name], content_type=files[name])
        response.set_etag(etags[name])
        response.headers["Cache-Control"] = "no-cache"  # revalidate: a new version shows at once
        await response.make_conditional(request)
        return response

    @bp.get("/")
    async def index() -> Response:
        return await serve("index.html")

    @bp.get("/static/<name>")
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            return Response("no such file\n", status=404, content_type="text/plain")
        return await serve(name)

    return bp
