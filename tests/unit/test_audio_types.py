"""The fixed set of stored audio types: whatever a client declares, only these come out."""

from __future__ import annotations

import pytest

from tr_vault.audio_types import (
    ALIASES,
    EXTENSION_BY_TYPE,
    FALLBACK,
    STORED_TYPES,
    TYPE_BY_EXTENSION,
    extension_for,
    is_stored_type,
    stored_type,
)


@pytest.mark.parametrize(
    ("declared", "filename", "expected"),
    [
        ("audio/mp4", "a.mp3", "audio/mp4"),  # a declared stored type wins over the name
        ("AUDIO/MPEG", "a.m4a", "audio/mpeg"),
        ("audio/mpeg; charset=binary", "a", "audio/mpeg"),
        (" audio/wav ", "a", "audio/wav"),
        ("audio/x-wav", "a", "audio/wav"),
        ("audio/wave", "a", "audio/wav"),
        ("audio/m4a", "a", "audio/mp4"),
        ("audio/x-m4a", "a", "audio/mp4"),
        ("audio/mp3", "a", "audio/mpeg"),
        ("audio/x-flac", "a", "audio/flac"),
        ("audio/mpegé", "a.m4a", "audio/mp4"),  # not a type: the extension decides
        ("text/html", "a.mp3", "audio/mpeg"),
        ("text/html", "a", FALLBACK),
        ("application/octet-stream", "a.wav", "audio/wav"),  # says nothing: the name decides
        ("binary/octet-stream", "a.flac", "audio/flac"),
        (None, "a.M4A", "audio/mp4"),
        ("", "a.opus", "audio/ogg"),
        (None, "a.exe", FALLBACK),
        (None, "noext", FALLBACK),
        ("audio/mp4\r\nX-Evil: 1", "a.mp3", "audio/mpeg"),
    ],
)
def test_stored_type(declared: str | None, filename: str, expected: str) -> None:
    assert stored_type(declared, filename) == expected
    assert is_stored_type(stored_type(declared, filename))


def test_every_map_lands_in_the_set() -> None:
    assert set(ALIASES.values()) <= STORED_TYPES
    assert set(TYPE_BY_EXTENSION.values()) <= STORED_TYPES
    assert set(EXTENSION_BY_TYPE) == STORED_TYPES
    assert all(t.isascii() and t == t.lower() and "/" in t for t in STORED_TYPES)
    assert not set(ALIASES) & STORED_TYPES


@pytest.mark.parametrize(
    ("value", "expected"),
    [("audio/mp4", True), (FALLBACK, True), ("audio/x-wav", False), ("AUDIO/MP4", False),
     ("text/html", False), ("", False), (None, False), (42, False)],
)  # fmt: skip
def test_is_stored_type(value: object, expected: bool) -> None:
    assert is_stored_type(value) is expected


def test_extension_for() -> None:
    assert extension_for("audio/mp4") == ".m4a"
    assert extension_for("audio/wav") == ".wav"
    assert extension_for("audio/x-wav") == ".wav"
    assert extension_for(FALLBACK) == ".bin"
    assert extension_for("text/html") == ".bin"
    for content_type in STORED_TYPES - {FALLBACK}:
        assert stored_type(None, "x" + extension_for(content_type)) == content_type
