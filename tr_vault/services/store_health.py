"""The object store's health: an outage is the store's state, never the calls'.

A store-wide error (network, 5xx, credentials, no bucket, clock skew: `StorageUnavailable`)
seen by a worker is not charged to its call. Instead the store is probed at once: a small PUT
and a HEAD of a probe object, exactly what an upload needs. If the probe fails too, the store
is `down`: workers stop taking rows, and one probe at a time re-checks it with capped
exponential backoff until it works again. If the probe works, the error was about that call
after all (a huge file that always times out) and it is charged to the call, so one bad call
cannot hold up the others.

The state is logged once per change, kept in the journal (`store_health`) for `tr-vault
status`, and shown by `/api/journal/summary` and `/metrics`.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import trio

from tr_vault.errors import ObjectNotFound, StorageError, StorageUnavailable
from tr_vault.storage.base import ObjectStore
from tr_vault.timefmt import WallClock, system_clock, to_db

log = logging.getLogger(__name__)

PROBE_KEY = ".tr-vault/probe"
PROBE_BODY = b"tr_vault store probe: a PUT and a HEAD of this object prove the store usable\n"
PROBE_TIMEOUT = 10.0  # seconds for the probe's PUT and HEAD together
FIRST_RETRY = 1.0  # seconds before the second probe of an outage; doubles up to the cap


class StoreState(StrEnum):
    UNKNOWN = "unknown"  # not probed yet (start-up)
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class StoreStatus:
    """What the operator sees: the state, since when, and the last error with its S3 code."""

    name: str
    state: StoreState
    since: float  # wall-clock seconds of the last change of state
    checked_at: float | None = None  # the last probe
    error: str | None = None
    code: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The shape of a `store_health` journal row (and of the summary's `store`)."""
        return {
            "name": self.name,
            "state": self.state.value,
            "since": to_db(self.since),
            "checked_at": to_db(self.checked_at) if self.checked_at is not None else None,
            "last_error": self.error,
            "code": self.code,
        }


