"""A headless Chromium for the web page's tests, driven by Playwright's sync API in a thread.

Playwright's async API runs on asyncio only, and its sync API belongs to the thread that
started it. So one thread owns Playwright and the browser for a whole test module, and a trio
test hands it work: `await browser.run(scenario)` runs `scenario(chromium)` in that thread (in
a worker thread of trio's, waiting on it) while the server keeps serving in the test's nursery.

Debian's Chromium (`/usr/bin/chromium`, `make browser` installs it): Playwright's own browser
download cannot work on these machines. As root it needs `--no-sandbox`, and on a closed
network the background-networking flags, or it keeps failing to reach Google's hosts. The
fresh profile it needs is Playwright's doing: `launch` starts it on a new temporary
`--user-data-dir` (and refuses one passed in `args`), and each scenario gets a new context.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAUNCH_TIMEOUT = 30.0
JOB_TIMEOUT = 60.0  # seconds for one scenario: a hung page fails the test, not the suite
ARTIFACTS = Path(
    os.environ.get("TR_VAULT_ARTIFACTS") or Path(__file__).resolve().parent / "artifacts"
)

T = TypeVar("T")


def missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not Path(CHROMIUM).exists():
        return (
            f"Chromium is not installed ({CHROMIUM}): `make browser` installs Debian's package"
            " (as root, with apt-get)"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install -e '.[dev]'"
    return None


class BrowserThread:
    """One Chromium, owned by one thread; `run(fn)` runs `fn(browser)` there."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[Any], Any], concurrent.futures.Future[Any]] | None]
        self._jobs = queue.Queue()
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, name="chromium", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.result(timeout=LAUNCH_TIMEOUT + 10)

    def _main(self) -> None:
        from playwright.sync_api import sync_playwright

        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=CHROMIUM, args=FLAGS, timeout=LAUNCH_TIMEOUT * 1000
                )
                self._ready.set_result(None)
                try:
                    while (job := self._jobs.get()) is not None:
                        fn, future = job
                        if future.set_running_or_notify_cancel():
                            try:
                                future.set_result(fn(browser))
                            except BaseException as exc:
                                future.set_exception(exc)
                finally:
                    browser.close()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            raise

    def call(self, fn: Callable[[Any], T], timeout: float = JOB_TIMEOUT) -> T:
        """Run `fn(browser)` in the browser's thread and return what it returns (blocking)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return future.result(timeout=timeout)

    async def run(self, fn: Callable[[Any], T]) -> T:
        """`call` from a trio test: the test's nursery (the server) runs meanwhile. Bounded by
        JOB_TIMEOUT: a worker thread cannot be cancelled, so no outer `fail_after` would do."""
        return await trio.to_thread.run_sync(self.call, fn)

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)
