"""The journal replicated into the bucket by Litestream, and `tr-vault restore --from-replica`.

Against SeaweedFS (a strict S3). The server runs as `tr-vault serve` in a child process, as in
production; what the replica holds is read back with `litestream restore` into a scratch file,
polled with a deadline.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import certifi
import httpx
import pytest
import trio

from tests.conftest import make_settings, s3_settings, wait_until
from tests.helpers import SUCCESS, free_port, log_tail, post_call, query, sha, wait_healthy
from tests.memstore import MemoryStore
from tests.s3_fixtures import S3Bucket
from tests.wire import fixture_bytes, rdio_trunk_recorder
from tr_vault.app import serve
from tr_vault.errors import StorageUnavailable

AUDIO = [fixture_bytes("call-9131-1764001234.m4a"), fixture_bytes("call-2201-1764001301.m4a")]
CALLS = 4
STOP_TIMEOUT = 20.0  # SIGTERM to exit: the grace period, then Litestream's final sync
LITESTREAM = Path(sys.executable).parent / "litestream"


def call_parts(index: int) -> list[Any]:
    """Distinct calls (talkgroup and start differ), alternating between two recordings."""
    return rdio_trunk_recorder(
        AUDIO[index % 2],
        talkgroup=str(9100 + index),
        date_time=str(1764001234 + 60 * index),
        audio_name=f"{9100 + index}-{1764001234 + 60 * index}_851012500.0-call_{index}.m4a",
    )


class ServeProcess:
    """`tr-vault serve` as a child process with the replica on, over a SeaweedFS bucket."""

    def __init__(self, tmp_path: Path, bucket: S3Bucket, site: str, **extra: str) -> None:
        self.tmp_path = tmp_path
        self.bucket = bucket
        self.data_dir = tmp_path / "data"
        self.db = self.data_dir / "vault.db"
        self.site = site
        self.extra = extra
        self.process: trio.Process | None = None
        self.url = ""
        self.starts = 0
        self.log = tmp_path / "serve.log"

    def env(self, port: int | None = None) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TR_VAULT_DATA_DIR": str(self.data_dir),
            "TR_VAULT_LISTEN": f"127.0.0.1:{port or free_port()}",
            "TR_VAULT_SITE": self.site,
            "TR_VAULT_JOURNAL_REPLICA": "true",
            "TR_VAULT_REPLICA_SYNC_INTERVAL": "100ms",
            "TR_VAULT_SHUTDOWN_GRACE": "2s",
            "TR_VAULT_UPLOAD_BACKOFF_BASE": "0.05",
            "TR_VAULT_UPLOAD_BACKOFF_MAX": "0.2",
            "S3_BUCKET": self.bucket.bucket,
            "S3_ENDPOINT": self.bucket.url,
            "S3_REGION": self.bucket.region,
            "S3_ACCESS_KEY": self.bucket.access_key,
            "S3_SECRET_KEY": self.bucket.secret_key,
            "S3_PREFIX": "vault",
            "S3_CONDITIONAL_PUT": "true",
            # As on these machines: with it, Litestream's S3 client cannot start. The server
            # must keep it from the child (it has no use for a plain-HTTP endpoint).
            "AWS_CA_BUNDLE": certifi.where(),
        }
        env.update(self.extra)
        return env

    async def start(self) -> None:
        assert self.process is None
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = self.tmp_path / f"serve-{self.starts}.log"
        self.starts += 1
        with open(self.log, "wb") as log_file:
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "tr_vault", "serve"],
                env=self.env(port),
                cwd=self.tmp_path,  # no .env of the developer's is read
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        await wait_healthy(self.url, self.process, self.log)

    async def stop(self) -> int:
        """SIGTERM, as systemd stops it; returns the exit status."""
        process, self.process = self.process, None
        assert process is not None
        process.terminate()
        with trio.fail_after(STOP_TIMEOUT):
            return await process.wait()

    async def aclose(self) -> None:
        """On the way out of a failed test: no child outlives it."""
        process, self.process = self.process, None
        if process is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT):
                if process.returncode is None:
                    process.terminate()
                await process.wait()

    async def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Another `tr-vault` command on the same settings."""
        with trio.fail_after(60):
            done = await trio.run_process(
                [sys.executable, "-m", "tr_vault", *args],
                env=self.env(),
                cwd=self.tmp_path,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        if check:
            assert done.returncode == 0, (
                f"tr-vault {' '.join(args)}: exit {done.returncode}\n"
                f"{done.stdout.decode()}\n{done.stderr.decode()}"
            )
        return done

    async def replica(self, client: httpx.AsyncClient) -> dict[str, Any]:
        """The replica's live health, as /readyz reports it."""
        answer = await client.get(self.url + "/readyz")
        assert answer.status_code == 200, answer.text
        replica: dict[str, Any] = answer.json()["replica"]
        return replica


def replica_rows(server: ServeProcess, scratch: Path, sql: str) -> list[dict[str, Any]]:
    """What the replica in the bucket holds right now: `litestream restore` of it into a
    scratch file (with the configuration the server wrote), queried. Empty when nothing
    can be restored yet."""
    scratch.unlink(missing_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LITESTREAM_ACCESS_KEY_ID": server.bucket.access_key,
        "LITESTREAM_SECRET_ACCESS_KEY": server.bucket.secret_key,
    }
    done = subprocess.run(
        [
            str(LITESTREAM),
            "restore",
            "-no-expand-env",
            "-config",
            str(server.data_dir / "litestream.yml"),
            "-o",
            str(scratch),
            str(server.db),
        ],
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0 or not scratch.exists():
        return []
    return query(scratch, sql)


async def wait_for_replica(server: ServeProcess, scratch: Path, sql: str, expected: Any) -> None:
    """Poll the replica until `sql` gives `expected` (a bound, not a hope)."""
    last: Any = None
    with trio.move_on_after(30) as scope:
        while True:
            last = await trio.to_thread.run_sync(replica_rows, server, scratch, sql)
            if last == expected:
                return
            await trio.sleep(0.2)
    if scope.cancelled_caught:
        pytest.fail(f"the replica never held {expected!r}; last {last!r}\n{log_tail(server.log)}")


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def objects_under(bucket: S3Bucket, prefix: str) -> list[str]:
    return [key for key in bucket.all_keys() if key.startswith(prefix)]


async def test_lost_disk_restore_from_replica_then_every_call_plays_from_s3(
    tmp_path: Path, seaweed_s3: S3Bucket
) -> None:
    site = f"site-{uuid.uuid4().hex[:6]}"
    server = ServeProcess(tmp_path, seaweed_s3, site)
    scratch = tmp_path / "replica-probe.db"
    try:
        await server.start()
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            for i in range(CALLS):
                answer = await post_call(client, server.url, call_parts(i))
                assert (answer.status_code, answer.text) == (200, SUCCESS)
            await wait_until(
                lambda: (
                    query(server.db, "SELECT count(*) AS n FROM calls WHERE state = 'done'")
                    == [{"n": CALLS}]
                )
            )
            before = query(
                server.db,
                "SELECT id, talkgroup, start_time, audio_name, sha256, object_key FROM calls"
                " ORDER BY id",
            )
            await wait_for_replica(
                server,
                scratch,
                "SELECT count(*) AS n FROM calls WHERE state = 'done' AND object_key IS NOT NULL",
                [{"n": CALLS}],
            )
            replica = await server.replica(client)
            assert replica["running"] and replica["state"] in ("up", "unknown"), replica
            assert replica["url"] == f"s3://{seaweed_s3.bucket}/vault/journal/{site}/"
            child = replica["pid"]
        # Its objects are under {prefix}/journal/{site}/, beside (not among) the audio.
        assert objects_under(seaweed_s3, f"vault/journal/{site}/")
        assert await server.stop() == 0
        assert not alive(child), "litestream outlived the server"
        # The disk is lost: journal, cache, everything.
        shutil.rmtree(server.data_dir)

        restored = await server.cli("restore", "--from-replica")
        text = restored.stdout.decode()
        assert f"restored the journal of site {site!r}" in text, text
        assert f"done: {CALLS} calls" in text, text
        assert f"uncached: {CALLS} calls" in text, text
        rows = query(server.db, "SELECT id, state, cached FROM calls ORDER BY id")
        assert rows == [{"id": r["id"], "state": "done", "cached": 0} for r in before]
        kinds = query(server.db, "SELECT call_id, kind FROM events WHERE kind = 'uncached'")
        assert sorted(k["call_id"] for k in kinds) == [r["id"] for r in before]

        await server.start()
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            listed = (await client.get(server.url + "/api/calls?limit=100")).json()["calls"]
            assert sorted(c["id"] for c in listed) == [r["id"] for r in before]
            for row in before:
                call = (await client.get(f"{server.url}/api/calls/{row['id']}")).json()["call"]
                assert call["talkgroup"] == row["talkgroup"]
                assert call["audio_name"] == row["audio_name"]
                assert call["state"] == "done"
                audio = await client.get(f"{server.url}/api/calls/{row['id']}/audio")
                assert audio.status_code == 307, audio.text
                played = await client.get(audio.headers["Location"])
                assert played.status_code == 200
                assert sha(played.content) == row["sha256"]
                assert played.content == AUDIO[(row["talkgroup"] - 9100) % 2]
            # The restored journal replicates again, and the pruner and uploader see nothing
            # to do: every row is done and uncached.
            summary = (await client.get(server.url + "/api/journal/summary")).json()
            assert summary["states"]["done"]["calls"] == CALLS
            assert summary["cached"] == {"calls": 0, "bytes": 0}
            assert summary["replica"]["running"]
        assert await server.stop() == 0
    finally:
        await server.aclose()


async def test_a_dead_litestream_is_restarted_and_stopped_with_the_server(
    tmp_path: Path, seaweed_s3: S3Bucket
) -> None:
    server = ServeProcess(tmp_path, seaweed_s3, f"site-{uuid.uuid4().hex[:6]}")
    try:
        await server.start()
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            first = await server.replica(client)
            assert first["running"] and first["restarts"] == 0, first
            assert (server.data_dir / "litestream.pid").read_text().strip() == str(first["pid"])
            os.kill(first["pid"], signal.SIGKILL)

            with trio.fail_after(30):
                while True:
                    now = await server.replica(client)
                    if now["running"] and now["restarts"] == 1:
                        break
                    await trio.sleep(0.05)
            assert now["pid"] != first["pid"]
            assert now["last_exit"] == -signal.SIGKILL
            assert now["state"] == "down"  # held down for a while after a death
            assert "killed by SIGKILL" in now["last_error"]
            metrics = (await client.get(server.url + "/metrics")).text
            assert "tr_vault_replica_restarts_total 1.0" in metrics
            assert "tr_vault_replica_up 0.0" in metrics
        # The journal keeps the change of state for `tr-vault status`.
        status = (await server.cli("status")).stdout.decode()
        assert "replica: litestream DOWN" in status and "killed by SIGKILL" in status, status
        assert await server.stop() == 0
        assert not alive(now["pid"]), "litestream outlived the server"
        assert not (server.data_dir / "litestream.pid").exists()
    finally:
        await server.aclose()


async def test_a_litestream_left_by_a_killed_server_is_stopped_at_the_next_start(
    tmp_path: Path, seaweed_s3: S3Bucket
) -> None:
    server = ServeProcess(tmp_path, seaweed_s3, f"site-{uuid.uuid4().hex[:6]}")
    try:
        await server.start()
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            orphan = (await server.replica(client))["pid"]
        process, server.process = server.process, None
        assert process is not None
        process.kill()  # SIGKILL: no shutdown, the child is left running on its own
        with trio.fail_after(10):
            await process.wait()
        assert alive(orphan)
        await server.start()
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            replica = await server.replica(client)
        assert replica["running"] and replica["pid"] != orphan
        # Gone: it dies of SIGPIPE at its next log line (its reader was the killed server), and
        # the next start stops one that is still there (tests/unit/test_replica.py).
        with trio.fail_after(10):
            while alive(orphan):
                await trio.sleep(0.05)
        assert await server.stop() == 0
        assert not alive(replica["pid"])
    finally:
        await server.aclose()


async def test_calls_never_uploaded_come_back_lost(
    tmp_path: Path, seaweed_s3: S3Bucket, nursery: trio.Nursery
) -> None:
    """The audio store is down (calls stay pending) while the journal replica works; after a
    lost disk, those calls cannot be uploaded any more: `lost`, with an event saying why."""
    site = f"site-{uuid.uuid4().hex[:6]}"
    settings = make_settings(
        tmp_path,
        **s3_settings(seaweed_s3),
        site=site,
        journal_replica=True,
        replica_sync_interval=0.1,
    )
    store = MemoryStore()
    store.outage(StorageUnavailable("the audio store is down for this test"))
    shutdown, stopped = trio.Event(), trio.Event()

    async def run(*, task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await serve(settings, shutdown=shutdown, store=store, task_status=task_status)
        finally:
            stopped.set()

    url = (await nursery.start(run))[0]
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        for i in range(2):
            answer = await post_call(client, url, call_parts(i))
            assert (answer.status_code, answer.text) == (200, SUCCESS)
    server = ServeProcess(tmp_path, seaweed_s3, site, S3_PREFIX="")  # as `settings` have it
    assert (server.data_dir, server.db) == (settings.data_dir, settings.db_path)
    await wait_for_replica(
        server,
        tmp_path / "probe.db",
        "SELECT state, count(*) AS n FROM calls GROUP BY state",
        [{"state": "pending", "n": 2}],
    )
    shutdown.set()
    with trio.fail_after(STOP_TIMEOUT):
        await stopped.wait()
    shutil.rmtree(settings.data_dir)

    restored = await server.cli("restore", "--from-replica")
    text = restored.stdout.decode()
    assert "lost: 2 calls" in text and "lost: 2 pending or failed calls" in text, text
    rows = query(settings.db_path, "SELECT state, cached, last_error FROM calls ORDER BY id")
    assert [(r["state"], r["cached"]) for r in rows] == [("lost", 0), ("lost", 0)]
    assert all("never uploaded" in r["last_error"] for r in rows)
    events = query(settings.db_path, "SELECT kind, detail FROM events WHERE kind = 'lost'")
    assert len(events) == 2 and "cannot be uploaded" in events[0]["detail"]


async def test_restore_refuses_an_existing_journal_and_says_when_there_is_no_replica(
    tmp_path: Path, seaweed_s3: S3Bucket
) -> None:
    server = ServeProcess(tmp_path, seaweed_s3, f"site-{uuid.uuid4().hex[:6]}")
    # No replica was ever written for this site.
    missing = await server.cli("restore", "--from-replica", check=False)
    assert missing.returncode == 1
    err = missing.stderr.decode()
    assert "no journal replica of site" in err and f"/vault/journal/{server.site}/" in err, err
    assert not server.db.exists()
    assert not [p.name for p in server.data_dir.iterdir() if p.name.startswith("vault.db")]
    # Another site's journal, by name: the same answer for that site.
    other = await server.cli("restore", "--from-replica", "--site", "elsewhere", check=False)
    assert other.returncode == 1 and "'elsewhere'" in other.stderr.decode()
    # A journal is there: never overwritten.
    conn = sqlite3.connect(server.db)
    conn.execute("CREATE TABLE keep (x)")
    conn.commit()
    conn.close()
    before = server.db.read_bytes()
    refused = await server.cli("restore", "--from-replica", check=False)
    assert refused.returncode == 1
    assert "a journal already exists" in refused.stderr.decode()
    assert "Move it away" in refused.stderr.decode()
    assert server.db.read_bytes() == before


async def test_the_replica_without_s3_is_a_config_error(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TR_VAULT_DATA_DIR": str(tmp_path / "data"),
        "TR_VAULT_LISTEN": f"127.0.0.1:{free_port()}",
        "TR_VAULT_JOURNAL_REPLICA": "true",
    }
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "tr_vault", "serve"],
            env=env,
            cwd=tmp_path,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 2
    stderr = done.stderr.decode()
    assert "TR_VAULT_JOURNAL_REPLICA=true needs S3" in stderr and "S3_BUCKET" in stderr, stderr
    assert not (tmp_path / "data").exists()  # refused before touching anything
