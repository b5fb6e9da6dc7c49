"""Cost of one cache-pruner pass over a journal of N `done`, cached calls.

What it does, all on 127.0.0.1 and in a temp directory it removes at the end:

1. Builds a real journal (schema from `tr_vault.journal.migrate`) with N rows, bulk-inserted
   in one transaction: state `done`, `cached = 1`, `uploaded_at` spread evenly over the last
   `--span-days` days (so with the default 30-day retention the older half is past it), a
   metadata JSON like intake stores, and three events per call (received, upload_ok, verified).
2. Times the candidate query (`tr_vault.journal.prune_candidates`) alone, for the age trigger
   and the size-cap trigger, at each N of `--scale`; also its statements one by one, with
   their EXPLAIN QUERY PLAN.
3. Writes real cache files, and PUTs their objects (through `S3Store.put_file`, so each carries
   `x-amz-meta-sha256`) into a moto `ThreadedMotoServer` running in a child process, only for
   the rows the passes will touch (the oldest 2 x batch) unless `--all-files`.
4. Runs `Pruner.run_pass()` through a real `S3Store`: an age-triggered pass, dry-run then real,
   then a size-triggered pass (cap = half the cached bytes), dry-run then real. It reports
   wall time, HEAD requests (counted at the HTTP transport), decisions, and CPU of this process
   and of moto.

Example: .venv/bin/python bench/prune_pass.py --rows 100000 --scale 10000,100000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio
from benchlib import (
    MOTO_ACCESS_KEY,
    MOTO_SECRET_KEY,
    MotoProcess,
    cpu_seconds,
    machine_busy_seconds,
    print_machine,
    print_table,
    self_cpu_seconds,
)

from tr_vault.cache import AudioCache
from tr_vault.journal import Journal, connect, migrate, prune_candidates
from tr_vault.services.pruner import PrunePolicy, Pruner, PruneReport
from tr_vault.storage.base import audio_object_key
from tr_vault.storage.s3 import S3Store
from tr_vault.timefmt import to_db, utc_date

DAY = 86400.0
RETENTION = 30 * DAY  # the default S3_CACHE_RETENTION (720h)
WHATIF_INDEX = "bench_whatif_prunable_size"

# The statements of `prune_candidates` as journal.py has them (for the per-statement breakdown
# only; the headline figures time `prune_candidates` itself).
_COLUMNS = "id, key, size, sha256, uploaded_at"
STATEMENTS = {
    "cached bytes (sum)": ("SELECT coalesce(sum(size), 0) FROM calls WHERE cached = 1", ()),
    "age candidates": (
        f"SELECT {_COLUMNS} FROM calls WHERE cached = 1 AND state = 'done'"
        " AND uploaded_at <= ? ORDER BY uploaded_at, id LIMIT ?",
        ("__cutoff__", "__limit__"),
    ),
    "size candidates (first batch rows)": (
        f"SELECT {_COLUMNS} FROM calls WHERE cached = 1 AND state = 'done'"
        " ORDER BY uploaded_at, id",
        (),
    ),
}


@dataclass(frozen=True)
class Touched:
    """A row whose cache file and S3 object exist (the passes HEAD and delete these)."""

    id: int
    key: str
    size: int
    md5: str
    sha256: str


# -- the journal --------------------------------------------------------------------------------


def row_metadata(i: int, start_ts: int, audio_name: str) -> str:
    """Every field trunk-recorder's rdio uploader sends but the key, as intake stores them."""
    fields = {
        "audioName": audio_name,
        "audioType": "audio/mp4",
        "dateTime": str(start_ts),
        "frequencies": f'[{{"freq": 851012500, "time": {start_ts}, "pos": 0.00, "len": 4.87,'
        ' "errorCount": 0, "spikeCount": 0}]',
        "frequency": "851012500",
        "patches": "[]",
        "talkgroup": "9131",
        "talkgroupGroup": "Fire",
        "talkgroupLabel": "FD Dispatch",
        "talkgroupTag": "Fire Dispatch",
        "talkgroupName": "Fire Dispatch Main",
        "sources": f'[{{"pos": 0.00, "src": {1402211 + i % 50}}}]',
        "system": "11",
        "systemLabel": "metro",
    }
    return json.dumps(fields, separators=(",", ":"))