def write_probe_file(path: Path) -> Path:
    """The probe object's local copy (written once; the PUT streams it like a call)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_bytes() != PROBE_BODY:
        path.write_bytes(PROBE_BODY)
    return path


PROBE_MD5 = hashlib.md5(PROBE_BODY, usedforsecurity=False).hexdigest()
PROBE_SHA256 = hashlib.sha256(PROBE_BODY).hexdigest()


async def put_probe(store: ObjectStore, probe_file: Path) -> None:
    """PUT the probe object, exactly as a call is PUT (streamed, with its checksums)."""
    await store.put_file(
        PROBE_KEY,
        probe_file,
        size=len(PROBE_BODY),
        md5_hex=PROBE_MD5,
        sha256_hex=PROBE_SHA256,
        content_type="text/plain",
    )


async def probe_store(store: ObjectStore, probe_file: Path, *, seconds: float) -> None:
    """PUT the probe object and HEAD it back; raises a `StorageError` saying what failed.

    A PUT that works followed by a 403 on the HEAD is a key allowed to write but not to read:
    uploads could never be verified, so the store counts as down, with that diagnosis.
    """
    try:
        with trio.fail_after(seconds):
            await put_probe(store, probe_file)
            try:
                await store.head(PROBE_KEY)
            except ObjectNotFound:
                return  # not visible yet on an eventually consistent store: the PUT worked
            except StorageUnavailable as exc:
                if exc.status == 403:
                    raise StorageUnavailable(
                        f"{exc}: the key may PUT but not HEAD, so no upload can be verified;"
                        " grant it s3:GetObject",
                        code=exc.code or "AccessDenied",
                        status=403,
                    ) from exc
                raise
    except trio.TooSlowError:
        raise StorageUnavailable(f"probe: no answer within {seconds:g} s") from None


Probe = Callable[[], Awaitable[None]]
OnChange = Callable[[StoreStatus], Awaitable[None]]


class StoreHealth:
    """Whether the store is usable, decided by probes. Run with `nursery.start(health.run)`."""

    def __init__(
        self,
        probe: Probe,
        *,
        name: str = "s3",
        max_interval: float = 60.0,
        startup_wait: float = 5.0,
        clock: WallClock = system_clock,
        on_change: OnChange | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._probe = probe
        self.max_interval = max_interval
        self.startup_wait = startup_wait
        self.clock = clock
        self._on_change = on_change
        self._rng = rng or random.Random()
        self.status = StoreStatus(name, StoreState.UNKNOWN, since=clock())
        self._up = trio.Event()
        self._down = trio.Event()
        self._decided = trio.Event()  # set once the first probe has answered
        self._lock = trio.Lock()  # one probe at a time
        self._probes_started = 0

    @property
    def is_up(self) -> bool:
        return self.status.state is StoreState.UP

    async def wait_up(self) -> None:
        await self._up.wait()

    async def wait_decided(self) -> None:
        """Wait for the first probe's answer."""
        await self._decided.wait()

    async def confirm(self) -> bool:
        """Is the store usable right now? Probes, unless a probe began after this question.

        A worker that saw a store-wide error asks this: False means the store is down (the
        call is not charged); True means the error was about the call after all.
        """
        asked = self._probes_started
        async with self._lock:
            if self._probes_started == asked:  # none began since: this error needs one
                await self._probe_once()
        return self.is_up

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe at start (start-up waits for the answer at most `startup_wait`), then, while
        the store is down, again with capped exponential backoff."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._loop)
            with trio.move_on_after(self.startup_wait):
                await self.wait_decided()
            task_status.started()

    async def _loop(self) -> None:
        async with self._lock:
            await self._probe_once()
        while True:
            await self._down.wait()
            delay = FIRST_RETRY
            while not self.is_up:
                await trio.sleep(delay / 2 + self._rng.uniform(0, delay / 2))
                delay = min(self.max_interval, delay * 2)
                async with self._lock:
                    if not self.is_up:
                        await self._probe_once()

    async def _probe_once(self) -> None:
        """One probe (the caller holds the lock); records the outcome."""
        self._probes_started += 1
        try:
            await self._probe()
        except StorageError as exc:
            await self._record(StoreState.DOWN, str(exc), exc.code)
        except Exception as exc:  # a bug or an odd library error must not end the service
            log.exception("store probe raised")
            await self._record(StoreState.DOWN, f"probe: {type(exc).__name__}: {exc}", None)
        else:
            await self._record(StoreState.UP, None, None)
        self._decided.set()

    async def _record(self, state: StoreState, error: str | None, code: str | None) -> None:
        now = self.clock()
        old = self.status
        changed = state is not old.state
        new = replace(
            old,
            state=state,
            since=now if changed else old.since,
            checked_at=now,
            error=error if state is StoreState.DOWN else old.error,
            code=code if state is StoreState.DOWN else old.code,
        )
        self.status = new
        # Replace an event only once it has fired, so no waiter is left on a dead one.
        if state is StoreState.UP:
            if self._down.is_set():
                self._down = trio.Event()
            self._up.set()
        else:
            if self._up.is_set():
                self._up = trio.Event()
            self._down.set()
        if changed and state is StoreState.UP and old.state is StoreState.DOWN:
            log.warning("store %s is back after %.0f s: uploads resume", new.name, now - old.since)
        elif changed and state is StoreState.UP:
            log.info("store %s is up", new.name)
        elif changed or code != old.code:
            log.warning(
                "store %s is DOWN: %s. Uploads are paused and calls wait in the cache as"
                " pending (their attempts are not spent); probing again at most every %g s",
                new.name,
                error,
                self.max_interval,
            )
        if (changed or error != old.error) and self._on_change is not None:
            try:
                await self._on_change(new)
            except Exception:  # the journal may be busy: the state is still right in memory
                log.exception("recording the store's state failed")
