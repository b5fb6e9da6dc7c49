"""Upload drain: a backlog of N pending calls moved to moto by tr_vault's Uploader vs boto3.

A journal of N `pending` rows (50 KB each, their files in the cache) is made first, not timed.
Then tr_vault's `Uploader` (in this process, the default worker count, the store-health probe
beside it) drains it into moto running in a child process: PUT with Content-MD5 and a signed
SHA-256, then a HEAD to verify. The same files go up again with boto3's `upload_file` in a
`ThreadPoolExecutor` of the same concurrency (one PUT each), into the same bucket. Reported for
both: wall time, calls/s, CPU seconds of this process (and calls per CPU second), moto's CPU.

Example: .venv/bin/python bench/upload_drain.py --calls 2000 --rounds 2
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import boto3
import botocore.config
import trio
from benchlib import (
    MOTO_ACCESS_KEY,
    MOTO_SECRET_KEY,
    MotoProcess,
    cpu_seconds,
    ensure_repo_on_path,
    print_machine,
    print_table,
    self_cpu_seconds,
)
from pydantic import SecretStr

ensure_repo_on_path()

from tr_vault.app import store_health, upload_policy  # noqa: E402
from tr_vault.cache import AudioCache  # noqa: E402
from tr_vault.call import CallMeta, StoredAudio  # noqa: E402
from tr_vault.config import ConditionalPut, Settings  # noqa: E402
from tr_vault.journal import Journal, NewCall, insert_calls  # noqa: E402
from tr_vault.services.uploader import Uploader  # noqa: E402
from tr_vault.storage.s3 import S3Store  # noqa: E402

SIZE = 50_000
START = 1_764_460_800


@dataclass
class Result:
    name: str
    calls: int
    seconds: float
    own_cpu: float
    moto_cpu: float
    requests: str

    def row(self) -> list[str]:
        return [
            self.name,
            str(self.calls),
            f"{self.seconds:.2f}",
            f"{self.calls / self.seconds:.0f}",
            f"{self.own_cpu:.2f}",
            f"{self.calls / self.own_cpu:.0f}" if self.own_cpu else "inf",
            f"{self.own_cpu / self.calls * 1000:.2f}",
            f"{self.moto_cpu:.2f}",
            self.requests,
        ]


def settings_for(data_dir: Path, moto: MotoProcess) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=data_dir,
        s3_bucket=moto.bucket,
        s3_endpoint=moto.url,
        s3_region="us-east-1",
        s3_access_key=MOTO_ACCESS_KEY,
        s3_secret_key=SecretStr(MOTO_SECRET_KEY),
        # moto honours If-None-Match: * (`auto` would HEAD before each PUT on 127.0.0.1)
        s3_conditional_put=ConditionalPut.TRUE,
    )


def audio(i: int) -> bytes:
    seed = hashlib.sha256(f"drain {i}".encode()).digest()
    return (seed * (SIZE // len(seed) + 1))[:SIZE]


async def fill(settings: Settings, calls: int, round_no: int) -> list[Path]:
    """N pending rows and their cached files, written directly (the intake path is not timed)."""
    journal = await Journal.open(settings.db_path)
    cache = AudioCache(settings.audio_dir)
    paths: list[Path] = []
    rows: list[NewCall] = []  # one transaction for the lot
    try:
        for i in range(calls):
            data = audio(i + round_no * calls)
            start = START + round_no * calls + i
            key = f"metro/2026-11-30/9131-{start}_851012500.m4a"
            path = cache.path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            paths.append(path)
            meta = CallMeta(
                protocol="rdio-tr",
                system="11",
                system_label="metro",
                talkgroup=9131,
                start_time=float(start),
                audio_name=path.name,
                content_type="audio/mp4",
            )
            stored = StoredAudio(
                key=key,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                md5=hashlib.md5(data).hexdigest(),
            )
            rows.append(NewCall(meta, stored, None))
        await journal.call(insert_calls, rows, "pending", journal.clock())
    finally:
        await journal.close()
    os.sync()
    return paths


def pending(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        n: int = conn.execute("SELECT count(*) FROM calls WHERE state = 'pending'").fetchone()[0]
    finally:
        conn.close()
    return n


async def drain_tr_vault(settings: Settings, moto: MotoProcess, calls: int) -> Result:
    journal = await Journal.open(settings.db_path)
    store = S3Store.from_settings(settings)
    try:
        health = store_health(store, settings, journal, time.time)
        policy = upload_policy(settings)
        uploader = Uploader(
            journal, AudioCache(settings.audio_dir), store, policy, health=health, run_id="bench"
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(health.run)
            await health.wait_decided()
            assert health.is_up, health.status
            moto_cpu, own_cpu, started = cpu_seconds(moto.pid), self_cpu_seconds(), time.monotonic()
            await nursery.start(uploader.run)
            while await trio.to_thread.run_sync(pending, settings.db_path):
                await trio.sleep(0.1)
            seconds = time.monotonic() - started
            own = self_cpu_seconds() - own_cpu
            moto_used = cpu_seconds(moto.pid) - moto_cpu
            uploader.stop()
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()
        await journal.close()
    done = sqlite3.connect(settings.db_path).execute(
        "SELECT count(*) FROM calls WHERE state = 'done'"
    )
    assert done.fetchone()[0] >= calls
    return Result(
        f"tr_vault Uploader ({policy.workers} workers)",
        calls,
        seconds,
        own,
        moto_used,
        "PUT + HEAD",
    )


def drain_boto3(moto: MotoProcess, paths: list[Path], workers: int, round_no: int) -> Result:
    client = boto3.client(
        "s3",
        endpoint_url=moto.url,
        region_name="us-east-1",
        aws_access_key_id=MOTO_ACCESS_KEY,
        aws_secret_access_key=MOTO_SECRET_KEY,
        config=botocore.config.Config(
            s3={"addressing_style": "path"},
            max_pool_connections=workers,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )

    def put(path: Path) -> None:
        client.upload_file(
            str(path),
            moto.bucket,
            f"boto3/{round_no}/{path.name}",
            ExtraArgs={"ContentType": "audio/mp4"},
        )

    moto_cpu, own_cpu, started = cpu_seconds(moto.pid), self_cpu_seconds(), time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, paths))
    seconds = time.monotonic() - started
    own = self_cpu_seconds() - own_cpu
    return Result(
        f"boto3 upload_file ({workers} threads)",
        len(paths),
        seconds,
        own,
        cpu_seconds(moto.pid) - moto_cpu,
        "PUT",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1, help="pairs of runs, order alternating")
    parser.add_argument(
        "--only", choices=("vault", "boto3"), help="run one side (e.g. under a profiler)"
    )
    args = parser.parse_args()
    print_machine()
    print(f"load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="tr-vault-drain-bench-") as tmp, MotoProcess() as moto:
        for round_no in range(args.rounds):
            data_dir = Path(tmp) / f"round{round_no}"
            data_dir.mkdir()
            settings = settings_for(data_dir, moto)
            paths = trio.run(fill, settings, args.calls, round_no)
            workers = upload_policy(settings).workers
            pair: list[Result] = []
            order = ("vault", "boto3") if round_no % 2 == 0 else ("boto3", "vault")
            for which in order if args.only is None else (args.only,):
                if which == "vault":
                    pair.append(trio.run(drain_tr_vault, settings, moto, args.calls))
                else:
                    pair.append(drain_boto3(moto, paths, workers, round_no))
            results += sorted(pair, key=lambda r: not r.name.startswith("tr_vault"))
    print(f"load after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    print(f"\nupload drain of {args.calls} calls x {SIZE} B, moto in a child process, 127.0.0.1")
    print_table(
        [
            "client",
            "calls",
            "wall s",
            "calls/s",
            "CPU s (ours)",
            "calls/CPU s",
            "CPU ms/call",
            "moto CPU s",
            "requests/call",
        ],
        [r.row() for r in results],
    )
    for n in range(0, len(results) - 1 if args.only is None else 0, 2):
        vault, boto = results[n], results[n + 1]
        speed = (vault.calls / vault.seconds) / (boto.calls / boto.seconds)
        efficiency = (vault.calls / vault.own_cpu) / (boto.calls / boto.own_cpu)
        print(
            f"round {n // 2 + 1}: tr_vault/boto3 calls/s {speed:.2f}x,"
            f" calls per CPU second {efficiency:.2f}x"
        )


if __name__ == "__main__":
    main()
