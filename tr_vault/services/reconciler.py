"""The reconciler: re-queues what failed or was interrupted, by reading the journal only.

At start and every `interval`: rows claimed by a worker of an earlier run (a crash or kill
mid-upload) go back to the queue, and `failed` rows whose rest (TR_VAULT_FAILED_RETRY_INTERVAL)
is over get one more attempt. It never lists the cache directory or the bucket.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import trio

from tr_vault.errors import JournalError
from tr_vault.journal import Journal, Requeued

log = logging.getLogger(__name__)


async def reconcile_once(
    journal: Journal,
    run_id: str,
    wake: Callable[[], None],
    *,
    max_attempts: int | None = None,
    failed_retry_in: float = 21600.0,
) -> Requeued:
    result = await journal.requeue(
        run_id, max_attempts=max_attempts, failed_retry_in=failed_retry_in
    )
    if result.total:
        log.info("re-queued interrupted=%d failed=%d", result.interrupted, result.failed)
        wake()
    return result


async def run_reconciler(
    journal: Journal,
    *,
    run_id: str,
    interval: float,
    wake: Callable[[], None],
    max_attempts: int | None = None,
    failed_retry_in: float = 21600.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """First pass before `started()`, so workers begin with interrupted rows back in line."""
    once = functools.partial(
        reconcile_once,
        journal,
        run_id,
        wake,
        max_attempts=max_attempts,
        failed_retry_in=failed_retry_in,
    )
    await once()
    task_status.started()
    while True:
        await trio.sleep(interval)
        try:
            await once()
        except JournalError as exc:
            log.warning("reconcile pass failed (%s); next one in %.0f s", exc, interval)
        except Exception:  # a maintenance pass must never take intake down with it
            log.exception("reconcile pass failed; next one in %.0f s", interval)
