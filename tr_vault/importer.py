"""`tr-vault import DIR`: the calls of a trunk-recorder capture tree, journaled as if uploaded.

trunk-recorder writes each call under `{captureDir}/{shortName}/{YYYY}/{M}/{D}/` (local time,
month and day not zero-padded) as `{talkgroup}-{start}_{freq}[.{slot}]-call_{n}.wav`, with the
call JSON beside it (`.json`, `callLog`) and, with `compressWav`, the `.m4a` (v4.0+; v3 had no
`-call_{n}`). `audioArchive` (default on) keeps the audio there after the upload plugins ran;
`transmissionArchive` adds one WAV per transmission (`{talkgroup}-{start}_{freq}.wav`, no JSON).

A call here is a sidecar and the audio beside it, one file of it: the compressed one before the
WAV, because the m4a is what the upload plugins send, so a call that was both uploaded and
archived is one call (same SHA-256, talkgroup and start second: a duplicate, not a new row).
Each becomes the `CallMeta` intake makes of the rdio-scanner trunk-recorder route, through the
same range checks, under the same key `{system}/{YYYY-MM-DD}/{file}`.

Durability is intake's: the audio is copied (hashed on the way) or hard-linked into a temp
directory of the cache, fsynced, linked under its key, the directory fsynced, and only then is
the row committed, a batch of rows per transaction. The temp directory is locked for the run
(`cache.ImportStaging`), so a server starting meanwhile leaves it alone; whatever an interrupted
run left there is sorted out from the journal by the next `serve` or `import`. `--move`
removes a call's files from the tree (other encodings, the recording, the sidecar last) only
once its row is committed.

The walk streams (one directory at a time, a bounded batch in flight), so memory does not grow
with the tree. Bad input files are listed and skipped, never fatal.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import trio

from tr_vault import audio_types
from tr_vault.cache import AudioCache, ImportStaging, TempAudio
from tr_vault.call import CallMeta, StoredAudio
from tr_vault.config import Settings, StorageMode
from tr_vault.durable import fsync_path
from tr_vault.errors import IntakeError
from tr_vault.forward.base import Destination
from tr_vault.forward.config import wanted_by
from tr_vault.intake import fields as f
from tr_vault.intake.rdio import MIN_AUDIO_BYTES
from tr_vault.intake.store import key_candidates
from tr_vault.journal import (
    Duplicate,
    Inserted,
    Journal,
    KeyTaken,
    NewCall,
    identity,
    insert_calls,
    known_calls,
    recorded_keys,
    store_health,
)

PROTOCOL = "import"  # the rows' `protocol` (free text in the schema)
SIDECAR = ".json"
# Every extension tr_vault stores, compressed ones first (the plugins upload the m4a), WAV last.
PREFERRED = tuple(sorted(audio_types.TYPE_BY_EXTENSION, key=lambda e: e in (".wav", ".wave")))
MAX_SIDECAR_BYTES = 1024 * 1024  # a long call's JSON is tens of KB
CHUNK = 1024 * 1024
BATCH = 200  # calls per journal transaction
MAX_LISTED = 10_000  # skipped files listed in the report; the rest are counted
_LINK_FALLBACK = {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP}


class Mode(StrEnum):
    COPY = "copy"
    LINK = "link"  # a hard link to the recording (a copy across filesystems)
    MOVE = "move"  # link (or copy) it in, then remove the call's files from the tree


class Reason(StrEnum):
    """Why a file was skipped."""

    BROKEN_JSON = "broken_json"
    MISSING_SIDECAR = "missing_sidecar"
    MISSING_AUDIO = "missing_audio"
    EMPTY_AUDIO = "empty_audio"
    UNACCEPTED_TYPE = "unaccepted_type"
    BAD_TALKGROUP = "bad_talkgroup"
    BAD_START_TIME = "bad_start_time"
    BAD_SYSTEM = "bad_system"
    BAD_NAME = "bad_name"
    UNREADABLE = "unreadable"
    DUPLICATE_OF_LOST = "duplicate_of_lost"  # the vault lost this call: the file is kept


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: Reason
    detail: str
    counted: bool = True  # one of the sidecars the progress total counts


@dataclass(frozen=True)
class Transmission:
    """A `transmissionArchive` WAV: one transmission of a call, not a call (it has no JSON)."""

    path: str


@dataclass(frozen=True)
class CallFiles:
    """A sidecar and the audio files beside it as (name, size), in order of preference."""

    directory: Path
    sidecar: str
    audio: tuple[tuple[str, int], ...]


Found = CallFiles | Skipped | Transmission


# -- the walk ----------------------------------------------------------------------------------


def _split(name: str) -> tuple[str, str]:
    dot = name.rfind(".")
    return (name, "") if dot <= 0 else (name[:dot], name[dot:])


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def _audio_beside(directory: Path, stem: str) -> tuple[tuple[str, int], ...]:
    found = []
    for ext in PREFERRED:
        try:
            st = (directory / f"{stem}{ext}").stat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            found.append((f"{stem}{ext}", st.st_size))
    return tuple(found)


def _is_transmission(name: str) -> bool:
    """`{talkgroup}-{start}_{freq}[.{slot}].wav`: transmission_sink's name."""
    stem, ext = _split(name)
    tg, _, rest = stem.partition("-")
    start, _, freq = rest.partition("_")
    freq = freq.split(".", 1)[0] if freq.count(".") == 1 else freq
    return ext == ".wav" and all(p.isascii() and p.isdigit() for p in (tg, start, freq))


