"""The journal: the only module that speaks SQL.

One stdlib `sqlite3` connection in WAL mode with `synchronous=FULL`, used from worker threads
one transaction at a time (`trio.to_thread.run_sync` with a `CapacityLimiter(1)`). aiosqlite is
not an option: it is asyncio-only and fails under Trio. Each public coroutine is one whole
transaction in one thread hop, because hops, not SQL, decide the speed. A hop is not cancelled
half-way: a COMMIT that started always finishes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import trio

from tr_vault.call import CallMeta, CallRow, EventRow, StoredAudio, UploadJob
from tr_vault.errors import JournalError
from tr_vault.timefmt import WallClock, from_db, system_clock, to_db

# The top-level migrations/ directory, shipped as this package (see pyproject.toml).
MIGRATIONS_PACKAGE = "tr_vault.migrations"
BUSY_TIMEOUT = 5.0  # seconds a statement waits for another connection's write lock
WAL_AUTOCHECKPOINT_PAGES = 1000  # see `connect`, and the README's "Journal replica"

T = TypeVar("T")
P = ParamSpec("P")

_CALL_COLUMNS = ", ".join(f.name for f in fields(CallRow))


@dataclass(frozen=True)
class Inserted:
    call_id: int


@dataclass(frozen=True)
class Duplicate:
    """The same call (audio SHA-256 + talkgroup + start second) is already `call_id`."""

    call_id: int
    key: str


@dataclass(frozen=True)
class KeyTaken:
    """Another call already owns that storage key (e.g. its cached file was pruned)."""


InsertResult = Inserted | Duplicate | KeyTaken


@dataclass(frozen=True)
class Claim:
    """What a worker's claim found: a job, or how long until the next row falls due."""

    job: UploadJob | None
    next_due_in: float | None  # seconds; None when nothing is pending at all


@dataclass(frozen=True)
class PruneCandidate:
    """A cached file of a call confirmed in S3, and why it may go (`age` or `size`)."""

    id: int
    key: str
    size: int
    sha256: str
    uploaded_at: str
    bucket: str | None
    object_key: str | None  # where the verified object is; None on rows uploaded before 0004
    reason: str


@dataclass(frozen=True)
class Requeued:
    interrupted: int
    failed: int

    @property
    def total(self) -> int:
        return self.interrupted + self.failed


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection with the pragmas every journal user needs."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    # Savepoint (statement) journals and sorts in memory: no `etilqs_*` temp files in
    # /var/tmp, which a sandboxed unit may not write, and no fsync-free disk I/O to wait for.
    conn.execute("PRAGMA temp_store = MEMORY")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        # PASSIVE checkpoints only, after a commit leaves 1000 pages in the WAL (SQLite's
        # default, stated so it stays one). They wait for no one, and Litestream's open read
        # transaction keeps them from resetting WAL frames it has not replicated yet. Never a
        # FULL, RESTART or TRUNCATE checkpoint here (README, "Journal replica").
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
    return conn


_BROKEN_INSTALL = (
    "this tr_vault install is broken: it was built without its migrations/*.sql. Reinstall it"
    " from a checkout whose pyproject.toml ships them (`pip install --force-reinstall .`, or"
    " `make dev` for development); an old wheel or image must be rebuilt"
)


def packaged_migrations() -> Traversable:
    """The installed `tr_vault.migrations`, read through importlib.resources.

    Not a path next to this file: a wheel or an image only has what the package ships.
    """
    try:
        return files(MIGRATIONS_PACKAGE)
    except ModuleNotFoundError as exc:
        raise JournalError(f"no package {MIGRATIONS_PACKAGE}: {_BROKEN_INSTALL}") from exc


def migration_files(directory: Traversable | None = None) -> list[tuple[int, Traversable]]:
    """The `NNNN_name.sql` files of `directory` (default: the packaged ones), in number order."""
    where = packaged_migrations() if directory is None else directory
    try:
        entries = [e for e in where.iterdir() if e.name.endswith(".sql") and e.is_file()]
    except OSError as exc:  # e.g. the directory does not exist
        raise JournalError(f"migrations {where}: {exc}: {_BROKEN_INSTALL}") from exc
    found: dict[int, Traversable] = {}
    for entry in entries:
        number = entry.name.split("_", 1)[0]
        if not number.isdigit():
            raise JournalError(f"migration {entry.name}: name must start with its number")
        if int(number) in found:
            other = found[int(number)].name
            raise JournalError(f"migrations {other} and {entry.name} share the number {number}")
        found[int(number)] = entry
    return sorted(found.items(), key=lambda item: item[0])


def migrate(conn: sqlite3.Connection, directory: Traversable | None = None) -> list[int]:
    """Apply, in order and each in its own transaction, the migrations not applied yet.

    Finding none is an error, never a silent no-op: the server would start on an empty
    database and refuse every upload with "no such table".
    """
    where = packaged_migrations() if directory is None else directory
    migrations = migration_files(where)
    if not migrations:
        raise JournalError(f"no migrations in {where}: {_BROKEN_INSTALL}")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    done = []
    for version, path in migrations:
        if version in applied:
            continue
        script = path.read_text(encoding="utf-8")
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _split_sql(script):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, path.name, to_db(system_clock())),
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise JournalError(f"migration {path.name}: {exc}") from exc
        done.append(version)
    return done


