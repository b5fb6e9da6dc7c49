"""The upload workers' logic on virtual time: whose fault an error is, backoff, attempts,
failure, re-queue, leases, backlog.

The store here is an in-memory fake (the S3 client itself is tested over HTTP elsewhere);
time is trio's MockClock, so an outage of hours and a 5-minute backoff take no real time.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.loops import Bench, open_bench, wait_state
from tests.memstore import MemoryStore
from tr_vault.errors import (
    JournalError,
    ObjectNotFound,
    StorageError,
    StoragePermanent,
    StorageUnavailable,
    VerificationError,
)
from tr_vault.services.reconciler import reconcile_once
from tr_vault.services.store_health import PROBE_KEY, StoreHealth, StoreState
from tr_vault.services.uploader import Uploader, UploadPolicy
from tr_vault.storage.base import audio_object_key

AUDIO = b"\x00\x00\x00\x20ftypM4A " + bytes(range(256)) * 8
LEASE = 10.0 + 60.0  # the policy's timeout plus the margin
OUTAGE = 1800.0


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


def uploader(bench: Bench, store: MemoryStore, health: StoreHealth, **kw: object) -> Uploader:
    return Uploader(
        bench.journal,
        bench.cache,
        store,
        policy(**kw),
        health=health,
        run_id="r1",
        rng=random.Random(7),
    )


async def kinds_of(bench: Bench, call_id: int) -> list[str]:
    return [e.kind for e in await bench.journal.events(call_id)]


def call_puts(store: MemoryStore) -> list[float]:
    return [t for key, t in store.puts if key != PROBE_KEY]


async def test_errors_about_the_call_back_off_then_succeed(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    health = bench.health(store)
    bad = VerificationError(
        "put: HTTP 400 BadDigest: the Content-MD5 did not match", code="BadDigest"
    )
    accepted = await bench.add_call(AUDIO, 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(health.run)
        store.fail("put", bad, times=3)
        await nursery.start(uploader(bench, store, health).run)
        await wait_state(bench, accepted.call_id, "done")
        nursery.cancel_scope.cancel()

    times = call_puts(store)
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # equal jitter: attempt n waits between half and all of min(max, base * 2^(n-1))
    for n, gap in enumerate(gaps, start=1):
        ceiling = min(60.0, 2.0 * 2 ** (n - 1))
        assert ceiling / 2 - 0.01 <= gap <= ceiling + 1.0, (n, gap)
    row = await bench.journal.get_call(accepted.call_id)
    assert row is not None
    assert (row.state, row.attempts, row.last_error) == ("done", 4, None)
    assert row.etag == hashlib.md5(AUDIO).hexdigest()
    assert await kinds_of(bench, accepted.call_id) == (
        ["received"] + ["upload_error"] * 3 + ["upload_ok", "verified"]
    )
    errors = [
        e.detail for e in await bench.journal.events(accepted.call_id) if e.kind == "upload_error"
    ]
    assert all("BadDigest" in (d or "") for d in errors)
    assert store.objects[audio_object_key(accepted.key)].data == AUDIO


STORE_WIDE = [
    StorageUnavailable("put: ConnectError: [Errno 111] Connection refused"),
    StorageUnavailable("put: HTTP 503 SlowDown: Please reduce your request rate", code="SlowDown"),
    StorageUnavailable("put: HTTP 404 NoSuchBucket; create the bucket", code="NoSuchBucket"),
    StorageUnavailable(
        "put: HTTP 403 RequestTimeTooSkewed; sync the clock",
        code="RequestTimeTooSkewed",
        status=403,
    ),
    StorageUnavailable("put: HTTP 400 ExpiredToken", code="ExpiredToken", status=400),
    StorageUnavailable("put: HTTP 307 Temporary Redirect", status=307),
    StorageUnavailable("no S3 credentials: set S3_ACCESS_KEY", code="NoCredentials"),
]


@pytest.mark.parametrize("error", STORE_WIDE, ids=lambda e: e.code or str(e.status or "net"))
async def test_an_outage_longer_than_every_backoff_spends_no_attempt(
    tmp_path: Path, clock: trio.testing.MockClock, error: StorageError
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    health = bench.health(store, max_interval=60.0)
    calls = [await bench.add_call(AUDIO + bytes([n]), n) for n in range(12)]
    up = uploader(bench, store, health, workers=3, max_attempts=3)
    async with trio.open_nursery() as nursery:
        store.outage(error)
        await nursery.start(health.run)
        await nursery.start(up.run)
        # Three attempts with a 60 s cap would spend every call within about three minutes;
        # this outage lasts half an hour.
        await trio.sleep(OUTAGE)
        assert health.status.state is StoreState.DOWN
        assert health.status.code == error.code
        rows = bench.rows("SELECT state, attempts, claimed_by, last_error FROM calls")
        assert rows == [("pending", 0, None, None)] * len(calls)
        assert bench.rows("SELECT count(*) FROM events WHERE kind != 'received'") == [(0,)]
        assert call_puts(store) == []  # no call was even tried: only the probe goes out
        probes = [t for key, t in store.puts if key == PROBE_KEY]
        assert OUTAGE / 60 <= len(probes) <= OUTAGE / 30 + 12  # backoff capped at 60 s
        assert max(b - a for a, b in itertools.pairwise(probes)) <= 60.0 + 0.01

        store.outage(None)
        back = trio.current_time()
        for accepted in calls:
            await wait_state(bench, accepted.call_id, "done")
        # Within one probe interval (60 s), plus the drain; virtual time can run ahead of the
        # journal's thread hops on a loaded machine, hence the slack.
        assert trio.current_time() - back <= 60.0 + 30.0
        nursery.cancel_scope.cancel()
    assert bench.rows("SELECT DISTINCT state, attempts FROM calls") == [("done", 1)]
    assert health.status.state is StoreState.UP


async def test_outage_that_starts_mid_upload_returns_the_claim_untouched(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    health = bench.health(store)
    first = await bench.add_call(AUDIO, 1)
    refused = StorageUnavailable("put: ReadError: connection reset by peer")
    async with trio.open_nursery() as nursery:
        await nursery.start(health.run)
        assert health.is_up
        store.on_put = lambda key: store.outage(refused) if key != PROBE_KEY else None
        await nursery.start(uploader(bench, store, health).run)
        await trio.sleep(600)
        assert health.status.state is StoreState.DOWN
        row = await bench.journal.get_call(first.call_id)
        assert row is not None
        assert (row.state, row.attempts, row.claimed_by) == ("pending", 0, None)
        store.on_put = None
        store.outage(None)
        await wait_state(bench, first.call_id, "done")
        nursery.cancel_scope.cancel()
    assert await kinds_of(bench, first.call_id) == ["received", "upload_ok", "verified"]


async def test_a_key_that_may_put_but_not_head_is_reported_and_calls_wait(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    store.refusals["head"] = StorageUnavailable("head: HTTP 403 Forbidden", status=403)
    health = bench.health(store)
    accepted = await bench.add_call(AUDIO, 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(health.run)
        await nursery.start(uploader(bench, store, health).run)
        await trio.sleep(3600)
        assert health.status.state is StoreState.DOWN
        assert "may PUT but not HEAD" in (health.status.error or "")
        assert "s3:GetObject" in (health.status.error or "")
        row = await bench.journal.get_call(accepted.call_id)
        assert row is not None and (row.state, row.attempts) == ("pending", 0)
        nursery.cancel_scope.cancel()


async def test_one_call_that_always_times_out_is_charged_and_holds_up_no_other(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    health = bench.health(store)
    huge = await bench.add_call(AUDIO + b"huge", 1)
    store.put_delays[audio_object_key(huge.key)] = 30.0  # longer than the 10 s timeout
    others = [await bench.add_call(AUDIO + bytes([n]), n + 2) for n in range(5)]
    async with trio.open_nursery() as nursery:
        await nursery.start(health.run)
        await nursery.start(uploader(bench, store, health, max_attempts=3).run)
        for accepted in others:
            await wait_state(bench, accepted.call_id, "done")
        await wait_state(bench, huge.call_id, "failed")
        nursery.cancel_scope.cancel()
    row = await bench.journal.get_call(huge.call_id)
    assert row is not None and row.attempts == 3
    assert "TR_VAULT_UPLOAD_TIMEOUT" in (row.last_error or "")
    assert "charged to this call" in (row.last_error or "")
    assert health.is_up


async def test_attempts_spent_then_failed_then_requeued_with_fresh_attempts(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    health = bench.health(store)
    mismatch = VerificationError("verify x: sha256 metadata missing in store")
    accepted = await bench.add_call(AUDIO, 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(health.run)
        store.fail("put", mismatch, times=3)
        up = uploader(bench, store, health, max_attempts=3)
        await nursery.start(up.run)
        await wait_state(bench, accepted.call_id, "failed")
        row = await bench.journal.get_call(accepted.call_id)
        assert row is not None and row.attempts == 3
        assert row.last_error == str(mismatch)
        # Nothing happens to a failed row before its rest is over...
        assert (await reconcile_once(bench.journal, "r1", up.wake)).failed == 0
        clock.jump(3600)
        # ... then the reconciler gives it a fresh set of attempts: one more error does
        # not send it straight back to `failed`.
        store.fail("put", mismatch)
        assert (await reconcile_once(bench.journal, "r1", up.wake)).failed == 1
        row = await bench.journal.get_call(accepted.call_id)
        assert row is not None and (row.state, row.attempts) == ("pending", 0)
        await wait_state(bench, accepted.call_id, "done")
        nursery.cancel_scope.cancel()
    kinds = await kinds_of(bench, accepted.call_id)
    assert kinds.count("failed") == 1
    assert kinds.count("upload_error") == 4
    assert "requeued" in kinds


async def test_permanent_error_fails_at_once_and_operator_retry_requeues(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    health = bench.health(store)
    too_large = StoragePermanent("put: HTTP 400 EntityTooLarge", code="EntityTooLarge")
    accepted = await bench.add_call(AUDIO, 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(health.run)
        store.fail("put", too_large)
        up = uploader(bench, store, health)
        await nursery.start(up.run)
        await wait_state(bench, accepted.call_id, "failed")
        row = await bench.journal.get_call(accepted.call_id)
        assert row is not None and row.attempts == 1
        assert "EntityTooLarge" in (row.last_error or "")
        assert await bench.journal.retry() == [accepted.call_id]
        up.wake()
        await wait_state(bench, accepted.call_id, "done")
        nursery.cancel_scope.cancel()


async def test_any_exception_about_one_row_is_recorded_and_the_worker_goes_on(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    health = bench.health(store)
    odd = await bench.add_call(AUDIO, 1)
    fine = await bench.add_call(AUDIO + b"2", 2)

    def refuse_odd(key: str) -> None:
        if key == audio_object_key(odd.key):
            raise UnicodeEncodeError("ascii", "audio/mpeg\xe9", 10, 11, "ordinal not in range")

    store.on_put = refuse_odd
    async with trio.open_nursery() as nursery:
        await nursery.start(health.run)
        await nursery.start(uploader(bench, store, health, workers=1, max_attempts=2).run)
        await wait_state(bench, fine.call_id, "done")
        await wait_state(bench, odd.call_id, "failed")
        nursery.cancel_scope.cancel()
    row = await bench.journal.get_call(odd.call_id)
    assert row is not None and row.attempts == 2
    assert (row.last_error or "").startswith("unexpected UnicodeEncodeError")


async def test_head_404_right_after_put_is_unknown_not_lost(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    health = bench.health(store)
    accepted = await bench.add_call(AUDIO, 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(health.run)
        store.fail("head", ObjectNotFound("head: 404", status=404))
        await nursery.start(uploader(bench, store, health).run)
        await wait_state(bench, accepted.call_id, "done")
        nursery.cancel_scope.cancel()
    events = await bench.journal.events(accepted.call_id)
    assert any(e.kind == "upload_error" and "not visible yet" in (e.detail or "") for e in events)
    assert not any(e.kind == "failed" for e in events)


async def test_sync_upload_while_the_store_is_down_returns_at_once(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    store.outage(StorageUnavailable("put: ConnectError"))
    health = bench.health(store)
    accepted = await bench.add_call(AUDIO, 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(health.run)
        up = uploader(bench, store, health)
        started = trio.current_time()
        assert not await up.upload_now(accepted.call_id)
        assert trio.current_time() - started < 1.0
        nursery.cancel_scope.cancel()
    row = await bench.journal.get_call(accepted.call_id)
    assert row is not None and (row.state, row.attempts, row.claimed_by) == ("pending", 0, None)


async def test_interrupted_claims_of_a_dead_run_are_requeued(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    accepted = await bench.add_call(AUDIO, 1)
    claim = await bench.journal.claim_next("deadrun:w0", lease=LEASE)
    assert claim.job is not None and claim.job.id == accepted.call_id
    # A new run's workers do not see the claimed row ...
    assert (await bench.journal.claim_next("r2:w0", lease=LEASE)).job is None
    # ... until the reconciler of the new run re-queues it.
    result = await reconcile_once(bench.journal, "r2", lambda: None)
    assert result.interrupted == 1
    assert (await bench.journal.claim_next("r2:w0", lease=LEASE)).job is not None


async def test_an_expired_claim_is_taken_over_and_its_old_worker_cannot_mark_it(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    accepted = await bench.add_call(AUDIO, 1)
    assert (await bench.journal.claim_next("r1:w0", lease=LEASE)).job is not None
    await trio.sleep(LEASE - 1)
    later = await bench.journal.claim_next("r1:w1", lease=LEASE)
    assert later.job is None
    assert later.next_due_in is not None and 0 < later.next_due_in <= 1.0
    await trio.sleep(2)
    taken = await bench.journal.claim_next("r1:w1", lease=LEASE)
    assert taken.job is not None and taken.job.id == accepted.call_id
    # The stalled worker comes back: whatever it says, the row is w1's now.
    assert not await bench.journal.upload_done(accepted.call_id, "r1:w0", "etag", evict=False)
    state = await bench.journal.upload_failed(
        accepted.call_id, "r1:w0", "late", permanent=True, max_attempts=1,
        retry_in=1, failed_retry_in=1,
    )  # fmt: skip
    assert state == "pending"
    row = await bench.journal.get_call(accepted.call_id)
    assert row is not None and (row.state, row.claimed_by, row.attempts) == ("pending", "r1:w1", 0)
    events = await bench.journal.events(accepted.call_id)
    assert [e.kind for e in events] == ["received", "requeued"]
    assert "claim of r1:w0 expired" in (events[1].detail or "")
    # Once w1's lease has run out too, an operator's retry takes the row back.
    assert await bench.journal.retry([accepted.call_id]) == []
    await trio.sleep(LEASE + 1)
    assert await bench.journal.retry([accepted.call_id]) == [accepted.call_id]


async def test_a_journal_locked_after_the_put_never_leaves_a_row_stuck(
    tmp_path: Path,
    clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An operator opens a long write transaction in sqlite3 while a PUT is in flight: the
    # worker cannot record the outcome. Its lease runs out and the row is uploaded again.
    monkeypatch.setattr("tr_vault.journal.BUSY_TIMEOUT", 0.05)
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    health = bench.health(store)
    accepted = await bench.add_call(AUDIO, 1)
    blocker = sqlite3.connect(bench.journal.path)

    def lock_journal(key: str) -> None:
        if key != PROBE_KEY and not blocker.in_transaction:
            blocker.execute("BEGIN IMMEDIATE")

    async with trio.open_nursery() as nursery:
        await nursery.start(health.run)
        store.on_put = lock_journal
        await nursery.start(uploader(bench, store, health).run)
        with trio.fail_after(600):  # until the worker has failed to record its upload
            while not any("database is locked" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.5)
        store.on_put = None
        blocker.rollback()  # the operator lets go
        blocker.close()
        await wait_state(bench, accepted.call_id, "done")
        nursery.cancel_scope.cancel()
    row = await bench.journal.get_call(accepted.call_id)
    assert row is not None and row.claimed_by is None
    assert len(call_puts(store)) == 2  # the same key and bytes again: harmless
    assert "requeued" in await kinds_of(bench, accepted.call_id)


async def test_backlog_drains_in_claims_of_one_row(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    health = bench.health(store)
    for n in range(300):
        await bench.add_call(AUDIO + n.to_bytes(4, "big"), n)
    most_claimed = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(health.run)
        await nursery.start(uploader(bench, store, health, workers=4).run)
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
    assert len(store.objects) == 300 + 1  # and the probe object
    # The journal is the queue: never more rows in hand than workers.
    assert most_claimed <= 4


async def test_an_operator_retry_never_steals_a_claim_in_hand(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    accepted = await bench.add_call(AUDIO, 1)
    claim = await bench.journal.claim_next("r1:w0", lease=LEASE)
    assert claim.job is not None
    # `tr-vault retry --id N` while a worker uploads N: the worker keeps it.
    assert await bench.journal.retry([accepted.call_id]) == []
    assert await bench.journal.upload_done(accepted.call_id, "r1:w0", "etag", evict=False)
    # A finished upload whose claim is gone changes nothing.
    assert not await bench.journal.upload_done(accepted.call_id, "r1:w0", "etag", evict=True)
    row = await bench.journal.get_call(accepted.call_id)
    assert row is not None and row.state == "done" and row.cached == 1
    assert await kinds_of(bench, accepted.call_id) == ["received", "upload_ok", "verified"]


async def test_workers_outlast_a_locked_journal(
    tmp_path: Path,
    clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr("tr_vault.journal.BUSY_TIMEOUT", 0.1)
    bench = await open_bench(tmp_path)
    accepted = await bench.add_call(AUDIO, 1)
    store = MemoryStore()
    health = bench.health(store)
    blocker = sqlite3.connect(bench.journal.path)
    async with trio.open_nursery() as nursery:
        await nursery.start(health.run)
        blocker.execute("BEGIN IMMEDIATE")
        await nursery.start(uploader(bench, store, health, workers=2).run)
        with trio.fail_after(600):  # the workers' claims fail while the lock is held
            while not any("database is locked" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.5)
        assert call_puts(store) == []
        blocker.rollback()
        blocker.close()
        await wait_state(bench, accepted.call_id, "done")
        nursery.cancel_scope.cancel()
    assert len(call_puts(store)) == 1


async def test_a_call_interrupted_every_time_ends_failed(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    accepted = await bench.add_call(AUDIO, 1)
    for run in range(3):  # each run claims the call, then the process dies mid-upload
        claim = await bench.journal.claim_next(f"run{run}:w0", lease=LEASE)
        assert claim.job is not None and claim.job.id == accepted.call_id
        await reconcile_once(bench.journal, f"run{run + 1}", lambda: None, max_attempts=3)
    row = await bench.journal.get_call(accepted.call_id)
    assert row is not None
    assert row.state == "failed"
    assert row.attempts == 3
    assert row.last_error == "upload interrupted: the process stopped mid-upload"
    assert await kinds_of(bench, accepted.call_id) == [
        "received", "requeued", "requeued", "failed"
    ]  # fmt: skip


async def test_a_journal_error_after_the_commit_does_not_refuse_the_call(tmp_path: Path) -> None:
    # Sync mode uploads right after the row is committed; if the journal fails then, the
    # call is already safe and must still be acknowledged (the workers retry the upload).
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
