"""The summary's counts (migration 0009, `call_counts`) stay what counting `calls` says.

Whoever changes a row, the server's functions, `tr-vault import`'s batches, verify or an
operator's own SQL: the calls and bytes per state and the cached calls and bytes that
`status_summary` shows equal a `GROUP BY` over `calls`, unscoped and for a reader's systems.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tr_vault import journal
from tr_vault.call import CallMeta, StoredAudio
from tr_vault.journal import NewCall, connect, migrate, migration_files, status_summary
from tr_vault.verify import Outcome, record_finding

T0 = 1764001234.0
SYSTEMS = ["11", "12", "metro"]
SCOPES: list[frozenset[str] | None] = [
    None,
    frozenset({"11"}),
    frozenset({"11", "metro"}),
    frozenset({"absent"}),
    frozenset(),
]


def scope_sql(systems: frozenset[str] | None) -> tuple[str, list[str]]:
    if systems is None:
        return "1", []
    if not systems:
        return "0", []
    return f"system IN ({', '.join('?' * len(systems))})", sorted(systems)


def counted(conn: sqlite3.Connection, systems: frozenset[str] | None) -> dict[str, Any]:
    """What the summary must say, counted the slow way: every row of `calls`."""
    where, args = scope_sql(systems)
    states = {
        r[0]: {"calls": r[1], "bytes": r[2]}
        for r in conn.execute(
            "SELECT state, count(*), coalesce(sum(size), 0) FROM calls"
            f" WHERE {where} GROUP BY state ORDER BY state",
            args,
        )
    }
    for state in ("pending", "done", "failed", "lost"):
        states.setdefault(state, {"calls": 0, "bytes": 0})
    cached = conn.execute(
        f"SELECT count(*), coalesce(sum(size), 0) FROM calls WHERE cached = 1 AND {where}", args
    ).fetchone()
    oldest = conn.execute(
        f"SELECT id, received_at FROM calls WHERE state = 'pending' AND {where}"
        " ORDER BY id LIMIT 1",
        args,
    ).fetchone()
    return {
        "states": states,
        "cached": {"calls": cached[0], "bytes": cached[1]},
        "oldest_pending": dict(oldest) if oldest else None,
    }


def assert_summary_counts(conn: sqlite3.Connection, now: float) -> None:
    for systems in SCOPES:
        summary = status_summary(conn, now, systems)
        expected = counted(conn, systems)
        # The states in the same order too: the JSON of /api/journal/summary shows them so.
        assert list(summary["states"].items()) == list(expected["states"].items()), systems
        assert summary["cached"] == expected["cached"], systems
        assert summary["oldest_pending"] == expected["oldest_pending"], systems


class Ops:
    """Applies one generated operation to a journal, through the journal's own functions
    where a user's action has one, else as an operator's SQL in `sqlite3` would."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.serial = 0
        self.now = T0

    def new_call(self, system: str, size: int, *, same_as: int | None = None) -> NewCall:
        n = self.serial if same_as is None else same_as
        if same_as is None:
            self.serial += 1
        sha = hashlib.sha256(f"call-{n}".encode()).hexdigest()
        meta = CallMeta(
            "rdio", system, None, 9000 + n % 7, T0 + n, f"{n}.m4a", "audio/mp4", metadata={"n": n}
        )
        return NewCall(meta, StoredAudio(f"{system}/2025-11-24/{n}.m4a", size, sha, sha[:32]), None)

    def target(self, pick: int) -> int | None:
        ids = [r[0] for r in self.conn.execute("SELECT id FROM calls ORDER BY id")]
        return ids[pick % len(ids)] if ids else None

    def apply(self, op: tuple[Any, ...]) -> None:
        conn, kind = self.conn, op[0]
        self.now += 7.0
        now = self.now
        if kind == "insert":  # the server's intake, one call per transaction
            _, system, state, size, again = op
            c = self.new_call(system, size, same_as=0 if again and self.serial else None)
            journal.insert_call(conn, c.meta, c.audio, state, now, None)
            return
        if kind == "import":  # `tr-vault import`: a batch per transaction, repeats included
            _, state, batch, repeat = op
            calls = [self.new_call(system, size) for system, size in batch]
            if repeat and calls:
                calls.append(calls[0])
            journal.insert_calls(conn, calls, state, now)
            return
        if kind == "requeue":  # the reconcile pass: claims of a run that is gone, due failed
            journal.requeue(conn, "live", now, max_attempts=op[1], failed_retry_in=0.0)
            return
        if kind == "retry_all":
            journal.retry(conn, now, None)
            return
        if kind == "sql_update_many":  # e.g. "the cache of system 12 is gone"
            _, system, cached = op
            conn.execute("UPDATE calls SET cached = ? WHERE system = ?", (cached, system))
            return
        call_id = self.target(op[1])
        if call_id is None:
            return
        if kind in ("upload_ok", "upload_error", "release", "claim_dead"):
            worker = "dead:w1" if kind == "claim_dead" else "live:w1"
            claim = journal.claim_next(conn, worker, now, call_id, 60.0)
            if claim.job is None or kind == "claim_dead":
                return
            if kind == "upload_ok":
                journal.upload_done(conn, call_id, worker, now, '"etag"', op[2])
            elif kind == "upload_error":
                journal.upload_failed(
                    conn,
                    call_id,
                    worker,
                    now,
                    "PUT failed: 503",
                    permanent=op[2],
                    max_attempts=2,
                    retry_in=0.0,
                    failed_retry_in=0.0,
                )
            else:
                journal.release(conn, call_id, worker)
        elif kind == "pruned":
            journal.mark_pruned(conn, call_id, now, "age")
        elif kind == "missing":
            journal.mark_missing(conn, call_id, now, "HEAD 404")
        elif kind == "verify":  # `lost` without a local copy, re-queued with one
            record_finding(conn, call_id, now, Outcome.MISSING, "404", op[2])
        elif kind == "retry":
            journal.retry(conn, now, [call_id])
        elif kind == "sql_update":
            _, _, column, value = op
            conn.execute(f"UPDATE calls SET {column} = ? WHERE id = ?", (value, call_id))
        elif kind == "sql_refused":  # a statement the schema refuses changes no count either
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute(
                    "UPDATE calls SET size = size + 1, state = 'gone' WHERE id = ?", (call_id,)
                )
        elif kind == "sql_delete":
            # The sqlite3 shell runs with foreign keys off: the call's events stay, orphaned.
            conn.execute("PRAGMA foreign_keys = OFF")
            conn.execute("DELETE FROM calls WHERE id = ?", (call_id,))
            conn.execute("PRAGMA foreign_keys = ON")
        else:  # pragma: no cover
            raise AssertionError(kind)