def _split_sql(script: str) -> list[str]:
    """Statements of a migration script, keeping CREATE TRIGGER bodies whole."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements


def _row(row: sqlite3.Row | None) -> CallRow | None:
    return None if row is None else CallRow(**dict(row))


class Journal:
    """Async face of the journal. Create with `await Journal.open(path)`; `close()` at the end."""

    def __init__(
        self, conn: sqlite3.Connection, path: Path, clock: WallClock, site: str | None = None
    ) -> None:
        self._conn = conn
        self.path = path
        self.clock = clock
        # This node's site: new rows record it, and workers, pruner and verify touch only rows
        # of this site (or of none: rows from before migration 0005). None: every row.
        self.site = site
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    async def open(
        cls, path: Path, *, clock: WallClock = system_clock, site: str | None = None
    ) -> Journal:
        def _open() -> sqlite3.Connection:
            try:
                conn = connect(path)
            except sqlite3.Error as exc:
                raise JournalError(f"open journal {path}: {exc}") from exc
            try:
                migrate(conn)
            except sqlite3.Error as exc:
                conn.close()
                raise JournalError(f"open journal {path}: {exc}") from exc
            except JournalError:
                conn.close()
                raise
            return conn

        conn = await trio.to_thread.run_sync(_open)
        return cls(conn, path, clock, site)

    async def close(self) -> None:
        await self._run(lambda conn: conn.close())

    async def call(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(conn, *args, **kwargs)` as one thread hop on the journal's connection."""
        return await self._run(lambda conn: fn(conn, *args, **kwargs))

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await trio.to_thread.run_sync(fn, self._conn, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc

    # -- upload workers ------------------------------------------------------------------

    async def claim_next(self, worker: str, *, lease: float, call_id: int | None = None) -> Claim:
        now = self.clock()
        return await self._run(
            lambda conn: claim_next(conn, worker, now, call_id, lease, site=self.site)
        )

    async def upload_done(
        self,
        call_id: int,
        worker: str,
        etag: str | None,
        *,
        evict: bool,
        bucket: str | None = None,
        object_key: str | None = None,
        notes: Sequence[tuple[str, str]] = (),
    ) -> bool:
        """Mark the verified upload `done`, recording where the object went; `notes` are
        events (kind, detail) written in the same transaction (e.g. `key_collision`)."""
        now = self.clock()
        return await self._run(
            lambda conn: upload_done(
                conn,
                call_id,
                worker,
                now,
                etag,
                evict,
                bucket=bucket,
                object_key=object_key,
                notes=notes,
            )
        )

    async def upload_failed(
        self,
        call_id: int,
        worker: str,
        error: str,
        *,
        permanent: bool,
        max_attempts: int,
        retry_in: float,
        failed_retry_in: float,
    ) -> str:
        now = self.clock()
        return await self._run(
            lambda conn: upload_failed(
                conn,
                call_id,
                worker,
                now,
                error,
                permanent=permanent,
                max_attempts=max_attempts,
                retry_in=retry_in,
                failed_retry_in=failed_retry_in,
            )
        )

    async def release(self, call_id: int, worker: str) -> None:
        await self._run(lambda conn: release(conn, call_id, worker))

    async def requeue(
        self, run_id: str, *, max_attempts: int | None = None, failed_retry_in: float = 21600.0
    ) -> Requeued:
        now = self.clock()
        return await self._run(
            lambda conn: requeue(
                conn, run_id, now, max_attempts=max_attempts, failed_retry_in=failed_retry_in
            )
        )

    async def retry(self, call_ids: Sequence[int] | None = None) -> list[int]:
        now = self.clock()
        return await self._run(lambda conn: retry(conn, now, call_ids))

    # -- pruner --------------------------------------------------------------------------

    async def prune_candidates(
        self, *, retention: float, max_bytes: int, low_water: float, limit: int
    ) -> tuple[list[PruneCandidate], int | None]:
        now = self.clock()
        return await self._run(
            lambda conn: prune_candidates(
                conn,
                now,
                retention=retention,
                max_bytes=max_bytes,
                low_water=low_water,
                limit=limit,
                site=self.site,
            )
        )

    async def mark_pruned(self, call_id: int, detail: str) -> bool:
        now = self.clock()
        return await self._run(lambda conn: mark_pruned(conn, call_id, now, detail))

    async def mark_missing(self, call_id: int, detail: str) -> bool:
        now = self.clock()
        return await self._run(lambda conn: mark_missing(conn, call_id, now, detail))

    # -- reads ---------------------------------------------------------------------------

    async def get_call(self, call_id: int) -> CallRow | None:
        return await self._run(lambda conn: get_call(conn, call_id))

    async def events(self, call_id: int) -> list[EventRow]:
        return await self._run(lambda conn: call_events(conn, call_id))

    async def list_calls(
        self, flt: CallFilter, *, limit: int, after: tuple[str, int] | None = None
    ) -> list[CallRow]:
        return await self._run(lambda conn: list_calls(conn, flt, limit=limit, after=after))

    async def summary(self, systems: frozenset[str] | None = None) -> dict[str, Any]:
        """`status_summary`; with `systems`, of those systems' calls only."""
        now = self.clock()
        return await self._run(lambda conn: status_summary(conn, now, systems))

    async def check_writable(self) -> None:
        """Take and release the write lock: proves the journal can commit right now."""

        def probe(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")

        await self._run(probe)


def add_event(
    conn: sqlite3.Connection, call_id: int, at: str, kind: str, detail: str | None
) -> None:
    """Append to a call's history (inside the caller's transaction)."""
    conn.execute(
        "INSERT INTO events (call_id, at, kind, detail) VALUES (?, ?, ?, ?)",
        (call_id, at, kind, detail),
    )


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # an I/O or full-disk error may have rolled it back already
            conn.execute("ROLLBACK")
        raise


_JOB_COLUMNS = (
    "id, key, size, sha256, md5, content_type, attempts, protocol, system, system_label,"
    " talkgroup, talkgroup_label, start_time, duration, audio_name, bucket, object_key"
)


def _job(row: sqlite3.Row) -> UploadJob:
    return UploadJob(**dict(row))


# A call's identity (migration 0003): the audio's SHA-256, the talkgroup and the start time to
# the second. Not the system: one recorder sends one call as system `11` (rdio-scanner plugin)
# and as `metro` (OpenMHz plugin). The lookup is the unique index calls_identity, whose WHERE
# (`duplicate_of IS NULL`) it repeats so that SQLite may use it.
IDENTITY_LOOKUP = (
    "SELECT id, key FROM calls WHERE sha256 = ? AND talkgroup = ?"
    " AND substr(start_time, 1, 19) = ? AND duplicate_of IS NULL"
)
# The same lookup with the state (`known_calls`).
KNOWN_LOOKUP = (
    "SELECT id, key, state FROM calls WHERE sha256 = ? AND talkgroup = ?"
    " AND substr(start_time, 1, 19) = ? AND duplicate_of IS NULL"
)


def identity(meta: CallMeta, sha256: str) -> tuple[str, int, str]:
    """(sha256, talkgroup, start second as 'YYYY-MM-DD HH:MM:SS'), as calls_identity has it."""
    return sha256, meta.talkgroup, to_db(meta.start_time)[:19]


def insert_call(
    conn: sqlite3.Connection,
    meta: CallMeta,
    audio: StoredAudio,
    state: str,
    now: float,
    detail: str | None,
    *,
    site: str | None = None,
    destinations: Sequence[str] = (),
) -> InsertResult:
    """Record one call whose audio is durable under `audio.key`, in one transaction.

    Checks for the same call first: the same audio (SHA-256) with the same talkgroup and start
    time to the second, whatever the protocol or the form of the system's name (see
    `identity`). A duplicate gets a `duplicate` event on the existing call and no new row; a
    key a row already holds is `KeyTaken`. A new call gets a pending delivery for each of
    `destinations` in the same commit. (Intake commits in batches: intake/store.py.)
    """
    with transaction(conn):
        return _insert_call(conn, meta, audio, state, to_db(now), detail, site, destinations)


@dataclass(frozen=True)
class NewCall:
    """One call of a batch for `insert_calls`: its metadata, its durable audio, the detail
    of its `received` event."""

    meta: CallMeta
    audio: StoredAudio
    detail: str | None
    destinations: tuple[str, ...] = ()  # forwarding destinations that want the call


def insert_calls(
    conn: sqlite3.Connection,
    calls: Sequence[NewCall],
    state: str,
    now: float,
    *,
    site: str | None = None,
) -> list[InsertResult]:
    """`insert_call` for many calls in one transaction (`tr-vault import`: one commit, so one
    WAL fsync, per batch instead of per call). Results are in the order of `calls`; a call
    repeated within the batch is a `Duplicate` of the first."""
    at = to_db(now)
    with transaction(conn):
        return [
            _insert_call(conn, c.meta, c.audio, state, at, c.detail, site, c.destinations)
            for c in calls
        ]


@dataclass(frozen=True)
class Known:
    """A call the journal already holds under an identity, and its state."""

    call_id: int
    key: str
    state: str


def known_calls(
    conn: sqlite3.Connection, identities: Sequence[tuple[str, int, str]]
) -> dict[tuple[str, int, str], Known]:
    """Which of `identities` (see `identity`) the journal already holds, read without a write
    lock: `tr-vault import` skips those before it writes a byte (a re-run adds nothing)."""
    found = {}
    for ident in dict.fromkeys(identities):
        row = conn.execute(KNOWN_LOOKUP, ident).fetchone()
        if row is not None:
            found[ident] = Known(row["id"], row["key"], row["state"])
    return found


def _insert_call(
    conn: sqlite3.Connection,
    meta: CallMeta,
    audio: StoredAudio,
    state: str,
    at: str,
    detail: str | None,
    site: str | None,
    destinations: Sequence[str] = (),
) -> InsertResult:
    """The body of `insert_call`, inside the caller's transaction."""
    dup = duplicate_of(conn, meta, audio.sha256, at)
    if dup is not None:
        return dup
    if key_recorded(conn, audio.key):
        return KeyTaken()  # nothing written: the commit is empty
    return Inserted(add_call(conn, meta, audio, state, at, detail, site, destinations))


def duplicate_of(
    conn: sqlite3.Connection, meta: CallMeta, sha256: str, at: str
) -> Duplicate | None:
    """The call the journal holds under this call's identity (see `identity`), given a
    `duplicate` event; None for a new call. Inside the caller's transaction."""
    dup = conn.execute(IDENTITY_LOOKUP, identity(meta, sha256)).fetchone()
    if dup is None:
        return None
    note = json.dumps(
        {"protocol": meta.protocol, "system": meta.system, "audio_name": meta.audio_name}
    )
    add_event(conn, dup["id"], at, "duplicate", note)
    return Duplicate(dup["id"], dup["key"])


def key_recorded(conn: sqlite3.Connection, key: str) -> bool:
    """Whether a row holds `key` (its file may be gone: pruned)."""
    return conn.execute("SELECT 1 FROM calls WHERE key = ?", (key,)).fetchone() is not None


def add_call(
    conn: sqlite3.Connection,
    meta: CallMeta,
    audio: StoredAudio,
    state: str,
    at: str,
    detail: str | None,
    site: str | None,
    destinations: Sequence[str] = (),
) -> int:
    """Insert a new call's row, its `received` event and its deliveries (inside the caller's
    transaction, after `duplicate_of` and `key_recorded` said it is new); returns its id."""
    cur = conn.execute(
        "INSERT INTO calls (protocol, system, system_label, talkgroup, talkgroup_label,"
        " talkgroup_tag, talkgroup_group, source, frequency, start_time, stop_time, duration,"
        " emergency, audio_name, metadata, key, content_type, size, sha256, md5, state,"
        " next_attempt_at, received_at, site)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            meta.protocol,
            meta.system,
            meta.system_label,
            meta.talkgroup,
            meta.talkgroup_label,
            meta.talkgroup_tag,
            meta.talkgroup_group,
            meta.source,
            meta.frequency,
            to_db(meta.start_time),
            to_db(meta.stop_time) if meta.stop_time is not None else None,
            meta.duration,
            int(meta.emergency),
            meta.audio_name,
            json.dumps(meta.metadata, separators=(",", ":")),
            audio.key,
            meta.content_type,
            audio.size,
            audio.sha256,
            audio.md5,
            state,
            at if state == "pending" else None,
            at,
            site,
        ),
    )
    call_id = int(cur.lastrowid or 0)
    add_event(conn, call_id, at, "received", detail)
    if destinations:
        add_deliveries(conn, call_id, destinations, at)
    return call_id


def add_deliveries(
    conn: sqlite3.Connection, call_id: int, destinations: Sequence[str], at: str
) -> int:
    """Pending deliveries of `call_id` to `destinations` (inside the caller's transaction);
    one that exists already is left as it is. Returns how many were new."""
    cur = conn.executemany(
        "INSERT INTO deliveries (call_id, destination, next_attempt_at, created_at)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (call_id, destination) DO NOTHING",
        [(call_id, name, at, at) for name in destinations],
    )
    return max(0, cur.rowcount)


def recorded_keys(conn: sqlite3.Connection, keys: Sequence[str]) -> set[str]:
    """Which of `keys` a call row holds (the unique index on `key` answers)."""
    marks = ",".join("?" * len(keys))
    return {r[0] for r in conn.execute(f"SELECT key FROM calls WHERE key IN ({marks})", keys)}


def own_rows(site: str | None) -> tuple[str, list[Any]]:
    """A WHERE clause for the rows of `site` (and rows of no site: before migration 0005)."""
    if site is None:
        return "1", []
    return "(site IS NULL OR site = ?)", [site]


def unfinished_of_other_sites(conn: sqlite3.Connection, site: str | None) -> dict[str, int]:
    """Pending or failed rows of sites other than `site`, counted by site."""
    if site is None:
        return {}
    rows = conn.execute(
        "SELECT site, count(*) FROM calls WHERE state IN ('pending', 'failed')"
        " AND site IS NOT NULL AND site != ? GROUP BY site",
        (site,),
    )
    return {r[0]: r[1] for r in rows}


def claim_next(
    conn: sqlite3.Connection,
    worker: str,
    now: float,
    call_id: int | None,
    lease: float,
    *,
    site: str | None = None,
) -> Claim:
    """Claim the oldest due pending row (or `call_id` if it is pending) for `lease` seconds.

    A row whose claim expired (its worker stalled on a locked journal, or died) is taken
    over, with a `requeued` event; the old claim can no longer mark it.
    """
    at = to_db(now)
    free = "(claimed_by IS NULL OR coalesce(claim_expires_at, '') <= ?)"
    own, own_args = own_rows(site)
    with transaction(conn):
        if call_id is None:
            row = conn.execute(
                f"SELECT {_JOB_COLUMNS}, claimed_by FROM calls WHERE state = 'pending'"
                f" AND next_attempt_at <= ? AND {free} AND {own}"
                " ORDER BY next_attempt_at, id LIMIT 1",
                (at, at, *own_args),
            ).fetchone()
        else:
            row = conn.execute(
                f"SELECT {_JOB_COLUMNS}, claimed_by FROM calls WHERE id = ?"
                f" AND state = 'pending' AND {free} AND {own}",
                (call_id, at, *own_args),
            ).fetchone()
        if row is None:
            return Claim(None, next_due_in(conn, now, site))
        if row["claimed_by"] is not None:
            add_event(
                conn, row["id"], at, "requeued", f"claim of {row['claimed_by']} expired; taken over"
            )
        conn.execute(
            "UPDATE calls SET claimed_by = ?, claimed_at = ?, claim_expires_at = ? WHERE id = ?",
            (worker, at, to_db(now + lease), row["id"]),
        )
        job = dict(row)
        job.pop("claimed_by")
        return Claim(UploadJob(**job), 0.0)


def next_due_in(conn: sqlite3.Connection, now: float, site: str | None) -> float | None:
    """Seconds until a pending row falls due or a claim expires; None with nothing pending."""
    own, own_args = own_rows(site)
    due = [
        conn.execute(
            "SELECT next_attempt_at FROM calls WHERE state = 'pending' AND claimed_by IS NULL"
            f" AND {own} ORDER BY next_attempt_at LIMIT 1",
            own_args,
        ).fetchone(),
        conn.execute(
            "SELECT min(claim_expires_at) FROM calls WHERE claimed_by IS NOT NULL"
            f" AND state = 'pending' AND {own}",
            own_args,
        ).fetchone(),
    ]
    times = [from_db(r[0]) for r in due if r is not None and r[0] is not None]
    return max(0.0, min(times) - now) if times else None


INTERRUPTED = "upload interrupted: the process stopped mid-upload"


def requeue(
    conn: sqlite3.Connection,
    run_id: str,
    now: float,
    *,
    max_attempts: int | None = None,
    failed_retry_in: float = 21600.0,
) -> Requeued:
    """Re-queue rows claimed by a run that is gone, and failed rows whose rest is over.

    An interrupted upload counts as an attempt, so a call that brings the process down every
    time it is uploaded ends `failed` after `max_attempts` instead of looping forever. A
    failed row that is retried starts with fresh attempts.
    """
    at = to_db(now)
    with transaction(conn):
        stale = conn.execute(
            "SELECT id, attempts FROM calls WHERE state = 'pending' AND claimed_by IS NOT NULL"
            " AND claimed_by NOT LIKE ? || ':%'",
            (run_id,),
        ).fetchall()
        for call_id, attempts in stale:
            give_up = max_attempts is not None and attempts + 1 >= max_attempts
            conn.execute(
                "UPDATE calls SET state = ?, attempts = attempts + 1, last_error = ?,"
                " claimed_by = NULL, claimed_at = NULL, claim_expires_at = NULL,"
                " next_attempt_at = ? WHERE id = ?",
                (
                    "failed" if give_up else "pending",
                    INTERRUPTED,
                    to_db(now + failed_retry_in) if give_up else at,
                    call_id,
                ),
            )
            if give_up:
                add_event(conn, call_id, at, "failed", f"{attempts + 1} attempts: {INTERRUPTED}")
            else:
                add_event(conn, call_id, at, "requeued", INTERRUPTED)
        failed = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM calls WHERE state = 'failed' AND next_attempt_at <= ?", (at,)
            )
        ]
        for call_id in failed:
            conn.execute(
                "UPDATE calls SET state = 'pending', attempts = 0, next_attempt_at = ?"
                " WHERE id = ?",
                (at, call_id),
            )
            add_event(
                conn, call_id, at, "requeued", "failed upload retried on schedule, fresh attempts"
            )
    return Requeued(len(stale), len(failed))


