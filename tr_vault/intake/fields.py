"""Field parsing shared by the protocols: numbers, times, optional JSON, safe names, audio types."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from tr_vault.errors import IntakeError

AUDIO_TYPES = {
    ".m4a": "audio/mp4",
    ".mp4": "audio/mp4",
    ".aac": "audio/aac",
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
    ".flac": "audio/flac",
}
EXTENSIONS = {"audio/mp4": ".m4a", "audio/m4a": ".m4a", "audio/x-m4a": ".m4a",
              "audio/aac": ".aac", "audio/mpeg": ".mp3", "audio/mp3": ".mp3",
              "audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav",
              "audio/ogg": ".ogg", "audio/flac": ".flac"}  # fmt: skip
GENERIC_TYPES = {"", "application/octet-stream", "binary/octet-stream"}

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_NAME = 160


def positive_int(value: str | None) -> int | None:
    """An integer > 0, or None: rdio-scanner treats anything else as absent."""
    if value is None:
        return None
    try:
        number = int(float(value.strip()))
    except (ValueError, OverflowError):
        return None
    return number if number > 0 else None


def any_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value.strip()))
    except (ValueError, OverflowError):
        return None


def any_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value.strip())
    except ValueError:
        return None


def unix_or_rfc3339(value: str | None) -> float | None:
    """All digits: Unix seconds; otherwise RFC 3339 (fractions and 'Z' allowed)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        seconds = float(text)
    else:
        try:
            parsed = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        seconds = parsed.timestamp()
    return seconds if seconds > 0 else None


def label(value: str | None) -> str | None:
    """A display label; rdio clients send '-' or '' for none."""
    if value is None or value.strip() in ("", "-"):
        return None
    return value.strip()


def optional_json(name: str, value: str | None, notes: list[str]) -> Any:
    """Parsed JSON, or the raw text with a note: a client's bad JSON never costs a call."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        notes.append(f"{name}: not valid JSON ({exc.msg} at char {exc.pos}); raw text kept")
        return value


def first_source(sources: Any) -> int | None:
    """The first real unit id in a `[{src: ...}]` list."""
    if not isinstance(sources, list):
        return None
    for entry in sources:
        if isinstance(entry, dict):
            src = entry.get("src")
            if isinstance(src, int) and not isinstance(src, bool) and src > 0:
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


def audio_type(filename: str, declared: str | None) -> str:
    """The MIME type from the declared type, else from the file name's extension."""
    kind = (declared or "").split(";")[0].strip().lower()
    if kind and kind not in GENERIC_TYPES:
        return kind
    return AUDIO_TYPES.get(PurePosixPath(filename).suffix.lower(), "application/octet-stream")


def ensure_extension(filename: str, content_type: str) -> str:
    """Give an extension-less file name the one its type implies."""
    if PurePosixPath(filename).suffix:
        return filename
    return filename + EXTENSIONS.get(content_type, ".bin")


def text_fields(fields: dict[str, str], *, drop: tuple[str, ...]) -> dict[str, Any]:
    """Every received field but secrets, JSON-looking ones parsed when they parse."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name in drop:
            continue
        stripped = value.strip()
        if stripped[:1] in ("[", "{"):
            try:
                out[name] = json.loads(stripped)
                continue
            except ValueError:
                pass
        out[name] = value
    return out