def build_journal(
    db: Path,
    audio_dir: Path | None,
    *,
    rows: int,
    now: float,
    span: float,
    size: int,
    files_for: int,
    events: bool,
) -> list[Touched]:
    """N done + cached rows, oldest first; real files (and hashes) for the oldest `files_for`.

    With `audio_dir=None` no file is written (candidate-query timing only).
    """
    conn = connect(db)
    migrate(conn)
    conn.execute("PRAGMA synchronous = OFF")  # set-up only: the measured code reconnects
    touched: list[Touched] = []
    call_rows: list[tuple[Any, ...]] = []
    event_rows: list[tuple[Any, ...]] = []
    for i in range(rows):
        uploaded_ts = now - span * (rows - i) / rows
        received_ts = uploaded_ts - 2.0
        start_ts = int(received_ts - 5.0)
        audio_name = f"9131-{start_ts}_851012500.0-call_{i}.m4a"
        key = f"11/{utc_date(start_ts)}/{audio_name}"
        if audio_dir is not None and i < files_for:
            data = random.Random(i).randbytes(size)
            md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
            sha256 = hashlib.sha256(data).hexdigest()
            path = audio_dir.joinpath(*key.split("/"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            touched.append(Touched(i + 1, key, size, md5, sha256))
        else:  # never read: a unique stand-in hash (the journal has UNIQUE (system, sha256))
            md5 = hashlib.md5(f"row-{i}".encode(), usedforsecurity=False).hexdigest()
            sha256 = hashlib.sha256(f"row-{i}".encode()).hexdigest()
        up, rx = to_db(uploaded_ts), to_db(received_ts)
        call_rows.append(
            (
                i + 1,
                "rdio",
                "11",
                "metro",
                9131,
                "FD Dispatch",
                "Fire Dispatch",
                "Fire",
                1402211 + i % 50,
                851012500,
                to_db(start_ts),
                to_db(start_ts + 5),
                4.87,
                0,
                audio_name,
                row_metadata(i, start_ts, audio_name),
                key,
                "audio/mp4",
                size,
                sha256,
                md5,
                "done",
                1,
                rx,
                up,
                md5,
                up,
                1,
            )
        )
        if events:
            event_rows += [
                (i + 1, rx, "received", '{"protocol":"rdio"}'),
                (i + 1, up, "upload_ok", json.dumps({"etag": md5})),
                (i + 1, up, "verified", "size and sha256 match"),
            ]
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO calls (id, protocol, system, system_label, talkgroup, talkgroup_label,"
            " talkgroup_tag, talkgroup_group, source, frequency, start_time, stop_time, duration,"
            " emergency, audio_name, metadata, key, content_type, size, sha256, md5, state,"
            " attempts, received_at, uploaded_at, etag, verified_at, cached)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
            " ?, ?, ?)",
            call_rows,
        )
        conn.executemany(
            "INSERT INTO events (call_id, at, kind, detail) VALUES (?, ?, ?, ?)", event_rows
        )
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    os.sync()  # the kernel's writeback of the new file must not run during the timings
    return touched


def evict_from_os_cache(db: Path) -> None:
    """Drop the journal's (clean) pages from the OS page cache: the next read is from disk."""
    for path in (db, Path(f"{db}-wal")):
        if path.exists():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# -- the candidate query ------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryTiming:
    picked: int
    cold: float  # fresh connection, the journal's pages evicted from the OS cache first
    first: float  # on a fresh connection: SQLite's page cache empty, the OS cache warm
    best: float  # fastest of the repeats after the first, same connection
    median: float  # of the repeats after the first, same connection
    journal_median: float  # through `Journal.prune_candidates` (one thread hop), median


def _repeat(fn: Callable[[], object], times: int) -> list[float]:
    out = []
    for _ in range(times):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def trigger_args(trigger: str, cached_bytes: int, batch: int) -> dict[str, Any]:
    if trigger == "age":
        return {"retention": RETENTION, "max_bytes": 0, "low_water": 0.9, "limit": batch}
    # size cap at half the cached bytes: far more than one batch has to go, as after a cap cut
    return {"retention": 0.0, "max_bytes": cached_bytes // 2, "low_water": 0.9, "limit": batch}


def cached_bytes_of(db: Path) -> int:
    conn = connect(db, readonly=True)
    try:
        return int(
            conn.execute("SELECT coalesce(sum(size), 0) FROM calls WHERE cached = 1").fetchone()[0]
        )
    finally:
        conn.close()


def time_candidates(db: Path, trigger: str, *, batch: int, repeat: int) -> QueryTiming:
    kwargs = trigger_args(trigger, cached_bytes_of(db), batch)
    now = time.time()
    evict_from_os_cache(db)
    conn = connect(db)
    try:
        t0 = time.perf_counter()
        prune_candidates(conn, now, **kwargs)
        cold = time.perf_counter() - t0
    finally:
        conn.close()
    conn = connect(db)
    try:
        t0 = time.perf_counter()
        picked, _ = prune_candidates(conn, now, **kwargs)
        first = time.perf_counter() - t0
        runs = _repeat(lambda: prune_candidates(conn, now, **kwargs), repeat)
    finally:
        conn.close()

    async def via_journal() -> list[float]:
        journal = await Journal.open(db)
        try:
            out = []
            for _ in range(repeat + 1):
                t0 = time.perf_counter()
                await journal.prune_candidates(**kwargs)
                out.append(time.perf_counter() - t0)
            return out[1:]
        finally:
            await journal.close()

    journal_runs = trio.run(via_journal)
    return QueryTiming(
        picked=len(picked),
        cold=cold,
        first=first,
        best=min(runs),
        median=statistics.median(runs),
        journal_median=statistics.median(journal_runs),
    )


def statement_breakdown(db: Path, *, batch: int, repeat: int) -> list[tuple[str, str, float]]:
    """(statement, query plan, median seconds) for each statement of `prune_candidates`."""
    conn = connect(db)
    out = []
    try:
        cutoff = to_db(time.time() - RETENTION)
        for name, (sql, params) in STATEMENTS.items():
            bound = tuple(
                cutoff if p == "__cutoff__" else batch if p == "__limit__" else p for p in params
            )
            plan = "; ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", bound))

            def run(sql: str = sql, bound: tuple[Any, ...] = bound) -> None:
                cur = conn.execute(sql, bound)
                if "LIMIT" in sql or "sum(" in sql:
                    cur.fetchall()
                else:  # the size path reads rows until the batch is full
                    for n, _ in enumerate(cur, 1):
                        if n >= batch:
                            break
                    cur.close()

            run()
            out.append((name, plan, statistics.median(_repeat(run, repeat))))
        # What a full table scan costs for the same sum (reading the size column in place),
        # for comparison with the index-driven plan SQLite picks.
        sql = "SELECT coalesce(sum(size), 0) FROM calls NOT INDEXED WHERE cached = 1"
        plan = "; ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        out.append(
            (
                "(compare) sum with NOT INDEXED",
                plan,
                statistics.median(_repeat(lambda: conn.execute(sql).fetchall(), repeat)),
            )
        )
        # What-if, not the shipped schema: an index that also holds `size` answers the sum
        # from the index alone. Created in this temp journal, timed, and dropped again.
        conn.execute(f"CREATE INDEX {WHATIF_INDEX} ON calls (cached, state, uploaded_at, size)")
        sql = STATEMENTS["cached bytes (sum)"][0]
        plan = "; ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        out.append(
            (
                "(what-if) sum with an index on (cached, state, uploaded_at, size)",
                plan,
                statistics.median(_repeat(lambda: conn.execute(sql).fetchall(), repeat)),
            )
        )
        conn.execute(f"DROP INDEX {WHATIF_INDEX}")
    finally:
        conn.close()
    return out


