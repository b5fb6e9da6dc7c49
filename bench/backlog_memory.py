"""Server memory with a growing upload backlog: N calls pending while S3 is down and intake goes on.

The server is the real one (`python -m tr_vault serve`, default tiered mode: local cache and 4
upload workers) in a child process, with `S3_BUCKET` set and `S3_ENDPOINT` a 127.0.0.1 port
where nothing listens (connections refused) for the whole run. Before the intake starts, the
script waits until `/api/journal/summary` shows the store `down`; at the end it checks that no
upload was attempted (`/metrics`: no `tr_vault_upload_attempts_total`, every row at 0 attempts,
no `upload_error` event): while the store is down the workers only wait for its probe.

Intake: `--calls` distinct calls (default 100,000) sent by `--concurrency` clients (default 8)
to `POST /api/call-upload`, each a byte-exact replica of trunk-recorder's rdio-scanner plugin
request (`tests/wire.py`), a new connection per call like the plugin's curl handle. The audio
is a small fixture (default `tests/fixtures/call-2201-1764001301.m4a`, 8 KB) with an 8-byte
counter appended; each call has its own talkgroup (cycling over `--talkgroups`), start second
and `audioName`, so none is a duplicate of another. Every answer must be `200 Call imported
successfully.` and the journal must hold one `pending` row per call at the end.

Memory: the server's VmRSS and VmHWM (/proc/PID/status) are sampled every `--interval` s
(default 1) and at every 10% of the calls (with the journal's pending count from the summary),
then for `--after` s (default 30) once the intake has stopped. Goal: < 150 MB and flat, i.e.
the RSS at 100% not meaningfully above the RSS at 20%; the script prints the growth per 10k
calls (least-squares slope over the 20%..100% checkpoints, and the plain 100% - 20% difference),
and at each checkpoint where the RSS is (/proc/PID/smaps: main malloc heap, other anonymous
maps, the WAL index, files).

Diagnostics (the server then runs under a small wrapper of this script, `wrapped-serve`):
  --native           at each checkpoint the server reports SQLite's memory
                     (sqlite3_memory_used) and glibc's (mallinfo2: got from the system, in use,
                     free but kept) and Python's allocated blocks; at the end, the RSS after
                     malloc_trim(0). Costs nothing between checkpoints.
  --tracemalloc DIR  tracemalloc (10 frames), a snapshot per checkpoint into DIR, and the top
                     growth between the 20% snapshot and the last; it costs ~10x the CPU and
                     its own memory, so its RSS figures are not the goal's.
  --local-control    no S3 at all (local-only mode: rows `done` at once, no workers), to tell
                     what the intake costs from what the backlog and the outage cost.

Example: .venv/bin/python bench/backlog_memory.py --calls 100000 --concurrency 8
         .venv/bin/python bench/backlog_memory.py --calls 3000 --native
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx
import trio
from benchlib import (
    FIXTURES,
    MOTO_ACCESS_KEY,
    MOTO_SECRET_KEY,
    closed_port,
    cpu_seconds,
    ensure_repo_on_path,
    print_machine,
    print_table,
    proc_status_kb,
)
from intake import API_KEY, OK_BODY, ROUTE, BadAnswer, Connection
from intake import Server as IntakeServer

ensure_repo_on_path()

from tests.wire import multipart, rdio_trunk_recorder  # noqa: E402

BASE_TS = 1_764_460_800  # 2025-11-30 00:00:00 UTC
GOAL_MIB = 150 * 1000 * 1000 / 2**20  # 150 MB = 143.05 MiB
BUCKET = "tr-vault-bench"
DEFAULT_FIXTURE = FIXTURES / "call-2201-1764001301.m4a"
FRAMES = 10  # tracemalloc frames per allocation (--tracemalloc)


# -- the server ---------------------------------------------------------------------------------


@dataclass
class Server(IntakeServer):
    """`python -m tr_vault serve` (or the diagnostic wrapper) in a child process."""

    tracemalloc_dir: Path | None = None
    native_file: Path | None = None

    def command(self) -> list[str]:
        if self.tracemalloc_dir is None and self.native_file is None:
            return super().command()
        command = [sys.executable, str(Path(__file__).resolve()), "wrapped-serve"]
        if self.tracemalloc_dir is not None:
            command += ["--tracemalloc", str(self.tracemalloc_dir)]
        if self.native_file is not None:
            command += ["--native", str(self.native_file)]
        return command


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")
    ]  # fmt: skip


def native_stats() -> dict[str, int]:
    """In the server: SQLite's and glibc malloc's own counts, and Python's allocated blocks."""
    import _sqlite3

    lite = ctypes.CDLL(_sqlite3.__file__)
    lite.sqlite3_memory_used.restype = ctypes.c_int64
    lite.sqlite3_memory_highwater.restype = ctypes.c_int64
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return {
        "sqlite_used": lite.sqlite3_memory_used(),
        "sqlite_highwater": lite.sqlite3_memory_highwater(0),
        "malloc_arena": info.arena,  # bytes malloc got by brk/heaps (all arenas)
        "malloc_mmap": info.hblkhd,  # bytes in mmapped blocks
        "malloc_in_use": info.uordblks,
        "malloc_free": info.fordblks,  # free inside the arenas: fragmentation, not returned
        "py_blocks": sys.getallocatedblocks(),
    }


