"""API keys, as rdio-scanner models them: a key allows all systems or a list of systems.

`TR_VAULT_API_KEYS` (uploads) and `TR_VAULT_READ_KEYS` (reads) hold comma-separated entries,
each `KEY` (every system) or `KEY:SYSTEM|SYSTEM` (only those systems, by numeric id or short
name, case-insensitive). Keys are compared in constant time.

A scope is matched against exactly one identifier per call, the one the protocol uses for the
system and the journal stores in `calls.system`: the rdio-scanner `system` id, or the OpenMHz
short name of the upload path. Labels the client sends (`systemLabel`, `meta.short_name`) are
never matched, so they cannot widen a key. `KEY:11|metro` names both forms of one system.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Scope:
    """The systems a key may write or read: `systems is None` means every system."""

    systems: frozenset[str] | None

    def allows(self, system: str) -> bool:
        return self.systems is None or system.lower() in self.systems


EVERY_SYSTEM = Scope(None)


@dataclass(frozen=True)
class ApiKey:
    key: str
    systems: frozenset[str] | None  # None: every system


@dataclass(frozen=True)
class ApiKeys:
    entries: tuple[ApiKey, ...]

    @classmethod
    def parse(cls, text: str) -> ApiKeys:
        entries = []
        for raw in text.split(","):
            raw = raw.strip()
            if not raw:
                continue
            key, sep, systems = raw.partition(":")
            key = key.strip()
            if not key:
                raise ValueError(f"entry {raw!r} has no key before ':'")
            if sep:
                names = frozenset(s.strip().lower() for s in systems.split("|") if s.strip())
                if not names:
                    raise ValueError(f"key entry {key[:4]}…: list systems after ':' as a|b")
                entries.append(ApiKey(key, names))
            else:
                entries.append(ApiKey(key, None))
        return cls(tuple(entries))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def check(self, key: str | None, system: str) -> bool:
        """True when `key` may upload for `system`: the one identifier the protocol names the
        system by (the rdio-scanner id, the OpenMHz short name), never a label.

        With no key configured every upload is accepted (the server then is private, or was
        told `TR_VAULT_ALLOW_ANONYMOUS=true`).
        """
        if not self.entries:
            return True
        scope = self.scope(key)
        return scope is not None and scope.allows(system)

    def known(self, key: str | None) -> bool:
        """True when `key` is one of the configured keys (whatever systems it allows), or when
        no key is configured."""
        return not self.entries or self.scope(key) is not None

    def scope(self, key: str | None) -> Scope | None:
        """What `key` may reach, or None when it is not a configured key (or none is).

        A key listed more than once gets the union of its entries.
        """
        if not key or not self.entries:
            return None
        given = key.encode()
        return self.scope_matching(lambda entry: hmac.compare_digest(given, entry.encode()))

    def scope_matching(self, matches: Callable[[str], bool]) -> Scope | None:
        """What the keys for which `matches(key)` is true may reach together, or None when
        there is none. Every entry is tried, so timing does not tell which one matched."""
        matched = False
        systems: set[str] = set()
        every = False
        for entry in self.entries:
            if matches(entry.key):
                matched = True
                if entry.systems is None:
                    every = True
                else:
                    systems |= entry.systems
        if not matched:
            return None
        return EVERY_SYSTEM if every else Scope(frozenset(systems))