# -- the passes ---------------------------------------------------------------------------------


class CountingTransport(httpx.AsyncBaseTransport):
    """httpx's transport, counting requests per method (what moto actually received)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.counts: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.counts[request.method] += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass(frozen=True)
class PassResult:
    trigger: str
    dry_run: bool
    wall: float
    candidates_s: float
    heads_report: int | None  # None (and the decisions too) when the pass raised
    heads_wire: int
    other_requests: int
    deleted: int | None
    kept: int | None
    reupload: int | None
    finished: bool
    files_gone: int | None
    rows_uncached: int
    bench_cpu: float
    moto_cpu: float
    other_cpu: float  # the rest of the machine's busy CPU meanwhile (a shared machine)
    error: str | None = None


async def put_objects(store: S3Store, audio_dir: Path, touched: list[Touched], width: int) -> None:
    cache = AudioCache(audio_dir)
    limiter = trio.CapacityLimiter(width)

    async def put(t: Touched) -> None:
        async with limiter:
            await store.put_file(
                audio_object_key(t.key),
                cache.path(t.key),
                size=t.size,
                md5_hex=t.md5,
                sha256_hex=t.sha256,
                content_type="audio/mp4",
            )

    async with trio.open_nursery() as nursery:
        for t in touched:
            nursery.start_soon(put, t)


async def run_passes(
    db: Path, audio_dir: Path, moto: MotoProcess, touched: list[Touched], args: argparse.Namespace
) -> list[PassResult]:
    transport = CountingTransport()
    store = S3Store(
        bucket=moto.bucket,
        endpoint=moto.url,
        access_key=MOTO_ACCESS_KEY,
        secret_key=MOTO_SECRET_KEY,
        timeout=30.0,
        transport=transport,
    )
    journal = await Journal.open(db)
    results: list[PassResult] = []
    try:
        t0 = time.perf_counter()
        await put_objects(store, audio_dir, touched, 16)
        print(
            f"set-up: {len(touched)} objects PUT to moto in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        cache = AudioCache(audio_dir)
        for trigger in ("age", "size"):
            kw = trigger_args(trigger, cached_bytes_of(db), args.batch)
            policy = PrunePolicy(
                retention=kw["retention"],
                max_bytes=kw["max_bytes"],
                low_water=kw["low_water"],
                batch=args.batch,
                concurrency=args.concurrency,
                interval=args.interval,
            )
            for dry_run in (True, False):
                results.append(
                    await one_pass(journal, cache, store, transport, moto, policy, trigger, dry_run)
                )
    finally:
        await store.aclose()
        await journal.close()
    return results


async def one_pass(
    journal: Journal,
    cache: AudioCache,
    store: S3Store,
    transport: CountingTransport,
    moto: MotoProcess,
    policy: PrunePolicy,
    trigger: str,
    dry_run: bool,
) -> PassResult:
    pruner = Pruner(journal, cache, store, policy)
    # The candidate query of this very pass, timed on its own just before (same state).
    t0 = time.perf_counter()
    await journal.prune_candidates(
        retention=policy.retention,
        max_bytes=policy.max_bytes,
        low_water=policy.low_water,
        limit=policy.batch,
    )
    candidates_s = time.perf_counter() - t0
    uncached_before = uncached_count(journal.path)
    transport.counts.clear()
    cpu0, moto0, busy0 = self_cpu_seconds(), cpu_seconds(moto.pid), machine_busy_seconds()
    t0 = time.perf_counter()
    report: PruneReport | None = None
    error = None
    try:
        report = await pruner.run_pass(dry_run=dry_run)
    except Exception as exc:  # a pass that raises is a finding: report it, go on
        error = describe(exc)
    wall = time.perf_counter() - t0
    cpu1, moto1, busy1 = self_cpu_seconds(), cpu_seconds(moto.pid), machine_busy_seconds()
    gone = None
    if report is not None:
        deleted = [d.candidate for d in report.decisions if d.action == "delete"]
        gone = sum(1 for c in deleted if not cache.path(c.key).exists())
    return PassResult(
        trigger=trigger,
        dry_run=dry_run,
        wall=wall,
        candidates_s=candidates_s,
        heads_report=None if report is None else report.heads,
        heads_wire=transport.counts["HEAD"],
        other_requests=sum(n for m, n in transport.counts.items() if m != "HEAD"),
        deleted=None if report is None else report.count("delete"),
        kept=None if report is None else report.count("keep"),
        reupload=None if report is None else report.count("reupload"),
        finished=report is not None and report.finished,
        files_gone=gone,
        rows_uncached=uncached_count(journal.path) - uncached_before,
        bench_cpu=cpu1 - cpu0,
        moto_cpu=moto1 - moto0,
        other_cpu=max(0.0, busy1 - busy0 - (cpu1 - cpu0) - (moto1 - moto0)),
        error=error,
    )


def describe(exc: BaseException) -> str:
    """`Type: message` of an exception, or of each leaf of an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def uncached_count(db: Path) -> int:
    """Rows marked uncached (read on a connection of its own, outside the measured pass)."""
    conn = connect(db, readonly=True)
    try:
        return int(conn.execute("SELECT count(*) FROM calls WHERE cached = 0").fetchone()[0])
    finally:
        conn.close()


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time one cache-pruner pass (candidate query, HEADs against moto, deletes)"
        " over a journal of N done + cached calls. Starts moto on 127.0.0.1 in a child"
        " process and stops it; everything lives in a temp dir removed at the end.",
    )
    p.add_argument(
        "--rows", type=int, default=100_000, help="journal rows for the passes (default 100000)"
    )
    p.add_argument(
        "--scale",
        default="10000,100000",
        help="comma-separated N for candidate-query scaling (default 10000,100000; the"
        " --rows journal is reused when N equals it)",
    )
    p.add_argument("--batch", type=int, default=1000, help="PrunePolicy.batch (default 1000)")
    p.add_argument("--concurrency", type=int, default=8, help="PrunePolicy.concurrency (default 8)")
    p.add_argument(
        "--interval",
        type=float,
        default=3600.0,
        help="PrunePolicy.interval; a pass stops at 0.9 x this (default 3600)",
    )
    p.add_argument(
        "--span-days",
        type=float,
        default=60.0,
        help="uploaded_at spread over this many days before now (default 60)",
    )
    p.add_argument(
        "--object-bytes", type=int, default=4096, help="size of each call (default 4096)"
    )
    p.add_argument("--repeat", type=int, default=7, help="repeats per query timing (default 7)")
    p.add_argument(
        "--all-files",
        action="store_true",
        help="write a cache file for every row, not only those the passes touch",
    )
    p.add_argument("--no-events", action="store_true", help="do not insert 3 events per call")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=900.0,
        help="abort if the passes take longer than this (default 900)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (its path is printed)")
    args = p.parse_args(argv)
    if args.rows < 2 * args.batch:
        p.error("--rows must be at least 2 x --batch (an age pass and a size pass)")
    if args.rows > 5_000_000:
        p.error("--rows is capped at 5,000,000")
    args.scale_n = sorted({int(x) for x in args.scale.split(",") if x.strip()})
    if any(n < 1 or n > 5_000_000 for n in args.scale_n):
        p.error("--scale values must be between 1 and 5,000,000")
    return args


