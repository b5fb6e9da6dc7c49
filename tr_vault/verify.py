"""`tr-vault verify`: does the bucket still hold every `done` call, intact?

A row says `done` because a HEAD agreed at upload time. Since then someone may have deleted
the object, a lifecycle rule may have expired it, or another writer may have replaced its
bytes. Verification HEADs each object again (size and our `sha256` metadata; `deep` downloads
and re-hashes the bytes) and acts on what it finds, in the journal:

- intact: `checked_at` is set (no event: a pass over a million rows would bury the history);
- missing or changed, and the audio is still in the cache: back to `pending` (a `verify_missing`
  or `verify_changed` event), so the uploader puts it back (a changed key gets a distinct one);
- missing or changed with no local copy: state `lost` with a `lost` event, never kept `done`.

Only this node's rows are acted on (see `Journal.site`); other rows are reported, not changed.
The same check runs as a light scheduled sample in the server (`VerifyLoop`).
"""

from __future__ import annotations

import hashlib
import logging
import random
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import trio

from tr_vault.bulk import for_each
from tr_vault.cache import AudioCache
from tr_vault.errors import ObjectNotFound, StorageError
from tr_vault.journal import Journal, add_event, own_rows, transaction
from tr_vault.storage.base import ObjectStore, call_object
from tr_vault.timefmt import to_db

if TYPE_CHECKING:
    from tr_vault.config import Settings

log = logging.getLogger(__name__)

DEFAULT_PARALLEL = 16


class Outcome(StrEnum):
    OK = "ok"
    MISSING = "missing"  # a clear 404
    CHANGED = "changed"  # another size or SHA-256
    UNCHECKED = "unchecked"  # the store could not answer (network, 5xx, 403): nothing decided


@dataclass(frozen=True)
class Target:
    """A `done` row to check: what it says the object is, and where."""

    id: int
    key: str
    size: int
    sha256: str
    bucket: str | None
    object_key: str | None
    cached: int
    site: str | None
    rebuilt: str | None


@dataclass(frozen=True)
class Finding:
    target: Target
    outcome: Outcome
    detail: str
    action: str = ""  # requeued, lost, reported (not this node's row) or '' for ok/unchecked


@dataclass
class VerifyReport:
    checked: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    actions: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    requests: int = 0  # HEADs and, with deep, GETs
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        """Everything selected was checked and intact."""
        return all(k == Outcome.OK.value for k, v in self.counts.items() if v)

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "outcomes": {o.value: self.counts.get(o.value, 0) for o in Outcome},
            "actions": dict(self.actions),
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "clean": self.clean,
            "findings": [
                {
                    "call_id": f.target.id,
                    "key": f.target.object_key or f.target.key,
                    "outcome": f.outcome.value,
                    "action": f.action,
                    "detail": f.detail,
                }
                for f in self.findings
            ],
        }


@dataclass(frozen=True)
class Selection:
    """Which `done` rows to check: received in [since, until) (journal time text), of these
    systems, of this site (None: every site), a random `sample` of them (None: all)."""

    since: str | None = None
    until: str | None = None
    systems: tuple[str, ...] = ()
    site: str | None = None
    sample: int | None = None


_TARGET_COLUMNS = "id, key, size, sha256, bucket, object_key, cached, site, rebuilt"


def select_targets(conn: sqlite3.Connection, sel: Selection) -> list[Target]:
    """The rows `sel` names. A sample is drawn with SQLite's `random()` over the matching ids."""
    where, args = ["state = 'done'"], []
    if sel.since:
        where.append("received_at >= ?")
        args.append(sel.since)
    if sel.until:
        where.append("received_at < ?")
        args.append(sel.until)
    if sel.systems:
        where.append(f"(system IN ({','.join('?' * len(sel.systems))})")
        where[-1] += f" OR system_label IN ({','.join('?' * len(sel.systems))}))"
        args.extend(sel.systems)
        args.extend(sel.systems)
    if sel.site is not None:
        clause, site_args = own_rows(sel.site)
        where.append(clause)
        args.extend(site_args)
    order = "ORDER BY random()" if sel.sample else "ORDER BY id"
    limit = f"LIMIT {int(sel.sample)}" if sel.sample else ""
    rows = conn.execute(
        f"SELECT {_TARGET_COLUMNS} FROM calls WHERE {' AND '.join(where)} {order} {limit}", args
    )
    return [Target(**dict(r)) for r in rows]


