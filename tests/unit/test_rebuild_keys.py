"""What a key and a HEAD tell a rebuild, and what they do not (tr_vault.rebuild, pure parts)."""

from __future__ import annotations

import pytest

from tr_vault import objectmeta
from tr_vault.rebuild import (
    KeyParts,
    Outcome,
    Rebuilt,
    Scope,
    parse_audio_key,
    rebuilt_row,
    recorder_name,
)
from tr_vault.storage.base import ListedObject, ObjectInfo, ObjectRef

NAME = "9131-1764001234_851012500.0-call_123.m4a"
SHA = "a" * 64


@pytest.mark.parametrize(
    ("key", "parts"),
    [
        (f"audio/metro/2025-11-24/{NAME}", KeyParts(None, "metro", "2025-11-24", NAME)),
        (f"audio/north/metro/2025-11-24/{NAME}", KeyParts("north", "metro", "2025-11-24", NAME)),
        # a site named like a system, a system named like a date's neighbour: position decides
        ("audio/11/11/2025-11-24/x.m4a", KeyParts("11", "11", "2025-11-24", "x.m4a")),
        ("audio/metro/2025-02-30/x.m4a", None),  # not a date
        ("audio/metro/20251124/x.m4a", None),
        ("audio/metro/x.m4a", None),
        ("audio/a/b/c/2025-11-24/x.m4a", None),
        ("audio/metro//2025-11-24/x.m4a", None),
        ("other/metro/2025-11-24/x.m4a", None),
        (".tr-vault/probe", None),
        ("journal/generations/0/x", None),
    ],
)
def test_key_layouts(key: str, parts: KeyParts | None) -> None:
    assert parse_audio_key(key) == parts


def test_only_trunk_recorders_exact_names_on_their_own_date_tell_talkgroup_and_start() -> None:
    assert recorder_name(NAME, "2025-11-24") == (9131, 1764001234.0)
    assert recorder_name("9131-1764001234_851012500.m4a", "2025-11-24") == (9131, 1764001234.0)
    assert recorder_name(NAME, "2025-11-25") is None  # the start is not on the key's date
    for name in (
        "0131-1764001234_851012500.m4a",  # no talkgroup starts with 0
        "9131-1764001234.m4a",
        "9131-1764001234_851012500.0-call_123-0123456789ab.m4a",  # a renamed copy
        "20251124_162034Metro_TO_9131_FROM_1402211.mp3",  # SDRTrunk
        "Dispatch 16.20.34.mp3",
    ):
        assert recorder_name(name, "2025-11-24") is None, name


def _row(metadata: dict[str, str], *, sha256: str | None, etag: str | None = "b" * 32) -> Rebuilt:
    key = f"audio/metro/2025-11-24/{NAME}"
    listed = ListedObject(key, 10, etag, 1764001300.0)
    info = ObjectInfo(key, 10, etag, sha256, "audio/mp4", metadata)
    parts = parse_audio_key(key)
    assert parts is not None
    return rebuilt_row(listed, parts, ObjectRef("bucket", f"vault/{key}"), info, 0.0)


def test_a_row_from_complete_metadata() -> None:
    meta = objectmeta.call_metadata(
        call_id=7, site="North Tower", protocol="openmhz", system="metro", system_label=None,
        talkgroup=9131, talkgroup_label="Zürich", start_time="2025-11-24 16:20:34.750",
        duration=4.87, audio_name=NAME,
    )  # fmt: skip
    row = _row({**meta, "sha256": SHA}, sha256=SHA)
    assert row.source is Outcome.METADATA
    assert (row.site, row.talkgroup_label, row.start_time) == (
        "North_Tower", "Zürich", "2025-11-24 16:20:34.750",
    )  # fmt: skip
    assert (row.duration, row.md5, row.stored_at) == (
        4.87, "b" * 32, "2025-11-24 16:21:40.000",
    )  # fmt: skip
    assert row.note == {"call_id": 7}


def test_partial_metadata_is_a_key_row_that_keeps_a_real_sha256_only() -> None:
    row = _row({"sha256": SHA, "talkgroup": "12"}, sha256=SHA, etag="abc-2")
    assert row.source is Outcome.KEY
    assert (row.sha256, row.md5, row.talkgroup) == (SHA, "", 9131)
    assert row.protocol == "unknown" and row.system_label is None
    bad = _row({"sha256": "not-hex"}, sha256="not-hex")
    assert bad.sha256 == f"unknown:vault/audio/metro/2025-11-24/{NAME}"
    assert not bad.sha256_known


def test_scopes() -> None:
    own = Scope("north", include_no_site=True)
    adopted = Scope("south", include_no_site=False)
    every = Scope(None)
    assert own.takes("north") and own.takes(None) and not own.takes("south")
    assert adopted.takes("south") and not adopted.takes(None)
    assert every.takes("north") and every.takes(None)


@pytest.mark.parametrize("talkgroup", ["+12", "1_000", " 12", "12.0", "-1", "9" * 20, "²"])
def test_a_talkgroup_that_is_not_plain_digits_makes_a_key_row(talkgroup: str) -> None:
    meta = objectmeta.call_metadata(
        call_id=1, site="s", protocol="rdio", system="11", system_label=None, talkgroup=1,
        talkgroup_label=None, start_time="2025-11-24 16:20:34.000", duration=None,
        audio_name=NAME,
    )  # fmt: skip
    row = _row({**meta, "talkgroup": talkgroup, "sha256": SHA}, sha256=SHA)
    assert row.source is Outcome.KEY and row.sha256 == SHA


def test_a_start_time_out_of_range_makes_a_key_row() -> None:
    meta = {"sha256": SHA, "system": "11", "talkgroup": "5", "start-time": "0001-01-01T00:00+05:00"}
    assert _row(meta, sha256=SHA).source is Outcome.KEY
