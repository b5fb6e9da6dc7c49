"""One server per data directory: a second `serve` exits at once and touches nothing."""

from __future__ import annotations

import os
import sys

import pytest
import trio

from tests.conftest import Vault, VaultFactory
from tests.helpers import free_port
from tests.wire import fixture_bytes, rdio_trunk_recorder
from tr_vault.app import serve
from tr_vault.errors import ConfigError

M4A = fixture_bytes("call-9131-1764001234.m4a")


async def test_a_second_server_on_the_same_data_dir_refuses_and_spares_the_first(
    vault: Vault,
) -> None:
    # An upload of the first server is "in flight": its temp file sits in .incoming.
    in_flight = vault.settings.audio_dir / ".incoming" / "0123456789abcdef.part"
    in_flight.write_bytes(b"half an upload")
    with pytest.raises(ConfigError) as err, trio.fail_after(30):
        await serve(vault.settings.model_copy(update={"listen": "127.0.0.1:0"}))
    message = str(err.value)
    assert "tr-vault.lock" in message and f"pid {os.getpid()}" in message
    assert "TR_VAULT_DATA_DIR" in message
    assert in_flight.read_bytes() == b"half an upload"
    # The first one goes on as if nothing happened.
    response = await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))
    assert response.status_code == 200


async def test_the_command_names_the_lock_and_read_only_commands_still_work(
    make_vault: VaultFactory,
) -> None:
    vault = await make_vault()
    assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
    env = {
        "PATH": "/usr/bin:/bin",
        "TR_VAULT_DATA_DIR": str(vault.settings.data_dir),
        "TR_VAULT_LISTEN": f"127.0.0.1:{free_port()}",
    }
    with trio.fail_after(60):
        second = await trio.run_process(
            [sys.executable, "-m", "tr_vault", "serve"],
            env=env,
            capture_stderr=True,
            check=False,
        )
    assert second.returncode == 1
    stderr = second.stderr.decode()
    assert "is locked by another tr-vault serve" in stderr
    assert str(vault.settings.data_dir / "tr-vault.lock") in stderr
    with trio.fail_after(60):
        status = await trio.run_process(
            [sys.executable, "-m", "tr_vault", "status"], env=env, capture_stdout=True
        )
    assert "done: 1 calls" in status.stdout.decode()
    # Once the first server stops, the directory is free again (the kernel drops the lock).
    await vault.restart()
    assert (await vault.client.get(vault.url + "/healthz")).status_code == 200
