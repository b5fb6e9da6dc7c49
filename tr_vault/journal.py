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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import trio

from tr_vault.call import CallMeta, CallRow, EventRow, StoredAudio
from tr_vault.errors import JournalError
from tr_vault.timefmt import WallClock, system_clock, to_db

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

T = TypeVar("T")

_CALL_COLUMNS = ", ".join(f.name for f in fields(CallRow))


@dataclass(frozen=True)
class Inserted:
    call_id: int


@dataclass(frozen=True)
class Duplicate:
    """The same audio (system + SHA-256) is already in the journal as `call_id`."""

    call_id: int
    key: str


@dataclass(frozen=True)
class KeyTaken:
    """Another call already owns that storage key (e.g. its cached file was pruned)."""


InsertResult = Inserted | Duplicate | KeyTaken


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection with the pragmas every journal user needs."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = ON")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
    return conn


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[tuple[int, Path]]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        number = path.name.split("_", 1)[0]
        if not number.isdigit():
            raise JournalError(f"migration {path.name}: name must start with its number")
        found.append((int(number), path))
    return found


def migrate(conn: sqlite3.Connection, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply, in order and each in its own transaction, the migrations not applied yet."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    done = []
    for version, path in migration_files(directory):
        if version in applied:
            continue
        script = path.read_text()
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

    def __init__(self, conn: sqlite3.Connection, path: Path, clock: WallClock) -> None:
        self._conn = conn
        self.path = path
        self.clock = clock
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: Path, *, clock: WallClock = system_clock) -> Journal:
        def _open() -> sqlite3.Connection:
            try:
                conn = connect(path)
                migrate(conn)
            except sqlite3.Error as exc:
                raise JournalError(f"open journal {path}: {exc}") from exc
            return conn

        conn = await trio.to_thread.run_sync(_open)
        return cls(conn, path, clock)

    async def close(self) -> None:
        await self._run(lambda conn: conn.close())

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await trio.to_thread.run_sync(fn, self._conn, limiter=self._limiter)

    def _now(self) -> str:
        return to_db(self.clock())

    # -- intake --------------------------------------------------------------------------

    async def insert_call(
        self, meta: CallMeta, audio: StoredAudio, *, state: str, event_detail: str | None = None
    ) -> InsertResult:
        """Record an upload whose audio is durable under `audio.key`, in one transaction.

        Checks for the same audio first (system + SHA-256): a duplicate gets a `duplicate`
        event on the existing call and no new row.
        """
        now = self._now()

        def txn(conn: sqlite3.Connection) -> InsertResult:
            conn.execute("BEGIN IMMEDIATE")
            try:
                dup = conn.execute(
                    "SELECT id, key FROM calls WHERE system = ? AND sha256 = ?",
                    (meta.system, audio.sha256),
                ).fetchone()
                if dup is not None:
                    detail = json.dumps({"protocol": meta.protocol, "audio_name": meta.audio_name})
                    _event(conn, dup["id"], now, "duplicate", detail)
                    conn.execute("COMMIT")
                    return Duplicate(dup["id"], dup["key"])
                if conn.execute("SELECT 1 FROM calls WHERE key = ?", (audio.key,)).fetchone():
                    conn.execute("ROLLBACK")
                    return KeyTaken()
                cur = conn.execute(
                    "INSERT INTO calls (protocol, system, system_label, talkgroup,"
                    " talkgroup_label, talkgroup_tag, talkgroup_group, source, frequency,"
                    " start_time, stop_time, duration, emergency, audio_name, metadata, key,"
                    " content_type, size, sha256, md5, state, next_attempt_at, received_at,"
                    " uploaded_at, verified_at, cached)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                    " ?, ?, ?, 1)",
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
                        now if state == "pending" else None,
                        now,
                        None,
                        None,
                    ),
                )
                call_id = int(cur.lastrowid or 0)
                _event(conn, call_id, now, "received", event_detail)
                conn.execute("COMMIT")
                return Inserted(call_id)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        return await self._run(txn)

    # -- reads ---------------------------------------------------------------------------

    async def get_call(self, call_id: int) -> CallRow | None:
        def read(conn: sqlite3.Connection) -> CallRow | None:
            row = conn.execute(f"SELECT {_CALL_COLUMNS} FROM calls WHERE id = ?", (call_id,))
            return _row(row.fetchone())

        return await self._run(read)

    async def events(self, call_id: int) -> list[EventRow]:
        def read(conn: sqlite3.Connection) -> list[EventRow]:
            rows = conn.execute(
                "SELECT id, call_id, at, kind, detail FROM events WHERE call_id = ? ORDER BY id",
                (call_id,),
            )
            return [EventRow(**dict(r)) for r in rows]

        return await self._run(read)

    async def count_calls(self) -> int:
        def read(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM calls").fetchone()[0])

        return await self._run(read)

    async def check_writable(self) -> None:
        """Take and release the write lock: proves the journal can commit right now."""

        def probe(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")

        await self._run(probe)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of a read-only statement as dicts (for status and audit views)."""

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return [dict(r) for r in conn.execute(sql, params)]

        return await self._run(read)


def _event(conn: sqlite3.Connection, call_id: int, at: str, kind: str, detail: str | None) -> None:
    conn.execute(
        "INSERT INTO events (call_id, at, kind, detail) VALUES (?, ?, ?, ?)",
        (call_id, at, kind, detail),
    )
