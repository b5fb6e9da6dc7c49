"""Field parsing at the edge: what is absent, what fits, what is out of range."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tr_vault.errors import IntakeError
from tr_vault.intake import fields as f

BIG = "9" * 5000  # more digits than int() reads


@pytest.mark.parametrize(
    ("parse", "value", "expected"),
    [
        (f.positive_int, "42", 42),
        (f.positive_int, " 42 ", 42),
        (f.positive_int, "1.9", 1),
        (f.positive_int, "9223372036854775807", 2**63 - 1),  # exact, not via float
        (f.positive_int, None, None),
        (f.positive_int, "abc", None),
        (f.positive_int, "0", None),
        (f.positive_int, "0.5", None),
        (f.positive_int, "-5", None),
        (f.positive_int, "-inf", None),
        (f.positive_int, "²", None),  # str.isdigit() is true, int() refuses
        (f.positive_int, "٣", None),  # int() would read it: not what a client means
        (f.positive_int, "1_0", None),
        (f.any_int, "-9223372036854775808", -(2**63)),
        (f.any_int, "0", 0),
        (f.any_float, "4.87", 4.87),
        (f.any_float, "x", None),
        (f.epoch, "1764001234", 1764001234.0),
        (f.epoch, "2025-11-24T16:20:34.250Z", 1764001234.25),
        (f.epoch, "0", None),
        (f.epoch, "²", None),
        (f.epoch, "1e30", None),
        (f.epoch_millis, "1764001301500", 1764001301.5),
        (f.epoch_number, "1764001239.5", 1764001239.5),
    ],
)
def test_values_that_parse_or_are_absent(
    parse: Callable[[str | None], object], value: str | None, expected: object
) -> None:
    assert parse(value) == expected


@pytest.mark.parametrize(
    ("parse", "value"),
    [
        (f.positive_int, "1e20"),
        (f.positive_int, "9223372036854775808"),
        (f.positive_int, "inf"),
        (f.positive_int, "nan"),
        (f.positive_int, BIG),
        (f.any_int, "-9223372036854775809"),
        (f.any_int, "1e400"),
        (f.any_float, "1e400"),
        (f.any_float, "nan"),
        (f.any_float, "-Infinity"),
        (f.any_float, "1" * 400),  # an int too big for a float
        (f.any_float, BIG),
        (f.epoch, "99999999999"),
        (f.epoch, "253402300800"),
        (f.epoch, "9" * 400),
        (f.epoch, "1979-12-31T23:59:59Z"),
        (f.epoch, "9999-12-31T23:59:59-23:59"),
        (f.epoch, "0001-01-01T00:00:00+23:59"),
        (f.epoch_millis, "4102444800000"),
        (f.epoch_millis, BIG),
        (f.epoch_millis, "1e400"),
        (f.epoch_number, "1e400"),
        (f.epoch_number, "nan"),
    ],
)
def test_values_out_of_range(parse: Callable[[str | None], object], value: str) -> None:
    with pytest.raises(f.OutOfRange):
        parse(value)


def test_required_is_a_400_that_names_the_field() -> None:
    with pytest.raises(IntakeError) as caught:
        f.required("talkgroup", "1e20", f.positive_int)
    assert caught.value.status == 400
    assert caught.value.body == (
        "Invalid talkgroup '1e20': an integer from 1 to 9223372036854775807\n"
    )
    with pytest.raises(IntakeError) as caught:
        f.required("talkgroup", BIG, f.positive_int)
    assert len(caught.value.body) < 120  # the value is quoted cut short


def test_optional_is_none_and_a_note() -> None:
    notes: list[str] = []
    assert f.optional("frequency", "1e20", f.any_int, notes) is None
    assert f.optional("frequency", "851012500", f.any_int, notes) == 851012500
    assert notes == [
        "frequency: '1e20' is out of range (an integer from -9223372036854775808 to"
        " 9223372036854775807); kept only in the metadata"
    ]


def test_query_times_stop_at_year_9999() -> None:
    assert f.unix_or_rfc3339("99999999999") == 99999999999.0
    assert f.unix_or_rfc3339("253402300800") is None
    assert f.unix_or_rfc3339("²") is None


def test_strict_json_keeps_what_json_cannot_hold_as_text() -> None:
    parsed = f.strict_json(f"[1e400, NaN, -Infinity, 2.5, 99999999999999999999, {BIG}]")
    assert parsed == ["1e400", "NaN", "-Infinity", 2.5, 99999999999999999999, BIG]
    json.dumps(parsed, allow_nan=False)
    with pytest.raises(ValueError):
        f.strict_json("[" * 100_000)
    notes: list[str] = []
    assert f.optional_json("sources", "[" * 100_000, notes) == "[" * 100_000
    assert notes == ["sources: not valid JSON (JSON nested too deeply); raw text kept"]


def test_first_source_out_of_range() -> None:
    notes: list[str] = []
    assert f.first_source("sources", [{"src": -1}, {"src": 1402211}], notes) == 1402211
    assert f.first_source("sources", [{"src": True}, {"src": 2**64}], notes) is None
    assert [n.split(":")[0] for n in notes] == ["sources[].src"]


def test_audio_type_notes_a_replaced_declaration() -> None:
    notes: list[str] = []
    declared = [("audioType", "text/html"), ("audio_part_content_type", "audio/x-m4a")]
    assert f.audio_type("a.mp3", declared, notes) == "audio/mp4"
    assert notes == [
        "audioType: 'text/html' is not an audio type tr_vault stores; stored as audio/mp4"
        " (from the first type declared that tr_vault stores)"
    ]
