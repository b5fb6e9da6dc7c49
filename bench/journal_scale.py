"""The journal's periodic and read queries on a 1,000,000-row journal (issue 15: each < 50 ms).

What it does:

1. Builds a journal (or reuses the one at `--db` when it already holds `--rows` calls): the
   current schema (`tr_vault.journal.connect` + `migrate`), rows bulk-inserted with
   `executemany` in one transaction, spread over 3 systems, ~200 talkgroups (a few busy, a
   long tail) and `--span-days` days, in arrival order. States like a node whose pruner keeps
   30 days cached: mostly `done` (uncached past `--cached-days`, so the age trigger has a
   backlog of a few days), a few thousand `pending` (some claimed by a run that is gone) and
   `failed` (some due for their scheduled retry). One `received` event per call, plus the
   `upload_error` / `failed` events of the unfinished rows. The metadata JSON is intake's
   (`prune_pass.row_metadata`).
2. Copies it to a scratch file (the reconcile pass writes: the cached copy stays as built),
   applies to the copy the migrations the cached journal lacks (timed, printed), and
   times, on one `tr_vault.journal.connect` connection, the module functions the server's
   journal thread runs (`Journal._run` calls exactly these; the thread hop is not included):
   - `prune_candidates`, age trigger and size trigger, with the arguments `Pruner.run_pass`
     passes (default `PrunePolicy`: 30-day retention, batch 1000, low water 0.9; the size cap
     at half the cached bytes) and `site` as the server passes it;
   - `requeue`, the reconcile pass `reconcile_once` runs every interval (its first pass, which
     re-queues the rows this journal has to re-queue, is reported on its own line);
   - `list_calls` as `/api/calls` calls it (`limit + 1` rows, default limit 50): the first
     page unfiltered, and a page filtered by system + talkgroup + since (7 days);
   - `status_summary` as `/api/journal/summary` calls it: unscoped, and scoped to one system.
   Each: 2 warm-up runs, then the median and max of 7. EXPLAIN QUERY PLAN of the statements
   of every query that misses the 50 ms goal.

Example: .venv/bin/python bench/journal_scale.py --db /tmp/tr_vault_journal_1m.db
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchlib import ms, print_machine, print_table
from prune_pass import row_metadata

from tr_vault.journal import (
    CallFilter,
    connect,
    list_calls,
    migrate,
    prune_candidates,
    requeue,
    status_summary,
)
from tr_vault.services.pruner import PrunePolicy
from tr_vault.timefmt import from_db, to_db, utc_date

DAY = 86400.0
GOAL_MS = 50.0
SITE = "bench-site"
SYSTEMS = [("11", "metro", 0.6), ("12", "county", 0.3), ("27", "state", 0.1)]
TALKGROUPS = [9000 + n for n in range(200)]
TG_WEIGHTS = [1.0 / (n + 1) for n in range(200)]  # a few busy talkgroups, a long tail
DEAD_RUN = "deadbeef"  # the run whose claims the reconcile pass finds
LIVE_RUN = "0badc0de"  # this run (the reconciler's `run_id`)
CALL_COLUMNS = (
    "id, protocol, system, system_label, talkgroup, talkgroup_label, talkgroup_tag,"
    " talkgroup_group, source, frequency, start_time, stop_time, duration, emergency,"
    " audio_name, metadata, key, content_type, size, sha256, md5, state, attempts,"
    " next_attempt_at, claimed_by, claimed_at, claim_expires_at, last_error, received_at,"
    " uploaded_at, etag, verified_at, cached, pruned_at, bucket, object_key, site"
)


# -- the journal --------------------------------------------------------------------------------


def build_journal(
    db: Path, *, rows: int, now: float, span: float, cached_days: float, pending: int, failed: int
) -> None:
    for stale in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        stale.unlink(missing_ok=True)
    rng = random.Random(15)
    # Unfinished rows: pending among the newest day's calls, failed over the last week.
    day_rows = max(1, int(rows * DAY / span))
    pending_ids = set(rng.sample(range(rows - day_rows, rows), pending))
    week = range(rows - 7 * day_rows, rows)
    failed_ids = set(rng.sample([i for i in week if i not in pending_ids][: failed * 20], failed))
    systems = [s[:2] for s in SYSTEMS]
    sys_weights = [s[2] for s in SYSTEMS]
    events: list[tuple[Any, ...]] = []

    def calls() -> Iterator[tuple[Any, ...]]:
        for i in range(rows):
            received = now - span * (rows - i) / rows
            start = received - 5.0 - rng.random() * 3
            system, label = rng.choices(systems, sys_weights)[0]
            tg = rng.choices(TALKGROUPS, TG_WEIGHTS)[0]
            audio_name = f"{tg}-{int(start)}_851012500.0-call_{i}.m4a"
            key = f"{system}/{utc_date(start)}/{audio_name}"
            sha256 = hashlib.sha256(f"row-{i}".encode()).hexdigest()
            md5 = sha256[:32]
            size = 20000 + rng.randrange(60000)
            rx = to_db(received)
            state, attempts, next_at, claimed_by, claimed_at, expires, error = (
                "done", 1, None, None, None, None, None
            )  # fmt: skip
            uploaded = verified = etag = bucket = object_key = None
            cached, pruned = 1, None
            if i in pending_ids:
                state, next_at = "pending", to_db(received + 60)
                if rng.random() < 0.1:  # claimed by a run that is gone
                    claimed_by, claimed_at = f"{DEAD_RUN}:w{i % 4}", rx
                    expires = to_db(received + 300)
                attempts, error = rng.randrange(3), "PUT failed: 503 Slow Down"
            elif i in failed_ids:
                state, attempts, error = "failed", 10, "PUT failed: connection refused"
                # A quarter are due for the scheduled retry (failed_retry_interval 6 h).
                due = now - 60 if rng.random() < 0.25 else now + 3 * 3600
                next_at = to_db(due)
            else:
                up = received + 1.0 + rng.random()
                uploaded = verified = to_db(up)
                etag, bucket, object_key = md5, "tr-vault", key
                if received < now - cached_days * DAY:
                    cached, pruned = 0, to_db(up + 30 * DAY)
            events.append((i + 1, rx, "received", '{"protocol":"rdio"}'))
            if error is not None:
                events.append((i + 1, to_db(received + 2), "upload_error", error))
            if state == "failed":
                events.append((i + 1, to_db(received + 3), "failed", error))
            yield (
                i + 1, "rdio", system, label, tg, f"TG {tg}", "Fire Dispatch", "Fire",
                1402211 + i % 500, 851012500, to_db(start), to_db(start + 4.87), 4.87, 0,
                audio_name, row_metadata(i, int(start), audio_name), key, "audio/mp4", size,
                sha256, md5, state, attempts, next_at, claimed_by, claimed_at, expires, error,
                rx, uploaded, etag, verified, cached, pruned, bucket, object_key, SITE,
            )  # fmt: skip

    conn = connect(db)
    migrate(conn)
    conn.execute("PRAGMA synchronous = OFF")  # set-up only: the timings reconnect
    t0 = time.perf_counter()
    placeholders = ", ".join("?" * len(CALL_COLUMNS.split(",")))
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(f"INSERT INTO calls ({CALL_COLUMNS}) VALUES ({placeholders})", calls())
    conn.executemany("INSERT INTO events (call_id, at, kind, detail) VALUES (?, ?, ?, ?)", events)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    print(f"built {rows} calls, {len(events)} events in {time.perf_counter() - t0:.0f} s")


def row_count(db: Path) -> int:
    if not db.exists():
        return -1
    conn = connect(db, readonly=True)
    try:
        return int(conn.execute("SELECT max(id) FROM calls").fetchone()[0] or 0)
    except Exception:
        return -1
    finally:
        conn.close()


# -- timing -------------------------------------------------------------------------------------


def timed(fn: Callable[[], object], *, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


class Tracer:
    """The statements a query ran (sqlite3's trace callback), for EXPLAIN QUERY PLAN."""

    def __init__(self) -> None:
        self.sql: list[str] = []

    def __call__(self, statement: str) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            self.sql.append(statement)


def plans(db: Path, fn: Callable[[Any], object]) -> list[tuple[str, list[str]]]:
    """Run `fn(conn)` once with statement tracing, then EXPLAIN QUERY PLAN each SELECT."""
    conn = connect(db)
    tracer = Tracer()
    try:
        conn.set_trace_callback(tracer)
        fn(conn)
        conn.set_trace_callback(None)
        out = []
        for sql in dict.fromkeys(tracer.sql):  # expanded SQL: the parameters are inlined
            out.append((sql, [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]))
        return out
    finally:
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--db", type=Path, default=Path("/tmp/tr_vault_journal_1m.db"))
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--span-days", type=float, default=90.0)
    ap.add_argument("--cached-days", type=float, default=35.0)
    ap.add_argument("--pending", type=int, default=3000)
    ap.add_argument("--failed", type=int, default=2000)
    ap.add_argument("--rebuild", action="store_true", help="build even if --db holds --rows")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    print_machine()

    now = time.time()
    if args.rebuild or row_count(args.db) != args.rows:
        build_journal(
            args.db,
            rows=args.rows,
            now=now,
            span=args.span_days * DAY,
            cached_days=args.cached_days,
            pending=args.pending,
            failed=args.failed,
        )
    else:
        print(f"reusing {args.db} ({args.rows} calls)")
    # Times relative to the newest row, so a cached journal built days ago reads the same.
    ro = connect(args.db, readonly=True)
    newest = ro.execute("SELECT max(received_at) FROM calls").fetchone()[0]
    cached_bytes = int(ro.execute("SELECT sum(size) FROM calls WHERE cached = 1").fetchone()[0])
    counts = dict(ro.execute("SELECT state, count(*) FROM calls GROUP BY state").fetchall())
    ro.close()
    now = from_db(newest) + 60
    print(f"states: {counts}; cached bytes {cached_bytes}")

    work = args.db.with_name(args.db.stem + ".scratch.db")
    for stale in (work, Path(f"{work}-wal"), Path(f"{work}-shm")):
        stale.unlink(missing_ok=True)
    shutil.copyfile(args.db, work)
    # A journal cached by an older checkout lacks the newest migrations: apply them to the
    # scratch copy (timed: what an upgrade costs on this journal), as `Journal.open` would.
    conn = connect(work)
    try:
        t0 = time.perf_counter()
        applied = migrate(conn)
        migrate_s = time.perf_counter() - t0
    finally:
        conn.close()
    if applied:
        print(f"migrated the scratch copy: {applied} in {migrate_s:.1f} s")

    policy = PrunePolicy()
    cap = cached_bytes // 2
    busy_tg = TALKGROUPS[3]
    filtered = CallFilter(system="11", talkgroup=busy_tg, since=now - 7 * DAY)
    one_system = frozenset({"11"})
    limit = 50 + 1  # /api/calls asks for DEFAULT_LIMIT + 1 rows

    queries: dict[str, Callable[[Any], object]] = {
        "prune_candidates, age trigger": lambda c: prune_candidates(
            c,
            now,
            retention=policy.retention,
            max_bytes=0,
            low_water=policy.low_water,
            limit=policy.batch,
            site=SITE,
        ),
        "prune_candidates, size trigger (cap = half)": lambda c: prune_candidates(
            c,
            now,
            retention=0.0,
            max_bytes=cap,
            low_water=policy.low_water,
            limit=policy.batch,
            site=SITE,
        ),
        "requeue (reconcile pass, steady)": lambda c: requeue(
            c, LIVE_RUN, now, max_attempts=10, failed_retry_in=21600.0
        ),
        "list_calls, first page": lambda c: list_calls(c, CallFilter(), limit=limit, after=None),
        f"list_calls, system 11 + tg {busy_tg} + 7 days": lambda c: list_calls(
            c, filtered, limit=limit, after=None
        ),
        "status_summary, unscoped": lambda c: status_summary(c, now),
        "status_summary, system 11": lambda c: status_summary(c, now, one_system),
    }
    conn = connect(work)
    try:
        t0 = time.perf_counter()
        first = requeue(conn, LIVE_RUN, now, max_attempts=10, failed_retry_in=21600.0)
        first_s = time.perf_counter() - t0
        results = []
        for name, fn in queries.items():
            runs = timed(lambda fn=fn: fn(conn), warmup=args.warmup, runs=args.runs)  # type: ignore[misc]
            results.append((name, statistics.median(runs), max(runs)))
    finally:
        conn.close()

    print(
        f"\nreconcile first pass (re-queued {first.interrupted} interrupted,"
        f" {first.failed} failed): {ms(first_s)} ms"
    )
    print(f"\nmodule functions on one connection; median and max of {args.runs} after"
          f" {args.warmup} warm-ups\n")  # fmt: skip
    rows = [
        (n, ms(med), ms(mx), f"{GOAL_MS:.0f}", "yes" if med * 1000 < GOAL_MS else "**no**")
        for n, med, mx in results
    ]
    print_table(["query", "median ms", "max ms", "goal ms", "met?"], rows)
    for name, med, _ in results:
        if med * 1000 >= GOAL_MS:
            print(f"\n### {name}: EXPLAIN QUERY PLAN")
            for sql, plan in plans(work, queries[name]):
                print(f"  {' '.join(sql.split())[:300]}")
                for step in plan:
                    print(f"    {step}")
    for stale in (work, Path(f"{work}-wal"), Path(f"{work}-shm")):
        stale.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
