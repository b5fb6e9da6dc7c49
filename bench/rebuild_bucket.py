"""`tr-vault rebuild --from-bucket` over N objects (default 10,000): wall time, objects/s, S3
requests (LIST pages, HEADs), CPU and peak RSS.

A SeaweedFS bucket (`weed mini`, the binary the tests use) is filled first, not timed, with N
small objects (`--object-bytes`) carrying tr_vault's metadata, as the uploader writes them:
`audio/{site}/{system}/{YYYY-MM-DD}/{talkgroup}-{start}_{freq}.m4a` over 4 systems and 10 days.
Then the real command runs as a child process (`tr-vault rebuild --from-bucket --json`) into an
empty data directory, once per `--parallel` value, and once more over the journal the first run
built (everything known: LIST pages only, no HEAD).

Example: .venv/bin/python bench/rebuild_bucket.py --objects 10000 --parallel 4,16,32
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import botocore.config
from benchlib import (
    SeaweedProcess,
    clean_env,
    cpu_seconds,
    ensure_repo_on_path,
    machine_busy_seconds,
    print_machine,
    print_table,
)

ensure_repo_on_path()

from tr_vault import objectmeta  # noqa: E402
from tr_vault.timefmt import to_db, utc_date  # noqa: E402

SITE = "bench"
SYSTEMS = ("metro", "county", "state", "fire")
FIRST_START = 1764460800  # 2025-11-30 00:00:00 UTC
DAYS = 10


def audio(i: int, size: int) -> bytes:
    seed = hashlib.sha256(str(i).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def fill(weed: SeaweedProcess, objects: int, size: int, threads: int) -> None:
    """N objects with the uploader's metadata (call_metadata + sha256), PUT from threads."""
    client = s3_client(weed, threads)
    per_day = -(-objects // (len(SYSTEMS) * DAYS))

    def put(i: int) -> None:
        data = audio(i, size)
        system = SYSTEMS[i % len(SYSTEMS)]
        start = FIRST_START + (i // len(SYSTEMS) // per_day) * 86400 + i % 86400
        talkgroup = 1000 + i % 97
        name = f"{talkgroup}-{start}_851012500.m4a"
        meta = objectmeta.call_metadata(
            call_id=i + 1, site=SITE, protocol="rdio-tr", system=system, system_label=None,
            talkgroup=talkgroup, talkgroup_label=f"TG {talkgroup} Dispatch",
            start_time=to_db(start), duration=4.87, audio_name=name,
        )  # fmt: skip
        client.put_object(
            Bucket=weed.bucket, Key=f"audio/{SITE}/{system}/{utc_date(start)}/{name}", Body=data,
            ContentType="audio/mp4", Metadata={**meta, "sha256": hashlib.sha256(data).hexdigest()},
        )  # fmt: skip

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, range(objects)))


def s3_client(weed: SeaweedProcess, pool: int) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=weed.url,
        region_name="us-east-1",
        aws_access_key_id=weed.access_key,
        aws_secret_access_key=weed.secret_key,
        config=botocore.config.Config(
            s3={"addressing_style": "path"},
            max_pool_connections=pool,
            request_checksum_calculation="when_required",
        ),
    )


def run_rebuild(weed: SeaweedProcess, data_dir: Path, parallel: int) -> dict[str, Any]:
    """The command as an operator runs it; its rusage from wait4 (CPU, peak RSS)."""
    env = clean_env(
        TR_VAULT_DATA_DIR=str(data_dir),
        TR_VAULT_SITE=SITE,
        S3_BUCKET=weed.bucket,
        S3_ENDPOINT=weed.url,
        S3_REGION="us-east-1",
        S3_ACCESS_KEY=weed.access_key,
        S3_SECRET_KEY=weed.secret_key,
    )
    command = [
        str(Path(sys.executable).parent / "tr-vault"), "rebuild", "--from-bucket", "--json",
        "--parallel", str(parallel),
    ]  # fmt: skip
    weed_cpu, busy = cpu_seconds(weed.pid), machine_busy_seconds()
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        child = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        out.seek(0)
        report: dict[str, Any] = json.loads(out.read())
    assert child.returncode == 0, report
    own = usage.ru_utime + usage.ru_stime
    weed_used = cpu_seconds(weed.pid) - weed_cpu
    report["bench"] = {
        "wall": wall,
        "cpu": own,
        "weed_cpu": weed_used,
        "other_cpu": max(0.0, machine_busy_seconds() - busy - own - weed_used),
        "peak_rss_mib": usage.ru_maxrss / 1024,
    }
    return report


def row(label: str, parallel: int, report: dict[str, Any]) -> list[object]:
    bench, requests = report["bench"], report["requests"]
    outcomes = {k: v for k, v in report["outcomes"].items() if v}
    return [
        label,
        parallel,
        " ".join(f"{k}={v}" for k, v in outcomes.items()),
        f"{bench['wall']:.1f}",
        f"{report['seconds']:.1f}",
        f"{report['listed'] / bench['wall']:.0f}",
        requests["list"],
        requests["head"],
        f"{bench['cpu']:.1f}",
        f"{bench['weed_cpu']:.1f}",
        f"{bench['other_cpu']:.1f}",
        f"{bench['peak_rss_mib']:.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--object-bytes", type=int, default=2048)
    parser.add_argument(
        "--parallel", default="16", help="comma-separated --parallel values, one run each"
    )
    parser.add_argument("--fill-threads", type=int, default=32)
    args = parser.parse_args()
    values = [int(v) for v in args.parallel.split(",")]
    print_machine()
    results: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="tr-vault-rebuild-bench-") as tmp:
        base = Path(tmp)
        with SeaweedProcess(base / "weed") as weed:
            started = time.monotonic()
            fill(weed, args.objects, args.object_bytes, args.fill_threads)
            took = time.monotonic() - started
            print(f"filled {args.objects} objects of {args.object_bytes} bytes in {took:.1f} s")
            for n, parallel in enumerate(values):
                data_dir = base / f"data-{n}"
                report = run_rebuild(weed, data_dir, parallel)
                assert report["outcomes"]["metadata"] == args.objects, report["outcomes"]
                results.append(row("empty journal", parallel, report))
                if n == 0:
                    again = run_rebuild(weed, data_dir, parallel)
                    assert again["outcomes"]["known"] == args.objects, again["outcomes"]
                    results.append(row("again (all known)", parallel, again))
    print(f"\nrebuild --from-bucket over {args.objects} objects, SeaweedFS on 127.0.0.1")
    print_table(
        [
            "run", "--parallel", "outcomes", "wall s", "pass s", "objects/s", "LIST", "HEAD",
            "tr-vault CPU s", "weed CPU s", "other CPU s", "peak RSS MiB",
        ],
        results,
    )  # fmt: skip


if __name__ == "__main__":
    main()