def wrapped_serve(argv: list[str]) -> None:
    """The server with hooks: `--tracemalloc DIR` (SIGUSR1 writes `snap-NNN.tracemalloc`),
    `--native FILE` (SIGUSR1 appends a JSON line of `native_stats`; SIGUSR2 runs
    `malloc_trim(0)` and appends one more)."""
    import json
    import tracemalloc

    p = argparse.ArgumentParser(prog="backlog_memory.py wrapped-serve")
    p.add_argument("--tracemalloc", type=Path)
    p.add_argument("--native", type=Path)
    args = p.parse_args(argv)
    if args.tracemalloc is not None:
        tracemalloc.start(FRAMES)
        args.tracemalloc.mkdir(parents=True, exist_ok=True)
    count = [0]

    def write_native(event: str) -> None:
        with open(args.native, "a") as out:
            out.write(json.dumps({"event": event, **native_stats()}) + "\n")

    def dump(signum: int, frame: FrameType | None) -> None:
        count[0] += 1
        if args.native is not None:
            write_native(f"checkpoint {count[0]}")
        if args.tracemalloc is not None:
            snap = tracemalloc.take_snapshot()
            snap.dump(str(args.tracemalloc / f"snap-{count[0]:03d}.tracemalloc"))

    def trim(signum: int, frame: FrameType | None) -> None:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        if args.native is not None:
            write_native("after malloc_trim")

    signal.signal(signal.SIGUSR1, dump)
    signal.signal(signal.SIGUSR2, trim)
    sys.argv = ["tr-vault", "serve"]
    from tr_vault.cli import main as cli_main

    cli_main()


def smaps_kb(pid: int) -> dict[str, int]:
    """The process's resident kB by kind of mapping, from /proc/PID/smaps: `heap` (the main
    malloc arena, brk), `anon` (other anonymous maps: thread malloc arenas, obmalloc arenas,
    thread stacks), `shm` (the journal's `-shm` WAL index) and `file` (code and libraries)."""
    out = {"heap": 0, "anon": 0, "shm": 0, "file": 0}
    kind = "anon"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first = line.split(maxsplit=1)[0]
        if "-" in first and not first.endswith(":"):  # a mapping's header line
            fields = line.split(maxsplit=5)
            name = fields[5] if len(fields) > 5 else ""
            if name == "[heap]":
                kind = "heap"
            elif name.endswith("-shm"):
                kind = "shm"
            elif not name or name.startswith("["):
                kind = "anon"
            else:
                kind = "file"
        elif first == "Rss:":
            out[kind] += int(line.split()[1])
    return out


# -- requests -----------------------------------------------------------------------------------


