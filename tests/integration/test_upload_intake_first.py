"""Intake goes first: upload workers start no new upload while calls are being received, and
wait for a gap at most `intake_first` seconds each time (virtual time)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.loops import Bench, open_bench
from tests.memstore import MemoryStore
from tr_vault.services.uploader import Uploader, UploadPolicy
from tr_vault.web.slots import UploadSlots

AUDIO = b"\x00\x00\x00\x20ftypM4A " + bytes(range(256)) * 8


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.02)


def states(bench: Bench) -> list[object]:
    return [r[0] for r in bench.rows("SELECT state FROM calls ORDER BY id")]


def uploader(bench: Bench, store: MemoryStore, slots: UploadSlots, intake_first: float) -> Uploader:
    """Two workers that give way to the intake `slots` count, for at most `intake_first`."""
    up = Uploader(
        bench.journal,
        bench.cache,
        store,
        UploadPolicy(workers=2, timeout=10.0, intake_first=intake_first),
        health=bench.health(store),
        run_id="r1",
        intake_idle=slots.wait_idle,
    )
    up.rng = random.Random(7)
    return up


async def receiving(slots: UploadSlots, release: trio.Event) -> None:
    """A call being received: it holds an upload slot until `release`."""
    async with slots.hold("192.0.2.7", patience=1):
        await release.wait()


@asynccontextmanager
async def uploading_while_receiving(
    up: Uploader, slots: UploadSlots, release: trio.Event
) -> AsyncIterator[None]:
    """The workers (and their store's health) running while a call is being received."""
    async with trio.open_nursery() as nursery:
        await nursery.start(up.health.run)
        nursery.start_soon(receiving, slots, release)
        await trio.testing.wait_all_tasks_blocked()
        await nursery.start(up.run)
        yield
        nursery.cancel_scope.cancel()


async def test_no_upload_starts_while_a_call_is_received_and_all_go_in_the_gap(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    slots = UploadSlots(8, 4)
    up = uploader(bench, store, slots, intake_first=30.0)
    release = trio.Event()
    async with uploading_while_receiving(up, slots, release):
        for n in range(3):
            await bench.add_call(AUDIO + bytes([n]), n)
        up.wake()
        await trio.sleep(20)  # the call is still coming in
        assert states(bench) == ["pending"] * 3
        assert [k for k in store.objects if not k.startswith(".tr-vault/")] == []
        gap = trio.current_time()
        release.set()
        with trio.fail_after(5):
            while states(bench) != ["done"] * 3:
                await trio.sleep(0.05)
        assert trio.current_time() - gap < 1.0  # uploaded in the gap, not after the wait


async def test_intake_that_never_pauses_still_lets_each_worker_start_an_upload(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    slots = UploadSlots(8, 4)
    up = uploader(bench, store, slots, intake_first=2.0)
    never = trio.Event()
    async with uploading_while_receiving(up, slots, never):
        for n in range(4):
            await bench.add_call(AUDIO + bytes([n]), n)
        up.wake()
        started = trio.current_time()
        with trio.fail_after(60):
            while states(bench) != ["done"] * 4:
                await trio.sleep(0.05)
        took = trio.current_time() - started
    # Two workers, one upload each per `intake_first`: four calls in two rounds, not at once.
    assert 2 * up.policy.intake_first <= took < 3 * up.policy.intake_first + 1


async def test_with_intake_first_off_workers_do_not_wait(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path)
    store = MemoryStore()
    slots = UploadSlots(8, 4)
    up = uploader(bench, store, slots, intake_first=0.0)
    never = trio.Event()
    async with uploading_while_receiving(up, slots, never):
        await bench.add_call(AUDIO, 1)
        up.wake()
        started = trio.current_time()
        with trio.fail_after(60):
            while states(bench) != ["done"]:
                await trio.sleep(0.05)
        assert trio.current_time() - started < 1.0
