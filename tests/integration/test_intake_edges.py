"""Edge values at intake: numbers that do not fit, impossible times, declared types we never store.

What a recorder (or a user's script) sees: a refusal names the field and what is allowed and
leaves no row and no file; an optional value that does not fit costs nothing but its column
(the raw text stays in the metadata, a note says why); the stored type is always one tr_vault
serves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Vault, VaultFactory, s3_settings
from tests.s3_fixtures import MotoS3
from tests.wire import (
    TR_META,
    Part,
    fixture_bytes,
    openmhz,
    rdio_trunk_recorder,
    sdrtrunk,
    sdrtrunk_test,
    trunk_recorder_meta_upload,
)
from tr_vault.audio_types import is_stored_type

M4A = fixture_bytes("call-9131-1764001234.m4a")
M4A_2 = fixture_bytes("call-2201-1764001301.m4a")
WAV = fixture_bytes("call-9131-1764001234.wav")
SUCCESS = "Call imported successfully.\n"
ID_RANGE = "an integer from 1 to 9223372036854775807"
INT_RANGE = "an integer from -9223372036854775808 to 9223372036854775807"
TIME_RANGE = "Unix seconds or an RFC 3339 date-time from 1980-01-01 to 2100-01-01"
MILLIS_RANGE = "Unix milliseconds from 1980-01-01 to 2100-01-01"


def setting(parts: list[Part], **values: str) -> list[Part]:
    """`parts` with these fields' values replaced (or added at the end)."""
    out = [Part(p.name, values.pop(p.name), p.filename, p.content_type, p.filename_first)
           if p.name in values else p for p in parts]  # fmt: skip
    return out + [Part(name, value) for name, value in values.items()]


def without(parts: list[Part], *names: str) -> list[Part]:
    return [p for p in parts if p.name not in names]


def with_audio_type(parts: list[Part], content_type: str | None) -> list[Part]:
    """`parts` with the audio part's own Content-Type header replaced (None: no header)."""
    return [Part(p.name, p.value, p.filename, content_type, p.filename_first)
            if p.filename is not None and p.name in ("audio", "call") else p
            for p in parts]  # fmt: skip


def meta_upload(**meta: Any) -> list[Part]:
    """The trunk-recorder-call-upload route with these `meta` JSON values (raw JSON text)."""
    text = json.dumps(TR_META)
    for name, raw in meta.items():
        text = text.replace(f'"{name}": {json.dumps(TR_META[name])}', f'"{name}": {raw}', 1)
        assert f'"{name}": {raw}' in text, name
    return trunk_recorder_meta_upload(WAV, meta=text)


def cached_files(vault: Vault) -> list[Path]:
    """Every file in the audio cache outside `.incoming`."""
    root = vault.settings.audio_dir
    return sorted(
        p for p in root.rglob("*") if p.is_file() and ".incoming" not in p.relative_to(root).parts
    )