def build_request(i: int, audio: bytes, host: str, talkgroups: int) -> bytes:
    """Call `i`: its own talkgroup, start second, audioName and audio bytes (counter appended)."""
    ts = BASE_TS + i
    talkgroup = 1000 + i % talkgroups
    name = f"{talkgroup}-{ts}_851012500.0-call_{i}.m4a"
    parts = rdio_trunk_recorder(
        audio + i.to_bytes(8, "big"),
        key=API_KEY,
        talkgroup=str(talkgroup),
        date_time=str(ts),
        audio_name=name,
    )
    body, content_type = multipart(parts)
    head = (
        f"POST {ROUTE} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: TrunkRecorder1.0\r\nAccept: */*\r\n"
        f"Content-Length: {len(body)}\r\nContent-Type: {content_type}\r\n\r\n"
    )
    return head.encode() + body


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the intake started
    accepted: int
    rss_kb: int
    hwm_kb: int


@dataclass
class Checkpoint:
    label: str
    t: float
    accepted: int
    pending: int
    rss_kb: int
    hwm_kb: int
    store: str
    anon_kb: int = 0  # RssAnon: the heap (Python objects, malloc arenas, SQLite's page cache)
    file_kb: int = 0  # RssFile: mapped files (code, libraries)
    smaps: dict[str, int] = field(default_factory=dict)


@dataclass
class Run:
    calls: int
    accepted: int = 0
    errors: list[str] = field(default_factory=list)
    intake_s: float = 0.0
    server_cpu_s: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    idle_rss_kb: int = 0
    store_before: dict[str, object] = field(default_factory=dict)
    store_after: dict[str, object] = field(default_factory=dict)
    upload_metrics: list[str] = field(default_factory=list)
    store_up_metric: str = "?"
    summary_after: dict[str, object] = field(default_factory=dict)
    rss_after_trim_kb: int = 0
    native: list[dict[str, int | str]] = field(default_factory=list)


async def summary(api: httpx.AsyncClient) -> dict[str, object]:
    answer = await api.get("/api/journal/summary")
    answer.raise_for_status()
    data: dict[str, object] = answer.json()
    return data


def pending_of(s: dict[str, object]) -> int:
    states = s["states"]
    assert isinstance(states, dict)
    return int(states["pending"]["calls"])


def store_of(s: dict[str, object]) -> dict[str, object]:
    store = s.get("store")
    return store if isinstance(store, dict) else {}


async def wait_store_down(api: httpx.AsyncClient, seconds: float = 30.0) -> dict[str, object]:
    with trio.fail_after(seconds):
        while True:
            store = store_of(await summary(api))
            if store.get("state") == "down":
                return store
            await trio.sleep(0.2)


