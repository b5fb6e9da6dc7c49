"""Upload workers: move pending calls from the cache to the object store, verified.

The journal is the queue. Each worker claims the oldest due `pending` row (one row per
transaction, so a backlog of any size costs disk, not memory) on a lease, streams the cached
file with its checksums, HEADs the object to verify size and SHA-256, and marks the row `done`.

What goes wrong is sorted by whose fault it is. A store-wide error (`StorageUnavailable`)
asks the store's health for a probe: if the store is down, the claim is given back untouched
and the workers wait until it is up again; if the probe works, the error was the call's after
all. Errors about the call (a verification mismatch, a refusal for good, a missing cached file,
or any unexpected exception) cost one of its attempts, with exponential backoff and jitter;
after `max_attempts`, or at once when permanent, the row is `failed`. No exception about one
call ends a worker. Intake only wakes the workers; a lost wake-up costs at most `IDLE_POLL`,
and an idle worker looks at the journal read-only until a row is due (no claim transaction
per idle wake-up).

Intake goes first. A call in the cache can wait for its upload; a recorder whose upload is
slow to answer cannot (it times out and sends again, or drops the call). So a worker starts
no new upload while calls are being received, and waits for a gap in the intake at most
`intake_first` seconds each time: a burst is received at full speed and drained in its gaps,
and even under intake that never pauses every worker still starts an upload a second.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import trio

from tr_vault.audio_types import stored_type
from tr_vault.cache import AudioCache
from tr_vault.call import UploadJob
from tr_vault.errors import (
    CallStorageError,
    JournalError,
    ObjectExists,
    ObjectNotFound,
    StoragePermanent,
    StorageUnavailable,
    VerificationError,
)
from tr_vault.journal import Journal, next_due_in
from tr_vault.metrics import Metrics
from tr_vault.objectmeta import START_TIME as META_START_TIME
from tr_vault.objectmeta import TALKGROUP, call_metadata, host_site
from tr_vault.services.store_health import StoreHealth
from tr_vault.storage.base import (
    ObjectInfo,
    ObjectRef,
    ObjectStore,
    PutResult,
    audio_object_key,
)

log = logging.getLogger(__name__)

IDLE_POLL = 5.0  # seconds: an idle worker re-reads the journal at least this often
RELEASE_TIMEOUT = 5.0
LEASE_MARGIN = 60.0  # seconds a claim outlives the upload timeout (probe, journal waits)
_PLAIN_ETAG = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class UploadPolicy:
    workers: int = 4
    max_attempts: int = 10
    backoff_base: float = 2.0
    backoff_max: float = 300.0
    timeout: float = 60.0
    failed_retry_interval: float = 21600.0
    verify_etag: bool = True
    evict_after_upload: bool = False  # S3-only mode: the cache copy goes once verified
    site: str = field(default_factory=host_site)  # the object metadata's `site`
    site_in_key: bool = False  # TR_VAULT_SITE set: keys are audio/{site}/{system}/{date}/{file}
    intake_first: float = 1.0  # seconds a worker waits for a gap in the intake; 0: never

    @property
    def lease(self) -> float:
        """How long a claim lasts: an upload's timeout plus a margin."""
        return self.timeout + LEASE_MARGIN

    def backoff(self, attempts: int, rng: random.Random) -> float:
        """Delay before attempt `attempts + 1`: exponential, capped, with 'equal jitter'."""
        ceiling = min(self.backoff_max, self.backoff_base * 2.0 ** max(0, attempts - 1))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


def verify(job: UploadJob, info: ObjectInfo, *, check_etag: bool) -> None:
    """Raise VerificationError unless the object's size and SHA-256 metadata are ours.

    A plain 32-hex ETag is the MD5 of the stored bytes on single-part uploads; with
    `check_etag` it must equal the MD5 we sent (catches stores that do not check
    Content-MD5). Turn it off for providers whose ETags are not MD5s (SSE-KMS, SSE-C).
    """
    if info.size != job.size:
        raise VerificationError(f"verify {job.key}: size {info.size} in store, {job.size} sent")
    if info.sha256 != job.sha256:
        raise VerificationError(
            f"verify {job.key}: sha256 metadata {info.sha256 or 'missing'} in store, "
            f"{job.sha256} sent"
        )
    etag = (info.etag or "").strip('"').lower()
    if check_etag and _PLAIN_ETAG.match(etag) and etag != job.md5:
        raise VerificationError(
            f"verify {job.key}: ETag {etag} is not the MD5 {job.md5} of what was sent"
            " (bytes changed in transit)"
        )