def retry(conn: sqlite3.Connection, now: float, call_ids: Sequence[int] | None) -> list[int]:
    """An operator's retry: failed rows (all, or `call_ids`) back to pending, attempts reset.

    A pending row that a worker holds right now is left to that worker, unless its claim
    has expired.
    """
    at = to_db(now)
    with transaction(conn):
        if call_ids is None:
            ids = [r[0] for r in conn.execute("SELECT id FROM calls WHERE state = 'failed'")]
        else:
            marks = ",".join("?" * len(call_ids))
            ids = [
                r[0]
                for r in conn.execute(
                    f"SELECT id FROM calls WHERE id IN ({marks}) AND (state = 'failed'"
                    " OR (state = 'pending' AND (claimed_by IS NULL"
                    " OR coalesce(claim_expires_at, '') <= ?)))",
                    (*call_ids, at),
                )
            ]
        for call_id in ids:
            conn.execute(
                "UPDATE calls SET state = 'pending', attempts = 0, next_attempt_at = ?,"
                " claimed_by = NULL, claimed_at = NULL, claim_expires_at = NULL WHERE id = ?",
                (at, call_id),
            )
            add_event(conn, call_id, at, "requeued", "retry requested by operator")
    return ids


def upload_done(
    conn: sqlite3.Connection,
    call_id: int,
    worker: str,
    now: float,
    etag: str | None,
    evict: bool,
    *,
    bucket: str | None = None,
    object_key: str | None = None,
    notes: Sequence[tuple[str, str]] = (),
) -> bool:
    """Mark a verified upload `done` with its object's bucket and full key (kept as they were
    when not given); False (and nothing written) if the claim was lost or has expired."""
    at = to_db(now)
    with transaction(conn):
        cur = conn.execute(
            "UPDATE calls SET state = 'done', attempts = attempts + 1, etag = ?, uploaded_at = ?,"
            " verified_at = ?, last_error = NULL, next_attempt_at = NULL, claimed_by = NULL,"
            " claimed_at = NULL, claim_expires_at = NULL,"
            " bucket = coalesce(?, bucket), object_key = coalesce(?, object_key)"
            " WHERE id = ? AND claimed_by = ? AND claim_expires_at > ?",
            (etag, at, at, bucket, object_key, call_id, worker, at),
        )
        if not cur.rowcount:
            return False
        for kind, detail in notes:
            add_event(conn, call_id, at, kind, detail)
        done: dict[str, Any] = {"etag": etag}
        if object_key is not None:
            done.update(bucket=bucket, object_key=object_key)
        add_event(conn, call_id, at, "upload_ok", json.dumps(done))
        add_event(conn, call_id, at, "verified", "size and sha256 match")
        if evict:
            conn.execute("UPDATE calls SET cached = 0, pruned_at = ? WHERE id = ?", (at, call_id))
            add_event(conn, call_id, at, "uncached", "S3-only mode: local copy removed")
    return True