async def drive(server: Server, args: argparse.Namespace, audio: bytes) -> Run:
    run = Run(args.calls)
    pid = server.pid
    host = f"127.0.0.1:{server.port}"
    base = f"http://{host}"
    thresholds = [args.calls * k // 10 for k in range(1, 11)]
    send, receive = trio.open_memory_channel[tuple[str, int]](len(thresholds) + 4)
    t0 = 0.0

    async with httpx.AsyncClient(base_url=base, timeout=30, trust_env=False) as api:
        if not args.local_control:
            run.store_before = await wait_store_down(api)
        await trio.sleep(1.0)
        run.idle_rss_kb = proc_status_kb(pid, "VmRSS")

        async def checkpoint(label: str) -> None:
            rss, hwm = proc_status_kb(pid, "VmRSS"), proc_status_kb(pid, "VmHWM")
            anon, mapped = proc_status_kb(pid, "RssAnon"), proc_status_kb(pid, "RssFile")
            kinds = smaps_kb(pid)
            accepted, t = run.accepted, time.perf_counter() - t0
            if args.tracemalloc is not None or args.native:
                os.kill(pid, signal.SIGUSR1)
            s = await summary(api)
            run.checkpoints.append(
                Checkpoint(
                    label,
                    t,
                    accepted,
                    pending_of(s),
                    rss,
                    hwm,
                    str(store_of(s).get("state")),
                    anon,
                    mapped,
                    kinds,
                )
            )

        async def recorder() -> None:
            async for label, _ in receive:
                await checkpoint(label)

        async def sampler(stop: trio.Event) -> None:
            while not stop.is_set():
                run.samples.append(
                    Sample(
                        time.perf_counter() - t0,
                        run.accepted,
                        proc_status_kb(pid, "VmRSS"),
                        proc_status_kb(pid, "VmHWM"),
                    )
                )
                with trio.move_on_after(args.interval):
                    await stop.wait()

        next_call = iter(range(args.calls))

        async def client() -> None:
            conn = Connection(server.port, keep_alive=False)
            try:
                for i in next_call:
                    request = build_request(i, audio, host, args.talkgroups)
                    try:
                        with trio.fail_after(args.timeout):
                            status, body = await conn.request(request)
                    except (OSError, BadAnswer, trio.TooSlowError) as exc:
                        run.errors.append(f"call {i}: {type(exc).__name__}: {exc}")
                        continue
                    if status != 200 or body.strip() != OK_BODY:
                        run.errors.append(f"call {i}: HTTP {status}: {body[:80]!r}")
                        continue
                    run.accepted += 1
                    if run.accepted in thresholds:
                        pct = 100 * run.accepted // args.calls
                        send.send_nowait((f"{pct}%", run.accepted))
            finally:
                await conn.aclose()

        stop = trio.Event()
        async with trio.open_nursery() as outer:
            outer.start_soon(recorder)
            t0 = time.perf_counter()
            outer.start_soon(sampler, stop)
            cpu0 = cpu_seconds(pid)
            async with trio.open_nursery() as clients:
                for _ in range(args.concurrency):
                    clients.start_soon(client)
            run.intake_s = time.perf_counter() - t0
            run.server_cpu_s = cpu_seconds(pid) - cpu0
            if run.accepted not in thresholds:  # errors: some 10% marks were never crossed
                send.send_nowait(("end of intake", run.accepted))
            await trio.sleep(args.after)
            send.send_nowait((f"+{args.after:g} s idle", run.accepted))
            send.close()
            stop.set()

        if args.native:  # is the growth in use, or free memory malloc keeps?
            await trio.sleep(0.5)
            os.kill(pid, signal.SIGUSR2)
            await trio.sleep(1.5)
            run.rss_after_trim_kb = proc_status_kb(pid, "VmRSS")
        run.summary_after = await summary(api)
        run.store_after = store_of(run.summary_after)
        metrics = (await api.get("/metrics")).text
        run.upload_metrics = [
            line
            for line in metrics.splitlines()
            if line.startswith("tr_vault_upload_attempts_total")
        ]
        run.store_up_metric = next(
            (
                line.split()[-1]
                for line in metrics.splitlines()
                if line.startswith("tr_vault_store_up ")
            ),
            "?",
        )
    return run


def journal_check(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        out = {
            f"calls_{s}": n
            for s, n in conn.execute("SELECT state, count(*) FROM calls GROUP BY state")
        }
        out["calls"] = sum(out.values())
        out["attempts_sum"] = conn.execute(
            "SELECT coalesce(sum(attempts), 0) FROM calls"
        ).fetchone()[0]
        out["upload_error_events"] = conn.execute(
            "SELECT count(*) FROM events WHERE kind = 'upload_error'"
        ).fetchone()[0]
        out["distinct_identities"] = conn.execute(
            "SELECT count(*) FROM (SELECT DISTINCT sha256, talkgroup, start_time FROM calls)"
        ).fetchone()[0]
        return out
    finally:
        conn.close()


# -- output -------------------------------------------------------------------------------------


def mib(kb: int) -> str:
    return f"{kb / 1024:.1f}"


def slope_mib_per_10k(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of RSS (kB) over accepted calls, in MiB per 10,000 calls."""
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return float("nan")
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return sxy / sxx * 10_000 / 1024


def report(run: Run, args: argparse.Namespace, audio_size: int, counts: dict[str, int]) -> None:
    print(
        f"\nBacklog: {args.calls} distinct calls ({audio_size + 8} B audio each) to {ROUTE} as"
        f" trunk-recorder's rdio plugin sends them, {args.concurrency} clients, a new connection"
        + (
            " per call; CONTROL: local-only mode (no S3, rows `done` at once)"
            if args.local_control
            else " per call; S3 down (endpoint on a closed 127.0.0.1 port) the whole run"
        )
    )
    print(
        f"store before the intake: state={run.store_before.get('state')}"
        f" error={run.store_before.get('last_error')!r}"
    )
    rows: list[list[object]] = [
        ["idle (before)", "0", "0", "0", mib(run.idle_rss_kb), "-", "-", "-", "-"]
    ]
    prev_t, prev_n = 0.0, 0
    for c in run.checkpoints:
        rate = (c.accepted - prev_n) / (c.t - prev_t) if c.t > prev_t and c.accepted > prev_n else 0
        rows.append(
            [
                c.label,
                f"{c.accepted:,}",
                f"{c.t:.0f}",
                f"{c.pending:,}",
                mib(c.rss_kb),
                mib(c.hwm_kb),
                mib(c.anon_kb),
                mib(c.file_kb),
                f"{rate:.0f}" if rate else "-",
            ]
        )
        prev_t, prev_n = c.t, c.accepted
    print_table(
        ["checkpoint", "calls accepted", "t s", "pending (journal)", "RSS MiB", "VmHWM MiB",
         "RssAnon MiB", "RssFile MiB", "calls/s since previous"],
        rows,
    )  # fmt: skip
    print("\nWhere the RSS is (/proc/PID/smaps, MiB)")
    print_table(
        ["checkpoint", "calls accepted", "[heap] (main arena)", "other anon (arenas, stacks)",
         "-shm (WAL index)", "files"],
        [[c.label, f"{c.accepted:,}", *(mib(c.smaps.get(k, 0)) for k in ("heap", "anon", "shm",
          "file"))] for c in run.checkpoints],
    )  # fmt: skip
    if run.native:
        labels = [c.label for c in run.checkpoints] + ["after malloc_trim(0)"]
        rss = [c.rss_kb for c in run.checkpoints] + [run.rss_after_trim_kb]
        print("\nInside the server (--native: sqlite3_memory_used, glibc mallinfo2, MiB)")
        print_table(
            ["checkpoint", "RSS", "SQLite in use", "SQLite high water", "malloc from system",
             "malloc in use", "malloc free (kept)", "malloc mmapped", "Python blocks"],
            [[label, mib(r), *(f"{int(n[k]) / 2**20:.1f}" for k in ("sqlite_used",
              "sqlite_highwater", "malloc_arena", "malloc_in_use", "malloc_free",
              "malloc_mmap")), f"{int(n['py_blocks']):,}"]
             for label, r, n in zip(labels, rss, run.native, strict=False)],
        )  # fmt: skip
    during = [s for s in run.samples if s.t <= run.intake_s]
    peak_sampled = max((s.rss_kb for s in run.samples), default=0)
    hwm = max([s.hwm_kb for s in run.samples] + [c.hwm_kb for c in run.checkpoints] or [0])
    marks = [c for c in run.checkpoints if c.label.endswith("%")]
    flat_from = [c for c in marks if c.accepted >= args.calls * 2 // 10]
    slope = slope_mib_per_10k([(c.accepted, c.rss_kb) for c in flat_from])
    at20 = next((c for c in marks if c.label == "20%"), None)
    at100 = next((c for c in marks if c.label == "100%"), None)
    diff_per_10k = (
        (at100.rss_kb - at20.rss_kb) / 1024 / ((at100.accepted - at20.accepted) / 10_000)
        if at20 and at100 and at100.accepted > at20.accepted
        else float("nan")
    )
    after = run.checkpoints[-1] if run.checkpoints else None
    print()
    print_table(
        ["measure", "value"],
        [
            ["calls accepted / sent", f"{run.accepted:,} / {args.calls:,}"],
            ["errors", len(run.errors)],
            ["intake wall time", f"{run.intake_s:.1f} s"],
            ["throughput", f"{run.accepted / run.intake_s:.0f} calls/s" if run.intake_s else "-"],
            ["server CPU during intake", f"{run.server_cpu_s:.1f} s"
             f" ({run.server_cpu_s / max(run.accepted, 1) * 1000:.1f} ms/call)"],
            [f"RSS samples (every ~{args.interval:g} s)", f"{len(during)} during intake,"
             f" {len(run.samples) - len(during)} after"],
            ["largest sampled RSS", f"{mib(peak_sampled)} MiB"],
            ["peak RSS (VmHWM)", f"{mib(hwm)} MiB"],
            ["RSS at 20% -> 100%", f"{mib(at20.rss_kb) if at20 else '?'} -> "
             f"{mib(at100.rss_kb) if at100 else '?'} MiB"],
            ["growth per 10k calls, 20%..100% (least squares)", f"{slope:+.2f} MiB"],
            ["growth per 10k calls, (RSS at 100% - RSS at 20%)", f"{diff_per_10k:+.2f} MiB"],
            [f"RSS {args.after:g} s after the intake",
             f"{mib(after.rss_kb)} MiB" if after else "-"],
        ],
    )  # fmt: skip
    print(
        f"\nstore after: state={run.store_after.get('state')} since={run.store_after.get('since')}"
        f" checked_at={run.store_after.get('checked_at')}; /metrics tr_vault_store_up"
        f" {run.store_up_metric}; upload attempts in /metrics:"
        f" {run.upload_metrics or 'none (no upload tried)'}"
    )
    print("journal at the end: " + ", ".join(f"{k}={v:,}" for k, v in sorted(counts.items())))
    for err in run.errors[:5]:
        print(f"error: {err}")
    under = hwm / 1024 < GOAL_MIB
    flat = diff_per_10k < 0.5 and slope < 0.5
    print(
        f"peak RSS {mib(hwm)} MiB: {'under' if under else 'OVER'} the 150 MB goal"
        f" ({GOAL_MIB:.1f} MiB); growth {slope:+.2f} MiB per 10k calls from 20% on:"
        f" {'flat' if flat else 'NOT flat'} (flat: < 0.5 MiB per 10k)"
    )


def tracemalloc_report(snap_dir: Path, labels: list[str], top: int = 15) -> None:
    """What the Python heap gained between the 20% snapshot and the last one."""
    import tracemalloc

    snaps = sorted(snap_dir.glob("snap-*.tracemalloc"))
    named = dict(zip(labels, snaps, strict=False))
    first, last = named.get("20%"), snaps[-1] if snaps else None
    if first is None or last is None:
        print(f"tracemalloc: snapshots {snaps} do not cover 20%..the end")
        return
    old, new = tracemalloc.Snapshot.load(str(first)), tracemalloc.Snapshot.load(str(last))
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    old, new = old.filter_traces(ignore), new.filter_traces(ignore)
    total_old = sum(s.size for s in old.statistics("filename"))
    total_new = sum(s.size for s in new.statistics("filename"))
    print(
        f"\ntracemalloc: traced Python heap {total_old / 2**20:.1f} MiB at 20%,"
        f" {total_new / 2**20:.1f} MiB at {labels[len(snaps) - 1]} ({first.name} -> {last.name});"
        f" top {top} growth by line:"
    )
    for stat in new.compare_to(old, "lineno")[:top]:
        print(f"  {stat}")
    print(f"top 3 growth by traceback ({FRAMES} frames):")
    for stat in new.compare_to(old, "traceback")[:3]:
        print(f"  {stat.size_diff / 1024:+.1f} KiB, {stat.count_diff:+d} blocks")
        for line in stat.traceback.format()[-2 * FRAMES :]:
            print(f"    {line}")


# -- main ---------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=100_000, help="distinct calls (default 100000)")
    p.add_argument("--concurrency", type=int, default=8, help="clients at once (default 8)")
    p.add_argument("--talkgroups", type=int, default=64, help="talkgroups cycled (default 64)")
    p.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE, help="the audio file")
    p.add_argument("--interval", type=float, default=1.0, help="RSS sample period, s")
    p.add_argument("--after", type=float, default=30.0, help="s to keep sampling after intake")
    p.add_argument("--timeout", type=float, default=60.0, help="per request, s")
    p.add_argument("--log-level", default="INFO", help="the server's TR_VAULT_LOG_LEVEL")
    p.add_argument(
        "--server-env", action="append", default=[], metavar="NAME=VALUE",
        help="an extra setting for the server (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--tracemalloc",
        type=Path,
        default=None,
        metavar="DIR",
        help="run the server under tracemalloc, a snapshot per checkpoint into DIR",
    )
    p.add_argument(
        "--native", action="store_true",
        help="run the server with a hook reporting SQLite's and malloc's memory at each"
        " checkpoint, and the RSS after malloc_trim(0) at the end",
    )  # fmt: skip
    p.add_argument(
        "--local-control", action="store_true",
        help="a control run: no S3 at all (local-only mode, rows `done` at once, no workers)",
    )  # fmt: skip
    p.add_argument("--samples-csv", type=Path, default=None, help="write every RSS sample here")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (data, server.log)")
    args = p.parse_args()
    if args.calls < 10 or args.concurrency < 1 or args.talkgroups < 1:
        p.error("--calls >= 10, --concurrency >= 1, --talkgroups >= 1")
    return args


def _sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM as Ctrl-C: trio then delivers the KeyboardInterrupt where it is safe."""
    os.kill(os.getpid(), signal.SIGINT)


def _interrupted(exc: BaseException) -> bool:
    """A KeyboardInterrupt, alone or inside trio's exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(KeyboardInterrupt) is not None
    return isinstance(exc, KeyboardInterrupt)


def main() -> None:
    args = parse_args()
    print_machine()
    print(f"load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    audio = args.fixture.read_bytes()
    root = Path(tempfile.mkdtemp(prefix="trv-backlog-"))
    data = root / "data"
    data.mkdir()
    env = {"TR_VAULT_LOG_LEVEL": args.log_level}
    if not args.local_control:
        env |= {
            "S3_BUCKET": BUCKET,
            "S3_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
            "S3_ACCESS_KEY": MOTO_ACCESS_KEY,
            "S3_SECRET_KEY": MOTO_SECRET_KEY,
        }
    for item in args.server_env:
        name, _, value = item.partition("=")
        env[name] = value
    native_file = root / "native.jsonl" if args.native else None
    server = Server(data, env, tracemalloc_dir=args.tracemalloc, native_file=native_file)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        server.start()
        run = trio.run(drive, server, args, audio)
        if native_file is not None and native_file.exists():
            run.native = [json.loads(line) for line in native_file.read_text().splitlines()]
        server.stop()
        counts = journal_check(data / "vault.db")
        if args.samples_csv is not None:
            with open(args.samples_csv, "w") as out:
                out.write("t_s,accepted,rss_kb,hwm_kb\n")
                for s in run.samples:
                    out.write(f"{s.t:.2f},{s.accepted},{s.rss_kb},{s.hwm_kb}\n")
        report(run, args, len(audio), counts)
        if args.tracemalloc is not None:
            tracemalloc_report(args.tracemalloc, [c.label for c in run.checkpoints])
        print(f"load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
        expected = "calls_done" if args.local_control else "calls_pending"
        if counts.get("calls") != run.accepted or counts.get(expected) != run.accepted:
            print(f"NOTE: journal holds {counts} for {run.accepted} accepted calls")
    except BaseException as exc:
        if not _interrupted(exc):
            raise
        print("interrupted: stopping the server and removing the temp dir", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        server.stop()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["wrapped-serve"]:
        wrapped_serve(sys.argv[2:])
    else:
        main()
