"""Group commit: callers that arrive together share one durable step.

Each fsync costs the same for one call as for twenty, so the uploads that reach the journal
while a commit is in flight wait for it to end and then go together in the next one: one
thread hop, one transaction, one WAL fsync, one fsync per directory. Nobody waits for a batch
to fill: a call that finds nothing in flight goes at once, alone, and under load batches
form by themselves (about the number of uploads in flight).

There is no background task: the first caller of a batch runs it (the leader) and, when it is
done, wakes the first caller that queued meanwhile to lead the next. Every caller gets its own
result, and only once the batch that holds it has finished.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import trio

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Ticket(Generic[Item, Result]):
    def __init__(self, item: Item) -> None:
        self.item = item
        self.wake = trio.Event()
        self.settled = False
        self.result: Result | None = None
        self.error: BaseException | None = None

    def settle(self, outcome: Result | BaseException) -> None:
        if isinstance(outcome, BaseException):
            self.error = outcome
        else:
            self.result = outcome
        self.settled = True
        self.wake.set()


class GroupCommit(Generic[Item, Result]):
    """Runs `flush(items)` for batches of at most `max_batch` submitted items.

    `flush` returns one outcome per item, in order: a result, or an exception for that item
    alone. An exception raised by `flush` itself fails every item of its batch.
    Callers should shield `submit` from cancellation: a leader cancelled mid-batch would
    leave its batch's followers waiting.
    """

    def __init__(
        self,
        flush: Callable[[list[Item]], Awaitable[Sequence[Result | BaseException]]],
        *,
        max_batch: int = 64,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._flush = flush
        self._max_batch = max_batch
        self._queue: list[_Ticket[Item, Result]] = []
        self._busy = False
        self.batches = 0  # how many flushes ran, and how many items they held: for benches
        self.items = 0

    @property
    def flushing(self) -> bool:
        """Whether a batch is being flushed (callers arriving now wait for the next)."""
        return self._busy

    @property
    def waiting(self) -> int:
        """Items queued for a batch that has not started yet."""
        return len(self._queue)

    async def submit(self, item: Item) -> Result:
        ticket: _Ticket[Item, Result] = _Ticket(item)
        self._queue.append(ticket)
        if self._busy:
            await ticket.wake.wait()  # settled by a leader, or woken to lead
        else:
            self._busy = True
        if not ticket.settled:
            await self._lead()
        if ticket.error is not None:
            raise ticket.error
        return ticket.result  # type: ignore[return-value]

    async def _lead(self) -> None:
        """Flush the queue's head (this task's own ticket is first), then hand over."""
        batch = self._queue[: self._max_batch]
        del self._queue[: self._max_batch]
        try:
            try:
                outcomes: Sequence[Result | BaseException] = await self._flush(
                    [t.item for t in batch]
                )
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"flush returned {len(outcomes)} outcomes for {len(batch)}")
            except Exception as exc:  # every caller of the batch gets it
                outcomes = [exc] * len(batch)
            except BaseException:  # the leader is cancelled or interrupted: so are the rest
                gone = RuntimeError("the group commit was interrupted; its outcome is unknown")
                for ticket in batch:
                    ticket.settle(gone)
                raise
            self.batches += 1
            self.items += len(batch)
            for ticket, outcome in zip(batch, outcomes, strict=True):
                ticket.settle(outcome)
        finally:
            if self._queue:
                self._queue[0].wake.set()  # still busy: that caller leads the next batch
            else:
                self._busy = False
