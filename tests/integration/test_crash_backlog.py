"""A SIGKILL mid-upload loses nothing and leaves each call in the bucket exactly once; a big
backlog drains from the journal alone.

1. The server runs as its own process (`python -m tr_vault serve`), uploading to moto through
   our fault proxy, which holds the PUT responses so uploads are in flight when the process is
   killed with SIGKILL. A restarted server (same data dir) finds the rows the dead run had
   claimed, re-queues them (`requeued` event) and uploads every call, verified; calls done
   before the kill are not touched again.
2. With S3 down, 2,000 calls are acknowledged and stay `pending`; when S3 comes back they all
   drain to `done` without a restart, and the journal never shows more claimed rows than there
   are upload workers (the journal is the queue: no rows are held in memory).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import h11
import httpx
import pytest
import trio

from tests.conftest import VaultFactory, s3_settings, wait_until
from tests.faultproxy import open_fault_proxy
from tests.helpers import SUCCESS, free_port, post_call, query, scalar, sha, wait_healthy
from tests.s3_fixtures import MotoS3
from tests.wire import Part, fixture_bytes, multipart, rdio_trunk_recorder

M4A = fixture_bytes("call-9131-1764001234.m4a")
WORKERS = 4


def event_kinds(db: Path) -> dict[int, list[str]]:
    kinds: dict[int, list[str]] = {}
    for event in query(db, "SELECT call_id, kind FROM events ORDER BY id"):
        kinds.setdefault(event["call_id"], []).append(event["kind"])
    return kinds


def call_parts(index: int, audio: bytes) -> list[Part]:
    """A distinct trunk-recorder call: its own audio, audio name and start time."""
    start = 1764001234 + 60 * index
    return rdio_trunk_recorder(
        audio, audio_name=f"9131-{start}_851012500.0-call_{index}.m4a", date_time=str(start)
    )


# -- 1. SIGKILL mid-upload ----------------------------------------------------------------------

CRASH_CALLS = 20
DONE_BEFORE_KILL = 5


async def test_sigkill_mid_upload_then_restart_uploads_every_call_once(
    tmp_path: Path, make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    data_dir = tmp_path / "data"
    db = data_dir / "vault.db"
    audios = {i: M4A + f"\n#call {i}\n".encode() * (i + 1) for i in range(CRASH_CALLS)}
    sent = {sha(audio) for audio in audios.values()}
    assert len(sent) == CRASH_CALLS
    assert moto_s3.server is not None

    async with open_fault_proxy("127.0.0.1", moto_s3.server.port) as proxy:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TR_VAULT_DATA_DIR": str(data_dir),
            "TR_VAULT_LISTEN": f"127.0.0.1:{port}",
            "TR_VAULT_API_KEYS": "tr-key",
            "S3_BUCKET": moto_s3.bucket,
            "S3_ENDPOINT": proxy.url,
            "S3_ACCESS_KEY": moto_s3.access_key,
            "S3_SECRET_KEY": moto_s3.secret_key,
            "S3_REGION": moto_s3.region,
            "TR_VAULT_UPLOAD_BACKOFF_BASE": "0.05",
            "TR_VAULT_UPLOAD_BACKOFF_MAX": "0.2",
            "TR_VAULT_UPLOAD_WORKERS": str(WORKERS),
        }
        log = tmp_path / "serve.log"
        with open(log, "wb") as log_file:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "tr_vault", "serve"],
                env=env,
                cwd=tmp_path,  # no .env of the developer's is read
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            await wait_healthy(url, process, log)
            async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
                # A few calls go all the way through first: the kill must not touch them.
                for i in range(DONE_BEFORE_KILL):
                    response = await post_call(client, url, call_parts(i, audios[i]))
                    assert (response.status_code, response.text) == (200, SUCCESS)
                await wait_until(
                    lambda: (
                        scalar(db, "SELECT count(*) FROM calls WHERE state = 'done'")
                        == DONE_BEFORE_KILL
                    )
                )
                # From now on every PUT reaches moto but its answer is held for an hour.
                proxy.delay_next(CRASH_CALLS, seconds=3600, methods={"PUT"})
                for i in range(DONE_BEFORE_KILL, CRASH_CALLS):
                    response = await post_call(client, url, call_parts(i, audios[i]))
                    assert (response.status_code, response.text) == (200, SUCCESS)
            # Every worker holds a claimed row whose PUT is in flight.
            await wait_until(
                lambda: (
                    scalar(db, "SELECT count(claimed_by) FROM calls WHERE state = 'pending'")
                    == WORKERS
                )
            )
            process.kill()
            with trio.fail_after(10):
                await process.wait()
            assert process.returncode == -9
        finally:
            if process.returncode is None:
                process.kill()
                with trio.move_on_after(10, shield=True):
                    await process.wait()

        before = {c["id"]: c for c in query(db, "SELECT * FROM calls ORDER BY id")}
        assert len(before) == CRASH_CALLS
        interrupted = {i for i, c in before.items() if c["claimed_by"] is not None}
        assert len(interrupted) == WORKERS
        assert all(before[i]["state"] == "pending" for i in interrupted)
        done_before = {i for i, c in before.items() if c["state"] == "done"}
        assert len(done_before) == DONE_BEFORE_KILL
        assert [c["state"] for c in before.values()].count("pending") == (
            CRASH_CALLS - DONE_BEFORE_KILL
        )

        # Restart on the same data dir, S3 healthy again.
        proxy.reset_faults()
        vault = await make_vault(**s3_settings(moto_s3, endpoint=proxy.url, upload_workers=WORKERS))
        assert vault.settings.db_path == db
        await wait_until(lambda: [c["state"] for c in vault.calls()] == ["done"] * CRASH_CALLS)
        after = vault.calls()

    # Every call is in the bucket exactly once, with the bytes the journal vouches for.
    assert moto_s3.keys() == sorted(f"audio/{c['key']}" for c in after)
    for call in after:
        assert sha(moto_s3.read(f"audio/{call['key']}")) == call["sha256"]
        assert call["claimed_by"] is None
    assert {c["sha256"] for c in after} == sent
    kinds = event_kinds(db)
    requeued = {i for i, k in kinds.items() if "requeued" in k}
    assert requeued == interrupted
    for call in after:
        if call["id"] in interrupted:
            assert kinds[call["id"]] == ["received", "requeued", "upload_ok", "verified"]
        else:
            assert kinds[call["id"]] == ["received", "upload_ok", "verified"]
        if call["id"] in done_before:  # not uploaded again
            assert call["uploaded_at"] == before[call["id"]]["uploaded_at"]


# -- 2. a backlog of 2,000 ----------------------------------------------------------------------

BACKLOG = 2000
SENDERS = 8


def tiny_audio(index: int) -> bytes:
    """A small payload of at least 45 bytes (rdio-scanner's floor), unique per index."""
    return f"tr-vault backlog audio #{index:06d} ".encode().ljust(64, b".")


class RecorderConnection:
    """One keep-alive HTTP/1.1 connection that posts prebuilt multipart bodies, as libcurl does.

    Lighter than httpx: the test shares its event loop (and the GIL) with the server and moto,
    so every cycle the client spends is taken from the server.
    """

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self._stream = stream
        self._host = host
        self._conn = h11.Connection(h11.CLIENT)

    def _bytes(self, event: h11.Event) -> bytes:
        return self._conn.send(event) or b""

    async def post(self, path: str, parts: list[Part]) -> tuple[int, str]:
        body, content_type = multipart(parts)
        headers = [
            ("Host", self._host),
            ("Accept", "*/*"),
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
        ]
        request = h11.Request(method="POST", target=path, headers=headers)
        status, chunks = 0, []
        with trio.fail_after(30):
            await self._stream.send_all(
                self._bytes(request)
                + self._bytes(h11.Data(data=body))
                + self._bytes(h11.EndOfMessage())
            )
            while True:
                event = self._conn.next_event()
                if event is h11.NEED_DATA:
                    self._conn.receive_data(await self._stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise AssertionError(f"unexpected {event!r} from the server")
        self._conn.start_next_cycle()
        return status, b"".join(chunks).decode()


async def test_backlog_drains_from_the_journal_after_an_outage(
    make_vault: VaultFactory, moto_s3: MotoS3, caplog: pytest.LogCaptureFixture
) -> None:
    # Thousands of expected lines (moto's request log, a warning per refused attempt) would
    # cost more CPU than the uploads themselves; errors still show.
    caplog.set_level(logging.WARNING, logger="werkzeug")
    caplog.set_level(logging.ERROR, logger="tr_vault.services.uploader")
    started = trio.current_time()
    moto_s3.stop()
    vault = await make_vault(
        **s3_settings(
            moto_s3,
            upload_workers=WORKERS,
            upload_backoff_base=0.05,
            upload_backoff_max=0.5,
            # S3 is down for the whole intake: with two attempts each, any attempt spent on
            # the outage would fail calls.
            upload_max_attempts=2,
        )
    )
    db = vault.settings.db_path
    samples: list[int] = []  # claimed pending rows, sampled through intake and drain
    drain_samples: list[int] = []
    claimers: set[str] = set()
    draining = trio.Event()

    def claimed_pending(conn: sqlite3.Connection) -> list[str]:
        rows = conn.execute(
            "SELECT claimed_by FROM calls WHERE state = 'pending' AND claimed_by IS NOT NULL"
        )
        return [r[0] for r in rows]

    async def sample_claims() -> None:
        conn = sqlite3.connect(db, check_same_thread=False)
        try:
            while True:
                # In a thread: sqlite releases the GIL while it reads, the server keeps going.
                claimed = await trio.to_thread.run_sync(claimed_pending, conn)
                samples.append(len(claimed))  # = count(claimed_by) ... WHERE state='pending'
                if draining.is_set():
                    drain_samples.append(len(claimed))
                claimers.update(claimed)
                await trio.sleep(0.02)
        finally:
            conn.close()

    host = vault.url.removeprefix("http://")

    async def send(indexes: range) -> None:
        hostname, port = host.rsplit(":", 1)
        stream = await trio.open_tcp_stream(hostname, int(port))
        async with stream:
            recorder = RecorderConnection(stream, host)
            for i in indexes:
                answer = await recorder.post("/api/call-upload", call_parts(i, tiny_audio(i)))
                assert answer == (200, SUCCESS), f"call {i}: {answer}"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_claims)
        with trio.fail_after(60):
            async with trio.open_nursery() as senders:
                for first in range(SENDERS):
                    senders.start_soon(send, range(first, BACKLOG, SENDERS))
        intake_done = trio.current_time()

        # The store is down, and it is the store's state: every call is still pending with
        # no attempt spent and no error of its own.
        assert query(db, "SELECT state, code FROM store_health") == [
            {"state": "down", "code": None}
        ]
        rows = query(
            db, "SELECT state, attempts, last_error, count(*) AS n FROM calls GROUP BY 1, 2, 3"
        )
        assert rows == [{"state": "pending", "attempts": 0, "last_error": None, "n": BACKLOG}]

        draining.set()
        moto_s3.start()
        await wait_until(
            lambda: scalar(db, "SELECT count(*) FROM calls WHERE state = 'done'") == BACKLOG,
            within=90,
        )
        drained = trio.current_time()
        nursery.cancel_scope.cancel()

    assert scalar(db, "SELECT count(*) FROM calls WHERE state != 'done'") == 0
    # The journal is the queue: never more rows in hand than there are workers.
    assert len(drain_samples) >= 10
    assert max(samples) <= WORKERS, Counter(samples)
    assert 1 <= len(claimers) <= WORKERS, claimers
    # Every call is in the bucket once, as sent (moto's ETag is the MD5 of the stored bytes).
    pages = moto_s3.client().get_paginator("list_objects_v2").paginate(Bucket=moto_s3.bucket)
    listed = {
        o["Key"]: o["ETag"].strip('"')
        for page in pages
        for o in page.get("Contents", [])
        if o["Key"].startswith("audio/")
    }
    journal = {f"audio/{r['key']}": r["md5"] for r in query(db, "SELECT key, md5 FROM calls")}
    assert len(journal) == BACKLOG
    assert listed == journal
    assert query(db, "SELECT DISTINCT attempts FROM calls") == [{"attempts": 1}]
    print(
        f"\nbacklog of {BACKLOG}: intake {intake_done - started:.1f} s,"
        f" drain {drained - intake_done:.1f} s,"
        f" claimed rows per sample {dict(sorted(Counter(samples).items()))}"
    )
