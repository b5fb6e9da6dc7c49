"""The cache pruner's decisions, on virtual time with an in-memory store."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

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
    health = bench.health(store)
    up = Uploader(
        bench.journal, bench.cache, store, UploadPolicy(workers=2), health=health, run_id="r1"
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(health.run)
        await nursery.start(up.run)
        with trio.fail_after(600):
            while bench.rows("SELECT count(*) FROM calls WHERE state = 'pending'")[0][0]:
                await trio.sleep(1)
        nursery.cancel_scope.cancel()


def pruner(bench: Bench, store: MemoryStore, policy: PrunePolicy, **kw: Any) -> Pruner:
    return Pruner(bench.journal, bench.cache, store, policy, health=bench.health(store), **kw)


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
    # A failed row (and a pending one) with a very old upload time: never pruned.
    bench.execute("UPDATE calls SET state = 'failed' WHERE id = ?", failed.call_id)
    bench.execute("UPDATE calls SET uploaded_at = '2000-01-01 00:00:00.000' WHERE id IN (?, ?)",
                  pending.call_id, failed.call_id)  # fmt: skip
    assert bench.rows("SELECT state, uploaded_at FROM calls WHERE id = ?", failed.call_id) == [
        ("failed", "2000-01-01 00:00:00.000")
    ]

    report = await pruner(bench, store, PrunePolicy(retention=5 * HOUR)).run_pass()

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
    size_pruner = pruner(bench, store, PrunePolicy(retention=0, max_bytes=8000, low_water=0.5))
    report = await size_pruner.run_pass()
    # 10,000 bytes cached, cap 8,000, low water 4,000: the six oldest go.
    assert report.count("delete") == 6
    assert all(d.candidate.reason == "size" for d in report.decisions)
    assert cached_ids(bench) == [c.call_id for c in calls[6:]]
    # Under the cap, a second pass does nothing.
    assert (await size_pruner.run_pass()).decisions == []


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
    report = await pruner(
        bench, store, PrunePolicy(retention=HOUR), wake_uploader=lambda: woken.append(1)
    ).run_pass()
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
    report = await pruner(bench, store, PrunePolicy(retention=HOUR)).run_pass()
    assert report.count("keep") == 2
    whys = sorted(d.why for d in report.decisions)
    assert whys[0].startswith("sha256 mismatch") and whys[1].startswith("size mismatch")
    assert cached_ids(bench) == [a.call_id, b.call_id]


async def test_404_for_a_verified_upload_is_a_lost_object_at_once(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    c = await bench.add_call(audio(1), 1)
    await upload_all(bench, store)
    del store.objects[audio_object_key(c.key)]
    # Size cap forces an immediate candidate, seconds after its upload: our own HEAD saw the
    # object then, so a 404 now means it was lost.
    report = await pruner(bench, store, PrunePolicy(retention=0, max_bytes=1)).run_pass()
    assert [d.action for d in report.decisions] == ["reupload"]
    row = await bench.journal.get_call(c.call_id)
    assert row is not None and row.state == "pending" and row.cached == 1


async def test_404_while_the_store_probe_fails_deletes_and_requeues_nothing(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    # HEAD answers have no body: a deleted bucket looks like a deleted key. The probe tells.
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    calls = [await bench.add_call(audio(n), n) for n in range(3)]
    await upload_all(bench, store)
    await trio.sleep(2 * HOUR)
    p = pruner(bench, store, PrunePolicy(retention=HOUR))
    assert await p.health.confirm()
    for c in calls:
        del store.objects[audio_object_key(c.key)]
    store.fail("put", StorageUnavailable("put: HTTP 404 NoSuchBucket", code="NoSuchBucket"))
    report = await p.run_pass()
    assert [d.action for d in report.decisions] == ["keep"] * 3
    assert all("probe failed" in d.why for d in report.decisions)
    assert bench.rows("SELECT DISTINCT state, cached FROM calls") == [("done", 1)]
    assert len(store.puts) == len(calls) + 3  # the calls, two probes, and one failed probe


async def test_no_pass_runs_while_the_store_is_down(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    for n in range(3):
        await bench.add_call(audio(n), n)
    await upload_all(bench, store)
    await trio.sleep(2 * HOUR)
    store.outage(StorageUnavailable("put: ConnectError"))
    report = await pruner(bench, store, PrunePolicy(retention=HOUR)).run_pass()
    assert report.skipped is not None and "ConnectError" in report.skipped
    assert report.decisions == [] and report.heads == 0
    assert len(cached_ids(bench)) == 3


async def test_store_unreachable_deletes_nothing(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    for n in range(4):
        await bench.add_call(audio(n), n)
    await upload_all(bench, store)
    await trio.sleep(2 * HOUR)
    p = pruner(bench, store, PrunePolicy(retention=HOUR))
    assert await p.health.confirm()
    store.fail("head", StorageUnavailable("head: connection refused"), times=4)
    report = await p.run_pass()
    assert report.count("keep") == 4
    assert len(cached_ids(bench)) == 4


async def test_dry_run_changes_nothing(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    c = await bench.add_call(audio(1), 1)
    await upload_all(bench, store)
    await trio.sleep(2 * HOUR)
    report = await pruner(bench, store, PrunePolicy(retention=HOUR)).run_pass(dry_run=True)
    assert [(d.action, d.why) for d in report.decisions] == [("delete", "age: verified in S3")]
    assert cached_ids(bench) == [c.call_id]


async def test_a_pass_is_bounded(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    for n in range(30):
        await bench.add_call(audio(n), n)
    await upload_all(bench, store)
    await trio.sleep(2 * HOUR)
    policy = PrunePolicy(retention=HOUR, batch=10, concurrency=4)
    report = await pruner(bench, store, policy).run_pass()
    assert report.count("delete") == 10
    assert len(cached_ids(bench)) == 20
