"""The upload workers' logic on virtual time: backoff, attempts, failure, re-queue, backlog.

The store here is an in-memory fake (the S3 client itself is tested over HTTP elsewhere);
time is trio's MockClock, so a 5-minute backoff takes no real time.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.loops import open_bench, wait_state
from tests.memstore import MemoryStore
from tr_vault.errors import StoragePermanent, StorageUnavailable
from tr_vault.services.reconciler import reconcile_once
from tr_vault.services.uploader import Uploader, UploadPolicy
from tr_vault.storage.base import audio_object_key

AUDIO = b"\x00\x00\x00\x20ftypM4A " + bytes(range(256)) * 8


@pytest.fixture
def clock() -> trio.testing.MockClock:
    # Jump only when every task has been idle for a while: thread hops of the journal
    # (~0.1 ms) must not make virtual time race ahead.
    return trio.testing.MockClock(autojump_threshold=0.02)


def policy(**kw: object) -> UploadPolicy:
    values: dict[str, object] = {
        "workers": 1, "max_attempts": 5, "backoff_base": 2.0, "backoff_max": 60.0,
        "timeout": 10.0, "failed_retry_interval": 3600.0,
    }  # fmt: skip
    values.update(kw)
    return UploadPolicy(**values)  # type: ignore[arg-type]


async def test_transient_errors_back_off_then_succeed(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    store.fail("put", StorageUnavailable("put: HTTP 503 SlowDown", code="SlowDown"), times=3)
    up = Uploader(bench.journal, bench.cache, store, policy(), run_id="r1", rng=random.Random(7))
    accepted = await bench.add_call(AUDIO, 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(up.run)
        await wait_state(bench, accepted.call_id, "done")
        nursery.cancel_scope.cancel()

    times = [t for _, t in store.puts]
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # equal jitter: attempt n waits between half and all of min(max, base * 2^(n-1))
    for n, gap in enumerate(gaps, start=1):
        ceiling = min(60.0, 2.0 * 2 ** (n - 1))
        assert ceiling / 2 - 0.01 <= gap <= ceiling + 1.0, (n, gap)
    row = await bench.journal.get_call(accepted.call_id)
    assert row is not None
    assert row.state == "done"
    assert row.attempts == 4
    assert row.last_error is None
    assert row.etag == hashlib.md5(AUDIO).hexdigest()
    kinds = [e.kind for e in await bench.journal.events(accepted.call_id)]
    assert kinds == ["received"] + ["upload_error"] * 3 + ["upload_ok", "verified"]
    errors = [
        e.detail for e in await bench.journal.events(accepted.call_id) if e.kind == "upload_error"
    ]
    assert all("SlowDown" in (d or "") for d in errors)
    assert store.objects[audio_object_key(accepted.key)].data == AUDIO


async def test_attempts_exhausted_then_failed_then_requeued_on_schedule(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    store.fail("put", StorageUnavailable("put: connection refused"), times=3)
    up = Uploader(bench.journal, bench.cache, store, policy(max_attempts=3), run_id="r1")
    accepted = await bench.add_call(AUDIO, 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(up.run)
        await wait_state(bench, accepted.call_id, "failed")
        row = await bench.journal.get_call(accepted.call_id)
        assert row is not None and row.attempts == 3
        assert row.last_error == "put: connection refused"
        # Nothing happens to a failed row before its rest is over...
        assert (await reconcile_once(bench.journal, "r1", up.wake)).failed == 0
        clock.jump(3600)  # the failed row rests; idle workers need not poll through it
        # ... then the reconciler gives it another go, and it lands.
        assert (await reconcile_once(bench.journal, "r1", up.wake)).failed == 1
        await wait_state(bench, accepted.call_id, "done")
        nursery.cancel_scope.cancel()
    kinds = [e.kind for e in await bench.journal.events(accepted.call_id)]
    assert kinds.count("failed") == 1
    assert "requeued" in kinds


async def test_permanent_error_fails_at_once_and_operator_retry_requeues(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    store.fail(
        "put",
        StoragePermanent(
            "put: HTTP 403 InvalidAccessKeyId: no such key", code="InvalidAccessKeyId"
        ),
    )
    up = Uploader(bench.journal, bench.cache, store, policy(), run_id="r1")
    accepted = await bench.add_call(AUDIO, 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(up.run)
        await wait_state(bench, accepted.call_id, "failed")
        row = await bench.journal.get_call(accepted.call_id)
        assert row is not None and row.attempts == 1
        assert "InvalidAccessKeyId" in (row.last_error or "")
        assert await bench.journal.retry() == [accepted.call_id]
        up.wake()
        await wait_state(bench, accepted.call_id, "done")
        nursery.cancel_scope.cancel()


async def test_head_404_right_after_put_is_unknown_not_lost(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    from tr_vault.errors import ObjectNotFound

    store.fail("head", ObjectNotFound("head: 404", status=404))
    up = Uploader(bench.journal, bench.cache, store, policy(), run_id="r1")
    accepted = await bench.add_call(AUDIO, 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(up.run)
        await wait_state(bench, accepted.call_id, "done")
        nursery.cancel_scope.cancel()
    events = await bench.journal.events(accepted.call_id)
    assert any(e.kind == "upload_error" and "not visible yet" in (e.detail or "") for e in events)
    assert not any(e.kind == "failed" for e in events)


async def test_slow_store_times_out_and_is_retried(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore(put_delay=30.0)  # longer than the 10 s timeout
    up = Uploader(bench.journal, bench.cache, store, policy(), run_id="r1")
    accepted = await bench.add_call(AUDIO, 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(up.run)
        with trio.fail_after(600):
            while not (await bench.journal.get_call(accepted.call_id)).last_error:  # type: ignore[union-attr]
                await trio.sleep(1)
        row = await bench.journal.get_call(accepted.call_id)
        assert row is not None
        assert "TR_VAULT_UPLOAD_TIMEOUT" in (row.last_error or "")
        assert row.state == "pending"
        store.put_delay = 0.0
        await wait_state(bench, accepted.call_id, "done")
        nursery.cancel_scope.cancel()


async def test_interrupted_claims_of_a_dead_run_are_requeued(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    accepted = await bench.add_call(AUDIO, 1)
    claim = await bench.journal.claim_next("deadrun:w0")
    assert claim.job is not None and claim.job.id == accepted.call_id
    # A new run's workers do not see the claimed row ...
    assert (await bench.journal.claim_next("r2:w0")).job is None
    # ... until the reconciler of the new run re-queues it.
    result = await reconcile_once(bench.journal, "r2", lambda: None)
    assert result.interrupted == 1
    assert (await bench.journal.claim_next("r2:w0")).job is not None


async def test_backlog_drains_in_claims_of_one_row(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    for n in range(300):
        await bench.add_call(AUDIO + n.to_bytes(4, "big"), n)
    up = Uploader(bench.journal, bench.cache, store, policy(workers=4), run_id="r1")
    most_claimed = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(up.run)
        with trio.fail_after(600):
            while True:
                [(pending, claimed)] = bench.rows(
                    "SELECT count(*), count(claimed_by) FROM calls WHERE state = 'pending'"
                )
                most_claimed = max(most_claimed, int(claimed))  # type: ignore[call-overload]
                if pending == 0:
                    break
                await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert len(store.objects) == 300
    # The journal is the queue: never more rows in hand than workers.
    assert most_claimed <= 4


async def test_an_operator_retry_never_steals_a_claim_in_hand(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    accepted = await bench.add_call(AUDIO, 1)
    claim = await bench.journal.claim_next("r1:w0")
    assert claim.job is not None
    # `tr-vault retry --id N` while a worker uploads N: the worker keeps it.
    assert await bench.journal.retry([accepted.call_id]) == []
    assert await bench.journal.upload_done(accepted.call_id, "r1:w0", "etag", evict=False)
    # A finished upload whose claim is gone changes nothing.
    assert not await bench.journal.upload_done(accepted.call_id, "r1:w0", "etag", evict=True)
    row = await bench.journal.get_call(accepted.call_id)
    assert row is not None and row.state == "done" and row.cached == 1
    kinds = [e.kind for e in await bench.journal.events(accepted.call_id)]
    assert kinds == ["received", "upload_ok", "verified"]


async def test_workers_outlast_a_locked_journal(
    tmp_path: Path, clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tr_vault.journal.BUSY_TIMEOUT", 0.1)
    bench = await open_bench(tmp_path)
    accepted = await bench.add_call(AUDIO, 1)
    store = MemoryStore()
    up = Uploader(bench.journal, bench.cache, store, policy(workers=2), run_id="r1")
    import sqlite3

    blocker = sqlite3.connect(bench.journal.path)
    blocker.execute("BEGIN IMMEDIATE")
    async with trio.open_nursery() as nursery:
        await nursery.start(up.run)
        await trio.sleep(2)  # the workers' claims fail while the lock is held
        assert store.puts == []
        blocker.rollback()
        blocker.close()
        await wait_state(bench, accepted.call_id, "done")
        nursery.cancel_scope.cancel()
    assert len(store.puts) == 1


async def test_a_call_interrupted_every_time_ends_failed(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    accepted = await bench.add_call(AUDIO, 1)
    for run in range(3):  # each run claims the call, then the process dies mid-upload
        claim = await bench.journal.claim_next(f"run{run}:w0")
        assert claim.job is not None and claim.job.id == accepted.call_id
        await reconcile_once(bench.journal, f"run{run + 1}", lambda: None, max_attempts=3)
    row = await bench.journal.get_call(accepted.call_id)
    assert row is not None
    assert row.state == "failed"
    assert row.attempts == 3
    assert row.last_error == "upload interrupted: the process stopped mid-upload"
    kinds = [e.kind for e in await bench.journal.events(accepted.call_id)]
    assert kinds == ["received", "requeued", "requeued", "failed"]


async def test_a_journal_error_after_the_commit_does_not_refuse_the_call(tmp_path: Path) -> None:
    # Sync mode uploads right after the row is committed; if the journal fails then, the
    # call is already safe and must still be acknowledged (the workers retry the upload).
    from tr_vault.errors import JournalError
    from tr_vault.intake.store import Intake

    bench = await open_bench(tmp_path)

    async def failing_upload(call_id: int) -> None:
        raise JournalError("journal vault.db: database is locked")

    bench.intake = Intake(
        bench.journal, bench.cache, initial_state="pending", on_stored=failing_upload
    )
    accepted = await bench.add_call(AUDIO, 1)
    assert not accepted.duplicate
    row = await bench.journal.get_call(accepted.call_id)
    assert row is not None and row.state == "pending"
    assert bench.cache.path(accepted.key).read_bytes() == AUDIO
