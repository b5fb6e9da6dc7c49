"""deploy/compose.yaml's topology, without containers: its own commands, run on this machine.

The SeaweedFS service's command line runs the dev dependency's `weed` (the compose file pins
the same version), with only its data directory, address and ports overridden (Go flags: the
last one given wins). tr_vault gets the compose service's environment on top of the image's,
with only its data directory, listen address and S3 endpoint host changed. It starts while the
bucket does not exist yet, as it may under compose (create-bucket runs beside it): calls are
acknowledged and wait, the store is `down` with `NoSuchBucket`. Then the create-bucket
service's script runs as written (its master address is an environment variable) and every
call reaches `done`, in the bucket. The script run a second time (a second `docker compose
up`) succeeds too.

The same sequence against moto, through a fault proxy and with the exact requests checked, is
tests/integration/test_s3_faults.py::test_bucket_created_after_start_then_calls_drain; this
test adds what compose brings: SeaweedFS started the way compose starts it, its admin key
taken from the environment, the bucket made by `weed shell`, and the compose settings.

Not tested here: images, container networking and name resolution, volumes, `depends_on`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from tests import deploy_files as df
from tests.conftest import Vault, wait_until
from tests.helpers import SUCCESS
from tests.s3_fixtures import _free_port_pairs, _log_tail, boto3_client, weed_binary
from tests.wire import fixture_bytes, rdio_trunk_recorder
from tr_vault.config import load_settings
from tr_vault.services.store_health import PROBE_KEY

ENV = {"TR_VAULT_API_KEYS": "compose-key"}
M4A = fixture_bytes("call-9131-1764001234.m4a")
CALLS = 3
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Seaweed:
    master: int
    s3: int
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.s3}"


@pytest.fixture
def compose_seaweedfs(tmp_path: Path) -> Iterator[Seaweed]:
    """The compose file's `seaweedfs` service, as a local process."""
    service = df.compose()["services"]["seaweedfs"]
    assert service["entrypoint"] == ["/usr/bin/weed"]
    master, volume, filer, s3 = _free_port_pairs(4)
    data = tmp_path / "seaweedfs"
    data.mkdir()
    argv = [
        str(weed_binary()),
        *df.command(service, ENV),
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-s3.port={s3}",
    ]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    env |= df.service_env(service, ENV)
    log = tmp_path / "weed.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, cwd=data, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        # `condition: service_healthy`: what the compose healthcheck asks, on our port.
        [url] = [p for p in service["healthcheck"]["test"] if p.startswith("http")]
        health = url.replace("127.0.0.1:8333", f"127.0.0.1:{s3}")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"weed exited with {process.returncode}:\n{_log_tail(log)}")
            try:
                if httpx.get(health, timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"SeaweedFS not healthy in {START_TIMEOUT:g} s:\n{_log_tail(log)}")
            time.sleep(0.2)
        yield Seaweed(master, s3, df.service_env(service, ENV))
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        for port in (master, volume, filer, s3):  # unix sockets named after the ports
            for name in (f"seaweedfs-*-{port}.sock", f"seaweedfs-*-{port + 10000}.sock"):
                for stale in Path("/tmp").glob(name):
                    stale.unlink(missing_ok=True)


async def create_bucket(seaweed: Seaweed) -> str:
    """The compose file's `create-bucket` service: its script, its environment."""
    service = df.compose()["services"]["create-bucket"]
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    [script] = df.command(service, ENV)
    env = df.service_env(service, ENV) | {
        "WEED_MASTER": f"127.0.0.1:{seaweed.master}",
        "PATH": f"{weed_binary().parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", "/tmp"),
    }
    with trio.fail_after(90):
        done = await trio.run_process(
            ["/bin/sh", "-c", script], env=env, capture_stdout=True, capture_stderr=True
        )
    return done.stdout.decode() + done.stderr.decode()


def compose_settings(tmp_path: Path, seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment the tr-vault container gets: the image's ENV, then the service's."""
    _, run = df.containerfile()
    env: dict[str, str] = {}
    for args in run.all("ENV"):
        env.update(df.env_instruction(args))
    env |= df.service_env(df.compose()["services"]["tr-vault"], ENV)
    endpoint = urlsplit(env["S3_ENDPOINT"])
    assert (endpoint.hostname, endpoint.port) == ("seaweedfs", 8333)
    env |= {
        "TR_VAULT_DATA_DIR": str(tmp_path / "data"),
        "TR_VAULT_LISTEN": "127.0.0.1:0",
        "S3_ENDPOINT": seaweed.url,
        "TR_VAULT_STORE_PROBE_MAX": "0.5",  # the default 1 min, shortened for the test
        "TR_VAULT_SHUTDOWN_GRACE": "2",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)


async def test_compose_topology_calls_wait_for_the_bucket_then_upload(
    tmp_path: Path,
    compose_seaweedfs: Seaweed,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tr_vault")
    monkeypatch.chdir(tmp_path)  # no .env of the developer's is read
    compose_settings(tmp_path, compose_seaweedfs, monkeypatch)
    settings = load_settings()
    bucket = settings.s3_bucket
    vault = Vault(settings, nursery)
    await vault.start()
    try:
        with trio.fail_after(60):
            summary = (await vault.client.get(vault.url + "/api/journal/summary")).json()
            assert summary["store"]["state"] == "down", summary
            assert summary["store"]["code"] == "NoSuchBucket", summary
            for i in range(CALLS):
                parts = rdio_trunk_recorder(
                    M4A + f"\n#compose call {i}\n".encode(),
                    key="compose-key",
                    talkgroup=str(9131 + i),
                    date_time=str(1764001234 + 60 * i),
                )
                response = await vault.post("/api/call-upload", parts)
                assert (response.status_code, response.text) == (200, SUCCESS)
            calls = vault.calls()
            assert [(c["state"], c["attempts"]) for c in calls] == [("pending", 0)] * CALLS

            output = await create_bucket(compose_seaweedfs)
            assert f"created bucket {bucket}" in output, output
            await wait_until(lambda: [c["state"] for c in vault.calls()] == ["done"] * CALLS)
            assert [c["attempts"] for c in vault.calls()] == [1] * CALLS
            again = await create_bucket(compose_seaweedfs)  # the next `docker compose up`
            assert f"bucket {bucket} exists" in again, again
            summary = (await vault.client.get(vault.url + "/api/journal/summary")).json()
            assert summary["store"]["state"] == "up", summary
    finally:
        await vault.stop()

    # The outage is told once, as the store's state, with what to do; not once per call.
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in warnings] == ["tr_vault.services.store_health"] * 2, warnings
    assert "NoSuchBucket" in warnings[0].getMessage()
    assert "create the bucket" in warnings[0].getMessage()
    assert "is back" in warnings[1].getMessage()
    received = [r for r in caplog.records if r.getMessage().startswith("call received")]
    assert len(received) == CALLS

    client = boto3_client(
        compose_seaweedfs.url,
        settings.s3_region,
        compose_seaweedfs.env["AWS_ACCESS_KEY_ID"],
        compose_seaweedfs.env["AWS_SECRET_ACCESS_KEY"],
    )
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    keys = sorted(o["Key"] for o in listed if not o["Key"].endswith(PROBE_KEY))
    assert keys == sorted(f"audio/{c['key']}" for c in calls)
