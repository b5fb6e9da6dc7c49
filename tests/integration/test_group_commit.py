"""Uploads that reach the journal together are made durable together: one thread hop, one
transaction (so one WAL fsync) and one fsync per day directory for the batch, each call still
answered only once the commit that holds its row is done. What a batch must not change: every
call keeps its own name, its own duplicate check and its own failure."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

import tr_vault.intake.store
from tests.loops import Bench, open_bench
from tr_vault.intake.store import Accepted

AUDIO = b"\x00\x00\x00\x20ftypM4A " + bytes(range(256)) * 8


@asynccontextmanager
async def journal_held(bench: Bench) -> AsyncIterator[trio.Nursery]:
    """The journal's thread busy (as with a long commit) until the block ends: uploads that
    arrive meanwhile queue for the next group commit."""
    release = threading.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bench.journal.call, lambda conn: release.wait(30))
        await trio.testing.wait_all_tasks_blocked()
        try:
            yield nursery
            await trio.testing.wait_all_tasks_blocked()
        finally:
            release.set()


def run(
    nursery: trio.Nursery,
    results: dict[str, object],
    name: str,
    store: Callable[[], Awaitable[Accepted]],
) -> None:
    async def one() -> None:
        try:
            results[name] = await store()
        except Exception as exc:  # what the upload's handler would turn into an error answer
            results[name] = exc

    nursery.start_soon(one)


async def queued(bench: Bench, n: int) -> None:
    """Wait until a group commit is in flight (held by the journal) and `n` uploads wait for
    the next one (each fsyncs its file in a thread of its own first, so a task blocked on
    that thread has not reached the queue yet)."""
    batches = bench.intake.batches
    with trio.fail_after(10):
        while not batches.flushing or batches.waiting < n:
            await trio.sleep(0.001)


async def one_then_a_batch(
    bench: Bench, nursery: trio.Nursery, results: dict[str, object], calls: int
) -> None:
    """Call 0 leads a group commit (held by the journal), calls 1.. queue for the next."""
    run(nursery, results, "call 0", lambda: bench.add_call(AUDIO + bytes([0]), 0))
    await queued(bench, 0)
    for n in range(1, calls):
        run(nursery, results, f"call {n}", lambda n=n: bench.add_call(AUDIO + bytes([n]), n))
    await queued(bench, calls - 1)


def received_at(bench: Bench) -> dict[str, str]:
    return {str(k): str(at) for k, at in bench.rows("SELECT key, received_at FROM calls")}


async def test_uploads_that_arrive_together_commit_together(tmp_path: Path) -> None:
    bench = await open_bench(tmp_path)
    results: dict[str, object] = {}
    async with journal_held(bench) as nursery:
        await one_then_a_batch(bench, nursery, results, 6)
        assert results == {}  # nothing is answered while the journal has not committed
        assert bench.rows("SELECT count(*) FROM calls") == [(0,)]
    assert bench.intake.batches.batches == 2  # the first alone, then the five that queued
    assert bench.intake.batches.items == 6
    accepted = [results[f"call {n}"] for n in range(6)]
    assert all(isinstance(a, Accepted) and not a.duplicate for a in accepted)
    times = received_at(bench)
    assert len(times) == 6
    assert len({times[a.key] for a in accepted[1:]}) == 1  # type: ignore[union-attr]
    for n, a in enumerate(accepted):
        assert bench.cache.path(a.key).read_bytes() == AUDIO + bytes([n])  # type: ignore[union-attr]
    assert list(bench.cache.incoming.iterdir()) == []


async def test_different_audio_under_one_name_in_one_batch_keeps_both(tmp_path: Path) -> None:
    bench = await open_bench(tmp_path)
    results: dict[str, object] = {}
    async with journal_held(bench) as nursery:
        run(nursery, results, "first of the day", lambda: bench.add_call(AUDIO + b"x", 9))
        await queued(bench, 0)
        run(nursery, results, "recorder a", lambda: bench.add_call(AUDIO, 1))
        run(nursery, results, "recorder b", lambda: bench.add_call(AUDIO + b"other", 1))
        await queued(bench, 2)
    a, b = results["recorder a"], results["recorder b"]
    assert isinstance(a, Accepted) and isinstance(b, Accepted)
    assert not a.duplicate and not b.duplicate
    # Whichever of the two went first has the name; the other one a name of its own.
    assert "metro/2025-11-24/9131-1764001235.m4a" in {a.key, b.key}
    assert a.key != b.key
    assert bench.cache.path(a.key).read_bytes() == AUDIO
    assert bench.cache.path(b.key).read_bytes() == AUDIO + b"other"


async def test_the_same_call_twice_in_one_batch_is_one_call_and_a_duplicate(
    tmp_path: Path,
) -> None:
    bench = await open_bench(tmp_path)
    results: dict[str, object] = {}
    async with journal_held(bench) as nursery:
        run(nursery, results, "other", lambda: bench.add_call(AUDIO + b"x", 9))
        await queued(bench, 0)
        run(nursery, results, "once", lambda: bench.add_call(AUDIO, 1))
        run(nursery, results, "again", lambda: bench.add_call(AUDIO, 1))
        await queued(bench, 2)
    once, again = sorted((results["once"], results["again"]), key=lambda r: r.duplicate)  # type: ignore[union-attr]
    assert isinstance(once, Accepted) and isinstance(again, Accepted)
    assert not once.duplicate and again.duplicate
    assert (again.call_id, again.key) == (once.call_id, once.key)
    assert bench.rows("SELECT kind FROM events WHERE call_id = ? ORDER BY id", once.call_id) == [
        ("received",),
        ("duplicate",),
    ]
    files = sorted(p.name for p in bench.cache.root.rglob("*.m4a"))
    assert files == ["9131-1764001235.m4a", "9131-1764001243.m4a"]


async def test_a_call_that_fails_in_a_batch_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = await open_bench(tmp_path)
    add_call = tr_vault.intake.store.add_call

    def add_call_but_not_the_second(conn: sqlite3.Connection, meta: object, *args: object) -> int:
        if meta.start_time == 1764001234 + 2:  # type: ignore[attr-defined]
            raise sqlite3.OperationalError("injected: this row cannot be written")
        return add_call(conn, meta, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(tr_vault.intake.store, "add_call", add_call_but_not_the_second)
    results: dict[str, object] = {}
    async with journal_held(bench) as nursery:
        await one_then_a_batch(bench, nursery, results, 4)
    assert bench.intake.batches.batches == 2
    failed = results.pop("call 2")
    assert "journal" in str(failed) and "injected" in str(failed)
    assert all(isinstance(r, Accepted) for r in results.values())
    keys = sorted(r.key for r in results.values())  # type: ignore[union-attr]
    assert sorted(str(k) for (k,) in bench.rows("SELECT key FROM calls")) == keys
    assert (
        sorted(str(p.relative_to(bench.cache.root)) for p in bench.cache.root.rglob("*.m4a"))
        == keys
    )
    assert list(bench.cache.incoming.iterdir()) == []


async def test_a_batch_whose_commit_fails_leaves_no_file_and_the_next_one_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = await open_bench(tmp_path)
    sync = bench.cache.sync_directories
    broken = True

    def sync_unless_broken(keys: object) -> None:
        if broken:
            raise OSError(5, "injected: Input/output error")
        sync(keys)  # type: ignore[arg-type]

    monkeypatch.setattr(bench.cache, "sync_directories", sync_unless_broken)
    results: dict[str, object] = {}
    async with journal_held(bench) as nursery:
        await one_then_a_batch(bench, nursery, results, 3)
    assert all(isinstance(r, OSError) for r in results.values())
    assert bench.rows("SELECT count(*) FROM calls") == [(0,)]
    assert list(bench.cache.root.rglob("*.m4a")) == []
    assert list(bench.cache.incoming.iterdir()) == []
    broken = False
    again = await bench.add_call(AUDIO, 1)  # the recorder's retry
    assert again.key == "metro/2025-11-24/9131-1764001235.m4a"
    assert bench.cache.path(again.key).read_bytes() == AUDIO
