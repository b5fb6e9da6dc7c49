"""`tr-vault rebuild --from-bucket`: journal rows from the objects themselves, for when no
journal replica is left.

The one place where listing the bucket is right (the loops read the journal only, invariant
4). Every call object describes itself (README "Objects"), so a LIST of `{S3_PREFIX}/audio/`
and a HEAD of each object not known yet give back its row: `done`, not cached, with its
bucket, object key and site, `rebuilt = 'metadata'`. An object without that metadata (uploaded
before objects described themselves, or put there by something else) is rebuilt from what its
key and the store tell, `rebuilt = 'key'`, and nothing more is guessed:

- system, date and file name from the key (`audio/[{site}/]{system}/{YYYY-MM-DD}/{file}`, told
  apart by where the date segment is); size and ETag from the store; the ETag as `md5` when it
  looks like one (32 hex: a single PUT without SSE-KMS or SSE-C), else '';
- `sha256`: the object's `x-amz-meta-sha256` when it has one (tr_vault's earliest objects),
  else `unknown:` + the object key. Never a hash-shaped guess: no SHA-256 is hex with a colon,
  and the object key is unique in the bucket, so two such rows never look like one call;
- talkgroup and start second only from a name in trunk-recorder's exact form
  (`{talkgroup}-{unix start}_{freq}[-call_{n}].{ext}`) whose start falls on the key's date;
  otherwise talkgroup 0 (intake never stores 0) and the date at 00:00:00.000 UTC;
- protocol `unknown`, no labels, no duration.

Idempotent: an object whose key a row records already is not even HEADed again; one whose
call (sha256, talkgroup, start second: the `calls_identity` index) a row holds is known too,
so the pending rows of a journal that lived on are never doubled. Rows that exist are never
changed. Each rebuilt row gets a `rebuilt` event saying from which object and from what.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import trio

from tr_vault.audio_types import stored_type
from tr_vault.bulk import for_each
from tr_vault.errors import ConfigError, StorageError
from tr_vault.journal import IDENTITY_LOOKUP, Journal, add_event, transaction
from tr_vault.objectmeta import (
    AUDIO_NAME,
    CALL_ID,
    DURATION,
    PROTOCOL,
    SITE,
    START_TIME,
    SYSTEM,
    SYSTEM_LABEL,
    TALKGROUP,
    TALKGROUP_LABEL,
    decoded,
    safe_site,
)
from tr_vault.storage.base import LIST_PAGE, ListedObject, ObjectInfo, ObjectRef, ObjectStore
from tr_vault.timefmt import to_db, utc_date

if TYPE_CHECKING:
    from tr_vault.config import Settings

log = logging.getLogger(__name__)

AUDIO_PREFIX = "audio/"  # under the store's prefix; the probe and journal/ lie outside it
DEFAULT_PARALLEL = 16
KNOWN_BATCH = 500  # listed keys looked up in the journal per thread hop
INSERT_BATCH = 200  # rebuilt rows per journal transaction
MAX_REPORTED = 1000  # object keys kept per list in the report (the counts stay exact)
UNKNOWN_SHA256 = "unknown:"  # + the object key: the audio's SHA-256 is not known
UNKNOWN_PROTOCOL = "unknown"
NOT_A_CALL_KEY = "not audio/[{site}/]{system}/{YYYY-MM-DD}/{file}: not a call object"

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_DIGITS = re.compile(r"^[0-9]{1,19}$")
# trunk-recorder's own file names: `{talkgroup}-{unix start}_{frequency}[-call_{n}].{ext}`.
_RECORDER_NAME = re.compile(
    r"^(?P<talkgroup>[1-9][0-9]{0,9})-(?P<start>[1-9][0-9]{8,9})_[0-9]+(?:\.[0-9]+)?"
    r"(?:-call_[0-9]+)?\.[A-Za-z0-9]{1,5}$"
)


class Outcome(StrEnum):
    METADATA = "metadata"  # rebuilt from the object's metadata
    KEY = "key"  # rebuilt from its key, size and ETag only
    KNOWN = "known"  # a row records this object or this call already
    OTHER_SITE = "other_site"  # another site's object: not this rebuild's
    NOT_A_CALL = "not_a_call"  # under audio/ but not in a call's key layout
    ERROR = "error"  # HEAD failed (or the listing did): nothing decided


# -- what a key and an object tell ---------------------------------------------------------------


@dataclass(frozen=True)
class KeyParts:
    """A call object's key, relative to `audio/`: `[{site}/]{system}/{YYYY-MM-DD}/{file}`."""

    site: str | None
    system: str
    date: str
    name: str

    @property
    def cache_key(self) -> str:
        """The shape of the journal's `key`: `{system}/{YYYY-MM-DD}/{file}`."""
        return f"{self.system}/{self.date}/{self.name}"


