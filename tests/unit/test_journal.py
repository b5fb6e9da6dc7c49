"""The journal's schema: migrations apply once, pragmas hold, events are append-only."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tr_vault import journal
from tr_vault.errors import JournalError
from tr_vault.journal import Journal, connect, migrate, migration_files


def test_migrations_apply_in_order_and_a_second_run_does_nothing(tmp_path: Path) -> None:
    conn = connect(tmp_path / "vault.db")
    applied = migrate(conn)
    assert applied == [n for n, _ in migration_files()]
    assert applied[0] == 1
    assert migrate(conn) == []
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert versions == applied
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_events_are_append_only(tmp_path: Path) -> None:
    conn = connect(tmp_path / "vault.db")
    migrate(conn)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO events (call_id, at, kind) VALUES (42, '2026-01-01 00:00:00.000', 'x')"
        )  # no such call: foreign keys are on
    conn.execute(
        "INSERT INTO calls (protocol, system, talkgroup, start_time, audio_name, metadata, key,"
        " content_type, size, sha256, md5, state, received_at) VALUES ('rdio', '1', 1,"
        " '2026-01-01 00:00:00.000', 'a.m4a', '{}', '1/2026-01-01/a.m4a', 'audio/mp4', 1, 's',"
        " 'm', 'done', '2026-01-01 00:00:00.000')"
    )
    conn.execute(
        "INSERT INTO events (call_id, at, kind) VALUES (1, '2026-01-01 00:00:00.000', 'x')"
    )
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE events SET kind = 'y'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM events")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE calls SET state = 'gone'")


def test_migrate_without_any_migration_is_an_error_not_an_empty_schema(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "__init__.py").write_text("")  # a package that shipped no .sql
    conn = connect(tmp_path / "vault.db")
    with pytest.raises(JournalError, match="install is broken"):
        migrate(conn, tmp_path / "migrations")
    with pytest.raises(JournalError, match="install is broken"):
        migrate(conn, tmp_path / "absent")
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []


async def test_opening_a_journal_without_migrations_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(journal, "packaged_migrations", lambda: tmp_path / "empty")
    with pytest.raises(JournalError, match="install is broken"):
        await Journal.open(tmp_path / "vault.db")


def test_the_packaged_migrations_are_the_repo_migrations() -> None:
    """What `migrate` applies by default is every file of the top-level migrations/."""
    repo = Path(__file__).resolve().parents[2] / "migrations"
    names = [path.name for _, path in migration_files()]
    assert names == sorted(p.name for p in repo.glob("*.sql"))
    assert names


def test_two_migrations_with_one_number_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (x);\n")
    (tmp_path / "0001_b.sql").write_text("CREATE TABLE b (x);\n")
    with pytest.raises(JournalError, match="share the number 0001"):
        migration_files(tmp_path)
