"""Field parsing shared by the protocols: numbers, times, optional JSON, safe names, audio types.

Every number and time is range-checked here, at the edge: a value that parses but does not fit
a SQLite INTEGER, a finite REAL or a plausible call time raises `OutOfRange`, and the protocol
decides what that costs (a required field: a 400 that names it; an optional one: a note, the
raw text kept in the metadata). Nothing past this module can overflow on a client's number.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, TypeVar

from tr_vault import audio_types
from tr_vault.errors import IntakeError

T = TypeVar("T")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_NAME = 160

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
EARLIEST = datetime(1980, 1, 1, tzinfo=UTC).timestamp()  # no recorder predates this
LATEST = datetime(2100, 1, 1, tzinfo=UTC).timestamp()
MAX_DATETIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()  # datetime's limit

ID_RANGE = f"an integer from 1 to {INT64_MAX}"
INT_RANGE = f"an integer from {INT64_MIN} to {INT64_MAX}"
FLOAT_RANGE = "a finite number"
TIME_RANGE = "Unix seconds or an RFC 3339 date-time from 1980-01-01 to 2100-01-01"
SECONDS_RANGE = "Unix seconds from 1980-01-01 to 2100-01-01"
MILLIS_RANGE = "Unix milliseconds from 1980-01-01 to 2100-01-01"

# A decimal number in ASCII digits, as Python's float() reads it (inf/nan included, so that they
# are out of range rather than absent), but without '_' separators or non-ASCII digits ('²',
# Arabic-Indic digits), which a client does not mean as numbers. No two parts can match the same
# digits, so a megabyte of them is read in linear time.
_NUMBER = re.compile(
    r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)",
    re.IGNORECASE,
)
SHOWN_CHARS = 40
PART_TYPE = "audio_part_content_type"  # metadata name of the audio part's own Content-Type


class OutOfRange(ValueError):
    """A value parses as a number or a time, but outside what tr_vault can store."""

    def __init__(self, allowed: str) -> None:
        super().__init__(allowed)
        self.allowed = allowed


def shown(value: str | None) -> str:
    """A client's value quoted for a message or note, cut short: answers stay small."""
    text = value or ""
    return repr(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…")


def required(name: str, value: str | None, parse: Callable[[str | None], T | None]) -> T | None:
    """`parse(value)`; out of range is refused with a 400 that names the field and the range."""
    try:
        return parse(value)
    except OutOfRange as exc:
        raise IntakeError(400, f"Invalid {name} {shown(value)}: {exc.allowed}\n") from None


def optional(
    name: str, value: str | None, parse: Callable[[str | None], T | None], notes: list[str]
) -> T | None:
    """`parse(value)`, or None with a note when out of range: an optional value never costs
    the call, and its raw text is already in the metadata."""
    try:
        return parse(value)
    except OutOfRange as exc:
        notes.append(out_of_range_note(name, value, exc))
        return None


def lenient(parse: Callable[[str | None], T | None], value: str | None) -> T | None:
    """`parse(value)`, None when out of range: for texts (the 401's) that must not refuse."""
    try:
        return parse(value)
    except OutOfRange:
        return None


def out_of_range_note(name: str, value: str | None, exc: OutOfRange) -> str:
    return f"{name}: {shown(value)} is out of range ({exc.allowed}); kept only in the metadata"


def _number(value: str | None) -> int | float | None:
    """A decimal number, exact when written as an integer; None when absent or not a number."""
    if value is None:
        return None
    text = value.strip()
    if not _NUMBER.fullmatch(text):
        return None
    try:
        return int(text)
    except ValueError:  # a fraction or exponent, or more digits than int() takes: inf
        return float(text)


def _fit(number: int | float, low: int, high: int, allowed: str) -> int:
    if isinstance(number, float):
        if not math.isfinite(number):
            raise OutOfRange(allowed)
        number = int(number)
    if not low <= number <= high:
        raise OutOfRange(allowed)
    return number


def positive_int(value: str | None) -> int | None:
    """An id > 0; None when absent, not a number or <= 0 (rdio-scanner: absent).

    Raises OutOfRange above a SQLite INTEGER.
    """
    number = _number(value)
    if number is None:
        return None
    if isinstance(number, float) and math.isfinite(number):
        number = int(number)
    if number <= 0:  # -inf too; nan compares false and is out of range below
        return None
    return _fit(number, 1, INT64_MAX, ID_RANGE)


def any_int(value: str | None) -> int | None:
    """An integer (a fraction truncated); None when absent or not a number.

    Raises OutOfRange outside a SQLite INTEGER.
    """
    number = _number(value)
    return None if number is None else _fit(number, INT64_MIN, INT64_MAX, INT_RANGE)


def any_float(value: str | None) -> float | None:
    """A finite float; None when absent or not a number. Raises OutOfRange when not finite."""
    number = _number(value)
    if number is None:
        return None
    try:
        result = float(number)
    except OverflowError:  # an integer of hundreds of digits
        raise OutOfRange(FLOAT_RANGE) from None
    if not math.isfinite(result):
        raise OutOfRange(FLOAT_RANGE)
    return result


def _parse_time(text: str) -> float | None:
    """All ASCII digits: Unix seconds; otherwise RFC 3339 (fractions and 'Z' allowed)."""
    if text.isascii() and text.isdigit():  # str.isdigit() alone is true for '²'
        return float(text)  # inf for hundreds of digits
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    except (ValueError, OverflowError):
        return None


def unix_or_rfc3339(value: str | None) -> float | None:
    """Unix seconds or RFC 3339, as seconds; None when neither, <= 0 or past year 9999.

    For query parameters: any representable time is a fair bound to ask for.
    """
    if value is None:
        return None
    seconds = _parse_time(value.strip())
    if seconds is None or not 0 < seconds <= MAX_DATETIME:
        return None
    return seconds


def in_time_range(seconds: float, allowed: str = TIME_RANGE) -> float:
    """`seconds` when a plausible call time (1980 to 2100), else OutOfRange."""
    if not EARLIEST <= seconds < LATEST:  # nan compares false
        raise OutOfRange(allowed)
    return seconds


def epoch(value: str | None) -> float | None:
    """A call time in Unix seconds or RFC 3339; None when absent, unparsable or 0 seconds
    (rdio-scanner: absent). Raises OutOfRange outside 1980..2100 (a date before 1970 too)."""
    if value is None:
        return None
    text = value.strip()
    seconds = _parse_time(text)
    if seconds is None or seconds == 0:
        return None
    return in_time_range(seconds)


def epoch_millis(value: str | None) -> float | None:
    """A call time in Unix milliseconds, as seconds; None when absent, not a number or <= 0.

    Raises OutOfRange outside 1980..2100.
    """
    number = _number(value)
    if number is None:
        return None
    if isinstance(number, float) and math.isfinite(number):
        number = int(number)
    if number <= 0:
        return None
    if isinstance(number, float) or number >= LATEST * 1000:  # inf, nan, or too big to divide
        raise OutOfRange(MILLIS_RANGE)
    return in_time_range(number / 1000, MILLIS_RANGE)


def epoch_number(value: str | None) -> float | None:
    """A call time as a plain number of Unix seconds (fractions allowed); None when absent, not
    a number or <= 0. Raises OutOfRange outside 1980..2100."""
    number = _number(value)
    if number is None:
        return None
    try:
        seconds = float(number)
    except OverflowError:
        raise OutOfRange(SECONDS_RANGE) from None
    if seconds <= 0:
        return None
    return in_time_range(seconds, SECONDS_RANGE)


def label(value: str | None) -> str | None:
    """A display label; rdio clients send '-' or '' for none. A lone surrogate (JSON `meta` may
    escape one: "\\ud800") cannot be stored as SQLite text: it becomes U+FFFD, as bad UTF-8 in a
    form field does (the raw value stays in the metadata)."""
    if value is None or value.strip() in ("", "-"):
        return None
    return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value.strip())