@dataclass(frozen=True)
class Uploaded:
    """A verified upload: where the object is, and what happened on the way."""

    etag: str | None
    ref: ObjectRef
    notes: tuple[tuple[str, str], ...] = ()  # events for the journal (kind, detail)


def object_candidates(base: ObjectRef, job: UploadJob) -> list[ObjectRef]:
    """`base`, then names made unique by the call's identity, as intake names cache files:
    `{stem}-{sha12}{ext}`, `{stem}-{sha12}-tg{talkgroup}-{HHMMSS}{ext}`, numbered last."""
    folder, _, name = base.key.rpartition("/")
    pure = PurePosixPath(name)
    stem, ext = pure.stem, pure.suffix
    tag = job.sha256[:12]
    stem = stem.removesuffix(f"-{tag}")
    second = job.start_time[11:19].replace(":", "")
    names = [name, f"{stem}-{tag}{ext}", f"{stem}-{tag}-tg{job.talkgroup}-{second}{ext}"]
    names += [f"{stem}-{tag}-{n}{ext}" for n in range(2, 6)]
    unique = list(dict.fromkeys(names))
    return [ObjectRef(base.bucket, f"{folder}/{n}" if folder else n) for n in unique]


def is_same_call(job: UploadJob, info: ObjectInfo) -> bool:
    """The object at our key holds this call: our SHA-256 and, where the object records
    them, our talkgroup and start time (equal bytes on another talkgroup or second are
    another call, invariant 8). An object without them predates self-describing objects."""
    if info.sha256 != job.sha256:
        return False
    talkgroup = info.metadata.get(TALKGROUP)
    start = info.metadata.get(META_START_TIME)
    if talkgroup is not None and talkgroup != str(job.talkgroup):
        return False
    return start is None or start[:19] == job.start_time[:19].replace(" ", "T")


