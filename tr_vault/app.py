"""The one nursery: journal, cache, background services, then the HTTP server last.

Start-up goes in that order so nothing is accepted before the rest can take it; shutdown goes
the other way: stop accepting, let in-flight requests finish within the grace period, stop the
services, close the journal.
"""

from __future__ import annotations

import logging
import math
import secrets
import signal
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from tr_vault.allocator import limit_arenas
from tr_vault.cache import AudioCache
from tr_vault.config import Settings, StorageMode
from tr_vault.errors import ConfigError
from tr_vault.forward.base import Destination
from tr_vault.forward.config import load_destinations
from tr_vault.forward.senders import SENDERS
from tr_vault.forward.worker import ForwardPolicy, Relay
from tr_vault.intake.store import Intake
from tr_vault.journal import Journal, recorded_keys, set_store_health, unfinished_of_other_sites
from tr_vault.lock import hold_data_dir
from tr_vault.metrics import Metrics
from tr_vault.replica import HEALTH_NAME as REPLICA_HEALTH
from tr_vault.replica import Replica, ReplicaStatus, find_litestream
from tr_vault.services.pruner import PrunePolicy, Pruner, PruneReport
from tr_vault.services.reconciler import run_reconciler
from tr_vault.services.store_health import (
    PROBE_TIMEOUT,
    StoreHealth,
    StoreStatus,
    probe_store,
    write_probe_file,
)
from tr_vault.services.uploader import Uploader, UploadPolicy
from tr_vault.storage.base import ObjectStore
from tr_vault.timefmt import WallClock, system_clock
from tr_vault.verify import Verifier, VerifyLoop, VerifyReport
from tr_vault.web import hypercorn_patch
from tr_vault.web.accesslog import AccessLog, ASGIApp
from tr_vault.web.app import CollapseSlashes, create_app
from tr_vault.web.broadcastify import BroadcastifyRoutes
from tr_vault.web.context import WebContext
from tr_vault.web.hosts import AllowedHosts
from tr_vault.web.pending import PendingUploads
from tr_vault.web.slots import UploadSlots
from tr_vault.web.uploads import UploadRoutes

log = logging.getLogger(__name__)
hypercorn_patch.apply()


APP_QUEUE_CHUNKS = 4


def hypercorn_config(settings: Settings) -> HypercornConfig:
    config = HypercornConfig()
    host, port = settings.host_port
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = settings.shutdown_grace
    # A per-read timeout: a slow link that keeps sending is fine, a silent one is cut. The
    # upload handlers cut theirs at TR_VAULT_IDLE_TIMEOUT with a 408 that says why; this is
    # the backstop for the other routes, a second later so that the 408 goes out first.
    config.read_timeout = math.ceil(settings.idle_timeout) + 1
    # A request's body waits in this many chunks (64 KiB each) at most: when the handler does
    # not read (no upload slot yet), hypercorn stops reading the socket.
    config.max_app_queue_size = APP_QUEUE_CHUNKS
    # No line per request (TR_VAULT_ACCESS_LOG adds tr_vault's own: web/accesslog.py).
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


STARTUP_PROBE_WAIT = 5.0  # start-up waits this long for the store's first probe


def open_store(settings: Settings) -> ObjectStore | None:
    """The configured object store, or None in local-only mode."""
    if settings.storage_mode is StorageMode.LOCAL:
        return None
    from tr_vault.storage.s3 import S3Store

    return S3Store.from_settings(settings)


def verify_loop(
    settings: Settings,
    journal: Journal,
    cache: AudioCache,
    store: ObjectStore,
    health: StoreHealth | None,
    metrics: Metrics,
) -> VerifyLoop:
    """The scheduled light verify, counting what it finds in `tr_vault_verify_results`."""

    def count(report: VerifyReport) -> None:
        for outcome, n in report.counts.items():
            metrics.verify_results.labels(outcome).inc(n)
        metrics.verify_last_run.set(system_clock())

    return VerifyLoop(
        Verifier(journal, store, cache),
        interval=settings.verify_interval,
        sample=settings.verify_sample,
        wait_store_up=health.wait_up if health is not None else None,
        on_report=count,
    )


