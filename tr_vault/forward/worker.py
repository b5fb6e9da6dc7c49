"""Delivery workers: every call to every destination, oldest call first, until each confirms.

One `DestinationRelay` per destination, each in its own task group under `Relay.run`, so a
down or slow destination never holds up the others. Within one, up to `concurrency` workers
claim due deliveries on leases and hand them to the kind's sender. What the answer means:

| outcome        | delivery                          | destination                       |
|----------------|-----------------------------------|-----------------------------------|
| DELIVERED      | `done`                            | up                                |
| ALREADY_THERE  | `done`                            | up                                |
| REJECTED       | `failed` with the reason          | up                                |
| MISCONFIGURED  | waits untouched (no attempt)      | `misconfigured`: re-probed slowly |
| TRANSIENT      | see below                         | see below                         |

A transient answer is the destination's fault until shown otherwise, as for the store
(invariant 6): if another delivery succeeded since this one was sent, or a probe with another
due delivery succeeds, the destination works and this call is charged an attempt with its own
backoff (`failed` after `max_attempts`). Otherwise the destination is `down`: its workers stop,
the claim is given back with its attempts as they were, and one probe at a time re-sends the
oldest due delivery with capped exponential backoff, so the order holds through the outage.
Every second failed probe in a row is followed by one with the next due delivery, so a call
that alone always fails cannot hold up the others. (While nothing else is due, such a call
looks like an outage: it waits, uncharged, until `give_up_after` or an operator.)
Deliveries pending longer than `give_up_after` end `skipped`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import partial
from typing import Any

import httpx
import trio

from tr_vault.cache import AudioCache
from tr_vault.errors import JournalError, StorageError
from tr_vault.forward.audio import AudioGone, open_audio
from tr_vault.forward.base import Answer, Destination, Outcome, Sender
from tr_vault.forward.queue import (
    DeliveryJob,
    claim_delivery,
    delivery_deferred,
    delivery_done,
    delivery_failed,
    ensure_destinations,
    probe_requested_at,
    release_delivery,
    release_stale_claims,
    set_destination_health,
)
from tr_vault.journal import Journal
from tr_vault.metrics import Metrics
from tr_vault.services.uploader import first_of
from tr_vault.storage.base import ObjectStore

log = logging.getLogger(__name__)

IDLE_POLL = 5.0  # seconds: an idle worker re-reads the journal at least this often
LEASE_MARGIN = 60.0  # seconds a claim outlives the destination's timeout
RELEASE_TIMEOUT = 5.0
FIRST_PROBE = 1.0  # seconds before the first probe of an outage; doubles up to the cap
AUDIO_RETRY = 60.0  # seconds before a delivery whose audio could not be read is tried again


class DestinationState(StrEnum):
    UNKNOWN = "unknown"  # nothing sent yet in this run
    UP = "up"
    DOWN = "down"  # transient trouble for every call: paused, probed with capped backoff
    MISCONFIGURED = "misconfigured"  # a wrong key or such: paused, re-probed slowly


@dataclass(frozen=True)
class ForwardPolicy:
    backoff_base: float = 2.0  # a charged attempt's backoff: exponential from here...
    backoff_max: float = 300.0  # ...capped here, with jitter
    probe_max: float = 300.0  # a down destination is probed at least this often
    misconfigured_retry: float = 300.0  # a misconfigured one is re-probed this often
    presign_expiry: float = 3600.0  # webhook links to objects in S3
    public_url: str = ""  # tr_vault's own URL, for webhook links to cached audio
    idle_poll: float = IDLE_POLL  # an idle worker re-reads the journal at least this often

    def backoff(self, attempts: int, rng: random.Random) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * 2.0 ** max(0, attempts - 1))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class DestinationStatus:
    name: str
    state: DestinationState
    since: float
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state.value, "last_error": self.error}


class DestinationRelay:
    """One destination: its health, its workers and its probe."""

    def __init__(
        self,
        destination: Destination,
        sender: Sender,
        *,
        journal: Journal,
        cache: AudioCache,
        store: ObjectStore | None,
        client: httpx.AsyncClient,
        policy: ForwardPolicy,
        run_id: str,
        stopping: trio.Event,
        rng: random.Random,
        metrics: Metrics | None = None,
    ) -> None:
        self.destination = destination
        self.sender = sender
        self.journal = journal
        self.cache = cache
        self.store = store
        self.client = client
        self.policy = policy
        self.run_id = run_id
        self.stopping = stopping
        self.rng = rng
        self.metrics = metrics
        self.status = DestinationStatus(destination.name, DestinationState.UNKNOWN, journal.clock())
        self._up = trio.Event()
        self._up.set()  # unknown counts as up: the first sends decide
        self._not_up = trio.Event()
        self._wakeup = trio.Event()
        self._probe_lock = trio.Lock()
        self._last_success = -1.0  # trio time of the last answer that showed the destination works
        self._failed_probes = 0  # in a row, while down

    @property
    def lease(self) -> float:
        return self.destination.timeout + LEASE_MARGIN

    def wake(self) -> None:
        self._wakeup.set()
        self._wakeup = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._supervise)
            for n in range(self.destination.concurrency):
                nursery.start_soon(self._worker, f"{self.run_id}:{self.destination.name}:{n}")
            task_status.started()
            await self.stopping.wait()
            # Workers finish the send in hand (the app's grace period bounds it); the
            # supervisor has nothing worth finishing.
            nursery.cancel_scope.deadline = trio.current_time() + self.destination.timeout

    # -- workers -------------------------------------------------------------------------

    async def _worker(self, worker: str) -> None:
        name = self.destination.name
        while not self.stopping.is_set():
            if self.status.state not in (DestinationState.UP, DestinationState.UNKNOWN):
                await first_of(self._up.wait, self.stopping.wait)
                continue
            wakeup = self._wakeup
            try:
                claim = await self.journal.call(
                    claim_delivery,
                    name,
                    worker,
                    self.journal.clock(),
                    self.lease,
                    give_up_after=self.destination.give_up_after,
                )
                if claim.job is not None:
                    await self._process(claim.job, worker, probe=False)
                    continue
                due, poll = claim.next_due_in, self.policy.idle_poll
                wait = poll if due is None else min(due, poll)
            except JournalError as exc:
                log.warning("forward worker %s: %s; trying again in %.0f s", worker, exc, IDLE_POLL)
                wait = IDLE_POLL
            except Exception:  # a bug must not stop the relay (or the server)
                log.exception("forward worker %s: unexpected error; going on", worker)
                wait = IDLE_POLL
            with trio.move_on_after(wait):
                await first_of(wakeup.wait, self.stopping.wait)

    async def _process(
        self, job: DeliveryJob, worker: str, *, probe: bool, retry_in: float = 0.0
    ) -> Outcome | None:
        """One attempt at a claimed delivery, recorded whatever happens; the outcome, or
        None when no answer came to decide on (the audio could not be read)."""
        try:
            return await self._attempt(job, worker, probe=probe, retry_in=retry_in)
        except trio.Cancelled:
            with trio.move_on_after(RELEASE_TIMEOUT, shield=True):
                await self.journal.call(release_delivery, job.id, worker)
            raise

    async def _attempt(
        self, job: DeliveryJob, worker: str, *, probe: bool, retry_in: float
    ) -> Outcome | None:
        started = trio.current_time()
        call = job.call
        try:
            audio = await open_audio(
                call,
                self.cache,
                self.store,
                presign_expiry=self.policy.presign_expiry,
                public_url=self.policy.public_url,
            )
        except AudioGone as exc:
            if call.state == "pending":  # not uploaded yet and not cached: wait for it
                await self._defer(job, worker, str(exc), AUDIO_RETRY, "audio not available")
            else:
                await self._charge(job, worker, str(exc), permanent=True)
            return None
        except (OSError, StorageError) as exc:
            await self._defer(job, worker, f"reading audio: {exc}", AUDIO_RETRY, "audio unreadable")
            return None
        try:
            answer = await self._send(job, audio)
        except (OSError, StorageError) as exc:  # the audio stream broke: not the destination
            await self._defer(job, worker, f"reading audio: {exc}", AUDIO_RETRY, "audio unreadable")
            return None
        except Exception as exc:  # a sender bug, about this call: charged, and the loop goes on
            log.exception("sender %s raised for call_id=%d", self.destination.kind, call.id)
            answer = Answer(Outcome.REJECTED, f"unexpected {type(exc).__name__}: {exc}")
            await self._charge(job, worker, answer.detail, permanent=False)
            return Outcome.REJECTED
        finally:
            audio.close()
        self._count(answer.outcome)
        await self._record(job, worker, answer, started, probe=probe, retry_in=retry_in)
        return answer.outcome

    async def _send(self, job: DeliveryJob, audio: Any) -> Answer:
        timeout = self.destination.timeout
        with trio.move_on_after(timeout) as scope:
            return await self.sender.deliver(self.client, self.destination, job.call, audio)
        assert scope.cancelled_caught
        return Answer(Outcome.TRANSIENT, f"no answer within {timeout:g} s (timeout)")

    async def _record(
        self,
        job: DeliveryJob,
        worker: str,
        answer: Answer,
        started: float,
        *,
        probe: bool,
        retry_in: float,
    ) -> None:
        outcome = answer.outcome
        if outcome in (Outcome.DELIVERED, Outcome.ALREADY_THERE):
            self._works()
            if not await self.journal.call(
                delivery_done,
                job.id,
                worker,
                self.journal.clock(),
                answer.detail,
                outcome=outcome.value,
            ):
                log.warning(
                    "delivery of call_id=%d to %s finished after its claim expired",
                    job.call.id,
                    job.destination,
                )
            else:
                log.info(
                    "call forwarded id=%d destination=%s outcome=%s attempt=%d",
                    job.call.id, job.destination, outcome.value, job.attempts + 1,
                )  # fmt: skip
            await self._set(DestinationState.UP, None)
        elif outcome is Outcome.REJECTED:
            self._works()
            await self._charge(job, worker, answer.detail, permanent=True)
            await self._set(DestinationState.UP, None)
        elif outcome is Outcome.MISCONFIGURED:
            await self._defer(job, worker, answer.detail, 0.0, "destination misconfigured")
            await self._set(DestinationState.MISCONFIGURED, answer.detail)
        elif probe:
            await self._defer(job, worker, answer.detail, retry_in, "destination down (probe)")
            await self._set(DestinationState.DOWN, answer.detail)
        elif await self._works_without(job, started):
            await self._charge(
                job, worker, f"{answer.detail} (the destination answers others)", permanent=False
            )
        else:
            await self._defer(job, worker, answer.detail, 0.0, "destination down")
            if self.status.state is not DestinationState.MISCONFIGURED:  # the probe's verdict
                await self._set(DestinationState.DOWN, answer.detail)

    def _works(self) -> None:
        self._last_success = trio.current_time()

    async def _works_without(self, job: DeliveryJob, started: float) -> bool:
        """Does the destination work, this call aside? Yes if anything succeeded since this
        call was sent; else a probe with another due delivery decides (one at a time); with
        none due, whether anything succeeded within the last `probe_max`."""
        async with self._probe_lock:
            if self._last_success >= started:
                return True
            if self.status.state is DestinationState.DOWN:
                return False
            worker = f"{self.run_id}:{self.destination.name}:confirm"
            claim = await self.journal.call(
                claim_delivery, self.destination.name, worker, self.journal.clock(), self.lease,
                exclude=[job.id],
            )  # fmt: skip
            if claim.job is None:  # nothing else to tell by: did it work a moment ago?
                # Only for a call already charged (it failed before while others went
                # through): a first failure just after a success is how outages begin.
                recent = trio.current_time() - self._last_success < self.policy.probe_max
                return job.attempts > 0 and self._last_success >= 0 and recent
            outcome = await self._process(claim.job, worker, probe=True)
            return outcome in (Outcome.DELIVERED, Outcome.ALREADY_THERE, Outcome.REJECTED)

    async def _charge(self, job: DeliveryJob, worker: str, answer: str, *, permanent: bool) -> None:
        retry_in = self.policy.backoff(job.attempts + 1, self.rng)
        state = await self.journal.call(
            delivery_failed,
            job.id,
            worker,
            self.journal.clock(),
            answer,
            permanent=permanent,
            max_attempts=self.destination.max_attempts,
            retry_in=retry_in,
        )
        log.warning(
            "call forward failed id=%d destination=%s attempt=%d state=%s retry_in=%.1fs answer=%s",
            job.call.id, job.destination, job.attempts + 1, state, retry_in, answer,
        )  # fmt: skip

    async def _defer(
        self, job: DeliveryJob, worker: str, answer: str, retry_in: float, why: str
    ) -> None:
        await self.journal.call(
            delivery_deferred,
            job.id,
            worker,
            self.journal.clock(),
            answer,
            retry_in=retry_in,
            why=why,
        )

    def _count(self, outcome: Outcome) -> None:
        if self.metrics is not None:
            self.metrics.forward_attempts.labels(self.destination.name, outcome.value).inc()

    # -- health --------------------------------------------------------------------------

    async def _set(self, state: DestinationState, error: str | None) -> None:
        old = self.status
        if state is old.state and (error is None or error == old.error):
            return
        now = self.journal.clock()
        changed = state is not old.state
        self.status = replace(
            old, state=state, since=now if changed else old.since, error=error or old.error
        )
        if state is DestinationState.UP:
            if self._not_up.is_set():
                self._not_up = trio.Event()
            self._up.set()
            self.wake()
        else:
            if self._up.is_set():
                self._up = trio.Event()
            self._not_up.set()
        name = self.destination.name
        if changed and state is DestinationState.UP and old.state is not DestinationState.UNKNOWN:
            log.warning(
                "destination %s is back after %.0f s: forwarding resumes", name, now - old.since
            )
        elif changed and state is DestinationState.DOWN:
            log.warning(
                "destination %s is DOWN: %s. Its deliveries wait (no attempt is spent); probing"
                " again at most every %g s", name, error, self.policy.probe_max,
            )  # fmt: skip
        elif changed and state is DestinationState.MISCONFIGURED:
            log.error(
                "destination %s is MISCONFIGURED: %s. Fix TR_VAULT_FORWARD_FILE (its deliveries"
                " wait, no attempt is spent); re-probing every %g s or on `tr-vault forward retry"
                " --destination %s`", name, error, self.policy.misconfigured_retry, name,
            )  # fmt: skip
        try:
            await self.journal.call(
                set_destination_health, name, state.value, self.status.since, now, self.status.error
            )
        except JournalError:
            log.exception("recording the state of destination %s failed", name)

    async def _supervise(self) -> None:
        """While the destination is not up: probe it, with capped backoff when down, slowly
        (or when an operator asks) when misconfigured."""
        while True:
            await self._not_up.wait()
            if self.status.state is DestinationState.DOWN:
                delay = FIRST_PROBE
                while self.status.state is DestinationState.DOWN:
                    await trio.sleep(delay / 2 + self.rng.uniform(0, delay / 2))
                    delay = min(self.policy.probe_max, delay * 2)
                    await self._probe(retry_in=0.0)
            elif self.status.state is DestinationState.MISCONFIGURED:
                since = self.status.since
                with trio.move_on_after(self.policy.misconfigured_retry):
                    while True:
                        await trio.sleep(self.policy.idle_poll)
                        asked = await self.journal.call(probe_requested_at, self.destination.name)
                        if asked is not None and asked >= since:
                            break
                await self._probe(retry_in=0.0)

    async def _probe(self, *, retry_in: float) -> None:
        """Re-send the oldest due delivery: its answer decides the destination's state."""
        worker = f"{self.run_id}:{self.destination.name}:probe"
        async with self._probe_lock:
            try:
                claim = await self.journal.call(
                    claim_delivery, self.destination.name, worker, self.journal.clock(), self.lease,
                    give_up_after=self.destination.give_up_after,
                )  # fmt: skip
            except JournalError as exc:
                log.warning("probe of %s: %s", self.destination.name, exc)
                return
            if claim.job is None:  # nothing is due to probe with: wait for the next
                return
            outcome = await self._process(claim.job, worker, probe=True, retry_in=retry_in)
            if outcome is not Outcome.TRANSIENT or self.status.state is not DestinationState.DOWN:
                self._failed_probes = 0
                return
            # Is it the destination, or this call alone? Every other failed probe, another due
            # delivery decides, else one bad call (alone when it first failed) would hold up
            # all the others forever; a real outage costs one request more per two probes.
            self._failed_probes += 1
            if self._failed_probes % 2:
                return
            try:
                other = await self.journal.call(
                    claim_delivery, self.destination.name, worker, self.journal.clock(),
                    self.lease, exclude=[claim.job.id],
                )  # fmt: skip
            except JournalError as exc:
                log.warning("probe of %s: %s", self.destination.name, exc)
                return
            if other.job is not None:  # if it works, the bad call is charged by the workers
                await self._process(other.job, worker, probe=True, retry_in=retry_in)