def sample_targets(conn: sqlite3.Connection, site: str | None, count: int) -> list[Target]:
    """`count` random own `done` rows, cheaply: random points in the id range, each taking the
    next `done` row at or after it (the primary key answers; no scan of the table)."""
    lo, hi = conn.execute("SELECT min(id), max(id) FROM calls").fetchone()
    if lo is None:
        return []
    clause, site_args = own_rows(site)
    picked: dict[int, Target] = {}
    for _ in range(count * 2):
        if len(picked) >= count:
            break
        row = conn.execute(
            f"SELECT {_TARGET_COLUMNS} FROM calls WHERE id >= ? AND state = 'done' AND {clause}"
            " ORDER BY id LIMIT 1",
            (random.randint(lo, hi), *site_args),
        ).fetchone()
        if row is not None:
            picked[row["id"]] = Target(**dict(row))
    return list(picked.values())


def record_checked(conn: sqlite3.Connection, ids: list[int], now: float) -> None:
    at = to_db(now)
    with transaction(conn):
        conn.executemany(
            "UPDATE calls SET checked_at = ? WHERE id = ? AND state = 'done'",
            [(at, i) for i in ids],
        )


def record_finding(
    conn: sqlite3.Connection, call_id: int, now: float, outcome: Outcome, detail: str, local: bool
) -> str:
    """Act on a missing or changed object; returns the action (`requeued`, `lost`, or '' when
    the row is no longer `done`: it changed while the HEAD was out)."""
    at = to_db(now)
    with transaction(conn):
        if local:
            cur = conn.execute(
                "UPDATE calls SET state = 'pending', attempts = 0, next_attempt_at = ?,"
                " etag = NULL, verified_at = NULL, last_error = ? WHERE id = ? AND state = 'done'",
                (at, f"verify: object {outcome.value}: {detail}", call_id),
            )
            action = "requeued"
        else:
            cur = conn.execute(
                "UPDATE calls SET state = 'lost', last_error = ? WHERE id = ? AND state = 'done'",
                (f"verify: object {outcome.value} and no local copy: {detail}", call_id),
            )
            action = "lost"
        if not cur.rowcount:
            return ""
        kind = {"requeued": f"verify_{outcome.value}", "lost": "lost"}[action]
        add_event(conn, call_id, at, kind, f"object {outcome.value}: {detail}")
    return action


class Verifier:
    """Checks targets against the store; acts only on rows of `journal.site` (when `act`)."""

    def __init__(
        self,
        journal: Journal,
        store: ObjectStore,
        cache: AudioCache | None,
        *,
        deep: bool = False,
        act: bool = True,
    ) -> None:
        self.journal = journal
        self.store = store
        self.cache = cache
        self.deep = deep
        self.act = act

    async def check(self, target: Target) -> tuple[Outcome, str, int]:
        """(outcome, detail, requests made) for one target; never raises for S3 trouble."""
        ref = call_object(target.key, target.bucket, target.object_key)
        try:
            info = await self.store.head(ref)
        except ObjectNotFound:
            return Outcome.MISSING, "HEAD answered 404", 1
        except StorageError as exc:
            return Outcome.UNCHECKED, f"HEAD failed: {exc}", 1
        if info.size != target.size:
            return Outcome.CHANGED, f"size {info.size}, the journal has {target.size}", 1
        known_sha = not target.sha256.startswith("unknown") and len(target.sha256) == 64
        if known_sha and info.sha256 is not None and info.sha256 != target.sha256:
            return Outcome.CHANGED, f"sha256 metadata {info.sha256[:12]}… is not the call's", 1
        if not self.deep:
            if known_sha and info.sha256 is None:
                return Outcome.CHANGED, "the object has no sha256 metadata (not ours)", 1
            return Outcome.OK, "", 1
        try:
            data = await self.store.get(ref)
        except ObjectNotFound:
            return Outcome.MISSING, "GET answered 404", 2
        except StorageError as exc:
            return Outcome.UNCHECKED, f"GET failed: {exc}", 2
        if len(data) != target.size:
            return Outcome.CHANGED, f"downloaded {len(data)} bytes, expected {target.size}", 2
        if known_sha and hashlib.sha256(data).hexdigest() != target.sha256:
            return Outcome.CHANGED, "the downloaded bytes do not hash to the call's sha256", 2
        return Outcome.OK, "", 2

    def _has_local_copy(self, target: Target) -> bool:
        if self.cache is None or not target.cached:
            return False
        try:
            path = self.cache.path(target.key)
        except ValueError:
            return False
        try:
            return path.stat().st_size == target.size
        except OSError:
            return False

    def _own(self, target: Target) -> bool:
        return self.journal.site is None or target.site in (None, self.journal.site)

    async def run(
        self,
        targets: list[Target],
        *,
        parallel: int = DEFAULT_PARALLEL,
        rate: float | None = None,
        on_result: Callable[[Finding], None] | None = None,
    ) -> VerifyReport:
        report = VerifyReport()
        ok_ids: list[int] = []
        started = trio.current_time()

        async def one(target: Target) -> None:
            outcome, detail, requests = await self.check(target)
            report.requests += requests
            report.checked += 1
            report.counts[outcome.value] = report.counts.get(outcome.value, 0) + 1
            action = ""
            if outcome is Outcome.OK:
                ok_ids.append(target.id)
                if len(ok_ids) >= 500 and self.act:
                    batch = ok_ids[:]
                    ok_ids.clear()
                    await self.journal.call(record_checked, batch, self.journal.clock())
            elif outcome is not Outcome.UNCHECKED:
                if self.act and self._own(target):
                    action = await self.journal.call(
                        record_finding,
                        target.id,
                        self.journal.clock(),
                        outcome,
                        detail,
                        self._has_local_copy(target),
                    )
                else:
                    action = "reported"
            finding = Finding(target, outcome, detail, action)
            if action:
                report.actions[action] = report.actions.get(action, 0) + 1
            if outcome is not Outcome.OK:
                report.findings.append(finding)
                log.warning(
                    "verify call=%s key=%s outcome=%s action=%s %s",
                    target.id,
                    target.object_key or target.key,
                    outcome.value,
                    action or "none",
                    detail,
                )
            if on_result is not None:
                on_result(finding)

        await for_each(targets, one, parallel=parallel, rate=rate)
        if ok_ids and self.act:
            await self.journal.call(record_checked, ok_ids, self.journal.clock())
        report.seconds = trio.current_time() - started
        return report