def upload_policy(settings: Settings) -> UploadPolicy:
    return UploadPolicy(
        workers=settings.upload_workers,
        max_attempts=settings.upload_max_attempts,
        backoff_base=settings.upload_backoff_base,
        backoff_max=settings.upload_backoff_max,
        timeout=settings.upload_timeout,
        failed_retry_interval=settings.failed_retry_interval,
        verify_etag=settings.verify_etag,
        evict_after_upload=settings.storage_mode is StorageMode.S3_ONLY,
        site=settings.site_name,
        site_in_key=settings.site_in_key,
        intake_first=settings.upload_intake_first,
    )


def prune_policy(settings: Settings) -> PrunePolicy:
    return PrunePolicy(
        retention=settings.s3_cache_retention,
        max_bytes=int(settings.s3_cache_max_gb * 1024**3),
        low_water=settings.cache_low_water,
        batch=settings.prune_batch,
        concurrency=settings.prune_concurrency,
        interval=settings.prune_interval,
    )


def store_health(
    store: ObjectStore, settings: Settings, journal: Journal, clock: WallClock
) -> StoreHealth:
    """The store's health, probed with a PUT and a HEAD, its changes kept in the journal."""
    probe_file = write_probe_file(settings.data_dir / "store-probe")

    async def record(status: StoreStatus) -> None:
        await journal.call(
            set_store_health,
            status.name,
            status.state.value,
            status.since,
            status.checked_at,
            status.error,
            status.code,
        )

    return StoreHealth(
        partial(
            probe_store, store, probe_file, seconds=min(settings.upload_timeout, PROBE_TIMEOUT)
        ),
        max_interval=settings.store_probe_max,
        startup_wait=STARTUP_PROBE_WAIT,
        clock=clock,
        on_change=record,
    )


def journal_replica(
    settings: Settings,
    litestream: Path | None,
    journal: Journal,
    clock: WallClock,
    metrics: Metrics,
) -> Replica | None:
    """Litestream replicating the journal into the bucket (TR_VAULT_JOURNAL_REPLICA), its
    changes of state kept in the journal (`store_health`, name `replica`)."""
    if litestream is None:
        return None

    async def record(status: ReplicaStatus) -> None:
        await journal.call(
            set_store_health,
            REPLICA_HEALTH,
            status.state.value,
            status.since,
            status.last_sync_at,
            status.journal_error,
            status.code,
        )

    return Replica.from_settings(
        settings,
        binary=litestream,
        clock=clock,
        on_change=record,
        on_restart=metrics.replica_restarts.inc,
    )


def forward_policy(settings: Settings) -> ForwardPolicy:
    return ForwardPolicy(
        backoff_base=settings.upload_backoff_base,
        backoff_max=settings.upload_backoff_max,
        probe_max=settings.forward_probe_max,
        misconfigured_retry=settings.forward_misconfigured_retry,
        presign_expiry=settings.s3_presign_expiry,
        public_url=settings.public_url,
    )


def relay_for(
    settings: Settings,
    destinations: list[Destination],
    journal: Journal,
    cache: AudioCache,
    store: ObjectStore | None,
    run_id: str,
    metrics: Metrics,
) -> Relay | None:
    """The delivery workers, when TR_VAULT_FORWARD_FILE names destinations."""
    if not destinations:
        return None
    return Relay(
        journal,
        cache,
        store,
        destinations,
        SENDERS,
        forward_policy(settings),
        run_id=run_id,
        metrics=metrics,
    )


async def recover_cache(cache: AudioCache, journal: Journal) -> None:
    """Clean up after a crash mid-upload: temp files go, and so does a file linked under its
    key whose row was never committed (nothing was acknowledged for it)."""
    stray, staged = await trio.to_thread.run_sync(cache.prepare)
    recorded = await journal.call(recorded_keys, [s.key for s in staged]) if staged else set()
    orphans = await trio.to_thread.run_sync(cache.recover, staged, recorded)
    if stray or staged:
        log.warning(
            "removed %d temp file(s) left by interrupted uploads; of %d linked before the"
            " crash, %d had no row and were removed: %s",
            stray + len(staged),
            len(staged),
            len(orphans),
            ", ".join(orphans) or "none",
        )