def parse_audio_key(key: str) -> KeyParts | None:
    """The parts of `audio/...` (relative to the store's prefix), None for any other layout.

    Three segments after `audio/` with the date second: no site; four with the date third:
    the first is the site (TR_VAULT_SITE was set).
    """
    if not key.startswith(AUDIO_PREFIX):
        return None
    parts = key[len(AUDIO_PREFIX) :].split("/")
    if any(not p or p in (".", "..") for p in parts):
        return None
    if len(parts) == 3 and _is_date(parts[1]):
        return KeyParts(None, parts[0], parts[1], parts[2])
    if len(parts) == 4 and _is_date(parts[2]):
        return KeyParts(parts[0], parts[1], parts[2], parts[3])
    return None


def _is_date(text: str) -> bool:
    if not _DATE.match(text):
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def recorder_name(name: str, day: str) -> tuple[int, float] | None:
    """(talkgroup, start) from a trunk-recorder file name whose start falls on `day`."""
    match = _RECORDER_NAME.match(name)
    if match is None:
        return None
    start = float(match["start"])
    if utc_date(start) != day:
        return None
    return int(match["talkgroup"]), start


@dataclass(frozen=True)
class Rebuilt:
    """A row to insert: the journal's columns, and how it was made."""

    source: Outcome  # METADATA or KEY
    object_key: str
    bucket: str
    site: str | None
    protocol: str
    system: str
    system_label: str | None
    talkgroup: int
    talkgroup_label: str | None
    start_time: str
    duration: float | None
    audio_name: str
    metadata: str
    key_candidates: tuple[str, ...]
    content_type: str
    size: int
    sha256: str
    md5: str
    etag: str | None
    stored_at: str  # the object's Last-Modified: received_at and uploaded_at
    note: dict[str, Any] = field(default_factory=dict)  # for the `rebuilt` event

    @property
    def sha256_known(self) -> bool:
        return bool(_SHA256.match(self.sha256))


def _text(meta: dict[str, str], name: str) -> str | None:
    value = meta.get(name, "").strip()
    return value or None


