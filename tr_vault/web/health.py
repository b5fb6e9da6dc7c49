"""Liveness and readiness probes."""

from __future__ import annotations

import os
from pathlib import Path

import trio
from quart import Blueprint, Response, jsonify

from tr_vault.web.context import WebContext


def health_blueprint(ctx: WebContext) -> Blueprint:
    bp = Blueprint("health", __name__)

    @bp.get("/healthz")
    async def healthz() -> Response:
        return Response("ok\n", content_type="text/plain; charset=utf-8")

    @bp.get("/readyz")
    async def readyz() -> tuple[Response, int]:
        checks: dict[str, str] = {}
        try:
            await ctx.journal.check_writable()
            checks["journal"] = "ok"
        except Exception as exc:
            checks["journal"] = f"error: {exc}"
        try:
            await trio.to_thread.run_sync(_probe_dir, ctx.cache.incoming)
            checks["audio_dir"] = "ok"
        except OSError as exc:
            checks["audio_dir"] = f"error: {exc.strerror or exc}"
        ready = all(v == "ok" for v in checks.values())
        if ctx.replica is None:
            return jsonify(ready=ready, checks=checks), 200 if ready else 503
        # Reported, never a reason to refuse traffic: calls are journaled either way, and the
        # replica catches up once it works again.
        replica = ctx.replica.status.as_dict()
        return jsonify(ready=ready, checks=checks, replica=replica), 200 if ready else 503

    return bp


def _probe_dir(directory: Path) -> None:
    path = directory / ".ready-probe"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"ok")
    finally:
        os.close(fd)
        path.unlink()