@dataclass
class Workdir:
    root: Path
    keep: bool

    def __enter__(self) -> Path:
        return self.root

    def __exit__(self, *exc: object) -> None:
        if self.keep:
            print(f"kept {self.root}", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def _db_size_mb(db: Path) -> str:
    return f"{db.stat().st_size / 1e6:.0f}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print_machine()
    with Workdir(Path(tempfile.mkdtemp(prefix="trv-prune-bench-")), args.keep) as root:
        files_for = args.rows if args.all_files else 2 * args.batch
        main_db = root / "vault.db"
        audio_dir = root / "audio"
        t0 = time.perf_counter()
        touched = build_journal(
            main_db,
            audio_dir,
            rows=args.rows,
            now=time.time(),
            span=args.span_days * DAY,
            size=args.object_bytes,
            files_for=files_for,
            events=not args.no_events,
        )
        print(
            f"set-up: journal of {args.rows} rows ({_db_size_mb(main_db)} MB) and"
            f" {files_for} cache files in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )

        # 1. The candidate query alone, at each N, for both triggers.
        scale_rows = []
        for n in sorted(set(args.scale_n) | {args.rows}):
            if n < args.batch:
                continue
            if n == args.rows:
                db = main_db
            else:
                db = root / f"scale-{n}.db"
                build_journal(
                    db,
                    None,
                    rows=n,
                    now=time.time(),
                    span=args.span_days * DAY,
                    size=args.object_bytes,
                    files_for=0,
                    events=not args.no_events,
                )
            for trigger in ("age", "size"):
                qt = time_candidates(db, trigger, batch=args.batch, repeat=args.repeat)
                scale_rows.append(
                    (
                        n,
                        _db_size_mb(db),
                        trigger,
                        qt.picked,
                        f"{qt.cold * 1000:.1f}",
                        f"{qt.first * 1000:.1f}",
                        f"{qt.best * 1000:.1f}",
                        f"{qt.median * 1000:.1f}",
                        f"{qt.journal_median * 1000:.1f}",
                    )
                )
            if db != main_db:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
        print("\nCandidate query (`prune_candidates`), batch", args.batch)
        print_table(
            [
                "rows",
                "db MB",
                "trigger",
                "candidates",
                "cold ms",
                "first ms",
                "min ms",
                "median ms",
                "via Journal ms",
            ],
            scale_rows,
        )

        print(f"\nStatements of the candidate query at {args.rows} rows (median of {args.repeat})")
        print_table(
            ["statement", "EXPLAIN QUERY PLAN", "ms"],
            [
                (name, plan, f"{t * 1000:.1f}")
                for name, plan, t in statement_breakdown(
                    main_db, batch=args.batch, repeat=args.repeat
                )
            ],
        )

        # 2. Whole passes against moto.
        with MotoProcess() as moto:

            async def passes() -> list[PassResult]:
                with trio.fail_after(args.max_seconds):
                    return await run_passes(main_db, audio_dir, moto, touched, args)

            results = trio.run(passes)
        print(
            f"\nPruner.run_pass() over {args.rows} rows: batch {args.batch},"
            f" concurrency {args.concurrency}, real S3Store -> moto (child process)"
        )
        print_table(
            [
                "trigger",
                "mode",
                "wall s",
                "query ms",
                "HEADs (report/wire)",
                "other reqs",
                "deleted",
                "kept",
                "reupload",
                "files gone",
                "rows uncached",
                "HEAD/s",
                "bench CPU s",
                "moto CPU s",
                "other CPU s",
            ],
            [
                (
                    r.trigger,
                    ("dry-run" if r.dry_run else "real") + (" FAILED" if r.error else ""),
                    f"{r.wall:.2f}",
                    f"{r.candidates_s * 1000:.0f}",
                    f"{_dash(r.heads_report)}/{r.heads_wire}",
                    r.other_requests,
                    _dash(r.deleted),
                    _dash(r.kept),
                    _dash(r.reupload),
                    _dash(r.files_gone),
                    r.rows_uncached,
                    f"{r.heads_wire / r.wall:.0f}" if r.wall else "-",
                    f"{r.bench_cpu:.2f}",
                    f"{r.moto_cpu:.2f}",
                    f"{r.other_cpu:.2f}",
                )
                for r in results
            ],
        )
        for r in results:
            if r.error:
                kind = "dry-run" if r.dry_run else "real"
                print(f"ERROR: the {r.trigger} {kind} pass raised: {r.error}")
            elif not r.finished:
                print(f"WARNING: the {r.trigger} pass hit its deadline (0.9 x --interval)")
    if any(r.error for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