async def warn_of_other_sites(journal: Journal) -> None:
    """Say so when unfinished calls belong to another site: this node leaves them alone, which
    is right for a catalog but wrong after moving a site here under a new TR_VAULT_SITE."""
    others = await journal.call(unfinished_of_other_sites, journal.site)
    for site, count in others.items():
        log.warning(
            "%d pending or failed call(s) were received by site %r; this node is site %r and"
            " leaves them alone. If this node is that site moved here, set TR_VAULT_SITE=%s",
            count,
            site,
            journal.site,
            site,
        )


async def serve(
    settings: Settings,
    *,
    shutdown: trio.Event | None = None,
    clock: WallClock = system_clock,
    store: ObjectStore | None = None,
    handle_signals: bool = False,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run tr_vault until `shutdown` is set (or SIGINT/SIGTERM with `handle_signals`).

    `task_status.started` receives the bound URLs once the server accepts connections.
    `store` overrides the store the settings describe (tests use it).
    """
    settings.check_exposure()  # also for settings not made by load_settings
    settings.check_replica()
    shutdown = shutdown if shutdown is not None else trio.Event()
    with hold_data_dir(settings.data_dir):
        await _serve_locked(settings, shutdown, clock, store, handle_signals, task_status)


async def _serve_locked(
    settings: Settings,
    shutdown: trio.Event,
    clock: WallClock,
    store: ObjectStore | None,
    handle_signals: bool,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    run_id = secrets.token_hex(4)  # claims by workers of this run are `{run_id}:w{n}`
    litestream = find_litestream(settings.litestream_bin) if settings.journal_replica else None
    if store is None:
        store = open_store(settings)
    destinations = load_destinations(settings.forward_file)  # a bad file stops start-up here
    journal = await Journal.open(settings.db_path, clock=clock, site=settings.site_name)
    # Litestream outlives the journal's connection: it is stopped only once the journal is
    # closed, so that its final sync carries the last commit and no checkpoint-on-close
    # resets the WAL under it (that would cost a full snapshot at the next start).
    async with trio.open_nursery() as replica_nursery:
        try:
            cache = AudioCache(settings.audio_dir)
            await recover_cache(cache, journal)
            await warn_of_other_sites(journal)
            metrics = Metrics()
            replica = journal_replica(settings, litestream, journal, clock, metrics)
            if replica is not None:
                await replica_nursery.start(replica.run)  # never fatal: a dead child is a state
            health = uploader = pruner = None
            slots = UploadSlots(settings.max_inflight_uploads, settings.uploads_per_client)
            if store is not None:
                health = store_health(store, settings, journal, clock)
                uploader = Uploader(
                    journal,
                    cache,
                    store,
                    upload_policy(settings),
                    health=health,
                    run_id=run_id,
                    metrics=metrics,
                    intake_idle=slots.wait_idle,
                )
                pruner = Pruner(
                    journal,
                    cache,
                    store,
                    prune_policy(settings),
                    health=health,
                    wake_uploader=uploader.wake,
                    metrics=metrics,
                )
            relay = relay_for(settings, destinations, journal, cache, store, run_id, metrics)
            intake = Intake(
                journal,
                cache,
                initial_state="pending" if uploader else "done",
                on_stored=_after_store(uploader, sync=settings.sync_upload, relay=relay),
                destinations=destinations,
            )
            ctx = WebContext(
                settings=settings,
                journal=journal,
                cache=cache,
                intake=intake,
                metrics=metrics,
                store=store,
                health=health,
                replica=replica,
                pending_uploads=PendingUploads.from_settings(settings),
            )
            asgi: ASGIApp = CollapseSlashes(
                AllowedHosts(
                    UploadRoutes(ctx, BroadcastifyRoutes(ctx, create_app(ctx), slots), slots),
                    settings.host_allowed,
                )
            )
            if settings.access_log:
                asgi = AccessLog(asgi, settings.proxies)
            async with trio.open_nursery() as nursery:
                if handle_signals:
                    nursery.start_soon(_stop_on_signal, shutdown)
                uploads_done = trio.Event()
                if health is not None:
                    await nursery.start(health.run)  # never fatal: a down store is a state
                if uploader is not None:
                    await nursery.start(
                        partial(
                            run_reconciler,
                            journal,
                            run_id=run_id,
                            interval=settings.reconcile_interval,
                            wake=uploader.wake,
                            max_attempts=settings.upload_max_attempts,
                            failed_retry_in=settings.failed_retry_interval,
                        )
                    )

                    async def run_uploads(*, task_status: trio.TaskStatus[None]) -> None:
                        try:
                            await uploader.run(task_status=task_status)
                        finally:
                            uploads_done.set()

                    await nursery.start(run_uploads)
                relay_done = trio.Event()
                if relay is not None:

                    async def run_relay(*, task_status: trio.TaskStatus[None]) -> None:
                        try:
                            await relay.run(task_status=task_status)
                        finally:
                            relay_done.set()

                    await nursery.start(run_relay)
                else:
                    relay_done.set()
                if pruner is not None and pruner.enabled:
                    await nursery.start(pruner.run)
                if store is not None and settings.verify_interval > 0:
                    await nursery.start(
                        verify_loop(settings, journal, cache, store, health, metrics).run
                    )
                if uploader is None:
                    uploads_done.set()
                http_done = trio.Event()

                async def run_http(*, task_status: trio.TaskStatus[list[str]]) -> None:
                    try:
                        await hypercorn_serve(
                            asgi,
                            hypercorn_config(settings),
                            shutdown_trigger=shutdown.wait,
                            task_status=task_status,
                        )
                    finally:
                        http_done.set()

                binds: list[str] = await nursery.start(run_http)
                log.info(
                    "tr_vault listening on %s mode=%s data_dir=%s store=%s",
                    " ".join(binds),
                    settings.storage_mode.value,
                    settings.data_dir,
                    health.status.state.value if health else "none",
                )
                task_status.started(binds)
                await http_done.wait()
                # Intake is closed; uploads in hand get the grace period, the rest stay pending.
                if uploader is not None:
                    uploader.stop()
                if relay is not None:
                    relay.stop()
                with trio.move_on_after(settings.shutdown_grace):
                    await uploads_done.wait()
                    await relay_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if store is not None:
                    await store.aclose()
                await journal.close()
            log.info("tr_vault stopped")
        replica_nursery.cancel_scope.cancel()


async def prune_once(settings: Settings, *, dry_run: bool) -> PruneReport:
    """One pruner pass outside the server (`tr-vault prune`)."""
    store = open_store(settings)
    if store is None:
        raise ConfigError("S3_BUCKET is not set: in local-only mode the cache is the archive")
    journal = await Journal.open(settings.db_path, site=settings.site_name)
    try:
        cache = AudioCache(settings.audio_dir)
        health = store_health(store, settings, journal, system_clock)
        pruner = Pruner(journal, cache, store, prune_policy(settings), health=health)
        return await pruner.run_pass(dry_run=dry_run)
    finally:
        await store.aclose()
        await journal.close()


def _after_store(
    uploader: Uploader | None, *, sync: bool, relay: Relay | None = None
) -> Callable[[int], Awaitable[object]] | None:
    if uploader is None and relay is None:
        return None

    async def after(call_id: int) -> object:
        if relay is not None:
            relay.wake()
        if uploader is None:
            return None
        if sync:
            return await uploader.upload_now(call_id)
        uploader.wake()
        return None

    return after


async def _stop_on_signal(shutdown: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            shutdown.set()
            return


def run(settings: Settings) -> None:
    limit_arenas()  # before any thread: RSS that stays flat over months (allocator.py)
    trio.run(partial(serve, settings, handle_signals=True))