def upload_failed(
    conn: sqlite3.Connection,
    call_id: int,
    worker: str,
    now: float,
    error: str,
    *,
    permanent: bool,
    max_attempts: int,
    retry_in: float,
    failed_retry_in: float,
) -> str:
    """Record a failed attempt; returns the row's new state (`pending` or `failed`)."""
    at = to_db(now)
    with transaction(conn):
        row = conn.execute(
            "SELECT attempts FROM calls WHERE id = ? AND claimed_by = ? AND claim_expires_at > ?",
            (call_id, worker, at),
        ).fetchone()
        if row is None:
            return "pending"  # claim lost or expired (taken over meanwhile): leave the row alone
        attempts = row[0] + 1
        give_up = permanent or attempts >= max_attempts
        state = "failed" if give_up else "pending"
        due = to_db(now + (failed_retry_in if give_up else retry_in))
        conn.execute(
            "UPDATE calls SET state = ?, attempts = ?, last_error = ?, next_attempt_at = ?,"
            " claimed_by = NULL, claimed_at = NULL, claim_expires_at = NULL WHERE id = ?",
            (state, attempts, error, due, call_id),
        )
        add_event(conn, call_id, at, "upload_error", error)
        if give_up:
            why = "permanent error" if permanent else f"{attempts} attempts"
            add_event(conn, call_id, at, "failed", f"{why}: {error}")
    return state


