"""Upload slots: at most so many uploads received at once, and at most so many per client.

A slot is held while one upload is received and stored. Waiting for one costs a socket, not
memory: the upload handler reads no byte of the body before it holds a slot, so the server
stops reading the connection and TCP pushes back on the sender. The per-client cap keeps a
few dozen trickling connections from one address from holding every slot while recorders
elsewhere get `503`.

`wait_idle` lets the upload workers give way: they start no new upload while calls are being
received (for at most `TR_VAULT_UPLOAD_INTAKE_FIRST` seconds each time).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio


class NoSlot(Exception):
    """No slot came free within the patience given."""


@dataclass
class _Client:
    limiter: trio.CapacityLimiter
    users: int = 0


@dataclass
class UploadSlots:
    total: int
    per_client: int
    _all: trio.CapacityLimiter = field(init=False)
    _clients: dict[str, _Client] = field(init=False, default_factory=dict)
    _idle: trio.Event = field(init=False, default_factory=trio.Event)

    def __post_init__(self) -> None:
        self._all = trio.CapacityLimiter(self.total)
        self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no upload is being received (at once if none is)."""
        while self.in_use:
            await self._idle.wait()

    @property
    def in_use(self) -> int:
        return int(self._all.borrowed_tokens)

    @asynccontextmanager
    async def hold(self, client: str, *, patience: float) -> AsyncIterator[None]:
        """Hold one slot for `client` (an address) while the body runs.

        Waits at most `patience` seconds for the client's own share and then a slot of all;
        raises `NoSlot` when none came free.
        """
        entry = self._clients.get(client)
        if entry is None:
            entry = self._clients[client] = _Client(trio.CapacityLimiter(self.per_client))
        entry.users += 1
        token = object()
        mine = everyone = False
        try:
            with trio.move_on_after(patience):
                await entry.limiter.acquire_on_behalf_of(token)
                mine = True
                await self._all.acquire_on_behalf_of(token)
                everyone = True
                if self._idle.is_set():
                    self._idle = trio.Event()
            if not everyone:
                raise NoSlot
            yield
        finally:
            if everyone:
                self._all.release_on_behalf_of(token)
                if not self.in_use:
                    self._idle.set()
            if mine:
                entry.limiter.release_on_behalf_of(token)
            entry.users -= 1
            if entry.users == 0:
                del self._clients[client]
