"""GroupCommit: uploads that arrive together share one flush; each caller gets its own outcome,
and only after the flush that holds its item has finished."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tr_vault.groupcommit import GroupCommit


class Recorder:
    """A flush that records what it was given and what finished, held open on demand."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.finished: list[int] = []  # items whose flush has returned, in order
        self.gate: trio.Event | None = None
        self.fail_item: int | None = None
        self.fail_batch_with: int | None = None

    async def flush(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_batch_with is not None and self.fail_batch_with in items:
            raise OSError("the whole batch failed")
        self.finished.extend(items)
        return [ValueError(f"item {i}") if i == self.fail_item else i * 10 for i in items]


async def test_a_lone_caller_is_flushed_at_once_and_alone() -> None:
    recorder = Recorder()
    group = GroupCommit(recorder.flush)
    assert await group.submit(1) == 10
    assert await group.submit(2) == 20
    assert recorder.batches == [[1], [2]]


async def test_callers_arriving_during_a_flush_share_the_next_and_none_returns_early() -> None:
    recorder = Recorder()
    recorder.gate = trio.Event()
    group = GroupCommit(recorder.flush)
    answered: dict[int, tuple[int, list[int]]] = {}

    async def caller(item: int) -> None:
        result = await group.submit(item)
        answered[item] = (result, list(recorder.finished))  # what was flushed when it returned

    async with trio.open_nursery() as nursery:
        for item in range(1, 7):
            nursery.start_soon(caller, item)
            await trio.testing.wait_all_tasks_blocked()
        assert answered == {}  # the first flush is held: nobody has an answer
        assert recorder.batches == [[1]]
        recorder.gate.set()
    assert recorder.batches == [[1], [2, 3, 4, 5, 6]]
    for item, (result, flushed) in answered.items():
        assert result == item * 10
        assert item in flushed  # answered only after its own flush had returned


async def test_one_items_error_fails_only_its_caller() -> None:
    recorder = Recorder()
    recorder.gate = trio.Event()
    recorder.fail_item = 3
    group = GroupCommit(recorder.flush)
    outcomes: dict[int, object] = {}

    async def caller(item: int) -> None:
        try:
            outcomes[item] = await group.submit(item)
        except ValueError as exc:
            outcomes[item] = str(exc)

    async with trio.open_nursery() as nursery:
        for item in (1, 2, 3, 4):
            nursery.start_soon(caller, item)
            await trio.testing.wait_all_tasks_blocked()
        recorder.gate.set()
    assert recorder.batches == [[1], [2, 3, 4]]
    assert outcomes == {1: 10, 2: 20, 3: "item 3", 4: 40}


async def test_a_failed_flush_fails_its_whole_batch_and_the_next_batch_still_runs() -> None:
    recorder = Recorder()
    recorder.gate = trio.Event()
    recorder.fail_batch_with = 2
    group = GroupCommit(recorder.flush, max_batch=2)
    outcomes: dict[int, object] = {}

    async def caller(item: int) -> None:
        try:
            outcomes[item] = await group.submit(item)
        except OSError as exc:
            outcomes[item] = str(exc)

    async with trio.open_nursery() as nursery:
        for item in (1, 2, 3, 4, 5):
            nursery.start_soon(caller, item)
            await trio.testing.wait_all_tasks_blocked()
        recorder.gate.set()
    assert recorder.batches == [[1], [2, 3], [4, 5]]  # at most max_batch per flush
    assert outcomes == {
        1: 10,
        2: "the whole batch failed",
        3: "the whole batch failed",
        4: 40,
        5: 50,
    }
    assert await group.submit(6) == 60  # and it goes on


def test_max_batch_must_be_positive() -> None:
    async def flush(items: list[int]) -> list[int | BaseException]:
        return list(items)

    with pytest.raises(ValueError, match="max_batch"):
        GroupCommit(flush, max_batch=0)
