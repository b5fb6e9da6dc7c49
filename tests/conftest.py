"""Fixtures: a real tr_vault server in the test's nursery, on a free 127.0.0.1 port."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.wire import Part, multipart
from tr_vault.app import serve
from tr_vault.config import Settings

# S3 test servers (moto, SeaweedFS) live in their own plugin module.
pytest_plugins = ["tests.s3_fixtures"]

API_KEYS = "tr-key,omhz-key:metro|11,other-key:99"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No TR_VAULT_* / S3_* / AWS_* variable of the machine leaks into a test."""
    for name in list(os.environ):
        if name.startswith(("TR_VAULT_", "S3_", "AWS_")):
            monkeypatch.delenv(name)
    yield


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "listen": "127.0.0.1:0",
        "api_keys": API_KEYS,
        "shutdown_grace": 5.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class Vault:
    """A running tr_vault and an HTTP client for it."""

    def __init__(self, settings: Settings, nursery: trio.Nursery) -> None:
        self.settings = settings
        self._nursery = nursery
        self.url = ""
        self._shutdown = trio.Event()
        self._stopped = trio.Event()
        self.client = httpx.AsyncClient(timeout=30)

    async def start(self) -> None:
        self._shutdown = trio.Event()
        self._stopped = trio.Event()
        stopped = self._stopped

        async def run(*, task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await serve(self.settings, shutdown=self._shutdown, task_status=task_status)
            finally:
                stopped.set()

        binds = await self._nursery.start(run)
        self.url = binds[0]

    async def stop(self) -> None:
        # hypercorn keeps an idle keep-alive connection until its keep-alive timeout even
        # when shutting down; a recorder does not reuse connections, so drop ours first.
        await self.client.aclose()
        self.client = httpx.AsyncClient(timeout=30)
        self._shutdown.set()
        with trio.fail_after(30):
            await self._stopped.wait()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def post(self, path: str, parts: list[Part], **headers: str) -> httpx.Response:
        body, content_type = multipart(parts)
        with trio.fail_after(30):
            return await self.client.post(
                self.url + path, content=body, headers={"Content-Type": content_type, **headers}
            )

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.settings.db_path)
        conn.row_factory = sqlite3.Row
        return conn

    def rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        conn = self.db()
        try:
            return [dict(r) for r in conn.execute(sql, params)]
        finally:
            conn.close()

    def calls(self) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM calls ORDER BY id")

    def events(self, call_id: int) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM events WHERE call_id = ? ORDER BY id", call_id)

    def audio_path(self, key: str) -> Path:
        return self.settings.audio_dir / key

    def incoming(self) -> list[Path]:
        return sorted((self.settings.audio_dir / ".incoming").iterdir())


VaultFactory = Callable[..., Awaitable[Vault]]


@pytest.fixture
async def make_vault(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[VaultFactory]:
    started: list[Vault] = []

    async def factory(**overrides: Any) -> Vault:
        vault = Vault(make_settings(tmp_path, **overrides), nursery)
        await vault.start()
        started.append(vault)
        return vault

    yield factory
    for vault in started:
        await vault.client.aclose()
        if not vault._stopped.is_set():
            await vault.stop()


@pytest.fixture
async def vault(make_vault: VaultFactory) -> Vault:
    return await make_vault()


async def wait_until(predicate: Callable[[], bool], *, within: float = 30) -> None:
    """Poll `predicate` until true; fail after `within` seconds (a bound, not a hope)."""
    with trio.fail_after(within):
        while not predicate():
            await trio.sleep(0.05)


def s3_settings(bucket: Any, *, endpoint: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Settings that point tr_vault at a test bucket (optionally through a proxy)."""
    values: dict[str, Any] = {
        "s3_bucket": bucket.bucket,
        "s3_endpoint": endpoint or bucket.url,
        "s3_region": bucket.region,
        "s3_access_key": bucket.access_key,
        "s3_secret_key": bucket.secret_key,
        # moto and SeaweedFS 4.48 both answer 412 to If-None-Match: * on an existing key
        # (`auto` would HEAD before each PUT on a 127.0.0.1 endpoint).
        "s3_conditional_put": "true",
        "upload_backoff_base": 0.05,
        "upload_backoff_max": 0.2,
        "upload_timeout": 10.0,
        "reconcile_interval": 3600.0,
        "store_probe_max": 0.5,
        "prune_interval": 3600.0,
        "shutdown_grace": 2.0,
    }
    values.update(overrides)
    return values
