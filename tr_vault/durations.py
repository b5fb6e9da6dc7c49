"""Go-style durations (`90s`, `30m`, `720h`, `1h30m`, `250ms`), as users write them for Go tools.

A bare number is seconds. The result is a float number of seconds.
"""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)")


def parse_duration(value: str | float | int) -> float:
    """Seconds in `value`; raises ValueError with the accepted forms when it is not a duration."""
    if isinstance(value, bool):
        raise ValueError("a duration, not a boolean, is expected")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            pos = 0
            seconds = 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError(
                    f"{value!r} is not a duration: use seconds (300)"
                    " or Go style (90s, 30m, 720h, 1h30m)"
                ) from None
    if seconds < 0:
        raise ValueError(f"{value!r}: a duration cannot be negative")
    return seconds