def strict_json(text: str) -> Any:
    """`json.loads`, but what we could not store as valid JSON stays text.

    Python reads `NaN`, `Infinity` and `1e400` as floats that `json.dumps` writes back as
    invalid JSON, and refuses integers of thousands of digits: those values are kept as their
    raw text. Raises ValueError when `text` is not JSON (or nests too deeply to read).
    """
    try:
        return json.loads(text, parse_float=_json_float, parse_int=_json_int, parse_constant=str)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _json_float(text: str) -> float | str:
    number = float(text)
    return number if math.isfinite(number) else text


def _json_int(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:  # more digits than int() takes
        return text


def optional_json(name: str, value: str | None, notes: list[str]) -> Any:
    """Parsed JSON, or the raw text with a note: a client's bad JSON never costs a call."""
    if value is None:
        return None
    try:
        return strict_json(value)
    except json.JSONDecodeError as exc:
        notes.append(f"{name}: not valid JSON ({exc.msg} at char {exc.pos}); raw text kept")
    except ValueError as exc:
        notes.append(f"{name}: not valid JSON ({exc}); raw text kept")
    return value


def first_source(name: str, sources: Any, notes: list[str]) -> int | None:
    """The first real unit id (> 0) in a `[{src: ...}]` list; None with a note when it does
    not fit a SQLite INTEGER."""
    if not isinstance(sources, list):
        return None
    for entry in sources:
        if isinstance(entry, dict):
            src = entry.get("src")
            if isinstance(src, int) and not isinstance(src, bool) and src > 0:
                if src > INT64_MAX:
                    exc = OutOfRange(ID_RANGE)
                    notes.append(out_of_range_note(f"{name}[].src", str(src), exc))
                    return None
                return src
    return None


def safe_name(value: str, what: str) -> str:
    """A single path segment: refuse traversal and hidden names, rewrite other odd characters."""
    text = value.strip()
    if (
        not text
        or "/" in text
        or "\\" in text
        or text.startswith(".")
        or "\x00" in text
        or text != PurePosixPath(text).name
    ):
        raise IntakeError(
            400,
            f"Invalid {what} {value!r}: use a plain name without '/', '\\' or a leading '.'\n",
        )
    return _UNSAFE.sub("_", text)[:MAX_NAME]


def audio_type(
    filename: str, declarations: Sequence[tuple[str, str | None]], notes: list[str]
) -> str:
    """The stored type: the first declaration that names one of `audio_types.STORED_TYPES`,
    else the file name's extension's, else `application/octet-stream`.

    A declaration that names none (`text/html`, `audio/mpegé`) is replaced, with a note; the
    declared text itself stays in the metadata.
    """
    chosen = next(
        (kind for _, declared in declarations if (kind := audio_types.declared_type(declared))),
        None,
    )
    content_type = chosen or audio_types.type_of_name(filename)
    origin = "the first type declared that tr_vault stores" if chosen else "the file name"
    for name, declared in declarations:
        if audio_types.declared_type(declared) is None and not audio_types.is_generic(declared):
            notes.append(
                f"{name}: {shown(declared)} is not an audio type tr_vault stores;"
                f" stored as {content_type} (from {origin})"
            )
    return content_type


def keep_part_type(declared: str | None, content_type: str, metadata: dict[str, Any]) -> None:
    """The audio part's own Content-Type joins the metadata when it is not what we store, so
    nothing the client declared is lost."""
    if declared is not None and declared.strip() and declared.strip() != content_type:
        metadata[PART_TYPE] = declared


def ensure_extension(filename: str, content_type: str) -> str:
    """Give an extension-less file name the one its type implies."""
    if PurePosixPath(filename).suffix:
        return filename
    return filename + audio_types.extension_for(content_type)


def text_fields(fields: dict[str, str], *, drop: tuple[str, ...]) -> dict[str, Any]:
    """Every received field but secrets, JSON-looking ones parsed when they parse (strictly:
    the stored metadata is always valid JSON)."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name in drop:
            continue
        stripped = value.strip()
        if stripped[:1] in ("[", "{"):
            try:
                out[name] = strict_json(stripped)
                continue
            except ValueError:
                pass
        out[name] = value
    return out