def release(conn: sqlite3.Connection, call_id: int, worker: str) -> None:
    """Give a claim back untouched: the upload was cancelled by shutdown, or the store is
    down (an outage is not the call's fault)."""
    with transaction(conn):
        conn.execute(
            "UPDATE calls SET claimed_by = NULL, claimed_at = NULL, claim_expires_at = NULL"
            " WHERE id = ? AND claimed_by = ?",
            (call_id, worker),
        )


def _in_systems(column: str, systems: frozenset[str] | None) -> tuple[str, list[Any]]:
    """An SQL condition (with its parameters) limiting `column` to `systems`; none for None."""
    if systems is None:
        return "1", []
    if not systems:
        return "0", []
    names = sorted(systems)
    return f"{column} IN ({', '.join('?' * len(names))})", list(names)


def _has_call_counts(conn: sqlite3.Connection) -> bool:
    """Whether the journal has `call_counts` (migration 0009)."""
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'call_counts'"
    ).fetchone()
    return found is not None


def status_summary(
    conn: sqlite3.Connection, now: float, systems: frozenset[str] | None = None
) -> dict[str, Any]:
    """Counts and bytes per state, cached bytes, oldest pending, recent failures, last error.

    With `systems`, only calls whose `system` is one of them (and only their events) count.
    The counts and bytes are read from `call_counts` (migration 0009: kept by triggers on
    `calls`), not counted: a few rows instead of every row of the journal.
    """
    scope, sp = _in_systems("system", systems)
    event_scope, ep = _in_systems("c.system", systems)
    # `calls` itself is counted only on a journal the migrations have not reached yet:
    # `tr-vault status` opens it read-only, so a CLI newer than the server may find one.
    if _has_call_counts(conn):
        counts, n, total = "call_counts", "sum(calls)", "sum(bytes)"
    else:
        counts, n, total = "calls", "count(*)", "sum(size)"
    # A state no call is in has no row here (`call_counts` keeps rows that reached 0), and is
    # added at 0 below, after the others, as when the states were a GROUP BY over `calls`.
    states = {
        row["state"]: {"calls": row["n"], "bytes": row["bytes"]}
        for row in conn.execute(
            f"SELECT state, {n} AS n, coalesce({total}, 0) AS bytes FROM {counts}"
            f" WHERE {scope} GROUP BY state HAVING {n} > 0 ORDER BY state",
            sp,
        )
    }
    for state in ("pending", "done", "failed", "lost"):
        states.setdefault(state, {"calls": 0, "bytes": 0})
    oldest = conn.execute(
        "SELECT id, received_at FROM calls WHERE id ="
        f" (SELECT min(id) FROM calls WHERE state = 'pending' AND {scope})",
        sp,
    ).fetchone()
    if systems is None:
        last_error = conn.execute(
            "SELECT call_id AS id, at, detail AS error FROM events WHERE kind = 'upload_error'"
            " ORDER BY at DESC, id DESC LIMIT 1"
        ).fetchone()
    else:
        last_error = conn.execute(
            "SELECT e.call_id AS id, e.at, e.detail AS error FROM events e"
            " JOIN calls c ON c.id = e.call_id"
            f" WHERE e.kind = 'upload_error' AND {event_scope}"
            " ORDER BY e.at DESC, e.id DESC LIMIT 1",
            ep,
        ).fetchone()
    cached = conn.execute(
        f"SELECT coalesce({n}, 0), coalesce({total}, 0) FROM {counts} WHERE cached = 1 AND {scope}",
        sp,
    ).fetchone()
    hour_ago = to_db(now - 3600)
    recent = {
        row["kind"]: row["n"]
        for row in conn.execute(
            "SELECT e.kind, count(*) AS n FROM events e"
            + ("" if systems is None else " JOIN calls c ON c.id = e.call_id")
            + " WHERE e.kind IN ('upload_error', 'failed') AND e.at >= ?"
            + ("" if systems is None else f" AND {event_scope}")
            + " GROUP BY e.kind",
            [hour_ago, *ep],
        )
    }
    health = store_health(conn)
    return {
        "states": states,
        "store": health.get("s3"),
        "replica": health.get("replica"),  # the journal's Litestream replica, when ever enabled
        "upload_errors_last_hour": recent.get("upload_error", 0),
        "failed_last_hour": recent.get("failed", 0),
        "oldest_pending": dict(oldest) if oldest else None,
        "last_error": dict(last_error) if last_error else None,
        "cached": {"calls": cached[0], "bytes": cached[1]},
    }


