"""Upload workers: move pending calls from the cache to the object store, verified.

The journal is the queue. Each worker claims the oldest due `pending` row (one row per
transaction, so a backlog of any size costs disk, not memory), streams the cached file with
its checksums, HEADs the object to verify size and SHA-256, and marks the row `done`. A failed
attempt is recorded with its error and retried after an exponential backoff with jitter;
after `max_attempts`, or at once on a permanent error such as a 403, the row is `failed`.
Intake only wakes the workers; a lost wake-up costs at most `IDLE_POLL` seconds.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass

import trio

from tr_vault.cache import AudioCache
from tr_vault.call import UploadJob
from tr_vault.errors import JournalError, ObjectNotFound, StorageError
from tr_vault.journal import Journal
from tr_vault.metrics import Metrics
from tr_vault.storage.base import ObjectInfo, ObjectStore, audio_object_key

log = logging.getLogger(__name__)

IDLE_POLL = (
    5.0  # seconds: an idle worker re-reads the journal at least this often (one indexed query)
)
RELEASE_TIMEOUT = 5.0
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

    def backoff(self, attempts: int, rng: random.Random) -> float:
        """Delay before attempt `attempts + 1`: exponential, capped, with 'equal jitter'."""
        ceiling = min(self.backoff_max, self.backoff_base * 2.0 ** max(0, attempts - 1))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


class VerificationError(StorageError):
    """What landed is not what we sent: retry the upload."""

    transient = True


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


class Uploader:
    """The upload workers and their wake-up. Run with `nursery.start(uploader.run)`."""

    def __init__(
        self,
        journal: Journal,
        cache: AudioCache,
        store: ObjectStore,
        policy: UploadPolicy,
        *,
        run_id: str,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.journal = journal
        self.cache = cache
        self.store = store
        self.policy = policy
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
            wakeup = self._wakeup  # taken before reading, so a wake in between is not missed
            try:
                claim = await self.journal.claim_next(worker)
                if claim.job is not None:
                    await self._process(claim.job, worker)
                    continue
                wait = IDLE_POLL if claim.next_due_in is None else min(claim.next_due_in, IDLE_POLL)
            except JournalError as exc:  # e.g. locked by an operator's long transaction
                log.warning("upload worker %s: %s; trying again in %.0f s", worker, exc, IDLE_POLL)
                wait = IDLE_POLL
            with trio.move_on_after(wait):
                await wakeup.wait()

    async def upload_now(self, call_id: int) -> bool:
        """Upload one call right away (sync mode); True when it is verified in the store.

        On failure the row stays `pending` with its error and backoff, for the workers.
        """
        worker = f"{self.run_id}:sync"
        claim = await self.journal.claim_next(worker, call_id)
        if claim.job is None:
            return False
        ok = await self._process(claim.job, worker)
        if not ok:
            self.wake()  # idle workers learn when the retry falls due
        return ok

    async def _process(self, job: UploadJob, worker: str) -> bool:
        started = trio.current_time()
        try:
            etag = await self._upload(job)
        except trio.Cancelled:
            with trio.move_on_after(RELEASE_TIMEOUT, shield=True):
                await self.journal.release(job.id, worker)
            raise
        except (StorageError, OSError) as exc:
            if self.metrics:
                self.metrics.upload_attempts.labels(result="error").inc()
            await self._failed(job, worker, exc)
            return False
        if self.metrics:
            self.metrics.upload_attempts.labels(result="ok").inc()
            self.metrics.upload_seconds.observe(trio.current_time() - started)
        evict = self.policy.evict_after_upload
        if not await self.journal.upload_done(job.id, worker, etag, evict=evict):
            log.warning("upload of call_id=%d finished after its claim was taken back", job.id)
            return False
        if evict:  # after the journal says so: a crash in between leaves a stray file, not a hole
            await self.cache.remove(job.key)
        log.info("uploaded call_id=%d key=%s etag=%s", job.id, job.key, etag)
        return True

    async def _upload(self, job: UploadJob) -> str | None:
        key = audio_object_key(job.key)
        try:
            with trio.fail_after(self.policy.timeout):
                put = await self.store.put_file(
                    key,
                    self.cache.path(job.key),
                    size=job.size,
                    md5_hex=job.md5,
                    sha256_hex=job.sha256,
                    content_type=job.content_type,
                )
                try:
                    info = await self.store.head(key)
                except ObjectNotFound:
                    # Not every store is read-after-write consistent: "unknown", not "lost".
                    raise VerificationError(
                        f"verify {job.key}: not visible yet after a successful PUT"
                    ) from None
        except trio.TooSlowError:
            raise VerificationError(
                f"upload {job.key}: no answer within {self.policy.timeout:g} s"
                " (TR_VAULT_UPLOAD_TIMEOUT)"
            ) from None
        verify(job, info, check_etag=self.policy.verify_etag)
        return info.etag or put.etag

    async def _failed(self, job: UploadJob, worker: str, exc: Exception) -> None:
        if isinstance(exc, FileNotFoundError):
            error, permanent = f"cached file missing: {self.cache.path(job.key)}", True
        elif isinstance(exc, StorageError):
            error, permanent = str(exc), not exc.transient
        else:
            error, permanent = f"reading {job.key}: {exc}", False
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
            "upload failed call_id=%d key=%s attempt=%d state=%s retry_in=%.1fs error=%s",
            job.id,
            job.key,
            job.attempts + 1,
            state,
            retry_in,
            error,
        )
