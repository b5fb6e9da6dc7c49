"""`tr-vault verify` over N calls (default 10,000): wall time, calls/s and S3 requests.

A journal of N `done` rows and a SeaweedFS bucket holding their N objects (our metadata,
4 KiB each) are made first (not timed); then `verify_from_settings`, the CLI's body, runs a
light pass (one HEAD per call) and a deep one (HEAD + GET + SHA-256 per call) at the chosen
parallelism. Finally one object is deleted and one replaced, and a light pass must find both.

Example: .venv/bin/python bench/verify_calls.py --calls 10000 --parallel 16
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import botocore.config
import trio
from benchlib import (
    SeaweedProcess,
    cpu_seconds,
    ensure_repo_on_path,
    print_machine,
    print_table,
    self_cpu_seconds,
)

ensure_repo_on_path()

from tr_vault.config import Settings  # noqa: E402
from tr_vault.journal import connect, migrate  # noqa: E402
from tr_vault.verify import Selection, VerifyRequest, verify_from_settings  # noqa: E402

SITE = "bench"
SIZE = 4096


def audio(i: int) -> bytes:
    seed = hashlib.sha256(str(i).encode()).digest()
    return (seed * (SIZE // len(seed) + 1))[:SIZE]


def fill(db: Path, weed: SeaweedProcess, calls: int) -> None:
    conn = connect(db)
    migrate(conn)
    rows = []
    for i in range(calls):
        data = audio(i)
        key = f"metro/2026-11-30/9131-{1764460800 + i}_851012500.m4a"
        rows.append(
            (
                "rdio-tr", "11", "metro", 9131, f"2026-11-30 00:00:{i % 60:02d}.000", "{}",
                f"9131-{i}.m4a", key, "audio/mp4", len(data), hashlib.sha256(data).hexdigest(),
                hashlib.md5(data).hexdigest(), "done", "2026-11-30 00:00:00.000", 0, weed.bucket,
                f"audio/{key}", SITE,
            )
        )  # fmt: skip
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO calls (protocol, system, system_label, talkgroup, start_time, metadata,"
        " audio_name, key, content_type, size, sha256, md5, state, received_at, cached, bucket,"
        " object_key, site) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.execute("COMMIT")
    conn.close()
    client = s3_client(weed)

    def put(i: int) -> None:
        data = audio(i)
        client.put_object(
            Bucket=weed.bucket,
            Key=f"audio/metro/2026-11-30/9131-{1764460800 + i}_851012500.m4a",
            Body=data,
            Metadata={"sha256": hashlib.sha256(data).hexdigest(), "site": SITE},
        )

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, range(calls)))


def s3_client(weed: SeaweedProcess) -> object:
    return boto3.client(
        "s3",
        endpoint_url=weed.url,
        region_name="us-east-1",
        aws_access_key_id=weed.access_key,
        aws_secret_access_key=weed.secret_key,
        config=botocore.config.Config(s3={"addressing_style": "path"}, max_pool_connections=32),
    )


def settings_for(data_dir: Path, weed: SeaweedProcess) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=data_dir,
        site=SITE,
        s3_bucket=weed.bucket,
        s3_endpoint=weed.url,
        s3_region="us-east-1",
        s3_access_key=weed.access_key,
        s3_secret_key=weed.secret_key,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--parallel", type=int, default=16)
    args = parser.parse_args()
    print_machine()
    with tempfile.TemporaryDirectory(prefix="tr-vault-verify-bench-") as tmp:
        base = Path(tmp)
        with SeaweedProcess(base / "weed") as weed:
            data_dir = base / "data"
            data_dir.mkdir()
            started = time.monotonic()
            fill(data_dir / "vault.db", weed, args.calls)
            print(f"filled {args.calls} rows and objects in {time.monotonic() - started:.1f} s")
            settings = settings_for(data_dir, weed)
            results = []
            for deep in (False, True):
                request = VerifyRequest(
                    Selection(site=SITE), deep=deep, parallel=args.parallel, act=False
                )
                weed_cpu, own_cpu = cpu_seconds(weed.pid), self_cpu_seconds()
                report = trio.run(verify_from_settings, settings, request)
                assert report.clean, report.counts
                cpu = (cpu_seconds(weed.pid) - weed_cpu, self_cpu_seconds() - own_cpu)
                results.append(
                    [
                        "deep" if deep else "light",
                        report.checked,
                        f"{report.seconds:.1f}",
                        f"{report.checked / report.seconds:.0f}",
                        report.requests,
                        f"{cpu[1]:.1f}",
                        f"{cpu[0]:.1f}",
                    ]
                )
            client = s3_client(weed)
            first = "audio/metro/2026-11-30/9131-1764460800_851012500.m4a"
            second = "audio/metro/2026-11-30/9131-1764460801_851012500.m4a"
            client.delete_object(Bucket=weed.bucket, Key=first)  # type: ignore[attr-defined]
            client.put_object(Bucket=weed.bucket, Key=second, Body=b"x")  # type: ignore[attr-defined]
            request = VerifyRequest(Selection(site=SITE), parallel=args.parallel, act=False)
            report = trio.run(verify_from_settings, settings, request)
            assert report.counts.get("missing") == 1 and report.counts.get("changed") == 1
            results.append(
                [
                    "light, 2 broken",
                    report.checked,
                    f"{report.seconds:.1f}",
                    f"{report.checked / report.seconds:.0f}",
                    report.requests,
                    "",
                    "",
                ]
            )
    print(f"\nverify over {args.calls} calls, SeaweedFS on 127.0.0.1, --parallel {args.parallel}")
    print_table(
        ["pass", "calls", "seconds", "calls/s", "S3 requests", "tr_vault CPU s", "weed CPU s"],
        results,
    )


if __name__ == "__main__":
    main()
