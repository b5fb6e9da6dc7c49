"""A stored call seen the way trunk-recorder's upload plugins see theirs (its `Call_Data_t`).

The three trunk-recorder senders rebuild the requests the plugins would have sent for this
call. What they need is spread over the journal row (validated columns) and its `metadata`
(every received field): flat form fields for calls that came through rdio-scanner's
`/api/call-upload` (`frequencies`, `sources`, `talkgroupName`, ...) or OpenMHz (`freq`,
`error_count`, `source_list`, ...), and trunk-recorder's call JSON under `meta` (rdio's
trunk-recorder route, `tr-vault import`) or `metadata` (the Broadcastify intake). `from_row`
reads them all into one shape, so no sender cares which route a call came by. Values the row's
columns hold (talkgroup, start time, labels) win; unparsable optional fields are skipped, never
an error: a call that was stored is always forwardable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from tr_vault.call import CallRow
from tr_vault.forward.base import SystemCredentials
from tr_vault.timefmt import from_db

__all__ = ["Source", "TrCall", "Transmission", "from_row"]

# Where the intakes keep trunk-recorder's call JSON inside `metadata`.
CALL_JSON_KEYS = ("meta", "metadata")


@dataclass(frozen=True)
class Transmission:
    """One `freqList` entry (rdio's `frequencies`)."""

    freq: int
    time: int
    pos: float
    len: float
    error_count: int
    spike_count: int


@dataclass(frozen=True)
class Source:
    """One `srcList` entry (rdio's `sources`, OpenMHz's `source_list`)."""

    src: int
    pos: float
    time: int
    emergency: int = 0
    signal_system: str = ""
    tag: str = ""


@dataclass(frozen=True)
class TrCall:
    """What the plugins read from a call, with trunk-recorder's names and meanings.

    `alpha_tag` is the talkgroup's alpha tag (JSON `talkgroup_tag`, rdio `talkgroupLabel`);
    `tag` its tag (JSON `talkgroup_group_tag`, rdio `talkgroupTag`); `description` the JSON's
    `talkgroup_description` (rdio `talkgroupName`).
    """

    row: CallRow
    system: str  # the row's system: rdio's numeric id, or a short name (OpenMHz, import)
    short_name: str
    talkgroup: int
    start_time: int
    stop_time: int
    length: float
    freq: int
    emergency: int
    alpha_tag: str
    tag: str
    description: str
    group: str
    error_count: int
    spike_count: int
    freq_list: tuple[Transmission, ...]
    sources: tuple[Source, ...]
    patches: tuple[int, ...]
    audio_name: str
    content_type: str
    stored_json: Mapping[str, Any] | None  # the call JSON the recorder sent, when it did

    @property
    def extension(self) -> str:
        return PurePosixPath(self.audio_name).suffix.lower()

    def names(self) -> tuple[str, ...]:
        """Every name the call's system goes by here (id and short names), most exact first."""
        seen: list[str] = []
        for name in (self.system, self.short_name, self.row.system_label):
            if name and name not in seen:
                seen.append(name)
        return tuple(seen)

    def credentials(self, per_system: Mapping[str, SystemCredentials]) -> SystemCredentials | None:
        """The `[destinations.per_system.X]` entry for this call's system (id or short name)."""
        for name in self.names():
            if name in per_system:
                return per_system[name]
        return None

    def call_json(self) -> dict[str, Any]:
        """trunk-recorder's call JSON: the one the recorder sent, else rebuilt from the row in
        `create_call_json`'s order (fields tr_vault never learnt are 0, `audio_type` `digital`)."""
        if self.stored_json is not None:
            return dict(self.stored_json)
        out: dict[str, Any] = {
            "freq": self.freq, "freq_error": 0, "signal": 0, "noise": 0, "source_num": 0,
            "recorder_num": 0, "tdma_slot": 0, "phase2_tdma": 0,
            "start_time": self.start_time, "stop_time": self.stop_time,
            "emergency": self.emergency, "priority": 0, "mode": 0, "duplex": 0, "encrypted": 0,
            "call_length": round(self.length), "talkgroup": self.talkgroup,
            "talkgroup_tag": self.alpha_tag, "talkgroup_description": self.description,
            "talkgroup_group_tag": self.tag, "talkgroup_group": self.group,
            "audio_type": "digital", "short_name": self.short_name,
        }  # fmt: skip
        if len(self.patches) > 1:
            out["patched_talkgroups"] = list(self.patches)
        out["freqList"] = [
            {"freq": t.freq, "time": t.time, "pos": t.pos, "len": t.len,
             "error_count": t.error_count, "spike_count": t.spike_count}
            for t in self.freq_list
        ]  # fmt: skip
        out["srcList"] = [
            {"src": s.src, "time": s.time, "pos": s.pos, "emergency": s.emergency,
             "signal_system": s.signal_system, "tag": s.tag}
            for s in self.sources
        ]  # fmt: skip
        return out


def _json(value: Any) -> Any:
    """A field that holds JSON: parsed already by intake, or still text (then parse it)."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _int(value: Any, default: int = 0) -> int:
    number = _num(value)
    return default if number is None else int(number)


def _first(*values: Any) -> Any:
    """The first value that is present (not None, not empty text)."""
    for value in values:
        if value is not None and value != "":
            return value
    return None


def _text(*values: Any) -> str:
    value = _first(*values)
    return "" if value is None else str(value)


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    parsed = _json(value)
    if not isinstance(parsed, list):
        return []
    return [entry for entry in parsed if isinstance(entry, Mapping)]


def _transmissions(form: Any, tr_json: Any, freq: int, start: int) -> tuple[Transmission, ...]:
    entries = _dicts(form) or _dicts(tr_json)
    return tuple(
        Transmission(
            freq=_int(e.get("freq"), freq),
            time=_int(e.get("time"), start),
            pos=_num(e.get("pos")) or 0.0,
            len=_num(e.get("len")) or 0.0,
            error_count=_int(_first(e.get("errorCount"), e.get("error_count"))),
            spike_count=_int(_first(e.get("spikeCount"), e.get("spike_count"))),
        )
        for e in entries
    )


def _sources(candidates: Iterable[Any], start: int) -> tuple[Source, ...]:
    for candidate in candidates:
        entries = _dicts(candidate)
        if entries:
            return tuple(
                Source(
                    src=_int(e.get("src"), -1),
                    pos=_num(e.get("pos")) or 0.0,
                    time=_int(e.get("time"), start),
                    emergency=_int(e.get("emergency")),
                    signal_system=_text(e.get("signal_system")),
                    tag=_text(e.get("tag")),
                )
                for e in entries
            )
    return ()


def _patches(candidates: Iterable[Any]) -> tuple[int, ...]:
    """Patched talkgroups: a JSON list, or text OpenMHz-style (`[1,2]`, `1,2`)."""
    for candidate in candidates:
        value = _json(candidate)
        if isinstance(value, str):
            value = [p for p in value.strip("[] ").split(",") if p.strip()]
        if isinstance(value, list):
            ids = tuple(_int(p, -1) for p in value)
            if ids and all(i > 0 for i in ids):
                return ids
    return ()


def from_row(row: CallRow) -> TrCall:
    """Read a journal row (and its metadata) into trunk-recorder's terms."""
    try:
        loaded = json.loads(row.metadata) if row.metadata else {}
    except ValueError:
        loaded = {}
    md: dict[str, Any] = loaded if isinstance(loaded, dict) else {}
    tj: Mapping[str, Any] = {}
    stored: Mapping[str, Any] | None = None
    for key in CALL_JSON_KEYS:
        candidate = _json(md.get(key))
        if isinstance(candidate, Mapping):
            tj = stored = candidate
            break

    start = int(from_db(row.start_time))
    freq = _int(_first(row.frequency, md.get("frequency"), md.get("freq"), tj.get("freq")))
    freq_list = _transmissions(md.get("frequencies"), tj.get("freqList"), freq, start)
    stop_time = from_db(row.stop_time) if row.stop_time else None
    length = _num(_first(row.duration, md.get("call_length"), tj.get("call_length")))
    if length is None and freq_list:
        length = sum(t.len for t in freq_list)
    if length is None and stop_time is not None:
        length = max(0.0, stop_time - start)
    length = length or 0.0
    stop = int(stop_time) if stop_time is not None else _int(tj.get("stop_time"), 0)
    if stop <= 0:
        stop = start + math.ceil(length)
    short_name = _text(row.system_label, md.get("systemLabel"), tj.get("short_name"), row.system)
    return TrCall(
        row=row,
        system=row.system,
        short_name=short_name,
        talkgroup=row.talkgroup,
        start_time=start,
        stop_time=stop,
        length=length,
        freq=freq,
        emergency=1 if row.emergency else _int(_first(md.get("emergency"), tj.get("emergency"))),
        alpha_tag=_text(row.talkgroup_label, md.get("talkgroupLabel"), tj.get("talkgroup_tag")),
        tag=_text(row.talkgroup_tag, md.get("talkgroupTag"), tj.get("talkgroup_group_tag")),
        description=_text(md.get("talkgroupName"), tj.get("talkgroup_description")),
        group=_text(row.talkgroup_group, md.get("talkgroupGroup"), tj.get("talkgroup_group")),
        error_count=_int(
            _first(md.get("error_count"), sum(t.error_count for t in freq_list) or None)
        ),
        spike_count=_int(
            _first(md.get("spike_count"), sum(t.spike_count for t in freq_list) or None)
        ),
        freq_list=freq_list,
        sources=_sources((md.get("sources"), md.get("source_list"), tj.get("srcList")), start),
        patches=_patches(
            (
                md.get("patches"),
                md.get("patched_talkgroups"),
                md.get("patch_list"),
                tj.get("patched_talkgroups"),
            )
        ),
        audio_name=row.audio_name,
        content_type=row.content_type,
        stored_json=stored,
    )