pick = st.integers(0, 1000)
system = st.sampled_from(SYSTEMS)
size = st.integers(1, 100_000)
operation = st.one_of(
    st.tuples(st.just("insert"), system, st.sampled_from(["pending", "done"]), size, st.booleans()),
    st.tuples(
        st.just("import"),
        st.sampled_from(["pending", "done"]),
        st.lists(st.tuples(system, size), max_size=4),
        st.booleans(),
    ),
    st.tuples(st.just("upload_ok"), pick, st.booleans()),
    st.tuples(st.just("upload_error"), pick, st.booleans()),
    st.tuples(st.just("release"), pick),
    st.tuples(st.just("claim_dead"), pick),
    st.tuples(st.just("requeue"), st.sampled_from([None, 1, 3])),
    st.tuples(st.just("pruned"), pick),
    st.tuples(st.just("missing"), pick),
    st.tuples(st.just("verify"), pick, st.booleans()),
    st.tuples(st.just("retry"), pick),
    st.tuples(st.just("retry_all")),
    st.one_of(
        st.tuples(
            st.just("sql_update"),
            pick,
            st.just("state"),
            st.sampled_from(["pending", "done", "failed", "lost"]),
        ),
        st.tuples(st.just("sql_update"), pick, st.just("cached"), st.sampled_from([0, 1])),
        st.tuples(st.just("sql_update"), pick, st.just("size"), size),
        st.tuples(st.just("sql_update"), pick, st.just("system"), system),
    ),
    st.tuples(st.just("sql_update_many"), system, st.sampled_from([0, 1])),
    st.tuples(st.just("sql_refused"), pick),
    st.tuples(st.just("sql_delete"), pick),
)


