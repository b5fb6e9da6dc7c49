"""Progress of a long bulk command (`verify`, `rebuild`, `import`): a rich bar on a terminal,
plain lines otherwise, and a summary table at the end.

A pass over ten thousand objects takes minutes; the operator watching it wants counts and a
rate, and a log file or a cron mail wants a line every few seconds, not terminal escapes.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

PLAIN_EVERY = 5.0  # seconds between plain progress lines


class Tally:
    """Counts by outcome while a bulk pass runs; `advance` after each item."""

    def __init__(self, what: str, total: int | None, *, stream: TextIO | None = None) -> None:
        self.what = what
        self.total = total
        self.counts: Counter[str] = Counter()
        self.done = 0
        self.bytes = 0  # bytes read so far, for commands that move audio (`import`)
        self.started = time.monotonic()
        self._stream = stream if stream is not None else sys.stderr
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_line = self.started

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def set_total(self, total: int) -> None:
        self.total = total
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=total)

    def advance(self, outcome: str, *, nbytes: int = 0, items: int = 1) -> None:
        """Count one item (`items=0`: an outcome that is not one of the `total`, e.g. a stray
        file beside the calls) and the `nbytes` it took."""
        self.done += items
        self.counts[outcome] += 1
        self.bytes += nbytes
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task,
                advance=items,
                counts=self._counts_text(),
                rate=f"{self.rate:.0f}/s{self._bytes_text()}",
            )
            return
        now = time.monotonic()
        if now - self._last_line >= PLAIN_EVERY:
            self._last_line = now
            self._stream.write(self.line() + "\n")
            self._stream.flush()

    def line(self) -> str:
        of = f"/{self.total}" if self.total is not None else ""
        return (
            f"{self.what}: {self.done}{of} {self._counts_text()}"
            f" ({self.rate:.0f}/s{self._bytes_text()})"
        )

    def _bytes_text(self) -> str:
        """`, 12.3 MB at 4.5 MB/s` once bytes are counted, else nothing."""
        if not self.bytes:
            return ""
        elapsed = self.elapsed
        per_second = self.bytes / elapsed if elapsed > 0 else 0.0
        return f", {self.bytes / 1e6:.1f} MB at {per_second / 1e6:.1f} MB/s"

    def _counts_text(self) -> str:
        return " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))

    @contextmanager
    def shown(self, *, enabled: bool = True) -> Iterator[Tally]:
        """Show the bar while the block runs (on a terminal, unless disabled)."""
        if not enabled or not self._stream.isatty():
            yield self
            return
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=self._stream),
            transient=False,
        )
        with progress:
            self._progress = progress
            self._task = progress.add_task(self.what, total=self.total, counts="", rate="")
            try:
                yield self
            finally:
                self._progress = None
                self._task = None


def print_summary(title: str, rows: Mapping[str, object], *, stream: TextIO | None = None) -> None:
    """A two-column table (rich on a terminal, aligned text otherwise)."""
    out = stream if stream is not None else sys.stdout
    if out.isatty():
        table = Table(title=title, show_header=False)
        table.add_column("what")
        table.add_column("value", justify="right")
        for name, value in rows.items():
            table.add_row(name, str(value))
        Console(file=out).print(table)
        return
    out.write(f"{title}\n")
    width = max((len(n) for n in rows), default=0)
    for name, value in rows.items():
        out.write(f"  {name:<{width}}  {value}\n")
    out.flush()