async def first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as any of `waits` returns (the others are cancelled)."""
    async with trio.open_nursery() as nursery:

        async def one(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(one, wait)


class Uploader:
    """The upload workers and their wake-up. Run with `nursery.start(uploader.run)`; the
    store's `health` must run beside them."""

    def __init__(
        self,
        journal: Journal,
        cache: AudioCache,
        store: ObjectStore,
        policy: UploadPolicy,
        *,
        health: StoreHealth,
        run_id: str,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        intake_idle: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.journal = journal
        self.cache = cache
        self.store = store
        self.policy = policy
        self.intake_idle = intake_idle  # returns once no upload is being received
        self.health = health
        self.run_id = run_id
        self.rng = rng or random.Random()
        self.metrics = metrics
        self._wakeup = trio.Event()
        self._stopping = trio.Event()

    def wake(self) -> None:
        """Tell idle workers that the journal has something new (never blocks, never drops)."""
        self._wakeup.set()
        self._wakeup = trio.Event()

    def stop(self) -> None:
        """Workers finish the upload in hand and take no new one."""
        self._stopping.set()
        self.wake()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for n in range(self.policy.workers):
                nursery.start_soon(self._worker, f"{self.run_id}:w{n}")
            task_status.started()

    async def _worker(self, worker: str) -> None:
        while not self._stopping.is_set():
            if not self.health.is_up:  # an outage: take no row until the probe says so
                await first_of(self.health.wait_up, self._stopping.wait)
                continue
            wakeup = self._wakeup  # taken before reading, so a wake in between is not missed
            due_in: float | None = IDLE_POLL
            await self._give_way_to_intake()
            try:
                claim = await self.journal.claim_next(worker, lease=self.policy.lease)
                if claim.job is not None:
                    await self._process(claim.job, worker)
                    continue
                due_in = claim.next_due_in
            except JournalError as exc:  # e.g. locked by an operator's long transaction
                log.warning("upload worker %s: %s; trying again in %.0f s", worker, exc, IDLE_POLL)
            except Exception:  # a bug must not take intake down with it
                log.exception("upload worker %s: unexpected error; going on", worker)
            await self._idle(wakeup, due_in)

    async def _give_way_to_intake(self) -> None:
        """Wait until no call is being received, or `intake_first` seconds (module docstring)."""
        if self.intake_idle is None or self.policy.intake_first <= 0:
            return
        with trio.move_on_after(self.policy.intake_first):
            await self.intake_idle()

    async def _idle(self, wakeup: trio.Event, due_in: float | None) -> None:
        """Wait for a wake-up or for the next row to fall due, before claiming again.

        Every `IDLE_POLL` a read-only look (no write lock, no claim transaction) checks for
        rows another process added without waking us (`tr-vault import`); only a due row
        sends the worker back to claim.
        """
        while True:
            wait = IDLE_POLL if due_in is None else min(due_in, IDLE_POLL)
            with trio.move_on_after(wait):
                await wakeup.wait()
                return
            if wait < IDLE_POLL or self._stopping.is_set() or not self.health.is_up:
                return  # the row we waited for is due (or the loop has another thing to do)
            try:
                due_in = await self.journal.call(
                    next_due_in, self.journal.clock(), self.journal.site
                )
            except Exception:  # the claim that follows reports a journal that does not answer
                return
            if due_in is not None and due_in <= 0:
                return

    async def upload_now(self, call_id: int) -> bool:
        """Upload one call right away (sync mode); True when it is verified in the store.

        While the store is down nothing is tried: the row waits for the workers. On failure
        the row stays `pending` with its error and backoff, for the workers.
        """
        with trio.move_on_after(self.policy.timeout):  # the first probe, at start-up
            await self.health.wait_decided()
        if not self.health.is_up:
            return False
        worker = f"{self.run_id}:sync"
        claim = await self.journal.claim_next(worker, lease=self.policy.lease, call_id=call_id)
        if claim.job is None:
            return False
        ok = await self._process(claim.job, worker)
        if not ok:
            self.wake()  # idle workers learn when the retry falls due
        return ok

    async def _process(self, job: UploadJob, worker: str) -> bool:
        """One attempt at one claimed row, recorded on the row whatever happens."""
        try:
            return await self._attempt(job, worker)
        except trio.Cancelled:
            with trio.move_on_after(RELEASE_TIMEOUT, shield=True):
                await self.journal.release(job.id, worker)
            raise

    async def _attempt(self, job: UploadJob, worker: str) -> bool:
        started = trio.current_time()
        try:
            uploaded = await self._upload(job)
        except StorageUnavailable as exc:
            self._count("error")
            if not await self.health.confirm():
                # The store is down: not this call's fault. Give the row back untouched.
                await self.journal.release(job.id, worker)
                return False
            await self._failed(
                job, worker, f"{exc} (the store answers others: charged to this call)"
            )
        except CallStorageError as exc:
            self._count("error")
            await self._failed(job, worker, str(exc), permanent=not exc.transient)
        except FileNotFoundError:
            self._count("error")
            error = f"cached file missing: {self.cache.path(job.key)}"
            await self._failed(job, worker, error, permanent=True)
        except OSError as exc:
            self._count("error")
            await self._failed(job, worker, f"reading {job.key}: {exc}")
        except Exception as exc:  # whatever it is, it is about this row: record it, go on
            self._count("error")
            log.exception("upload of call_id=%d raised", job.id)
            await self._failed(job, worker, f"unexpected {type(exc).__name__}: {exc}")
        else:
            self._count("ok")
            seconds = trio.current_time() - started
            if self.metrics:
                self.metrics.upload_seconds.observe(seconds)
            evict = self.policy.evict_after_upload
            if not await self.journal.upload_done(
                job.id,
                worker,
                uploaded.etag,
                evict=evict,
                bucket=uploaded.ref.bucket,
                object_key=uploaded.ref.key,
                notes=uploaded.notes,
            ):
                log.warning("upload of call_id=%d finished after its claim expired", job.id)
                return False
            if evict:  # after the journal says so: a crash in between leaves a stray file
                await self.cache.remove(job.key)
            log.info(
                "call uploaded id=%d key=%s bytes=%d seconds=%.2f attempt=%d",
                job.id,
                uploaded.ref.key,
                job.size,
                seconds,
                job.attempts + 1,
            )
            return True
        return False

    def _count(self, result: str) -> None:
        if self.metrics:
            self.metrics.upload_attempts.labels(result=result).inc()

    def _base_ref(self, job: UploadJob) -> ObjectRef:
        """Where the object goes: where a verified upload put it before (a re-upload after
        `missing_in_s3`), else under today's prefix and layout."""
        if job.object_key:
            return ObjectRef(job.bucket or "", job.object_key)
        site = self.policy.site if self.policy.site_in_key else None
        return self.store.locate(audio_object_key(job.key, site))

    def _metadata(self, job: UploadJob) -> dict[str, str]:
        return call_metadata(
            call_id=job.id,
            site=self.policy.site,
            protocol=job.protocol,
            system=job.system,
            system_label=job.system_label,
            talkgroup=job.talkgroup,
            talkgroup_label=job.talkgroup_label,
            start_time=job.start_time,
            duration=job.duration,
            audio_name=job.audio_name,
        )

    async def _upload(self, job: UploadJob) -> Uploaded:
        try:
            with trio.fail_after(self.policy.timeout):
                return await self._put_somewhere(job)
        except trio.TooSlowError:
            raise StorageUnavailable(
                f"upload {job.key}: no answer within {self.policy.timeout:g} s"
                " (TR_VAULT_UPLOAD_TIMEOUT)"
            ) from None

    async def _put_somewhere(self, job: UploadJob) -> Uploaded:
        """PUT without ever replacing an object: at the first key that is free, or that
        already holds this call (an earlier attempt landed although its answer was lost)."""
        notes: list[tuple[str, str]] = []
        for ref in object_candidates(self._base_ref(job), job):
            try:
                put = await self._put(job, ref, if_absent=True)
            except ObjectExists:
                info = await self._head(job, ref, "after 412")
                if is_same_call(job, info):
                    try:
                        verify(job, info, check_etag=self.policy.verify_etag)
                    except VerificationError as exc:
                        # Our own earlier write, damaged on the way (a store that does not
                        # check Content-MD5 kept it): the one object that may be replaced.
                        damage = {"object_key": ref.key, "error": str(exc)}
                        notes.append(("damaged_object", json.dumps(damage)))
                        put = await self._put(job, ref, if_absent=False)
                    else:
                        return Uploaded(info.etag, ref, tuple(notes))
                    info = await self._head(job, ref, "after replacing a damaged object")
                    verify(job, info, check_etag=self.policy.verify_etag)
                    return Uploaded(info.etag or put.etag, ref, tuple(notes))
                notes.append(("key_collision", self._collision(job, ref, info)))
                log.warning(
                    "key collision call_id=%d: %s holds another call (sha256 %s); next name",
                    job.id,
                    ref.key,
                    info.sha256 or "missing",
                )
                continue
            info = await self._head(job, ref, "after a successful PUT")
            verify(job, info, check_etag=self.policy.verify_etag)
            return Uploaded(info.etag or put.etag, ref, tuple(notes))
        raise StoragePermanent(
            f"upload {job.key}: every object key for this call holds another call's bytes"
        )

    async def _put(self, job: UploadJob, ref: ObjectRef, *, if_absent: bool) -> PutResult:
        return await self.store.put_file(
            ref,
            self.cache.path(job.key),
            size=job.size,
            md5_hex=job.md5,
            sha256_hex=job.sha256,
            # rows of older versions may hold a client's raw declaration
            content_type=stored_type(job.content_type, job.key),
            metadata=self._metadata(job),
            if_absent=if_absent,
        )

    async def _head(self, job: UploadJob, ref: ObjectRef, when: str) -> ObjectInfo:
        try:
            return await self.store.head(ref)
        except ObjectNotFound:
            # Not every store is read-after-write consistent: "unknown", not "lost".
            raise VerificationError(f"verify {job.key}: {ref.key} not visible yet {when}") from None

    @staticmethod
    def _collision(job: UploadJob, ref: ObjectRef, info: ObjectInfo) -> str:
        found = {k: v for k, v in info.metadata.items() if k in ("call-id", "site")}
        return json.dumps(
            {
                "object_key": ref.key,
                "bucket": ref.bucket,
                "found_sha256": info.sha256,
                "found_size": info.size,
                "found": found,
                "sha256": job.sha256,
                "note": "the key holds another call's bytes: this call takes the next name",
            }
        )

    async def _failed(
        self, job: UploadJob, worker: str, error: str, *, permanent: bool = False
    ) -> None:
        """Charge one attempt to the call: backoff, or `failed` when they are spent."""
        retry_in = self.policy.backoff(job.attempts + 1, self.rng)
        state = await self.journal.upload_failed(
            job.id,
            worker,
            error,
            permanent=permanent,
            max_attempts=self.policy.max_attempts,
            retry_in=retry_in,
            failed_retry_in=self.policy.failed_retry_interval,
        )
        if state == "failed" and self.metrics:
            self.metrics.upload_failures.inc()
        log.warning(
            "call upload failed id=%d key=%s attempt=%d state=%s retry_in=%.1fs error=%s",
            job.id,
            job.key,
            job.attempts + 1,
            state,
            retry_in,
            error,
        )
