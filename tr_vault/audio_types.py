"""The audio content types tr_vault stores and serves: a fixed set, never a client's own text.

The stored type goes into a journal column, the S3 PUT's Content-Type header and the playback
response, so it must be plain ASCII and must not let a client make a browser render a recording
as HTML. A declared type is mapped onto this set (by its aliases) or replaced by what the file
name's extension says; what the client declared stays in the call's metadata.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Final

FALLBACK: Final = "application/octet-stream"

STORED_TYPES: Final = frozenset(
    {
        "audio/mp4",
        "audio/aac",
        "audio/mpeg",
        "audio/wav",
        "audio/ogg",
        "audio/flac",
        "audio/webm",
        FALLBACK,
    }
)

# Other names clients use for the same formats.
ALIASES: Final = MappingProxyType(
    {
        "audio/x-wav": "audio/wav",
        "audio/wave": "audio/wav",
        "audio/vnd.wave": "audio/wav",
        "audio/x-pn-wav": "audio/wav",
        "audio/m4a": "audio/mp4",
        "audio/x-m4a": "audio/mp4",
        "audio/mp3": "audio/mpeg",
        "audio/x-mp3": "audio/mpeg",
        "audio/mpeg3": "audio/mpeg",
        "audio/x-mpeg": "audio/mpeg",
        "audio/x-aac": "audio/aac",
        "audio/aacp": "audio/aac",
        "audio/x-flac": "audio/flac",
        "audio/opus": "audio/ogg",
        "audio/x-ogg": "audio/ogg",
        "application/ogg": "audio/ogg",
    }
)

# Declarations that say nothing about the format: the file name decides instead.
GENERIC_TYPES: Final = frozenset({"", FALLBACK, "binary/octet-stream", "application/binary"})

TYPE_BY_EXTENSION: Final = MappingProxyType(
    {
        ".m4a": "audio/mp4",
        ".mp4": "audio/mp4",
        ".aac": "audio/aac",
        ".mp3": "audio/mpeg",
        ".wav": "audio/wav",
        ".wave": "audio/wav",
        ".ogg": "audio/ogg",
        ".oga": "audio/ogg",
        ".opus": "audio/ogg",
        ".flac": "audio/flac",
        ".webm": "audio/webm",
    }
)

EXTENSION_BY_TYPE: Final = MappingProxyType(
    {
        "audio/mp4": ".m4a",
        "audio/aac": ".aac",
        "audio/mpeg": ".mp3",
        "audio/wav": ".wav",
        "audio/ogg": ".ogg",
        "audio/flac": ".flac",
        "audio/webm": ".webm",
        FALLBACK: ".bin",
    }
)


def normalize(declared: str | None) -> str:
    """A declaration lowercased, without parameters, aliases mapped; '' when absent."""
    kind = (declared or "").split(";", 1)[0].strip().lower()
    return ALIASES.get(kind, kind)


def is_generic(declared: str | None) -> bool:
    """True when a declaration says nothing about the format (absent or octet-stream)."""
    return normalize(declared) in GENERIC_TYPES


def declared_type(declared: str | None) -> str | None:
    """The stored type a declaration names, or None when it names none we store."""
    kind = normalize(declared)
    return kind if kind in STORED_TYPES and kind not in GENERIC_TYPES else None


def type_of_name(filename: str) -> str:
    """The stored type a file name's extension implies, else the fallback."""
    return TYPE_BY_EXTENSION.get(PurePosixPath(filename).suffix.lower(), FALLBACK)


def stored_type(declared: str | None, filename: str) -> str:
    """The type to store: the declared one when it is in the set, else the extension's, else
    `application/octet-stream`. Always one of `STORED_TYPES`."""
    return declared_type(declared) or type_of_name(filename)


def is_stored_type(value: object) -> bool:
    """True for exactly the types tr_vault stores and serves."""
    return isinstance(value, str) and value in STORED_TYPES


def extension_for(content_type: str) -> str:
    """The extension a stored type's file gets when its name has none."""
    return EXTENSION_BY_TYPE.get(normalize(content_type), ".bin")
