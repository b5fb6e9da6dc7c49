"""Helpers for tests that run `tr-vault serve` as a child process and look at what it left.

The journal is read through read-only connections: a test that inspects a dead server's
journal must not recover or checkpoint it, or it would hide what the next start has to do.
"""

from __future__ import annotations

import hashlib
import socket
import sqlite3
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
