"""Upload URLs handed out by the Broadcastify metadata POST, awaiting their audio PUT.

Each token is a random id (`secrets.token_urlsafe`) naming the validated metadata of one call,
good for one PUT within `TR_VAULT_BROADCASTIFY_UPLOAD_TTL`; at most
`TR_VAULT_BROADCASTIFY_PENDING_MAX` wait (the oldest goes first). Held in memory only: the PUT
follows its POST within milliseconds, and a PUT whose token a restart lost is refused in a way
that makes the plugin post the metadata again (see `tr_vault.web.broadcastify`).
"""

from __future__ import annotations

import logging
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import trio

from tr_vault.call import CallMeta
from tr_vault.config import Settings
from tr_vault.errors import IntakeError

log = logging.getLogger(__name__)

TOKEN_BYTES = 24  # 32 URL-safe characters
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
UNKNOWN_TOKEN = (
    "Unknown upload URL: never issued, already used, or issued before a restart; post the"
    " call's metadata again for a new one\n"
)
EXPIRED_TOKEN = "Upload URL expired: post the call's metadata again for a new one\n"


@dataclass(frozen=True)
class _Pending:
    meta: CallMeta
    expires: float


class PendingUploads:
    """The metadata of calls whose audio PUT is awaited, by token: in memory, bounded, each
    token good for one PUT within `ttl` seconds of `clock` (trio's, so tests can jump it)."""

    def __init__(
        self,
        *,
        ttl: float,
        capacity: int,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self.clock = clock
        self._pending: OrderedDict[str, _Pending] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> PendingUploads:
        return cls(ttl=settings.broadcastify_upload_ttl, capacity=settings.broadcastify_pending_max)

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, meta: CallMeta) -> str:
        """A fresh token for `meta`; expired entries go, then the oldest beyond capacity."""
        now = self.clock()
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.expires > now and len(self._pending) < self.capacity:
                break
            if oldest.expires > now:
                log.warning(
                    "broadcastify: %d upload URLs pending, the oldest dropped"
                    " (TR_VAULT_BROADCASTIFY_PENDING_MAX); its PUT will be refused and retried",
                    len(self._pending),
                )
            self._pending.popitem(last=False)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._pending[token] = _Pending(meta, now + self.ttl)
        return token

    def take(self, token: str) -> CallMeta:
        """The metadata `token` was issued for, which no other PUT can then take; `404` for
        a token it does not hold, `410` for one that expired."""
        entry = self._pending.pop(token, None) if _TOKEN.fullmatch(token) else None
        if entry is None:
            raise IntakeError(404, UNKNOWN_TOKEN)
        if entry.expires <= self.clock():
            raise IntakeError(410, EXPIRED_TOKEN)
        return entry.meta
