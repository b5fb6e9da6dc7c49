"""The one nursery: journal, cache, background services, then the HTTP server last.

Start-up goes in that order so nothing is accepted before the rest can take it; shutdown goes
the other way: stop accepting, let in-flight requests finish within the grace period, stop the
services, close the journal.
"""

from __future__ import annotations

import logging
import signal
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from tr_vault.cache import AudioCache
from tr_vault.config import Settings, StorageMode
from tr_vault.intake.store import Intake
from tr_vault.journal import Journal
from tr_vault.timefmt import WallClock, system_clock
from tr_vault.web.app import CollapseSlashes, create_app
from tr_vault.web.context import WebContext

log = logging.getLogger(__name__)


def hypercorn_config(settings: Settings) -> HypercornConfig:
    config = HypercornConfig()
    host, port = settings.host_port
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = settings.shutdown_grace
    # A per-read timeout: a slow link that keeps sending is fine, a silent one is cut.
    config.read_timeout = max(1, int(settings.idle_timeout))
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def serve(
    settings: Settings,
    *,
    shutdown: trio.Event | None = None,
    clock: WallClock = system_clock,
    handle_signals: bool = False,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run tr_vault until `shutdown` is set (or SIGINT/SIGTERM with `handle_signals`).

    `task_status.started` receives the bound URLs once the server accepts connections.
    """
    shutdown = shutdown if shutdown is not None else trio.Event()
    journal = await Journal.open(settings.db_path, clock=clock)
    try:
        cache = AudioCache(settings.audio_dir)
        stray = await trio.to_thread.run_sync(cache.prepare)
        if stray:
            log.warning("removed %d temp file(s) left by an interrupted upload", stray)
        initial_state = "done" if settings.storage_mode is StorageMode.LOCAL else "pending"
        intake = Intake(journal, cache, initial_state=initial_state)
        ctx = WebContext(
            settings=settings,
            journal=journal,
            cache=cache,
            intake=intake,
            upload_slots=trio.CapacityLimiter(settings.max_inflight_uploads),
        )
        asgi = CollapseSlashes(create_app(ctx))
        async with trio.open_nursery() as nursery:
            if handle_signals:
                nursery.start_soon(_stop_on_signal, shutdown)
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
                "tr_vault listening on %s mode=%s data_dir=%s",
                " ".join(binds),
                settings.storage_mode.value,
                settings.data_dir,
            )
            task_status.started(binds)
            await http_done.wait()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await journal.close()
        log.info("tr_vault stopped")


async def _stop_on_signal(shutdown: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            shutdown.set()
            return


def run(settings: Settings) -> None:
    trio.run(partial(serve, settings, handle_signals=True))
