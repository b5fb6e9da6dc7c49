"""`tr-vault import` of a generated trunk-recorder tree: calls/s, MB/s and peak RSS by size.

For each size (default 1,000 and 10,000 calls) a capture tree is written first (not timed):
`metro/{YYYY}/{M}/{D}/{tg}-{start}_{freq}-call_{n}.m4a` plus its call JSON, 500 calls a day,
the fixture m4a (11 KB) with a distinct 4-byte tail per call. Then `python -m tr_vault import
TREE --json` runs as a child process into an empty data directory in local-only mode, and again
over the same tree (every call a duplicate). The peak RSS is the child's own (`wait4`'s
`ru_maxrss`, the kernel's high-water mark): equal figures at 1k and 10k calls mean memory does
not grow with the tree.

Example: .venv/bin/python bench/import_tree.py --sizes 1000,10000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import FIXTURES, REPO, clean_env, print_machine, print_table

AUDIO = (FIXTURES / "call-9131-1764001234.m4a").read_bytes()
BASE = 1764001234
PER_DAY = 500


def sidecar(talkgroup: int, start: int, freq: int) -> str:
    return json.dumps(
        {
            "freq": freq, "freq_error": 12, "signal": -48, "noise": -102, "source_num": 0,
            "recorder_num": 3, "tdma_slot": 0, "phase2_tdma": 0, "start_time": start,
            "stop_time": start + 5, "emergency": 0, "priority": 0, "mode": 0, "duplex": 0,
            "encrypted": 0, "call_length": 5, "talkgroup": talkgroup,
            "talkgroup_tag": "FD Dispatch", "talkgroup_description": "Fire Dispatch Main",
            "talkgroup_group_tag": "Fire Dispatch", "talkgroup_group": "Fire",
            "audio_type": "digital", "short_name": "metro",
            "freqList": [{"freq": freq, "time": start, "pos": 0.0, "len": 4.87,
                          "error_count": 0, "spike_count": 0}],
            "srcList": [{"src": 1402211, "time": start, "pos": 0.0, "emergency": 0,
                         "signal_system": "", "tag": ""}],
        },
        indent=2,
    )  # fmt: skip


def make_tree(root: Path, calls: int) -> int:
    """Write the tree; returns the audio bytes written."""
    total = 0
    for i in range(calls):
        day, n = divmod(i, PER_DAY)
        start = BASE + day * 86400 + n * 150
        t = time.gmtime(start)
        directory = root / "metro" / str(t.tm_year) / str(t.tm_mon) / str(t.tm_mday)
        directory.mkdir(parents=True, exist_ok=True)
        talkgroup, freq = 1000 + i % 200, 851012500 + (i % 4) * 12500
        stem = f"{talkgroup}-{start}_{freq}-call_{i}"
        audio = AUDIO + i.to_bytes(4, "big")
        (directory / f"{stem}.m4a").write_bytes(audio)
        (directory / f"{stem}.json").write_text(sidecar(talkgroup, start, freq))
        total += len(audio)
    return total


def run_import(tree: Path, data: Path, mode: str) -> dict[str, Any]:
    """One `tr-vault import` child: its JSON report, wall time, CPU and peak RSS."""
    args = [sys.executable, "-m", "tr_vault", "import", str(tree), "--json"]
    if mode != "copy":
        args.append(f"--{mode}")
    started = time.monotonic()
    proc = subprocess.Popen(
        args,
        cwd=data.parent,
        env=clean_env(TR_VAULT_DATA_DIR=str(data), PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    report: dict[str, Any] = json.loads(out)
    report.update(
        wall=wall,
        code=proc.returncode,
        cpu=usage.ru_utime + usage.ru_stime,
        peak_rss_mib=usage.ru_maxrss / 1024,
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated call counts")
    parser.add_argument("--mode", choices=("copy", "link"), default="copy")
    parser.add_argument("--dir", type=Path, help="where to build trees (default: a temp dir)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print_machine()
    print(f"mode={args.mode} audio={len(AUDIO) + 4} bytes a call, {PER_DAY} calls a day")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tr-vault-import-", dir=args.dir) as base:
        for size in sizes:
            where = Path(base) / str(size)
            tree_bytes = make_tree(where / "capture", size)
            os.sync()  # the tree's own writeback must not land in the import's fsyncs
            data = where / "data"
            for run in ("first", "again"):
                r = run_import(where / "capture", data, args.mode)
                assert r["code"] == 0, r
                expected = (size, 0) if run == "first" else (0, size)
                assert (r["imported"], r["duplicates"]) == expected, r
                rows.append(
                    [
                        f"{size:,}",
                        run,
                        r["imported"],
                        r["duplicates"],
                        f"{r['seconds']:.2f}",
                        f"{r['calls_per_second']:.0f}",
                        f"{r['bytes_read'] / r['seconds'] / 1e6:.1f}",
                        f"{r['wall']:.2f}",
                        f"{r['cpu']:.2f}",
                        f"{r['peak_rss_mib']:.1f}",
                    ]
                )
                assert r["bytes_read"] == tree_bytes
    print_table(
        [
            "calls", "run", "imported", "duplicates", "import s", "calls/s", "MB/s",
            "process wall s", "CPU s", "peak RSS MiB",
        ],
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