def strict_json(text: str) -> Any:
    """What a strict JSON reader (not Python's) accepts: no NaN / Infinity."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in stored JSON")

    return json.loads(text, parse_constant=refuse)


async def assert_refused(
    vault: Vault, path: str, parts: list[Part], status: int, text: str
) -> None:
    response = await vault.post(path, parts)
    assert (response.status_code, response.text) == (status, text)
    assert vault.calls() == []
    assert vault.incoming() == []
    assert cached_files(vault) == []


async def stored_with_notes(
    vault: Vault, path: str, parts: list[Part]
) -> tuple[dict[str, Any], list[str]]:
    """Post, expect 200, and return the one new call and its `received` notes."""
    before = {c["id"] for c in vault.calls()}
    response = await vault.post(path, parts)
    assert response.status_code == 200, response.text
    [call] = [c for c in vault.calls() if c["id"] not in before]
    [received] = [e for e in vault.events(call["id"]) if e["kind"] == "received"]
    detail = json.loads(received["detail"])
    strict_json(call["metadata"])
    assert vault.incoming() == []
    return call, detail.get("notes", [])


# -- required values that parse but do not fit: 400 naming the field ------------------------


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("talkgroup", "1e20", ID_RANGE),
        ("talkgroup", "99999999999999999999", ID_RANGE),
        ("talkgroup", "9223372036854775808", ID_RANGE),  # one past the largest SQLite INTEGER
        ("talkgroup", "1e400", ID_RANGE),
        ("system", "1e20", ID_RANGE),
        ("dateTime", "99999999999", TIME_RANGE),  # year 5138
        ("dateTime", "253402300800", TIME_RANGE),  # year 10000: past what datetime holds
        ("dateTime", "9" * 400, TIME_RANGE),
        ("dateTime", "1979-12-31T23:59:59Z", TIME_RANGE),
        ("dateTime", "9999-12-31T23:59:59-23:59", TIME_RANGE),  # year 10000 in UTC
    ],
)
async def test_rdio_required_value_out_of_range_is_a_400_that_names_it(
    vault: Vault, field: str, value: str, allowed: str
) -> None:
    shown = value if len(value) <= 40 else value[:40] + "…"  # answers quote a value cut short
    parts = setting(rdio_trunk_recorder(M4A), **{field: value})
    text = f"Invalid {field} {shown!r}: {allowed}\n"
    await assert_refused(vault, "/api/call-upload", parts, 400, text)


async def test_rdio_huge_millisecond_timestamp_is_a_400(vault: Vault) -> None:
    for value in ("99999999999999999999999", "1e400", "4102444800000"):
        parts = [*without(rdio_trunk_recorder(M4A), "dateTime"), Part("timestamp", value)]
        await assert_refused(
            vault, "/api/call-upload", parts, 400, f"Invalid timestamp {value!r}: {MILLIS_RANGE}\n"
        )


async def test_sdrtrunk_with_a_huge_talkgroup_is_refused_before_anything_is_kept(
    vault: Vault,
) -> None:
    parts = setting(sdrtrunk(M4A), talkgroup="1e20")
    await assert_refused(
        vault, "/api/call-upload", parts, 400, f"Invalid talkgroup '1e20': {ID_RANGE}\n"
    )


async def test_the_largest_sqlite_integer_still_fits(vault: Vault) -> None:
    largest = "9223372036854775807"
    parts = setting(rdio_trunk_recorder(M4A), talkgroup=largest, system=largest, frequency=largest)
    call, notes = await stored_with_notes(vault, "/api/call-upload", parts)
    assert call["talkgroup"] == call["frequency"] == int(largest)
    assert call["system"] == largest
    assert notes == []


@pytest.mark.parametrize("value", ["²", "1764001234²", "١٧٦٤٠٠١٢٣٤", "abc", "0"])
async def test_rdio_datetime_that_is_not_a_time_is_rdio_scanners_no_datetime(
    vault: Vault, value: str
) -> None:
    # str.isdigit() is true for '²' and Arabic-Indic digits: they are not Unix seconds.
    parts = setting(rdio_trunk_recorder(M4A), dateTime=value)
    await assert_refused(
        vault, "/api/call-upload", parts, 417, "Incomplete call data: no datetime\n\n"
    )


@pytest.mark.parametrize("value", ["abc", "0", "-5", "²", "٣", "1_0", "-1e20"])
async def test_rdio_talkgroup_that_is_not_an_id_is_still_no_talkgroup(
    vault: Vault, value: str
) -> None:
    parts = setting(rdio_trunk_recorder(M4A), talkgroup=value)
    await assert_refused(
        vault, "/api/call-upload", parts, 417, "Incomplete call data: no talkgroup\n\n"
    )


async def test_sdrtrunk_connection_test_still_gets_no_talkgroup(vault: Vault) -> None:
    probe = await vault.post("/api/call-upload", sdrtrunk_test())
    assert (probe.status_code, probe.text) == (417, "Incomplete call data: no talkgroup\n\n")
    assert vault.calls() == []
    assert vault.incoming() == []


async def test_a_wrong_key_is_still_401_when_the_numbers_do_not_fit(vault: Vault) -> None:
    parts = setting(rdio_trunk_recorder(M4A, key="wrong"), system="1e20", talkgroup="1e20")
    await assert_refused(
        vault, "/api/call-upload", parts, 401, "Invalid API key for system 1e20 talkgroup 1e20.\n"
    )


async def test_trunk_recorder_meta_route_required_values_out_of_range(vault: Vault) -> None:
    path = "/api/trunk-recorder-call-upload"
    await assert_refused(
        vault, path, meta_upload(talkgroup="99999999999999999999"), 400,
        f"Invalid meta.talkgroup '99999999999999999999': {ID_RANGE}\n",
    )  # fmt: skip
    await assert_refused(
        vault, path, meta_upload(start_time="99999999999"), 400,
        f"Invalid meta.start_time '99999999999': {TIME_RANGE}\n",
    )  # fmt: skip
    # A JSON number Python reads as inf is kept as its text, which is no Unix time.
    await assert_refused(
        vault, path, meta_upload(start_time="1e400"), 417, "Incomplete call data: no datetime\n\n"
    )
    # Form fields override meta, and are named as sent.
    parts = [*trunk_recorder_meta_upload(WAV), Part("talkgroup", "1e20")]
    await assert_refused(vault, path, parts, 400, f"Invalid talkgroup '1e20': {ID_RANGE}\n")


@pytest.mark.parametrize(
    ("field", "value", "text"),
    [
        ("talkgroup_num", "1e20", f"Invalid talkgroup_num '1e20': {ID_RANGE}\n"),
        ("talkgroup_num", "99999999999999999999",
         f"Invalid talkgroup_num '99999999999999999999': {ID_RANGE}\n"),
        ("start_time", "99999999999", f"Invalid start_time '99999999999': {TIME_RANGE}\n"),
        ("start_time", "253402300800", f"Invalid start_time '253402300800': {TIME_RANGE}\n"),
        ("start_time", "²", "Missing or invalid 'start_time': Unix seconds are required\n"),
        ("talkgroup_num", "²",
         "Missing or invalid 'talkgroup_num': a talkgroup id > 0 is required\n"),
    ],
)  # fmt: skip
async def test_openmhz_required_value_out_of_range_is_a_400_that_names_it(
    vault: Vault, field: str, value: str, text: str
) -> None:
    await assert_refused(vault, "/metro/upload", setting(openmhz(M4A), **{field: value}), 400, text)


# -- optional values that do not fit: 200, column NULL, raw text kept, a note ------------------


async def test_rdio_frequency_out_of_range_is_kept_as_metadata_only(vault: Vault) -> None:
    parts = setting(rdio_trunk_recorder(M4A), frequency="1e20")
    call, notes = await stored_with_notes(vault, "/api/call-upload", parts)
    assert call["frequency"] is None
    assert call["talkgroup"] == 9131
    assert json.loads(call["metadata"])["frequency"] == "1e20"
    assert notes == [f"frequency: '1e20' is out of range ({INT_RANGE}); kept only in the metadata"]
    assert vault.audio_path(call["key"]).read_bytes() == M4A


async def test_rdio_source_out_of_range_is_kept_as_metadata_only(vault: Vault) -> None:
    call, notes = await stored_with_notes(
        vault, "/api/call-upload", setting(sdrtrunk(M4A), source="1e20")
    )
    assert call["source"] is None
    assert json.loads(call["metadata"])["source"] == "1e20"
    assert notes == [f"source: '1e20' is out of range ({ID_RANGE}); kept only in the metadata"]

    sources = '[{"pos": 0.0, "src": 99999999999999999999}]'
    call, notes = await stored_with_notes(
        vault, "/api/call-upload",
        rdio_trunk_recorder(M4A_2, sources=sources),
    )  # fmt: skip
    assert call["source"] is None
    assert json.loads(call["metadata"])["sources"] == [{"pos": 0.0, "src": 99999999999999999999}]
    assert notes == [
        f"sources[].src: '99999999999999999999' is out of range ({ID_RANGE});"
        " kept only in the metadata"
    ]


async def test_rdio_non_finite_json_in_optional_fields_is_stored_as_valid_json(
    vault: Vault,
) -> None:
    frequencies = '[{"freq": 851012500, "time": 1764001234, "pos": 0, "len": 1e400}, NaN]'
    call, notes = await stored_with_notes(
        vault, "/api/call-upload", rdio_trunk_recorder(M4A, frequencies=frequencies)
    )
    metadata = strict_json(call["metadata"])
    assert metadata["frequencies"] == [
        {"freq": 851012500, "time": 1764001234, "pos": 0, "len": "1e400"},
        "NaN",
    ]
    assert notes == []


async def test_trunk_recorder_meta_optional_values_out_of_range(vault: Vault) -> None:
    src_list = '[{"src": 99999999999999999999, "time": 1764001234, "pos": 0.0}]'
    parts = meta_upload(
        freq="1e20", call_length="1e400", stop_time="99999999999", emergency="1e30",
        srcList=src_list,
    )  # fmt: skip
    call, notes = await stored_with_notes(vault, "/api/trunk-recorder-call-upload", parts)
    assert (call["frequency"], call["duration"], call["stop_time"], call["source"]) == (
        None, None, None, None,
    )  # fmt: skip
    assert call["emergency"] == 0
    assert call["talkgroup"] == 9131
    meta = strict_json(call["metadata"])["meta"]
    assert meta["freq"] == 1e20
    assert meta["call_length"] == "1e400"  # Python would read inf: kept as the text sent
    assert meta["stop_time"] == 99999999999
    assert meta["srcList"][0]["src"] == 99999999999999999999
    assert sorted(n.split(":")[0] for n in notes) == [
        "meta.call_length", "meta.emergency", "meta.freq", "meta.srcList[].src", "meta.stop_time",
    ]  # fmt: skip
    assert all("kept only in the metadata" in n for n in notes)


@pytest.mark.parametrize(
    ("field", "value", "column"),
    [
        ("call_length", "1e400", "duration"),
        ("call_length", "nan", "duration"),
        ("call_length", "inf", "duration"),
        ("freq", "1e20", "frequency"),
        ("stop_time", "253402300800", "stop_time"),
        ("emergency", "1e20", "emergency"),
    ],
)
async def test_openmhz_optional_value_out_of_range_is_kept_as_metadata_only(
    vault: Vault, field: str, value: str, column: str
) -> None:
    parts = setting(openmhz(M4A), **{field: value})
    call, notes = await stored_with_notes(vault, "/metro/upload", parts)
    assert call[column] in (None, 0)  # emergency is NOT NULL: 0
    assert json.loads(call["metadata"])[field] == value
    [note] = notes
    assert note.startswith(f"{field}: {value!r} is out of range (")
    assert note.endswith("); kept only in the metadata")
    assert vault.audio_path(call["key"]).read_bytes() == M4A


async def test_openmhz_source_list_with_a_huge_src(vault: Vault) -> None:
    parts = openmhz(M4A, source_list='[{"pos": 0.0, "src": 99999999999999999999}]')
    call, notes = await stored_with_notes(vault, "/metro/upload", parts)
    assert call["source"] is None
    assert [n.split(":")[0] for n in notes] == ["source_list[].src"]


# -- the stored content type is always one of the fixed set ---------------------------------


@pytest.mark.parametrize(
    ("audio_type", "stored", "noted"),
    [
        ("audio/mpegé", "audio/mp4", True),  # not a type: the .m4a name decides
        ("text/html", "audio/mp4", True),
        ("audio/x-wav", "audio/wav", False),
        ("Audio/MPEG; charset=binary", "audio/mpeg", False),
        ("audio/x-m4a", "audio/mp4", False),
        ("application/octet-stream", "audio/mp4", False),
    ],
)
async def test_rdio_declared_audio_type_is_mapped_onto_the_stored_set(
    vault: Vault, audio_type: str, stored: str, noted: bool
) -> None:
    parts = setting(rdio_trunk_recorder(M4A), audioType=audio_type)
    call, notes = await stored_with_notes(vault, "/api/call-upload", parts)
    assert call["content_type"] == stored
    assert is_stored_type(call["content_type"])
    metadata = json.loads(call["metadata"])
    assert metadata["audioType"] == audio_type  # what the client said is kept
    assert metadata["audio_part_content_type"] == "application/octet-stream"
    if noted:
        assert notes == [
            f"audioType: {audio_type!r} is not an audio type tr_vault stores;"
            f" stored as {stored} (from the file name)"
        ]
    else:
        assert notes == []


@pytest.mark.parametrize(
    ("name", "stored", "stored_name"),
    [
        ("a.wav", "audio/wav", "a.wav"),
        ("a.mp3", "audio/mpeg", "a.mp3"),
        ("a.m4a", "audio/mp4", "a.m4a"),
        ("a.M4A", "audio/mp4", "a.M4A"),
        ("a.exe", "application/octet-stream", "a.exe"),
        ("call-123", "application/octet-stream", "call-123.bin"),
    ],
)
async def test_rdio_without_a_declared_type_the_extension_decides(
    vault: Vault, name: str, stored: str, stored_name: str
) -> None:
    parts = without(rdio_trunk_recorder(M4A, audio_name=name), "audioType")
    call, notes = await stored_with_notes(vault, "/api/call-upload", parts)
    assert call["content_type"] == stored
    assert call["audio_name"] == stored_name
    assert notes == []


async def test_rdio_audio_part_content_type_is_used_and_kept(vault: Vault) -> None:
    parts = with_audio_type(without(rdio_trunk_recorder(M4A), "audioType"), "audio/x-m4a")
    call, notes = await stored_with_notes(vault, "/api/call-upload", parts)
    assert call["content_type"] == "audio/mp4"
    assert json.loads(call["metadata"])["audio_part_content_type"] == "audio/x-m4a"
    assert notes == []

    parts = with_audio_type(
        without(rdio_trunk_recorder(M4A_2, audio_name="b.mp3"), "audioType"), "text/html"
    )
    call, notes = await stored_with_notes(vault, "/api/call-upload", parts)
    assert call["content_type"] == "audio/mpeg"
    assert json.loads(call["metadata"])["audio_part_content_type"] == "text/html"
    assert notes == [
        "audio_part_content_type: 'text/html' is not an audio type tr_vault stores;"
        " stored as audio/mpeg (from the file name)"
    ]


async def test_sdrtrunk_sends_no_types_and_gets_its_extensions(vault: Vault) -> None:
    call, notes = await stored_with_notes(vault, "/api/call-upload", sdrtrunk(M4A))
    assert call["content_type"] == "audio/mpeg"
    assert "audio_part_content_type" not in json.loads(call["metadata"])
    assert notes == []


async def test_trunk_recorder_meta_route_stores_the_standard_wav_type(vault: Vault) -> None:
    call, notes = await stored_with_notes(
        vault, "/api/trunk-recorder-call-upload", trunk_recorder_meta_upload(WAV)
    )
    assert call["content_type"] == "audio/wav"
    assert json.loads(call["metadata"])["audio_part_content_type"] == "audio/x-wav"
    assert notes == []


@pytest.mark.parametrize(
    ("filename", "part_type", "stored"),
    [
        ("9131-1764001234.m4a", "application/octet-stream", "audio/mp4"),
        ("9131-1764001234.mp3", "text/html", "audio/mpeg"),
        ("9131-1764001234.wav", "audio/mpegé", "audio/wav"),
        ("9131-1764001234.aac", None, "audio/aac"),
    ],
)
async def test_openmhz_stores_the_extensions_type(
    vault: Vault, filename: str, part_type: str | None, stored: str
) -> None:
    parts = with_audio_type(openmhz(M4A, filename=filename), part_type)
    call, notes = await stored_with_notes(vault, "/metro/upload", parts)
    assert call["content_type"] == stored
    metadata = json.loads(call["metadata"])
    assert metadata.get("audio_part_content_type") == part_type
    assert notes == []


async def test_a_non_ascii_declared_type_reaches_s3_as_a_stored_type(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    vault = await make_vault(**s3_settings(moto_s3, s3_upload_mode="sync"))
    parts = setting(rdio_trunk_recorder(M4A), audioType="audio/mpegé")
    response = await vault.post("/api/call-upload", parts)
    assert (response.status_code, response.text) == (200, SUCCESS)
    [call] = vault.calls()
    assert call["state"] == "done"  # no UnicodeEncodeError in the PUT's Content-Type
    head = moto_s3.client().head_object(Bucket=moto_s3.bucket, Key=f"audio/{call['key']}")
    assert head["ContentType"] == "audio/mp4"


async def test_call_queries_past_year_9999_are_a_400_not_a_crash(vault: Vault) -> None:
    assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
    far = await vault.client.get(vault.url + "/api/calls", params={"until": "99999999999"})
    assert far.status_code == 200  # year 5138 is a fair bound to ask for
    assert len(far.json()["calls"]) == 1
    for value in ("253402300800", "²"):
        response = await vault.client.get(vault.url + "/api/calls", params={"since": value})
        assert response.status_code == 400
        assert "since" in response.json()["error"]


async def test_a_lone_surrogate_in_a_meta_label_is_stored_not_a_500(vault: Vault) -> None:
    # Found by the fuzzer: JSON may escape a lone surrogate ("\ud800"), which SQLite cannot
    # store as text; the insert failed and the client got a 500.
    response = await vault.post(
        "/api/trunk-recorder-call-upload", meta_upload(talkgroup_tag='"FD \\ud800 Dispatch"')
    )
    assert (response.status_code, response.text) == (200, "Call imported successfully.\n")
    [call] = vault.calls()
    assert call["talkgroup_label"] == "FD \ufffd Dispatch"
    assert vault.incoming() == []