def prune_candidates(
    conn: sqlite3.Connection,
    now: float,
    *,
    retention: float,
    max_bytes: int,
    low_water: float,
    limit: int,
    site: str | None = None,
) -> tuple[list[PruneCandidate], int | None]:
    """Cached files of `done` rows that may go, oldest first, and the cache's size in bytes
    (None when there is no size cap, so no need to add it up).

    Past `retention` they go for age; while the cache is over `max_bytes`, the oldest go
    until it is down to `low_water * max_bytes`. Never a pending or failed row.
    """
    cached_bytes = None
    if max_bytes > 0:  # skip the sum when uncapped
        cached_bytes = int(  # call_counts (0009): a few rows, not every cached call's entry
            conn.execute(
                "SELECT coalesce(sum(bytes), 0) FROM call_counts WHERE cached = 1"
            ).fetchone()[0]
        )
    columns = "id, key, size, sha256, uploaded_at, bucket, object_key"
    own, own_args = own_rows(site)
    picked: list[PruneCandidate] = []
    if retention > 0:
        rows = conn.execute(
            f"SELECT {columns} FROM calls WHERE cached = 1 AND state = 'done'"
            f" AND uploaded_at <= ? AND {own} ORDER BY uploaded_at, id LIMIT ?",
            (to_db(now - retention), *own_args, limit),
        )
        picked = [PruneCandidate(**dict(r), reason="age") for r in rows]
    if cached_bytes is not None and cached_bytes > max_bytes:
        need = cached_bytes - int(low_water * max_bytes) - sum(c.size for c in picked)
        chosen = {c.id for c in picked}
        rows = conn.execute(
            f"SELECT {columns} FROM calls WHERE cached = 1 AND state = 'done' AND {own}"
            " ORDER BY uploaded_at, id",
            own_args,
        )
        for r in rows:
            if need <= 0 or len(picked) >= limit:
                break
            if r["id"] in chosen:
                continue
            picked.append(PruneCandidate(**dict(r), reason="size"))
            need -= r["size"]
    return picked, cached_bytes