class Relay:
    """Every destination's relay, each in its own task group; `nursery.start(relay.run)`."""

    def __init__(
        self,
        journal: Journal,
        cache: AudioCache,
        store: ObjectStore | None,
        destinations: Sequence[Destination],
        senders: Mapping[str, Sender],
        policy: ForwardPolicy,
        *,
        run_id: str,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
        client_factory: Callable[[], httpx.AsyncClient] | None = None,
    ) -> None:
        missing = sorted({d.kind for d in destinations} - set(senders))
        if missing:
            from tr_vault.errors import ConfigError

            raise ConfigError(
                f"TR_VAULT_FORWARD_FILE: no sender for kind(s) {missing} in this build"
            )
        self.journal = journal
        self.cache = cache
        self.store = store
        self.destinations = list(destinations)
        self.senders = senders
        self.policy = policy
        self.run_id = run_id
        self.metrics = metrics
        self.rng = rng or random.Random()
        self._client_factory = client_factory or partial(httpx.AsyncClient, timeout=None)
        self._stopping = trio.Event()
        self.relays: dict[str, DestinationRelay] = {}

    def wake(self) -> None:
        """New deliveries in the journal: idle workers look now."""
        for relay in self.relays.values():
            relay.wake()

    def stop(self) -> None:
        self._stopping.set()

    def statuses(self) -> list[DestinationStatus]:
        return [r.status for r in self.relays.values()]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        now = self.journal.clock()
        names = [d.name for d in self.destinations]
        await self.journal.call(ensure_destinations, names, now)
        released = await self.journal.call(release_stale_claims, self.run_id, now)
        if released:
            log.warning("%d delivery(ies) interrupted by the last stop are due again", released)
        async with self._client_factory() as client, trio.open_nursery() as nursery:
            for d in self.destinations:
                relay = DestinationRelay(
                    d,
                    self.senders[d.kind],
                    journal=self.journal,
                    cache=self.cache,
                    store=self.store,
                    client=client,
                    policy=self.policy,
                    run_id=self.run_id,
                    stopping=self._stopping,
                    rng=self.rng,
                    metrics=self.metrics,
                )
                self.relays[d.name] = relay
                await nursery.start(relay.run)
            task_status.started()
