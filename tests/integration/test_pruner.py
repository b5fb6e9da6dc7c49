"""The cache pruner's decisions, on virtual time with an in-memory store."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.loops import Bench, open_bench
from tests.memstore import MemoryStore, Stored
from tr_vault.errors import StorageUnavailable
from tr_vault.services.pruner import PrunePolicy, Pruner
from tr_vault.services.uploader import Uploader, UploadPolicy
from tr_vault.storage.base import audio_object_key

HOUR = 3600.0


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.02)


def audio(n: int, size: int = 1000) -> bytes:
    return random.Random(n).randbytes(size)


async def upload_all(bench: Bench, store: MemoryStore) -> None:
    """Run the workers until nothing is pending."""
    up = Uploader(bench.journal, bench.cache, store, UploadPolicy(workers=2), run_id="r1")
    async with trio.open_nursery() as nursery:
        await nursery.start(up.run)
        with trio.fail_after(600):
            while bench.rows("SELECT count(*) FROM calls WHERE state = 'pending'")[0][0]:
                await trio.sleep(1)
        nursery.cancel_scope.cancel()


def cached_ids(bench: Bench) -> list[int]:
    return [int(r[0]) for r in bench.rows("SELECT id FROM calls WHERE cached = 1 ORDER BY id")]  # type: ignore[call-overload]


async def test_age_pruning_deletes_exactly_the_old_confirmed_files(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    old = [await bench.add_call(audio(n), n) for n in range(3)]
    await upload_all(bench, store)
    await trio.sleep(10 * HOUR)
    young = [await bench.add_call(audio(n), n) for n in range(3, 5)]
    await upload_all(bench, store)
    pending = await bench.add_call(audio(5), 5)  # never uploaded
    failed = await bench.add_call(audio(6), 6)
    bench.rows("UPDATE calls SET state = 'failed' WHERE id = ?", failed.call_id)
    bench.rows("UPDATE calls SET uploaded_at = '2000-01-01 00:00:00.000' WHERE id IN (?, ?)",
               pending.call_id, failed.call_id)  # fmt: skip

    pruner = Pruner(bench.journal, bench.cache, store, PrunePolicy(retention=5 * HOUR))
    report = await pruner.run_pass()

    assert report.count("delete") == 3
    assert report.heads == 3
    assert cached_ids(bench) == [c.call_id for c in young] + [pending.call_id, failed.call_id]
    for c in old:
        assert not bench.cache.path(c.key).exists()
        row = await bench.journal.get_call(c.call_id)
        assert row is not None and row.cached == 0 and row.pruned_at is not None
        assert [e.kind for e in await bench.journal.events(c.call_id)][-1] == "pruned"
    for c in [*young, pending, failed]:
        assert bench.cache.path(c.key).exists()


async def test_size_pruning_frees_down_to_the_low_water_mark(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    calls = []
    for n in range(10):
        calls.append(await bench.add_call(audio(n, 1000), n))
        await upload_all(bench, store)
        await trio.sleep(60)  # distinct upload times, oldest first
    pruner = Pruner(
        bench.journal, bench.cache, store,
        PrunePolicy(retention=0, max_bytes=8000, low_water=0.5),
    )  # fmt: skip
    report = await pruner.run_pass()
    # 10,000 bytes cached, cap 8,000, low water 4,000: the six oldest go.
    assert report.count("delete") == 6
    assert all(d.candidate.reason == "size" for d in report.decisions)
    assert cached_ids(bench) == [c.call_id for c in calls[6:]]
    # Under the cap, a second pass does nothing.
    assert (await pruner.run_pass()).decisions == []


async def test_object_deleted_behind_our_back_is_uploaded_again(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    c = await bench.add_call(audio(1), 1)
    await upload_all(bench, store)
    await trio.sleep(2 * HOUR)
    del store.objects[audio_object_key(c.key)]
    woken = []
    pruner = Pruner(bench.journal, bench.cache, store, PrunePolicy(retention=HOUR),
                    wake_uploader=lambda: woken.append(1))  # fmt: skip
    report = await pruner.run_pass()
    assert report.count("reupload") == 1
    assert woken
    row = await bench.journal.get_call(c.call_id)
    assert row is not None and row.state == "pending" and row.cached == 1
    assert bench.cache.path(c.key).exists()
    assert "missing_in_s3" in [e.kind for e in await bench.journal.events(c.call_id)]
    await upload_all(bench, store)
    assert store.objects[audio_object_key(c.key)].data == audio(1)


async def test_replaced_object_is_not_trusted(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    a = await bench.add_call(audio(1), 1)
    b = await bench.add_call(audio(2), 2)
    await upload_all(bench, store)
    await trio.sleep(2 * HOUR)
    store.objects[audio_object_key(a.key)] = Stored(b"short", "x" * 64, "audio/mp4")
    old = store.objects[audio_object_key(b.key)]
    store.objects[audio_object_key(b.key)] = Stored(audio(99), "f" * 64, old.content_type)
    report = await Pruner(bench.journal, bench.cache, store, PrunePolicy(retention=HOUR)).run_pass()
    assert report.count("keep") == 2
    whys = sorted(d.why for d in report.decisions)
    assert whys[0].startswith("sha256 mismatch") and whys[1].startswith("size mismatch")
    assert cached_ids(bench) == [a.call_id, b.call_id]


async def test_404_right_after_upload_is_unknown(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    c = await bench.add_call(audio(1), 1)
    await upload_all(bench, store)
    del store.objects[audio_object_key(c.key)]
    # Size cap forces an immediate candidate, seconds after its upload.
    pruner = Pruner(bench.journal, bench.cache, store, PrunePolicy(retention=0, max_bytes=1))
    report = await pruner.run_pass()
    assert [d.action for d in report.decisions] == ["keep"]
    row = await bench.journal.get_call(c.call_id)
    assert row is not None and row.state == "done" and row.cached == 1


async def test_store_unreachable_deletes_nothing(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    for n in range(4):
        await bench.add_call(audio(n), n)
    await upload_all(bench, store)
    await trio.sleep(2 * HOUR)
    store.fail("head", StorageUnavailable("head: connection refused"), times=4)
    report = await Pruner(bench.journal, bench.cache, store, PrunePolicy(retention=HOUR)).run_pass()
    assert report.count("keep") == 4
    assert len(cached_ids(bench)) == 4


async def test_dry_run_changes_nothing(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    c = await bench.add_call(audio(1), 1)
    await upload_all(bench, store)
    await trio.sleep(2 * HOUR)
    report = await Pruner(bench.journal, bench.cache, store, PrunePolicy(retention=HOUR)).run_pass(
        dry_run=True
    )
    assert [(d.action, d.why) for d in report.decisions] == [("delete", "age: verified in S3")]
    assert cached_ids(bench) == [c.call_id]


async def test_a_pass_is_bounded(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    for n in range(30):
        await bench.add_call(audio(n), n)
    await upload_all(bench, store)
    await trio.sleep(2 * HOUR)
    report = await Pruner(
        bench.journal, bench.cache, store, PrunePolicy(retention=HOUR, batch=10, concurrency=4)
    ).run_pass()
    assert report.count("delete") == 10
    assert len(cached_ids(bench)) == 20