def mark_pruned(conn: sqlite3.Connection, call_id: int, now: float, detail: str) -> bool:
    at = to_db(now)
    with transaction(conn):
        cur = conn.execute(
            "UPDATE calls SET cached = 0, pruned_at = ? WHERE id = ? AND state = 'done'"
            " AND cached = 1",
            (at, call_id),
        )
        if cur.rowcount:
            add_event(conn, call_id, at, "pruned", detail)
    return bool(cur.rowcount)


def mark_missing(conn: sqlite3.Connection, call_id: int, now: float, detail: str) -> bool:
    """A `done` row whose object is gone from the bucket: upload it again from the cache."""
    at = to_db(now)
    with transaction(conn):
        cur = conn.execute(
            "UPDATE calls SET state = 'pending', attempts = 0, next_attempt_at = ?, etag = NULL,"
            " verified_at = NULL, last_error = ? WHERE id = ? AND state = 'done'",
            (at, detail, call_id),
        )
        if cur.rowcount:
            add_event(conn, call_id, at, "missing_in_s3", detail)
    return bool(cur.rowcount)


@dataclass(frozen=True)
class CallFilter:
    system: str | None = None  # a filter the reader asked for: `system` or `system_label`
    systems: frozenset[str] | None = None  # the reader's scope: `system` only; None = every
    talkgroup: int | None = None
    since: float | None = None
    until: float | None = None
    state: str | None = None


