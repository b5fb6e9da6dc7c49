"""Helpers for tests that run `tr-vault serve` as a child process and look at what it left.

The journal is read through read-only connections: a test that inspects a dead server's
journal must not recover or checkpoint it, or it would hide what the next start has to do.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.wire import Part, multipart

SUCCESS = "Call imported successfully.\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def query(db: Path, sql: str, *params: Any) -> list[dict[str, Any]]:
    conn = _read_only(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def scalar(db: Path, sql: str, *params: Any) -> Any:
    conn = _read_only(db)
    try:
        return conn.execute(sql, params).fetchone()[0]
    finally:
        conn.close()


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def post_call(client: httpx.AsyncClient, url: str, parts: list[Part]) -> httpx.Response:
    body, content_type = multipart(parts)
    with trio.fail_after(30):
        return await client.post(
            url + "/api/call-upload", content=body, headers={"Content-Type": content_type}
        )


async def wait_healthy(url: str, process: trio.Process, log: Path) -> None:
    async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
        with trio.fail_after(30):
            while True:
                if process.returncode is not None:
                    pytest.fail(f"tr_vault exited with {process.returncode}:\n{log_tail(log)}")
                try:
                    if (await client.get(url + "/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)


@asynccontextmanager
async def serve_process(
    env: Mapping[str, str],
    *,
    cwd: Path,
    stderr: Path,
    stdout: Path | None = None,
    argv: Sequence[str] = (sys.executable, "-m", "tr_vault", "serve"),
) -> AsyncIterator[trio.Process]:
    """`tr-vault serve` as a child with exactly `env` (plus PATH), its stderr in `stderr` and
    stdout in `stdout` (default: with stderr), healthy once entered. On the way out: SIGTERM,
    and SIGKILL if it has not exited 15 s later; the caller checks `returncode`."""
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    host, _, port = full_env["TR_VAULT_LISTEN"].rpartition(":")
    with open(stderr, "wb") as err, open(stdout or os.devnull, "wb") as out:
        process = await trio.lowlevel.open_process(
            list(argv),
            env=full_env,
            cwd=cwd,  # no .env of the developer's is read
            stdin=subprocess.DEVNULL,
            stdout=out if stdout is not None else err,
            stderr=err,
        )
    try:
        await wait_healthy(f"http://{host}:{port}", process, stderr)
        yield process
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(15):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