def _start_time(value: str | None) -> str | None:
    """Metadata `start-time` (ISO 8601, `...Z`) as journal text, to the millisecond."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (ValueError, OverflowError):
        return None


def _int(value: str | None) -> int | None:
    """Plain decimal digits that fit a SQLite INTEGER (not `int()`'s `+1`, `1_000`, ` 1`)."""
    if value is None or not _DIGITS.match(value):
        return None
    number = int(value)
    return number if number < 2**63 else None


def _float(value: str | None) -> float | None:
    try:
        number = float(value or "")
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def rebuilt_row(
    listed: ListedObject, parts: KeyParts, ref: ObjectRef, info: ObjectInfo, now: float
) -> Rebuilt:
    """The row `info` (a HEAD of the listed object) describes; from the key when it does not."""
    meta = decoded(info.metadata)
    sha256 = (info.sha256 or meta.get("sha256") or "").strip().lower()
    system = _text(meta, SYSTEM)
    talkgroup = _int(meta.get(TALKGROUP))
    start = _start_time(meta.get(START_TIME))
    etag = info.etag or listed.etag
    md5 = etag.lower() if etag and _MD5.match(etag.lower()) else ""
    site = _text(meta, SITE)
    stored = listed.last_modified if listed.last_modified is not None else now
    common: dict[str, Any] = {
        "object_key": ref.key,
        "bucket": ref.bucket,
        "site": safe_site(site) if site else parts.site,
        "metadata": json.dumps(meta, ensure_ascii=False, separators=(",", ":")),
        "size": info.size,
        "md5": md5,
        "etag": etag,
        "stored_at": to_db(stored),
    }
    name = PurePosixPath(parts.name)
    if _SHA256.match(sha256) and system and talkgroup is not None and start:
        audio_name = _text(meta, AUDIO_NAME) or parts.name
        return Rebuilt(
            source=Outcome.METADATA,
            protocol=_text(meta, PROTOCOL) or UNKNOWN_PROTOCOL,
            system=system,
            system_label=_text(meta, SYSTEM_LABEL),
            talkgroup=talkgroup,
            talkgroup_label=_text(meta, TALKGROUP_LABEL),
            start_time=start,
            duration=_float(meta.get(DURATION)),
            audio_name=audio_name,
            key_candidates=_key_candidates(parts, name, sha256[:12], ref.key),
            content_type=stored_type(info.content_type, audio_name),
            sha256=sha256,
            note={"call_id": _int(meta.get(CALL_ID))},
            **common,
        )
    known_sha = bool(_SHA256.match(sha256))
    told = recorder_name(parts.name, parts.date)
    tag = sha256[:12] if known_sha else (md5 or _safe_tag(etag or ""))[:12]
    return Rebuilt(
        source=Outcome.KEY,
        protocol=UNKNOWN_PROTOCOL,
        system=parts.system,
        system_label=None,
        talkgroup=told[0] if told else 0,
        talkgroup_label=None,
        start_time=to_db(told[1]) if told else f"{parts.date} 00:00:00.000",
        duration=None,
        audio_name=parts.name,
        key_candidates=_key_candidates(parts, name, tag, ref.key),
        content_type=stored_type(info.content_type, parts.name),
        sha256=sha256 if known_sha else UNKNOWN_SHA256 + ref.key,
        note={
            "sha256": "object metadata" if known_sha else "unknown",
            "talkgroup_and_start": "trunk-recorder file name" if told else "unknown",
        },
        **common,
    )


def _safe_tag(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z]", "", text)


def _key_candidates(
    parts: KeyParts, name: PurePosixPath, tag: str, object_key: str
) -> tuple[str, ...]:
    """The row's `key` (its cache key's shape): the plain one, then one made unique by the
    audio (as intake names a second recording under one name), then the object key itself
    (unique in the bucket), for a journal whose rows hold the first two already."""
    folder = f"{parts.system}/{parts.date}"
    names = [parts.cache_key]
    if tag:
        names.append(f"{folder}/{name.stem}-{tag}{name.suffix}")
    names.append(object_key)
    return tuple(dict.fromkeys(names))


# -- which objects this rebuild takes ------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """The site whose objects a rebuild takes (None: every site, for the catalog), and whether
    objects that name no site come too (this node's own rebuild, and the catalog)."""

    site: str | None
    include_no_site: bool = True

    def takes(self, site: str | None) -> bool:
        if self.site is None:
            return True
        if site is None:
            return self.include_no_site
        return site == self.site


# -- the journal side (SQL owned here, run through `Journal.call`) -------------------------------


def known_objects(
    conn: sqlite3.Connection, bucket: str, refs: Sequence[tuple[str, str | None]]
) -> set[str]:
    """Which of `refs` (object key, and the legacy cache key when the object has no site
    segment) a row records already: by `object_key` (index calls_object_key), or, for rows
    verified before migration 0004 (no `object_key`), a `done` row at `audio/{key}`."""
    found: set[str] = set()
    keys = [r[0] for r in refs]
    for at in range(0, len(keys), 500):
        chunk = keys[at : at + 500]
        marks = ",".join("?" * len(chunk))
        found.update(
            r[0]
            for r in conn.execute(
                f"SELECT object_key FROM calls WHERE object_key IN ({marks})"
                " AND coalesce(bucket, '') IN ('', ?)",
                (*chunk, bucket),
            )
        )
    legacy = {r[1]: r[0] for r in refs if r[1] is not None and r[0] not in found}
    items = list(legacy)
    for at in range(0, len(items), 500):
        chunk = items[at : at + 500]
        marks = ",".join("?" * len(chunk))
        found.update(
            legacy[r[0]]
            for r in conn.execute(
                f"SELECT key FROM calls WHERE key IN ({marks}) AND object_key IS NULL"
                " AND state = 'done'",
                chunk,
            )
        )
    return found


@dataclass(frozen=True)
class Written:
    outcome: Outcome  # METADATA, KEY, KNOWN or ERROR
    call_id: int | None
    detail: str = ""


def insert_rebuilt(
    conn: sqlite3.Connection, rows: Sequence[Rebuilt], now: float, *, per_object: bool = False
) -> list[Written]:
    """Insert each row unless its object or its call is known already; one transaction.

    `per_object` (the catalog): a call that another site's object holds too gets a row of its
    own, `duplicate_of` the first, as migration 0003 keeps one call stored twice.
    """
    at = to_db(now)
    out: list[Written] = []
    with transaction(conn):
        for row in rows:
            out.append(_insert_one(conn, row, at, per_object))
    return out


def _insert_one(conn: sqlite3.Connection, row: Rebuilt, at: str, per_object: bool) -> Written:
    known = conn.execute(
        "SELECT id FROM calls WHERE object_key = ? AND coalesce(bucket, '') IN ('', ?)",
        (row.object_key, row.bucket),
    ).fetchone()
    if known is not None:
        return Written(Outcome.KNOWN, known[0], "a row records this object")
    duplicate_of = None
    if row.sha256_known:
        same = conn.execute(IDENTITY_LOOKUP, (row.sha256, row.talkgroup, row.start_time[:19]))
        hit = same.fetchone()
        if hit is None and row.source is Outcome.KEY and not per_object:
            # An early object (sha256 only) whose row, stored under that key, lived on.
            hit = conn.execute(
                "SELECT id FROM calls WHERE key = ? AND sha256 = ?",
                (row.key_candidates[0], row.sha256),
            ).fetchone()
        if hit is not None and not per_object:
            return Written(Outcome.KNOWN, hit[0], "a row holds this call")
        duplicate_of = hit[0] if hit is not None else None
    key = next(
        (
            k
            for k in row.key_candidates
            if conn.execute("SELECT 1 FROM calls WHERE key = ?", (k,)).fetchone() is None
        ),
        None,
    )
    if key is None:
        return Written(Outcome.ERROR, None, "every key this row could take is another row's")
    cur = conn.execute(
        "INSERT INTO calls (protocol, system, system_label, talkgroup, talkgroup_label,"
        " start_time, duration, audio_name, metadata, key, content_type, size, sha256, md5,"
        " state, attempts, received_at, uploaded_at, etag, cached, bucket, object_key, site,"
        " rebuilt, duplicate_of)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'done', 0, ?, ?, ?, 0, ?, ?, ?, ?, ?)",
        (
            row.protocol,
            row.system,
            row.system_label,
            row.talkgroup,
            row.talkgroup_label,
            row.start_time,
            row.duration,
            row.audio_name,
            row.metadata,
            key,
            row.content_type,
            row.size,
            row.sha256,
            row.md5,
            row.stored_at,
            row.stored_at,
            row.etag,
            row.bucket,
            row.object_key,
            row.site,
            row.source.value,
            duplicate_of,
        ),
    )
    call_id = int(cur.lastrowid or 0)
    detail = {
        "object_key": row.object_key,
        "bucket": row.bucket,
        "from": row.source.value,
        "site": row.site,
        **row.note,
    }
    if duplicate_of is not None:
        detail["duplicate_of"] = duplicate_of
    add_event(conn, call_id, at, "rebuilt", json.dumps(detail, ensure_ascii=False))
    return Written(row.source, call_id)


# -- the pass ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """What became of one listed object."""

    object_key: str
    outcome: Outcome
    call_id: int | None = None
    detail: str = ""


@dataclass
class RebuildReport:
    listed: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    sites: Counter[str] = field(default_factory=Counter)  # objects per site ('' = none named)
    list_pages: int = 0
    heads: int = 0
    seconds: float = 0.0
    # The first MAX_REPORTED of each (the journal holds them all: `rebuilt = 'key'`).
    key_only: list[Finding] = field(default_factory=list)
    not_a_call: list[Finding] = field(default_factory=list)
    errors: list[Finding] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return self.list_pages + self.heads

    @property
    def clean(self) -> bool:
        return not self.counts[Outcome.ERROR.value]

    def add(self, finding: Finding) -> None:
        self.counts[finding.outcome.value] += 1
        kept = {
            Outcome.KEY: self.key_only,
            Outcome.NOT_A_CALL: self.not_a_call,
            Outcome.ERROR: self.errors,
        }.get(finding.outcome)
        if kept is not None and len(kept) < MAX_REPORTED:
            kept.append(finding)

    def as_dict(self) -> dict[str, Any]:
        def keys(found: list[Finding]) -> list[dict[str, Any]]:
            return [
                {"object_key": f.object_key, "call_id": f.call_id, "detail": f.detail}
                for f in found
            ]

        return {
            "listed": self.listed,
            "outcomes": {o.value: self.counts[o.value] for o in Outcome},
            "requests": {"list": self.list_pages, "head": self.heads, "total": self.requests},
            "seconds": round(self.seconds, 3),
            "objects_per_second": round(self.listed / self.seconds, 1) if self.seconds else 0.0,
            "sites": dict(sorted(self.sites.items())),
            "clean": self.clean,
            "key_only": keys(self.key_only),
            "not_a_call": keys(self.not_a_call),
            "errors": keys(self.errors),
        }


def _locate(store: ObjectStore, key: str) -> ObjectRef | None:
    """Bucket and full key of a listed key; None for one the store will not address (a `.`
    or empty segment, which URL normalisation would rewrite): one odd key must not stop a
    listing."""
    try:
        return store.locate(key)
    except StorageError:
        return None


@dataclass(frozen=True)
class _Candidate:
    listed: ListedObject
    parts: KeyParts
    ref: ObjectRef


async def rebuild(
    journal: Journal,
    store: ObjectStore,
    scope: Scope,
    *,
    parallel: int = DEFAULT_PARALLEL,
    rate: float | None = None,
    page_size: int = LIST_PAGE,
    per_object: bool = False,
    on_listed: Callable[[int], None] | None = None,
    on_result: Callable[[Finding], None] | None = None,
) -> RebuildReport:
    """List `audio/`, HEAD what the journal does not know, insert what `scope` takes (one row
    per object with `per_object`, for the catalog: see `insert_rebuilt`).

    `parallel` HEADs at a time, at most `rate` a second; `on_listed(n)` with the number listed
    so far after each page, `on_result` once per listed object. A failed listing or HEAD is an
    `error` finding (the pass goes on where it can; run it again: known objects cost no HEAD).
    """
    report = RebuildReport()
    started = trio.current_time()
    pending: list[tuple[_Candidate, Rebuilt]] = []

    def decided(finding: Finding, *, site: str | None = None, site_read: bool = False) -> None:
        """Count a finding; `site_read`: its site is known (a key segment or a HEAD)."""
        report.add(finding)
        if site_read:
            report.sites[site or ""] += 1
        if on_result is not None:
            on_result(finding)

    def paged(count: int) -> None:
        report.list_pages += 1
        if on_listed is not None:
            on_listed(report.listed + count)

    async def unknown(batch: list[_Candidate]) -> list[_Candidate]:
        """The candidates no row records yet (the others are decided: known)."""
        if not batch:
            return []
        refs = [(c.ref.key, None if c.parts.site else c.parts.cache_key) for c in batch]
        known = await journal.call(known_objects, batch[0].ref.bucket, refs)
        for c in batch:
            if c.ref.key in known:
                finding = Finding(c.ref.key, Outcome.KNOWN, detail="a row records this object")
                decided(finding, site=c.parts.site, site_read=c.parts.site is not None)
        return [c for c in batch if c.ref.key not in known]

    async def candidates() -> AsyncIterator[_Candidate]:
        batch: list[_Candidate] = []
        listing = store.list_objects(AUDIO_PREFIX, max_keys=page_size, on_page=paged)
        try:
            async for listed in listing:
                report.listed += 1
                parts = parse_audio_key(listed.key)
                ref = _locate(store, listed.key)
                if parts is None or ref is None:
                    where = ref.key if ref is not None else listed.key
                    decided(Finding(where, Outcome.NOT_A_CALL, detail=NOT_A_CALL_KEY))
                    continue
                if parts.site is not None and not scope.takes(parts.site):
                    decided(Finding(ref.key, Outcome.OTHER_SITE), site=parts.site, site_read=True)
                    continue
                batch.append(_Candidate(listed, parts, ref))
                if len(batch) >= KNOWN_BATCH:
                    for c in await unknown(batch):
                        yield c
                    batch = []
        except StorageError as exc:
            where = store.locate(AUDIO_PREFIX.rstrip("/")).key + "/"
            decided(Finding(where, Outcome.ERROR, detail=f"listing stopped: {exc}"))
        for c in await unknown(batch):
            yield c

    async def flush() -> None:
        # Ids in call order within a batch (HEADs finish in any order; the listing is in key
        # order, `{system}/{date}/...`, so batches follow each other by date).
        taken = sorted(pending, key=lambda item: (item[1].start_time, item[1].object_key))
        pending.clear()
        if not taken:
            return
        written = await journal.call(
            insert_rebuilt, [row for _, row in taken], journal.clock(), per_object=per_object
        )
        for (c, row), w in zip(taken, written, strict=True):
            decided(
                Finding(c.ref.key, w.outcome, w.call_id, w.detail), site=row.site, site_read=True
            )

    async def one(c: _Candidate) -> None:
        report.heads += 1
        try:
            info = await store.head(c.ref)
        except StorageError as exc:
            decided(Finding(c.ref.key, Outcome.ERROR, detail=f"HEAD: {exc}"))
            return
        row = rebuilt_row(c.listed, c.parts, c.ref, info, journal.clock())
        if not scope.takes(row.site):
            decided(Finding(c.ref.key, Outcome.OTHER_SITE), site=row.site, site_read=True)
            return
        pending.append((c, row))
        if len(pending) >= INSERT_BATCH:
            await flush()

    await for_each(candidates(), one, parallel=parallel, rate=rate)
    await flush()
    report.seconds = trio.current_time() - started
    log.info(
        "rebuild listed=%d %s list_pages=%d heads=%d seconds=%.1f",
        report.listed,
        " ".join(f"{k}={v}" for k, v in sorted(report.counts.items())),
        report.list_pages,
        report.heads,
        report.seconds,
    )
    return report


# -- from the settings (the CLI's body) ----------------------------------------------------------


@dataclass(frozen=True)
class RebuildRequest:
    """What `tr-vault rebuild --from-bucket` was asked (see cli.py for the flags)."""

    site: str | None = None  # None: this node's (TR_VAULT_SITE, else the host name)
    all_sites: bool = False  # every site, into the catalog; the journal is not touched
    catalog: str | None = None  # with all_sites; default {data_dir}/catalog.db
    parallel: int = DEFAULT_PARALLEL
    rate: float | None = None
    page_size: int = LIST_PAGE


@dataclass(frozen=True)
class Target:
    """Where a rebuild writes: this node's journal (locked) or the catalog."""

    kind: str  # "journal" or "catalog"
    path: str
    scope: Scope


def target_of(settings: Settings, request: RebuildRequest) -> Target:
    from tr_vault.catalog import catalog_path

    if request.all_sites:
        return Target("catalog", str(catalog_path(settings, request.catalog)), Scope(None))
    if request.catalog:
        raise ConfigError("--catalog goes with --all-sites")
    site = safe_site(request.site) if request.site else settings.site_name
    # Objects that name no site are this node's when it rebuilds its own site.
    return Target("journal", str(settings.db_path), Scope(site, site == settings.site_name))


async def rebuild_from_settings(
    settings: Settings,
    request: RebuildRequest,
    *,
    on_listed: Callable[[int], None] | None = None,
    on_result: Callable[[Finding], None] | None = None,
) -> tuple[Target, RebuildReport]:
    """Open the store and the journal (holding the data directory's lock) or the catalog, and
    rebuild. Raises `ConfigError` in local-only mode or while a server holds the lock."""
    from contextlib import ExitStack
    from pathlib import Path

    from tr_vault.app import open_store
    from tr_vault.lock import hold_data_dir

    target = target_of(settings, request)
    with ExitStack() as held:
        if target.kind == "journal":
            try:
                held.enter_context(hold_data_dir(settings.data_dir))
            except ConfigError as exc:
                raise ConfigError(
                    f"rebuild writes this node's journal {settings.db_path}, so nothing else may"
                    f" run on it: {exc}. (--all-sites writes a separate catalog and can run"
                    " beside the server.)"
                ) from None
        store = open_store(settings)
        if store is None:
            raise ConfigError("S3_BUCKET is not set: in local-only mode there is no bucket")
        try:
            journal = await Journal.open(Path(target.path))
            try:
                report = await rebuild(
                    journal,
                    store,
                    target.scope,
                    parallel=request.parallel,
                    rate=request.rate,
                    page_size=request.page_size,
                    per_object=target.kind == "catalog",
                    on_listed=on_listed,
                    on_result=on_result,
                )
            finally:
                await journal.close()
        finally:
            await store.aclose()
    return target, report