@contextmanager
def fresh_journal() -> Iterator[sqlite3.Connection]:
    with tempfile.TemporaryDirectory() as where:
        conn = connect(Path(where) / "vault.db")
        conn.execute("PRAGMA synchronous = OFF")  # the test's speed; no crash is simulated
        try:
            migrate(conn)
            yield conn
        finally:
            conn.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, min_size=1, max_size=30))
def test_the_summary_counts_equal_counting_the_calls_whatever_changed_them(
    ops: list[tuple[Any, ...]],
) -> None:
    with fresh_journal() as conn:
        run = Ops(conn)
        for op in ops:
            run.apply(op)
            assert_summary_counts(conn, run.now)


def test_a_summary_of_an_empty_journal_lists_every_state_at_zero(tmp_path: Path) -> None:
    conn = connect(tmp_path / "vault.db")
    migrate(conn)
    summary = status_summary(conn, T0)
    assert summary["states"] == {
        s: {"calls": 0, "bytes": 0} for s in ("pending", "done", "failed", "lost")
    }
    assert summary["cached"] == {"calls": 0, "bytes": 0}
    assert summary["oldest_pending"] is None
    # Every call of a state gone again: the state still has its line, at 0.
    ops = Ops(conn)
    ops.apply(("insert", "11", "pending", 500, False))
    conn.execute("UPDATE calls SET state = 'done'")
    summary = status_summary(conn, T0)
    assert summary["states"]["pending"] == {"calls": 0, "bytes": 0}
    assert summary["states"]["done"] == {"calls": 1, "bytes": 500}
    assert list(summary["states"]) == ["done", "pending", "failed", "lost"]


def test_migrating_a_version_8_journal_with_calls_counts_them(tmp_path: Path) -> None:
    """0009 over a journal that already holds calls: the counts start right, and stay so."""
    v8 = tmp_path / "v8"
    v8.mkdir()
    for number, path in migration_files():
        if number <= 8:
            (v8 / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    conn = connect(tmp_path / "vault.db")
    assert migrate(conn, v8) == list(range(1, 9))
    ops = Ops(conn)
    ops.apply(("import", "done", [(s, 1000 + n) for n, s in enumerate(SYSTEMS * 5)], True))
    ops.apply(("insert", "12", "pending", 777, False))
    ops.apply(("insert", "metro", "pending", 778, False))
    conn.execute("UPDATE calls SET state = 'failed' WHERE id = 2")
    conn.execute("UPDATE calls SET state = 'lost', cached = 0 WHERE id = 3")
    conn.execute("UPDATE calls SET cached = 0 WHERE system = 'metro' AND state = 'done'")
    before = {systems: counted(conn, systems) for systems in SCOPES}
    # `tr-vault status` of a CLI newer than the server: read-only, so not migrated yet.
    readonly = connect(tmp_path / "vault.db", readonly=True)
    assert_summary_counts(readonly, ops.now)
    readonly.close()

    assert migrate(conn) == [9]
    assert {systems: counted(conn, systems) for systems in SCOPES} == before
    by_sql = conn.execute(
        "SELECT system, state, cached, count(*), sum(size) FROM calls"
        " GROUP BY system, state, cached ORDER BY 1, 2, 3"
    ).fetchall()
    kept = conn.execute(
        "SELECT system, state, cached, calls, bytes FROM call_counts ORDER BY 1, 2, 3"
    ).fetchall()
    assert [tuple(r) for r in kept] == [tuple(r) for r in by_sql]
    assert_summary_counts(conn, ops.now)
    assert status_summary(conn, ops.now)["states"]["done"]["calls"] == 13

    # And the triggers keep them from there on.
    for op in [
        ("insert", "11", "pending", 5, False),
        ("upload_ok", 16, True),
        ("sql_update", 1, "system", "12"),
        ("sql_delete", 4),
    ]:
        ops.apply(op)
        assert_summary_counts(conn, ops.now)
