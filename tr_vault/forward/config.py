"""TR_VAULT_FORWARD_FILE: the destinations calls are relayed to, and which calls each wants.

Read with stdlib `tomllib` and validated whole before the server starts, so a typo is one
`ConfigError` naming the file, the destination and the field, not a relay that silently
forwards nothing.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from tr_vault.durations import parse_duration
from tr_vault.errors import ConfigError
from tr_vault.forward.base import Destination, SystemCredentials

KINDS = ("rdio-scanner", "openmhz", "broadcastify", "webhook")
NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_FIELDS = {
    "name",
    "kind",
    "url",
    "api_key",
    "systems",
    "talkgroups",
    "exclude_talkgroups",
    "concurrency",
    "give_up_after",
    "timeout",
    "max_attempts",
    "per_system",
    "options",
}
_SYSTEM_FIELDS = {"api_key", "system_id", "system"}


class _Where:
    """Builds errors that say where: the file, the destination, the field."""

    def __init__(self, path: Path, index: int, name: str | None) -> None:
        self.path = path
        self.label = f"destination {name!r}" if name else f"destination #{index + 1}"

    def error(self, field: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.label}: {field}: {problem}")


def load_destinations(path: Path | str) -> list[Destination]:
    """The destinations of the forwarding file at `path`; an empty path means forwarding off."""
    if not str(path):
        return []
    path = Path(path)
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"TR_VAULT_FORWARD_FILE {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"TR_VAULT_FORWARD_FILE {path}: not valid TOML: {exc}") from exc
    return parse_destinations(doc, path)


def parse_destinations(doc: Mapping[str, Any], path: Path) -> list[Destination]:
    """Validate a parsed forwarding file (see `load_destinations`)."""
    unknown = set(doc) - {"destinations"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {sorted(unknown)}; use [[destinations]]"
        )
    entries = doc.get("destinations", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{path}: `destinations` must be an array of tables ([[destinations]])")
    found: list[Destination] = []
    names: set[str] = set()
    for index, entry in enumerate(entries):
        destination = _destination(entry, _Where(path, index, _str_or_none(entry.get("name"))))
        if destination.name in names:
            raise ConfigError(f"{path}: two destinations are named {destination.name!r}")
        names.add(destination.name)
        found.append(destination)
    return found


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _text(entry: Mapping[str, Any], field: str, where: _Where, *, required: bool) -> str | None:
    value = entry.get(field)
    if value is None:
        if required:
            raise where.error(field, "missing")
        return None
    if not isinstance(value, str) or not value.strip():
        raise where.error(field, "must be a non-empty string")
    return value.strip()


def _strings(entry: Mapping[str, Any], field: str, where: _Where) -> tuple[str, ...]:
    value = entry.get(field, [])
    if isinstance(value, str | int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list):
        raise where.error(field, "must be a list of strings")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, str | int) or not str(item).strip():
            raise where.error(field, f"{item!r} is not a string")
        out.append(str(item).strip())
    return tuple(out)


def _int(
    entry: Mapping[str, Any], field: str, where: _Where, low: int, high: int, default: int
) -> int:
    value = entry.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise where.error(field, f"{value!r}: must be a whole number from {low} to {high}")
    return value


def _duration(entry: Mapping[str, Any], field: str, where: _Where) -> float | None:
    value = entry.get(field)
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except (ValueError, TypeError) as exc:
        raise where.error(field, str(exc)) from None
    if seconds <= 0:
        raise where.error(field, f"{value!r}: must be longer than 0")
    return seconds


def _url(entry: Mapping[str, Any], where: _Where) -> str:
    url = _text(entry, "url", where, required=True)
    assert url is not None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise where.error("url", f"{url!r}: must be an http:// or https:// URL with a host")
    return url


def _per_system(entry: Mapping[str, Any], where: _Where) -> dict[str, SystemCredentials]:
    table = entry.get("per_system", {})
    if not isinstance(table, dict):
        raise where.error("per_system", "must be a table of [destinations.per_system.SYSTEM]")
    out = {}
    for system, creds in table.items():
        field = f"per_system.{system}"
        if not isinstance(creds, dict):
            raise where.error(field, "must be a table (api_key, system_id, system)")
        unknown = set(creds) - _SYSTEM_FIELDS
        if unknown:
            known = sorted(_SYSTEM_FIELDS)
            raise where.error(field, f"unknown key(s) {sorted(unknown)}; known: {known}")
        system_id = creds.get("system_id")
        if system_id is not None and (
            isinstance(system_id, bool) or not isinstance(system_id, int)
        ):
            raise where.error(f"{field}.system_id", f"{system_id!r}: must be a whole number")
        texts = {}
        for key in ("api_key", "system"):
            value = creds.get(key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise where.error(f"{field}.{key}", "must be a non-empty string")
            texts[key] = value.strip() if isinstance(value, str) else None
        out[str(system)] = SystemCredentials(
            api_key=texts["api_key"], system_id=system_id, system=texts["system"]
        )
    return out


def _destination(entry: Mapping[str, Any], where: _Where) -> Destination:
    unknown = set(entry) - _FIELDS
    if unknown:
        raise where.error(", ".join(sorted(unknown)), f"unknown field; known: {sorted(_FIELDS)}")
    name = _text(entry, "name", where, required=True)
    assert name is not None
    if not NAME.match(name):
        raise where.error("name", f"{name!r}: use letters, digits, '.', '_' and '-' only")
    kind = _text(entry, "kind", where, required=True)
    if kind not in KINDS:
        raise where.error("kind", f"{kind!r}: must be one of {', '.join(KINDS)}")
    patterns = {f: _strings(entry, f, where) for f in ("talkgroups", "exclude_talkgroups")}
    for field, globs in patterns.items():
        for glob in globs:
            if not re.fullmatch(r"[0-9*?\[\]!-]+", glob):
                raise where.error(field, f"{glob!r}: a talkgroup number or a glob such as '9*'")
    options = entry.get("options", {})
    if not isinstance(options, dict):
        raise where.error("options", "must be a table")
    timeout = _duration(entry, "timeout", where)
    return Destination(
        name=name,
        kind=kind,
        url=_url(entry, where),
        api_key=_text(entry, "api_key", where, required=False),
        systems=_strings(entry, "systems", where),
        talkgroups=patterns["talkgroups"],
        exclude_talkgroups=patterns["exclude_talkgroups"],
        concurrency=_int(entry, "concurrency", where, 1, 64, 2),
        give_up_after=_duration(entry, "give_up_after", where),
        timeout=timeout if timeout is not None else 60.0,
        max_attempts=_int(entry, "max_attempts", where, 1, 1000, 10),
        per_system=_per_system(entry, where),
        extra=dict(options),
    )


class Routable(Protocol):
    """What the filters read of a call (a `CallMeta` at intake, a `CallRow` later)."""

    @property
    def system(self) -> str: ...
    @property
    def system_label(self) -> str | None: ...
    @property
    def talkgroup(self) -> int: ...


def wanted(destination: Destination, call: Routable) -> bool:
    """Does `destination` take `call`? Its systems (id or short name) and talkgroup globs."""
    if destination.systems:
        names = {call.system, call.system_label or ""}
        if not names & set(destination.systems):
            return False
    talkgroup = str(call.talkgroup)
    if destination.talkgroups and not _matches(talkgroup, destination.talkgroups):
        return False
    return not _matches(talkgroup, destination.exclude_talkgroups)


def _matches(talkgroup: str, globs: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(talkgroup, g) for g in globs)


def wanted_by(destinations: Sequence[Destination], call: Routable) -> tuple[str, ...]:
    """The names of the destinations that take `call` (empty when forwarding is off)."""
    return tuple(d.name for d in destinations if wanted(d, call))