def directories(root: Path, exclude: frozenset[tuple[int, int]]) -> Iterator[Path]:
    """`root` and the directories below it, depth first in name order; hidden ones, symlinked
    ones and `exclude` (device, inode) are not entered. Holds one directory's subdirectories
    at a time, never the tree."""
    stack = [root]
    while stack:
        directory = stack.pop()
        subdirs = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if (st.st_dev, st.st_ino) not in exclude:
                        subdirs.append(entry.name)
        except OSError:
            pass  # `scan` reports it
        yield directory
        stack.extend(directory / name for name in sorted(subdirs, reverse=True))


def count_sidecars(root: Path, exclude: frozenset[tuple[int, int]]) -> int:
    """How many call JSON files the tree holds: the progress bar's total (names only)."""
    total = 0
    for directory in directories(root, exclude):
        try:
            with os.scandir(directory) as entries:
                total += sum(
                    1 for e in entries if e.name.endswith(SIDECAR) and not e.name.startswith(".")
                )
        except OSError:
            continue
    return total


def scan(directory: Path) -> Iterator[Found]:
    """The calls of one directory, and what is wrong with its other files.

    Streams the entries: a sidecar finds its audio by name (a few stats), an audio file its
    sidecar. Only the sidecars without audio wait for the end of the directory, to be told
    apart from those whose audio is of a type tr_vault does not store.
    """
    no_audio: dict[str, None] = {}
    unaccepted: dict[str, str] = {}
    try:
        entries = os.scandir(directory)
    except OSError as exc:
        yield Skipped(str(directory), Reason.UNREADABLE, exc.strerror or str(exc), counted=False)
        return
    with entries:
        for entry in entries:
            name = entry.name
            try:
                if name.startswith(".") or not entry.is_file():
                    continue
            except OSError:
                continue
            stem, ext = _split(name)
            if ext == SIDECAR:
                audio = _audio_beside(directory, stem)
                if audio:
                    yield CallFiles(directory, name, audio)
                else:
                    no_audio[stem] = None
            elif ext in audio_types.TYPE_BY_EXTENSION:
                if _is_file(directory / f"{stem}{SIDECAR}"):
                    continue  # its sidecar's call
                if _is_transmission(name):
                    yield Transmission(entry.path)
                elif _is_file(Path(entry.path)):  # not a call that --move just took
                    yield Skipped(
                        entry.path,
                        Reason.MISSING_SIDECAR,
                        f"no {stem}{SIDECAR} beside it",
                        counted=False,
                    )
            elif _is_file(directory / f"{stem}{SIDECAR}") and not _audio_beside(directory, stem):
                unaccepted.setdefault(stem, name)
    for stem in no_audio:
        if stem in unaccepted:
            name = unaccepted[stem]
            yield Skipped(
                str(directory / name),
                Reason.UNACCEPTED_TYPE,
                f"{_split(name)[1] or 'no extension'}: not an audio type tr_vault stores"
                f" ({' '.join(PREFERRED)})",
            )
        else:
            yield Skipped(
                str(directory / f"{stem}{SIDECAR}"),
                Reason.MISSING_AUDIO,
                f"no audio beside it (looked for {stem}{{{','.join(PREFERRED)}}})",
            )