class VerifyLoop:
    """The scheduled light verify: every `interval` seconds, `sample` random own `done` rows.

    Off (interval 0) by default: each pass costs `sample` HEAD requests. Waits while the store
    is down (an outage is the store health's business, not a finding about any call).
    """

    def __init__(
        self,
        verifier: Verifier,
        *,
        interval: float,
        sample: int,
        wait_store_up: Callable[[], Awaitable[None]] | None = None,
        on_report: Callable[[VerifyReport], None] | None = None,
    ) -> None:
        self.verifier = verifier
        self.interval = interval
        self.sample = sample
        self.wait_store_up = wait_store_up
        self.on_report = on_report

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        journal = self.verifier.journal
        while True:
            await trio.sleep(self.interval)
            if self.wait_store_up is not None:
                await self.wait_store_up()
            try:
                targets = await journal.call(sample_targets, journal.site, self.sample)
                report = await self.verifier.run(targets, parallel=4)
            except Exception:  # a pass that breaks must not stop the server
                log.exception("scheduled verify pass failed")
                continue
            if self.on_report is not None:
                self.on_report(report)
            if not report.clean:
                log.warning("scheduled verify: %s", report.as_dict()["outcomes"])


def parse_when(text: str, now: float) -> str:
    """A `--since`/`--until` value as journal time text: an ISO date or time (UTC unless it
    says otherwise: `2026-11-30`, `2026-11-30T18:00`, `...+02:00`) or a duration ago (`24h`)."""
    from datetime import UTC, datetime

    from tr_vault.durations import parse_duration

    try:
        return to_db(now - parse_duration(text))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a date or time (2026-11-30, 2026-11-30T18:00Z) nor a"
            " duration ago (24h, 7d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return to_db(when.timestamp())


@dataclass(frozen=True)
class VerifyRequest:
    """What `tr-vault verify` was asked (see cli.py for the flags)."""

    selection: Selection
    deep: bool = False
    parallel: int = DEFAULT_PARALLEL
    rate: float | None = None
    catalog: str | None = None  # --all-sites: check this catalog's rows instead of the journal
    act: bool = True  # False: report only (another site's rows, or the catalog)


async def verify_from_settings(
    settings: Settings,
    request: VerifyRequest,
    *,
    on_total: Callable[[int], None] | None = None,
    on_result: Callable[[Finding], None] | None = None,
) -> VerifyReport:
    """Open the journal (or the catalog) and the store, select and check; the CLI's body."""
    from pathlib import Path

    from tr_vault.app import open_store
    from tr_vault.errors import ConfigError

    store = open_store(settings)
    if store is None:
        raise ConfigError("S3_BUCKET is not set: in local-only mode there is no bucket to verify")
    path = Path(request.catalog) if request.catalog else settings.db_path
    act = request.act and request.catalog is None
    if request.catalog and not path.exists():
        raise ConfigError(
            f"no catalog at {path}: build it first with `tr-vault rebuild --from-bucket"
            " --all-sites`"
        )
    journal = await Journal.open(path, site=settings.site_name)
    try:
        targets = await journal.call(select_targets, request.selection)
        if on_total is not None:
            on_total(len(targets))
        cache = AudioCache(settings.audio_dir) if act else None
        verifier = Verifier(journal, store, cache, deep=request.deep, act=act)
        return await verifier.run(
            targets, parallel=request.parallel, rate=request.rate, on_result=on_result
        )
    finally:
        await store.aclose()
        await journal.close()
