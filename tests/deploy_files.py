"""Readers for the files in deploy/: the env example, the Containerfile, compose.yaml, the unit.

Small, strict parsers of exactly what those files use, for tests that check them against
`Settings` and run their commands without a container engine or systemd.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tr_vault.config import ENV_PREFIX, Settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
ENV_EXAMPLE = DEPLOY / "tr-vault.env.example"
CONTAINERFILE = DEPLOY / "Containerfile"
COMPOSE = DEPLOY / "compose.yaml"
UNIT = DEPLOY / "tr-vault.service"
DOCKERIGNORE = REPO / ".dockerignore"


# -- Settings -----------------------------------------------------------------------------------


def setting_names() -> dict[str, str]:
    """Every setting's environment name (the S3 ones by their unprefixed name) -> field name."""
    names: dict[str, str] = {}
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if alias is None:
            names[f"{ENV_PREFIX}{name.upper()}"] = name
        else:
            choices = getattr(alias, "choices", [alias])
            names[str(choices[0])] = name
    return names


def accepted_names() -> set[str]:
    """Every environment name Settings reads (S3_* also as TR_VAULT_S3_*)."""
    names = set(setting_names())
    return names | {f"{ENV_PREFIX}{n}" for n in names if not n.startswith(ENV_PREFIX)}


# -- the env example ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvLine:
    name: str
    value: str
    commented: bool  # `#NAME=default`: shown, not set
    line: int


_ENV_LINE = re.compile(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$")


def env_example(path: Path = ENV_EXAMPLE) -> list[EnvLine]:
    """The `NAME=value` and `#NAME=value` lines (comments in prose are other lines)."""
    found = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        match = _ENV_LINE.match(text)
        if match:
            found.append(EnvLine(match[2], match[3], bool(match[1]), number))
    return found


# -- the Containerfile --------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        [args] = self.all(keyword)
        return args


def containerfile(path: Path = CONTAINERFILE) -> list[Stage]:
    """Stages with their instructions (keyword upper-cased, continuation lines joined)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Containerfile ends inside a continued instruction"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            base, _, alias = args.partition(" AS ")
            if not alias:
                base, _, alias = args.partition(" as ")
            stages.append(Stage(base.strip(), alias.strip() or None))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    """A JSON-array instruction argument (`["tr-vault"]`)."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def env_instruction(args: str) -> dict[str, str]:
    """`ENV A=1 B=2` (the form the Containerfile uses)."""
    return dict(part.split("=", 1) for part in shlex.split(args))


def healthcheck(stage: Stage) -> tuple[dict[str, str], list[str]]:
    """HEALTHCHECK's options and its exec-form command."""
    args = stage.one("HEALTHCHECK")
    options: dict[str, str] = {}
    while args.startswith("--"):
        option, _, args = args.partition(" ")
        key, _, value = option[2:].partition("=")
        options[key] = value
        args = args.strip()
    keyword, _, command = args.partition(" ")
    assert keyword == "CMD", args
    return options, exec_form(command)


def copy_sources(stage: Stage) -> list[str]:
    """The build-context paths a stage's COPY instructions read (not `COPY --from`)."""
    sources: list[str] = []
    for args in stage.all("COPY"):
        parts = shlex.split(args)
        if any(p.startswith("--from") for p in parts):
            continue
        sources += [p for p in parts[:-1] if not p.startswith("--")]
    return sources


# -- compose.yaml -------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


class MissingVariable(Exception):
    pass


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation of the forms compose.yaml uses: `$$`, `${V}`, `${V:-default}`,
    `${V-default}`, `${V:?error}`, `${V?error}`."""

    def one(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name, op, arg = match[1], match[2], match[3] or ""
        present = name in env
        empty = not env.get(name, "")
        if op in (":-", "-"):
            return arg if (empty if op == ":-" else not present) else env[name]
        if op in (":?", "?"):
            if empty if op == ":?" else not present:
                raise MissingVariable(f"{name}: {arg}")
            return env[name]
        return env.get(name, "")

    return _VARIABLE.sub(one, value)


def compose(path: Path = COMPOSE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def service_env(service: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """A service's `environment:` (mapping form), interpolated with `env`."""
    raw = service.get("environment") or {}
    assert isinstance(raw, dict), "environment: in mapping form"
    return {str(k): interpolate("" if v is None else str(v), env) for k, v in raw.items()}


def command(service: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """A service's `command:` (list form), interpolated."""
    raw = service["command"]
    assert isinstance(raw, list), "command: in list form"
    return [interpolate(str(part), env) for part in raw]


# -- the systemd unit ---------------------------------------------------------------------------


def unit(path: Path = UNIT) -> dict[str, list[tuple[str, str]]]:
    """Sections -> (key, value) in order (a key may repeat, as systemd allows)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def unit_values(sections: Mapping[str, list[tuple[str, str]]], section: str) -> dict[str, str]:
    """The section's settings, the last occurrence of a key winning."""
    return dict(sections[section])