def walk(root: Path, exclude: frozenset[tuple[int, int]] = frozenset()) -> Iterator[Found]:
    for directory in directories(root, exclude):
        yield from scan(directory)


# -- one call ----------------------------------------------------------------------------------


class _Refused(Exception):
    """A call that cannot be imported; `path` is the file at fault (default: its sidecar)."""

    def __init__(self, reason: Reason, detail: str, path: Path | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.path = path


def _text(sidecar: dict[str, Any], name: str) -> str | None:
    """A sidecar value as the form field text `fields` parses (None for absent or a list)."""
    value = sidecar.get(name)
    return None if value is None or isinstance(value, dict | list) else str(value)


def read_sidecar(path: Path) -> dict[str, Any]:
    """The call JSON, or `_Refused` (broken JSON, not an object, too large, unreadable)."""
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_SIDECAR_BYTES + 1)
    except OSError as exc:
        raise _Refused(Reason.UNREADABLE, exc.strerror or str(exc)) from None
    if len(raw) > MAX_SIDECAR_BYTES:
        raise _Refused(Reason.BROKEN_JSON, f"larger than {MAX_SIDECAR_BYTES} bytes")
    try:
        parsed = f.strict_json(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _Refused(
            Reason.BROKEN_JSON, f"not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    except json.JSONDecodeError as exc:
        raise _Refused(Reason.BROKEN_JSON, f"not JSON ({exc.msg} at char {exc.pos})") from None
    except ValueError as exc:
        raise _Refused(Reason.BROKEN_JSON, f"not JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise _Refused(Reason.BROKEN_JSON, f"not a JSON object but {type(parsed).__name__}")
    return parsed


def _required(
    sidecar: dict[str, Any], name: str, parse: Callable[[str | None], Any], reason: Reason
) -> Any:
    value = _text(sidecar, name)
    try:
        parsed = parse(value)
    except f.OutOfRange as exc:
        raise _Refused(reason, f"{name} {f.shown(value)}: {exc.allowed}") from None
    if parsed is None:
        raise _Refused(reason, f"no usable {name} ({f.shown(value)})")
    return parsed


def path_system(directory: Path, root: Path) -> str | None:
    """The short name the path gives: the directory above `{YYYY}/{M}/{D}`, else the first
    directory below `root`."""
    parts = directory.parts
    if len(parts) >= 4:
        year, month, day = parts[-3:]
        if (
            len(year) == 4
            and year.isdigit()
            and month.isdigit()
            and 1 <= int(month) <= 12
            and day.isdigit()
            and 1 <= int(day) <= 31
        ):
            return parts[-4]
    relative = directory.relative_to(root).parts
    return relative[0] if relative else None


def call_meta(
    sidecar: dict[str, Any],
    audio_name: str,
    *,
    system: str | None,
    notes: list[str],
    provenance: dict[str, Any],
) -> CallMeta:
    """The sidecar as the `CallMeta` intake makes of the rdio-scanner trunk-recorder route (its
    `meta`), through the same checks; `_Refused` when talkgroup, start time or system will
    not do. Optional values out of range are noted and left out, as intake does."""
    talkgroup = _required(sidecar, "talkgroup", f.positive_int, Reason.BAD_TALKGROUP)
    start = _required(sidecar, "start_time", f.epoch, Reason.BAD_START_TIME)
    if system is None:
        raise _Refused(
            Reason.BAD_SYSTEM, "no short_name in the sidecar and none in the path: give --system"
        )
    try:
        system = f.safe_name(system, "system short name")
    except IntakeError as exc:
        raise _Refused(Reason.BAD_SYSTEM, str(exc)) from None
    try:
        name = f.safe_name(audio_name, "audio file name")
    except IntakeError as exc:
        raise _Refused(Reason.BAD_NAME, str(exc)) from None
    return CallMeta(
        protocol=PROTOCOL,
        system=system,
        system_label=system,
        talkgroup=talkgroup,
        start_time=start,
        audio_name=name,
        content_type=f.audio_type(name, [], notes),
        talkgroup_label=f.label(_text(sidecar, "talkgroup_tag")),
        talkgroup_tag=f.label(_text(sidecar, "talkgroup_group_tag")),
        talkgroup_group=f.label(_text(sidecar, "talkgroup_group")),
        source=f.first_source("srcList", sidecar.get("srcList"), notes),
        frequency=f.optional("freq", _text(sidecar, "freq"), f.any_int, notes),
        stop_time=f.optional("stop_time", _text(sidecar, "stop_time"), f.epoch_number, notes),
        duration=f.optional("call_length", _text(sidecar, "call_length"), f.any_float, notes),
        emergency=(f.optional("emergency", _text(sidecar, "emergency"), f.any_int, notes) or 0) > 0,
        metadata={"meta": sidecar, "import": provenance},
        notes=tuple(notes),
    )


@dataclass(frozen=True)
class LinkedAudio:
    """A hard link to a recording in the import's temp directory, hashed."""

    path: Path
    size: int
    sha256: str
    md5: str

    def close(self) -> None:
        pass

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class Planned:
    """A call read, its audio staged in the temp directory, not yet committed."""

    meta: CallMeta
    temp: TempAudio | LinkedAudio
    sidecar: Path
    audio: Path
    how: str  # linked | copied | copied (why not linked)
    alternates: tuple[Path, ...]  # the call's other audio beside it: not imported

    @property
    def detail(self) -> str:
        body: dict[str, Any] = {"protocol": PROTOCOL, "path": str(self.audio), "how": self.how}
        if self.meta.notes:
            body["notes"] = list(self.meta.notes)
        return json.dumps(body)


def _copy(source: Path, temp: TempAudio) -> None:
    with open(source, "rb") as file:
        while chunk := file.read(CHUNK):
            temp.write(chunk)
    temp.close()


def _hash_link(path: Path) -> LinkedAudio:
    sha256, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            sha256.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return LinkedAudio(path, size, sha256.hexdigest(), md5.hexdigest())


def stage_audio(
    source: Path, staging: ImportStaging, mode: Mode
) -> tuple[TempAudio | LinkedAudio, str]:
    """The recording in the temp directory, hashed: linked when asked and possible (same
    filesystem, and the kernel lets us), else copied. Returns it and how it got there."""
    how = "copied"
    if mode is not Mode.COPY:
        target = staging.temp_path()
        try:
            os.link(source, target)
        except OSError as exc:
            if exc.errno not in _LINK_FALLBACK:
                raise
            how = f"copied ({os.strerror(exc.errno or 0)}: no hard link)"
        else:
            try:
                return _hash_link(target), "linked"
            except BaseException:
                target.unlink(missing_ok=True)
                raise
    temp = staging.new_temp()
    try:
        _copy(source, temp)
    except BaseException:
        temp.discard()
        raise
    return temp, how


# -- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportRequest:
    root: Path
    mode: Mode = Mode.COPY
    system: str | None = None  # --system: overrides the sidecar's short_name and the path
    batch: int = BATCH
    # --forward: the destinations (TR_VAULT_FORWARD_FILE) whose filters want a call get a
    # delivery row in its commit, as for an upload
    forward: tuple[Destination, ...] = ()


@dataclass
class ImportReport:
    root: str
    mode: str
    state: str  # what new rows start as: `pending` (S3 configured) or `done` (local-only)
    imported: int = 0
    duplicates: int = 0
    bytes_imported: int = 0
    bytes_read: int = 0
    linked: int = 0
    copied: int = 0
    link_fallbacks: Counter[str] = field(default_factory=Counter)  # why --link/--move copied
    sources_removed: int = 0  # --move: files removed from the tree (audio, sidecars)
    alternates: int = 0  # audio beside a call's chosen file, not imported (the .wav)
    transmissions_ignored: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_files: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.skipped

    @property
    def calls_per_second(self) -> float:
        return (self.imported + self.duplicates) / self.seconds if self.seconds else 0.0

    def skip(self, item: Skipped) -> None:
        self.skipped[item.reason.value] += 1
        if len(self.skipped_files) < MAX_LISTED:
            self.skipped_files.append(item)

    def as_dict(self) -> dict[str, Any]:
        listed = [
            {"path": s.path, "reason": s.reason.value, "detail": s.detail}
            for s in self.skipped_files
        ]
        return {
            "dir": self.root,
            "mode": self.mode,
            "state": self.state,
            "imported": self.imported,
            "duplicates": self.duplicates,
            "skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "bytes": self.bytes_imported,
            "bytes_read": self.bytes_read,
            "linked": self.linked,
            "copied": self.copied,
            "link_fallbacks": dict(self.link_fallbacks),
            "sources_removed": self.sources_removed,
            "alternates": self.alternates,
            "transmissions_ignored": self.transmissions_ignored,
            "seconds": round(self.seconds, 3),
            "calls_per_second": round(self.calls_per_second, 1),
            "mb_per_second": round(self.bytes_read / self.seconds / 1e6, 2)
            if self.seconds
            else 0.0,
            "skipped_files": listed,
            "skipped_not_listed": sum(self.skipped.values()) - len(listed),
            "warnings": self.warnings,
        }


Progress = Callable[[str, int, int], None]  # (outcome, bytes, items of the total)


def _no_progress(outcome: str, nbytes: int, items: int) -> None:
    pass


class Importer:
    """One run over one tree: stages a batch in a worker thread, commits it from Trio."""

    def __init__(
        self,
        journal: Journal,
        cache: AudioCache,
        staging: ImportStaging,
        request: ImportRequest,
        report: ImportReport,
        *,
        state: str,
        exclude: frozenset[tuple[int, int]] = frozenset(),
        on_progress: Progress = _no_progress,
    ) -> None:
        self.journal = journal
        self.cache = cache
        self.staging = staging
        self.request = request
        self.report = report
        self.state = state
        self.exclude = exclude
        self.on_progress = on_progress

    async def run(self) -> None:
        """Stage the next batch (walk, read, copy: a worker thread) while this one commits
        (fsyncs, the journal): at most three batches in flight, whatever the tree's size."""
        send, receive = trio.open_memory_channel[list[Planned]](1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stage_all, send)
            async with receive:
                async for planned in receive:
                    await self._commit_batch(planned)

    async def _stage_all(self, send: trio.MemorySendChannel[list[Planned]]) -> None:
        found = walk(self.request.root, self.exclude)
        async with send:
            while True:
                planned, outcomes = await trio.to_thread.run_sync(self._stage_batch, found)
                for outcome in outcomes:
                    self._record(outcome)
                if planned:
                    await send.send(planned)
                if len(planned) < self.request.batch:
                    return

    # In the worker thread: walk on, read and stage up to one batch of calls.
    def _stage_batch(self, found: Iterator[Found]) -> tuple[list[Planned], list[Found]]:
        planned: list[Planned] = []
        outcomes: list[Found] = []
        for item in found:
            if not isinstance(item, CallFiles):
                outcomes.append(item)
                continue
            try:
                planned.append(self._stage(item))
            except _Refused as exc:
                path = exc.path or item.directory / item.sidecar
                outcomes.append(Skipped(str(path), exc.reason, exc.detail))
            if len(planned) >= self.request.batch:
                break
        return planned, outcomes

    def _stage(self, files: CallFiles) -> Planned:
        sidecar_path = files.directory / files.sidecar
        sidecar = read_sidecar(sidecar_path)
        usable = [(n, s) for n, s in files.audio if s >= MIN_AUDIO_BYTES]
        if not usable:
            name, size = files.audio[0]
            raise _Refused(Reason.EMPTY_AUDIO, f"{size} bytes: no audio", files.directory / name)
        chosen = usable[0][0]
        notes: list[str] = []
        for name, size in files.audio:
            if name == chosen:
                continue
            fate = "removed (--move)" if self.request.mode is Mode.MOVE else "left"
            if size < MIN_AUDIO_BYTES:
                notes.append(f"audio: {name} is empty ({size} bytes): {chosen} imported; {fate}")
            else:
                notes.append(f"audio: {chosen} imported (compressed first); {name} {fate}")
        system = (
            self.request.system
            or f.label(_text(sidecar, "short_name"))
            or path_system(files.directory, self.request.root)
        )
        source = files.directory / chosen
        provenance = {
            "path": str(source),
            "sidecar": files.sidecar,
            "mode": self.request.mode.value,
        }
        meta = call_meta(sidecar, chosen, system=system, notes=notes, provenance=provenance)
        try:
            temp, how = stage_audio(source, self.staging, self.request.mode)
        except OSError as exc:
            raise _Refused(Reason.UNREADABLE, exc.strerror or str(exc), source) from None
        others = tuple(files.directory / n for n, _ in files.audio if n != chosen)
        return Planned(meta, temp, sidecar_path, source, how, others)

    def _record(self, outcome: Found) -> None:
        if isinstance(outcome, Skipped):
            self.report.skip(outcome)
            self.on_progress("skipped", 0, int(outcome.counted))
        elif isinstance(outcome, Transmission):
            self.report.transmissions_ignored += 1

    async def _commit_batch(self, planned: list[Planned]) -> None:
        for p in planned:
            self.report.bytes_read += p.temp.size
            self.report.alternates += len(p.alternates)
        idents = [identity(p.meta, p.temp.sha256) for p in planned]
        known = await self.journal.call(known_calls, idents)
        fresh: list[Planned] = []
        done: list[Planned] = []  # in the vault now: the sources --move removes
        for p, ident in zip(planned, idents, strict=True):
            hit = known.get(ident)
            if hit is None:
                fresh.append(p)
                continue
            p.temp.discard()
            if hit.state == "lost":
                self.report.skip(
                    Skipped(
                        str(p.audio),
                        Reason.DUPLICATE_OF_LOST,
                        f"the audio of call {hit.call_id}, which the vault lost (no object, no"
                        " local copy): this file is kept; see the README, 'Importing'",
                    )
                )
                self.on_progress("skipped", p.temp.size, 1)
                continue
            self.report.duplicates += 1
            self.on_progress("duplicate", p.temp.size, 1)
            done.append(p)
        with trio.CancelScope(shield=True):  # a batch is linked and committed whole
            done += await self._store(fresh)
            if self.request.mode is Mode.MOVE and done:
                await trio.to_thread.run_sync(self._remove_sources, done)

    async def _store(self, fresh: list[Planned]) -> list[Planned]:
        """Link each file under its key, then commit the batch's rows; returns those stored or
        found to be duplicates meanwhile (a server took the same call)."""
        candidates = [key_candidates(p.meta, p.temp.sha256) for p in fresh]
        stored = await self.cache.commit_many(
            [(p.temp, c) for p, c in zip(fresh, candidates, strict=True)]
        )
        pending = list(zip(fresh, stored, candidates, strict=True))
        settled: list[Planned] = []
        while pending:
            results = await self.journal.call(
                insert_calls,
                [
                    NewCall(p.meta, audio, p.detail, wanted_by(self.request.forward, p.meta))
                    for p, audio, _ in pending
                ],
                self.state,
                self.journal.clock(),
                site=self.journal.site,
            )
            retry = []
            for (p, audio, names), result in zip(pending, results, strict=True):
                if isinstance(result, Inserted):
                    self._imported(p, audio)
                    settled.append(p)
                    continue
                await self.cache.remove(audio.key)
                if isinstance(result, Duplicate):
                    self.report.duplicates += 1
                    self.on_progress("duplicate", audio.size, 1)
                    settled.append(p)
                else:
                    assert isinstance(result, KeyTaken)  # a pruned call holds the name
                    rest = names[names.index(audio.key) + 1 :]
                    retry.append((p, await self.cache.commit(p.temp, rest), rest))
            pending = retry
        for p in fresh:
            p.temp.discard()  # committed: the temp name has done its job
        return settled

    def _imported(self, p: Planned, audio: StoredAudio) -> None:
        self.report.imported += 1
        self.report.bytes_imported += audio.size
        if p.how == "linked":
            self.report.linked += 1
        else:
            self.report.copied += 1
            if p.how != "copied":
                self.report.link_fallbacks[p.how] += 1
        self.on_progress("imported", audio.size, 1)

    def _remove_sources(self, done: list[Planned]) -> None:
        """--move: the call leaves the tree once the vault holds it: its other encodings, the
        recording, then the sidecar (kept whole in the row's metadata). The sidecar goes last,
        so that the walk, which may be reading this directory meanwhile, never finds the
        call's audio without it."""
        directories = set()
        for p in done:
            for path in (*p.alternates, p.audio, p.sidecar):
                try:
                    path.unlink()
                    self.report.sources_removed += 1
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    self.report.warnings.append(f"could not remove {path}: {exc.strerror}")
            directories.add(p.audio.parent)
        for directory in directories:
            fsync_path(directory)


def _identity_of(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_root(root: Path, settings: Settings) -> None:
    """Refuse a tree inside the cache itself (ValueError): it would import its own files."""
    audio = settings.audio_dir.resolve()
    where = root.resolve()
    if where == audio or audio in where.parents:
        raise ValueError(f"{root} is inside the audio cache {settings.audio_dir}")


async def recover_staging(
    cache: AudioCache, journal: Journal, staging: ImportStaging | None
) -> int:
    """Sort out the temp files of import runs that are gone (and of `staging`, this run's,
    when given) from the journal: a file linked under a key no row holds goes, with its key
    path. Returns the key paths removed."""
    _, staged = await trio.to_thread.run_sync(cache.abandoned_imports)
    if staging is not None:
        _, mine = await trio.to_thread.run_sync(staging.leftovers)
        staged += mine
    keys = [s.key for s in staged]
    recorded = await journal.call(recorded_keys, keys) if keys else set()
    orphans = await trio.to_thread.run_sync(cache.recover, staged, recorded)
    return len(orphans)


async def import_tree(
    settings: Settings,
    request: ImportRequest,
    *,
    on_total: Callable[[int], None] | None = None,
    on_progress: Progress = _no_progress,
) -> ImportReport:
    """Import `request.root` into the vault `settings` describe (the body of `tr-vault import`).

    Runs beside a server or without one; never takes the data directory's lock.
    """
    started = time.monotonic()
    state = "done" if settings.storage_mode is StorageMode.LOCAL else "pending"
    report = ImportReport(str(request.root), request.mode.value, state)
    exclude = frozenset(
        i for i in (_identity_of(settings.data_dir), _identity_of(settings.audio_dir)) if i
    )
    journal = await Journal.open(settings.db_path, site=settings.site_name)
    try:
        if state == "done" and "s3" in await journal.call(store_health):
            report.warnings.append(
                "S3_BUCKET is not set here, so the calls are stored as done (local-only) and"
                " will not be uploaded, but this journal has been served with S3: run import"
                " with the server's settings (its environment or .env)"
            )
        cache = AudioCache(settings.audio_dir)
        await recover_staging(cache, journal, None)
        if on_total is not None:
            on_total(await trio.to_thread.run_sync(count_sidecars, request.root, exclude))
        staging = await trio.to_thread.run_sync(cache.open_import_staging)
        try:
            importer = Importer(
                journal,
                cache,
                staging,
                request,
                report,
                state=state,
                exclude=exclude,
                on_progress=on_progress,
            )
            await importer.run()
        finally:
            with trio.CancelScope(shield=True):
                await recover_staging(cache, journal, staging)
                staging.close()
    finally:
        with trio.CancelScope(shield=True):
            await journal.close()
    report.seconds = time.monotonic() - started
    return report
