"""Many S3 requests, politely: bounded parallelism and a request rate limit.

`verify` HEADs thousands of objects and `rebuild` HEADs every object it lists. Providers
throttle (S3 answers 503 SlowDown over a few thousand requests a second per prefix; B2 and R2
bill per request) and a small self-hosted store has few cores, so both commands take a
`--parallel` and a `--rate` and go through `for_each`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import TypeVar

import trio

T = TypeVar("T")


class RateLimit:
    """At most `per_second` starts a second (a token bucket one token deep: evenly spaced)."""

    def __init__(self, per_second: float | None) -> None:
        self.interval = 1.0 / per_second if per_second else 0.0
        self._next = 0.0
        self._lock = trio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = trio.current_time()
            if self._next > now:
                await trio.sleep(self._next - now)
                now = self._next
            self._next = max(now, self._next) + self.interval


async def _aiter(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterable[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


async def for_each(
    items: Iterable[T] | AsyncIterable[T],
    fn: Callable[[T], Awaitable[None]],
    *,
    parallel: int,
    rate: float | None = None,
) -> None:
    """Run `fn(item)` for every item, at most `parallel` at a time and `rate` starts a second.

    An exception from `fn` cancels the rest and propagates (`fn` handles what it expects).
    """
    limit = RateLimit(rate)
    send, receive = trio.open_memory_channel[T](0)

    async def worker(mine: trio.MemoryReceiveChannel[T]) -> None:
        async with mine:
            async for item in mine:
                await limit.wait()
                await fn(item)

    async with trio.open_nursery() as nursery:
        for _ in range(max(1, parallel)):
            nursery.start_soon(worker, receive.clone())
        async with send, receive:
            async for item in _aiter(items):
                await send.send(item)
