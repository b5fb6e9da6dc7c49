"""Idle upload workers on virtual time: no claim transaction per idle wake-up, and rows that
arrive without a wake-up (another process: `tr-vault import`) are still taken within
`IDLE_POLL`."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.loops import open_bench
from tests.memstore import MemoryStore
from tr_vault.journal import Claim
from tr_vault.services.uploader import IDLE_POLL, Uploader, UploadPolicy

AUDIO = b"\x00\x00\x00\x20ftypM4A " + bytes(range(256)) * 8
IDLE = 600.0  # virtual seconds with nothing to do


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.02)


async def test_idle_workers_claim_nothing_and_still_find_rows_added_without_a_wake(
    tmp_path: Path, clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    health = bench.health(store)
    claims: list[float] = []
    claim_next = bench.journal.claim_next

    async def counted(worker: str, *, lease: float, call_id: int | None = None) -> Claim:
        claims.append(trio.current_time())
        return await claim_next(worker, lease=lease, call_id=call_id)

    monkeypatch.setattr(bench.journal, "claim_next", counted)
    policy = UploadPolicy(workers=4, timeout=10.0)
    up = Uploader(bench.journal, bench.cache, store, policy, health=health, run_id="r1")
    up.rng = random.Random(7)
    async with trio.open_nursery() as nursery:
        await nursery.start(health.run)
        await nursery.start(up.run)
        await trio.sleep(IDLE)
        idle_claims = len(claims)
        # A row committed by someone who does not wake these workers (the intake here is
        # not wired to them, as `tr-vault import` in another process is not).
        added_at = trio.current_time()
        accepted = await bench.add_call(AUDIO, 1)
        with trio.fail_after(IDLE_POLL + 1.0):
            while bench.rows("SELECT state FROM calls WHERE id = ?", accepted.call_id) != [
                ("done",)
            ]:
                await trio.sleep(0.1)
        found_in = trio.current_time() - added_at
        nursery.cancel_scope.cancel()

    # One claim per worker at start (nothing due), then none while idle: the checks every
    # IDLE_POLL are read-only. Before, each worker claimed every IDLE_POLL (~480 here).
    assert idle_claims == policy.workers, claims[:20]
    assert found_in <= IDLE_POLL + 1.0
