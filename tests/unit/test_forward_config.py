"""TR_VAULT_FORWARD_FILE: destinations validated whole, errors that say where; the filters."""

from __future__ import annotations

from pathlib import Path

import pytest

from tr_vault.call import CallMeta
from tr_vault.errors import ConfigError
from tr_vault.forward.config import load_destinations, wanted, wanted_by

FULL = """
[[destinations]]
name = "county-rdio"
kind = "rdio-scanner"
url = "http://rdio.example:3000"
api_key = "KEY"
systems = ["11", "metro"]
talkgroups = ["9*", "2201"]
exclude_talkgroups = ["99*"]
concurrency = 2
give_up_after = "7d"

[destinations.per_system.metro]
api_key = "OPENMHZ-OR-BCFY-KEY"
system_id = 1234

[[destinations]]
name = "alerts"
kind = "webhook"
url = "https://hooks.example/tr"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "forward.toml"
    path.write_text(text)
    return path


def meta(talkgroup: int, system: str = "11", label: str | None = "metro") -> CallMeta:
    return CallMeta("rdio", system, label, talkgroup, 1764001234.0, "a.m4a", "audio/mp4")


def test_the_issue_example_loads(tmp_path: Path) -> None:
    rdio, hook = load_destinations(write(tmp_path, FULL))
    assert rdio.give_up_after == 7 * 86400 and rdio.concurrency == 2
    assert rdio.per_system["metro"].system_id == 1234
    assert rdio.per_system["metro"].api_key == "OPENMHZ-OR-BCFY-KEY"
    assert hook.kind == "webhook" and hook.give_up_after is None and hook.systems == ()


def test_empty_setting_is_forwarding_off() -> None:
    assert load_destinations("") == []


def test_filters(tmp_path: Path) -> None:
    rdio, hook = load_destinations(write(tmp_path, FULL))
    assert wanted(rdio, meta(9131))
    assert wanted(rdio, meta(2201))
    assert not wanted(rdio, meta(2202))  # not in the talkgroups
    assert not wanted(rdio, meta(9901))  # excluded
    assert wanted(rdio, meta(9131, system="12", label="metro"))  # by short name
    assert not wanted(rdio, meta(9131, system="12", label="south"))
    assert wanted_by([rdio, hook], meta(2202)) == ("alerts",)


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ('name = "a b"\nkind = "webhook"\nurl = "http://x"', "destination 'a b': name"),
        ('name = "a"\nkind = "pager"\nurl = "http://x"', "destination 'a': kind: 'pager'"),
        ('name = "a"\nkind = "webhook"\nurl = "ftp://x"', "destination 'a': url"),
        ('name = "a"\nkind = "webhook"', "destination 'a': url: missing"),
        ('name = "a"\nkind = "webhook"\nurl = "http://x"\nconcurrency = 65', "concurrency"),
        (
            'name = "a"\nkind = "webhook"\nurl = "http://x"\ngive_up_after = "7 days"',
            "give_up_after",
        ),
        ('name = "a"\nkind = "webhook"\nurl = "http://x"\ntalkgroups = ["abc"]', "talkgroups"),
        ('name = "a"\nkind = "webhook"\nurl = "http://x"\nspeed = 3', "speed: unknown field"),
        (
            'name = "a"\nkind = "webhook"\nurl = "http://x"\n[destinations.per_system.m]\nkey = 1',
            "per_system.m: unknown key",
        ),
        ('kind = "webhook"\nurl = "http://x"', "destination #1: name: missing"),
    ],
)
def test_errors_name_the_file_destination_and_field(tmp_path: Path, entry: str, says: str) -> None:
    path = write(tmp_path, f"[[destinations]]\n{entry}\n")
    with pytest.raises(ConfigError) as err:
        load_destinations(path)
    assert str(path) in str(err.value) and says in str(err.value)


def test_names_are_unique(tmp_path: Path) -> None:
    one = '[[destinations]]\nname = "a"\nkind = "webhook"\nurl = "http://x"\n'
    with pytest.raises(ConfigError, match="two destinations are named 'a'"):
        load_destinations(write(tmp_path, one + one))


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_destinations(write(tmp_path, "[[destinations]\n"))
    with pytest.raises(ConfigError, match="TR_VAULT_FORWARD_FILE .*nope.toml"):
        load_destinations(tmp_path / "nope.toml")
