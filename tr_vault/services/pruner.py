"""The cache pruner: evicts cached audio of calls confirmed in S3, by age and total size.

Candidates come from the journal through an index (rows `done` and cached, oldest first),
never from a walk of the directory tree. Before each delete, a fresh HEAD must show the object
with the recorded size and SHA-256. A clear 404 for a row whose upload was verified means the
object was lost, once a store probe shows the bucket itself is there (HEAD answers carry no
body, so a missing bucket looks like a missing key): the row goes back to `pending` and the
file is uploaded again. Anything else means "don't know": keep the file. While the store is
down no pass runs. Work per pass is bounded (batch size, a deadline).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from tr_vault.cache import AudioCache
from tr_vault.errors import ObjectNotFound, StorageError
from tr_vault.journal import Journal, PruneCandidate
from tr_vault.metrics import Metrics
from tr_vault.services.store_health import StoreHealth
from tr_vault.storage.base import ObjectStore, call_object

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrunePolicy:
    retention: float = 2592000.0  # seconds; 0 = no age limit
    max_bytes: int = 0  # 0 = no size cap
    low_water: float = 0.9  # a size-triggered pass frees down to this share of max_bytes
    batch: int = 1000  # candidates per pass at most
    concurrency: int = 8  # HEADs in parallel
    interval: float = 3600.0


@dataclass(frozen=True)
class Decision:
    candidate: PruneCandidate
    action: str  # delete | keep | reupload
    why: str


@dataclass
class PruneReport:
    cached_bytes: int | None = None  # measured only when a size cap is set
    decisions: list[Decision] = field(default_factory=list)
    heads: int = 0
    dry_run: bool = False
    finished: bool = True  # False when the pass hit its deadline
    skipped: str | None = None  # why no candidate was looked at (the store is down)

    def count(self, action: str) -> int:
        return sum(1 for d in self.decisions if d.action == action)

    @property
    def freed_bytes(self) -> int:
        return sum(d.candidate.size for d in self.decisions if d.action == "delete")


class Pruner:
    def __init__(
        self,
        journal: Journal,
        cache: AudioCache,
        store: ObjectStore,
        policy: PrunePolicy,
        *,
        health: StoreHealth,
        wake_uploader: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.journal = journal
        self.cache = cache
        self.store = store
        self.policy = policy
        self.health = health
        self.wake_uploader = wake_uploader
        self._store_answers: bool | None = None  # this pass's probe after a 404, once
        self.metrics = metrics

    @property
    def enabled(self) -> bool:
        return self.policy.retention > 0 or self.policy.max_bytes > 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.policy.interval)
            try:
                report = await self.run_pass()
            except Exception:  # a maintenance pass must never take intake down with it
                log.exception(
                    "prune pass failed; the next one runs in %.0f s", self.policy.interval
                )
                continue
            if report.skipped:
                log.info("prune pass skipped: %s", report.skipped)
            elif report.decisions:
                log.info(
                    "prune pass deleted=%d freed_bytes=%d kept=%d reupload=%d heads=%d",
                    report.count("delete"),
                    report.freed_bytes,
                    report.count("keep"),
                    report.count("reupload"),
                    report.heads,
                )

    async def run_pass(self, *, dry_run: bool = False) -> PruneReport:
        """One bounded pass; with `dry_run` it HEADs and decides but changes nothing."""
        p = self.policy
        report = PruneReport(dry_run=dry_run)
        if not self.enabled:
            return report
        if not self.health.is_up and not await self.health.confirm():
            report.skipped = f"the store is down ({self.health.status.error})"
            return report
        self._store_answers = None
        probe_lock = trio.Lock()
        candidates, report.cached_bytes = await self.journal.prune_candidates(
            retention=p.retention, max_bytes=p.max_bytes, low_water=p.low_water, limit=p.batch
        )
        limiter = trio.CapacityLimiter(p.concurrency)
        with trio.move_on_after(p.interval * 0.9) as deadline:
            async with trio.open_nursery() as nursery:
                for candidate in candidates:
                    nursery.start_soon(self._one, candidate, limiter, probe_lock, report)
        report.finished = not deadline.cancelled_caught
        return report

    async def _one(
        self,
        candidate: PruneCandidate,
        limiter: trio.CapacityLimiter,
        probe_lock: trio.Lock,
        report: PruneReport,
    ) -> None:
        async with limiter:
            decision = await self._decide(candidate, probe_lock, report)
            report.decisions.append(decision)
            if report.dry_run:
                return
            with trio.CancelScope(shield=True):  # a delete and its journal mark go together
                await self._apply(decision)

    async def _decide(
        self, c: PruneCandidate, probe_lock: trio.Lock, report: PruneReport
    ) -> Decision:
        report.heads += 1
        try:
            info = await self.store.head(call_object(c.key, c.bucket, c.object_key))
        except ObjectNotFound:
            # Our own HEAD verified this object at upload: a 404 now is a lost object, once
            # a probe shows the bucket is there (one probe per pass, whatever the 404s).
            async with probe_lock:
                if self._store_answers is None:
                    self._store_answers = await self.health.confirm()
            if not self._store_answers:
                return Decision(c, "keep", "HEAD 404 but the store probe failed: unknown")
            return Decision(c, "reupload", "object missing in S3 (HEAD 404)")
        except StorageError as exc:
            if self.metrics:
                self.metrics.head_errors.inc()
            return Decision(c, "keep", f"HEAD failed: {exc}")
        if info.size != c.size:
            return Decision(c, "keep", f"size mismatch: {info.size} in S3, {c.size} recorded")
        if info.sha256 != c.sha256:
            return Decision(c, "keep", f"sha256 mismatch: {info.sha256 or 'missing'} in S3")
        return Decision(c, "delete", f"{c.reason}: verified in S3")

    async def _apply(self, d: Decision) -> None:
        c = d.candidate
        if d.action == "delete":
            await self.cache.remove(c.key, prune_dirs=True)
            await self.journal.mark_pruned(c.id, d.why)
            if self.metrics:
                self.metrics.prune_deletions.inc()
                self.metrics.prune_deleted_bytes.inc(c.size)
        elif d.action == "reupload":
            if await self.journal.mark_missing(c.id, d.why):
                log.warning("object missing in S3 call_id=%d key=%s: uploading again", c.id, c.key)
                if self.wake_uploader is not None:
                    self.wake_uploader()
        else:
            log.info("prune kept call_id=%d key=%s: %s", c.id, c.key, d.why)
            if self.metrics:
                self.metrics.prune_skips.labels(reason=d.why.split(":")[0]).inc()
