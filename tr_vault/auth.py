"""Upload API keys, as rdio-scanner models them: a key allows all systems or a list of systems.

`TR_VAULT_API_KEYS` holds comma-separated entries, each `KEY` (every system) or
`KEY:SYSTEM|SYSTEM` (only those systems, by numeric id or short name).
Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass


@dataclass(frozen=True)
class ApiKey:
    key: str
    systems: frozenset[str] | None  # None: every system

    def allows(self, system_names: tuple[str, ...]) -> bool:
        if self.systems is None:
            return True
        return any(name.lower() in self.systems for name in system_names if name)


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

    def check(self, key: str | None, *system_names: str) -> bool:
        """True when `key` may upload for a system known by any of `system_names`.

        With no key configured every upload is accepted (the server then listens on loopback
        or was told `TR_VAULT_ALLOW_ANONYMOUS=true`).
        """
        return self._match(key, system_names)

    def known(self, key: str | None) -> bool:
        """True when `key` is one of the configured keys (whatever systems it allows)."""
        return self._match(key, None)

    def _match(self, key: str | None, system_names: tuple[str, ...] | None) -> bool:
        if not self.entries:
            return True
        if not key:
            return False
        given = key.encode()
        ok = False
        for entry in self.entries:
            # Compare against every entry so timing does not tell which key was close.
            if hmac.compare_digest(given, entry.key.encode()) and (
                system_names is None or entry.allows(system_names)
            ):
                ok = True
        return ok