def list_calls(
    conn: sqlite3.Connection, flt: CallFilter, *, limit: int, after: tuple[str, int] | None
) -> list[CallRow]:
    """Calls newest first (by start time, then id); `after` is the last row of the previous page."""
    where: list[str] = []
    params: list[Any] = []
    if flt.system is not None:
        where.append("(system = ? OR system_label = ?)")
        params += [flt.system, flt.system]
    if flt.systems is not None:
        condition, names = _in_systems("system", flt.systems)
        where.append(condition)
        params += names
    if flt.talkgroup is not None:
        where.append("talkgroup = ?")
        params.append(flt.talkgroup)
    if flt.since is not None:
        where.append("start_time >= ?")
        params.append(to_db(flt.since))
    if flt.until is not None:
        where.append("start_time < ?")
        params.append(to_db(flt.until))
    if flt.state is not None:
        where.append("state = ?")
        params.append(flt.state)
    if after is not None:
        where.append("(start_time < ? OR (start_time = ? AND id < ?))")
        params += [after[0], after[0], after[1]]
    sql = f"SELECT {_CALL_COLUMNS} FROM calls"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY start_time DESC, id DESC LIMIT ?"
    params.append(limit)
    return [CallRow(**dict(r)) for r in conn.execute(sql, params)]


def failed_calls(
    conn: sqlite3.Connection, limit: int = 1000, *, state: str = "failed"
) -> list[CallRow]:
    """The newest calls in `state` (`failed`, or `lost`), with their last error."""
    rows = conn.execute(
        f"SELECT {_CALL_COLUMNS} FROM calls WHERE state = ? ORDER BY id DESC LIMIT ?",
        (state, limit),
    )
    return [CallRow(**dict(r)) for r in rows]


def call_events(conn: sqlite3.Connection, call_id: int) -> list[EventRow]:
    rows = conn.execute(
        "SELECT id, call_id, at, kind, detail FROM events WHERE call_id = ? ORDER BY id",
        (call_id,),
    )
    return [EventRow(**dict(r)) for r in rows]


def get_call(conn: sqlite3.Connection, call_id: int) -> CallRow | None:
    row = conn.execute(f"SELECT {_CALL_COLUMNS} FROM calls WHERE id = ?", (call_id,))
    return _row(row.fetchone())


def set_store_health(
    conn: sqlite3.Connection,
    name: str,
    state: str,
    since: float,
    checked_at: float | None,
    error: str | None,
    code: str | None,
) -> None:
    """Record a store's state (on each change, not per call) for `tr-vault status`."""
    with transaction(conn):
        conn.execute(
            "INSERT INTO store_health (name, state, since, checked_at, last_error, code)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET state = excluded.state,"
            " since = excluded.since, checked_at = excluded.checked_at,"
            " last_error = excluded.last_error, code = excluded.code",
            (
                name,
                state,
                to_db(since),
                to_db(checked_at) if checked_at is not None else None,
                error,
                code,
            ),
        )


def store_health(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Each store's last recorded state, by name."""
    rows = conn.execute(
        "SELECT name, state, since, checked_at, last_error, code FROM store_health ORDER BY name"
    )
    return {row["name"]: dict(row) for row in rows}
