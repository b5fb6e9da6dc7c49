"""What a destination kind is to the delivery workers: one call in, one classified answer out.

Each kind (rdio-scanner, OpenMHz, Broadcastify, webhook) speaks its service's protocol exactly
as the recorders do and classifies every answer into one `Outcome`. The workers decide what an
outcome means for the journal (see `tr_vault.forward.worker`); a sender never retries itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import httpx

from tr_vault.call import CallRow


class Outcome(StrEnum):
    DELIVERED = "delivered"  # the service took it
    ALREADY_THERE = "already_there"  # rdio-scanner's duplicate answer, Broadcastify `1 SKIPPED`
    REJECTED = "rejected"  # permanent for this call: the delivery ends `failed` with the reason
    MISCONFIGURED = "misconfigured"  # permanent for the destination (a wrong key): pause it
    TRANSIENT = "transient"  # anything else: network, timeouts, 5xx, an unknown answer


@dataclass(frozen=True)
class Answer:
    outcome: Outcome
    detail: str  # what the service said (status and body, cut), or what went wrong
    status: int | None = None


@dataclass(frozen=True)
class SystemCredentials:
    """`[destinations.per_system.X]`: a system's own key (OpenMHz, Broadcastify) and ids."""

    api_key: str | None = None
    system_id: int | None = None  # Broadcastify's system id
    system: str | None = None  # OpenMHz: the short name there (default: the call's)


@dataclass(frozen=True)
class Destination:
    """One `[[destinations]]` entry of TR_VAULT_FORWARD_FILE, validated."""

    name: str
    kind: str  # rdio-scanner | openmhz | broadcastify | webhook
    url: str
    api_key: str | None = None
    systems: tuple[str, ...] = ()
    talkgroups: tuple[str, ...] = ()
    exclude_talkgroups: tuple[str, ...] = ()
    concurrency: int = 2
    give_up_after: float | None = None  # seconds; None: never
    timeout: float = 60.0
    max_attempts: int = 10  # attempts charged to one call (never outages) before `failed`
    per_system: Mapping[str, SystemCredentials] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)  # kind-specific options


class Audio(Protocol):
    """A call's audio, from the cache or streamed from S3: never held whole in memory."""

    size: int
    content_type: str
    filename: str

    def chunks(self) -> AsyncIterator[bytes]:
        """The bytes, in order (each call starts from the beginning)."""
        ...


class Sender(Protocol):
    """One destination kind."""

    kind: str

    async def deliver(
        self, client: httpx.AsyncClient, destination: Destination, call: CallRow, audio: Audio
    ) -> Answer:
        """Send `call` once and classify the answer. Never raises for the service's or the
        network's trouble (that is `TRANSIENT`); raises only for bugs."""
        ...
