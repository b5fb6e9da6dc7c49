"""The one text format for times in the journal: UTC in SQLite's own 'YYYY-MM-DD HH:MM:SS.SSS'.

SQLite's `datetime('now', '-1 hour')` yields the same shape, so operators can compare columns
against it directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

WallClock = Callable[[], float]
"""Seconds since the epoch. Services take one as an argument so tests can drive time."""

system_clock: WallClock = time.time


def to_db(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def from_db(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC).timestamp()


def utc_date(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")
