"""A call's identity: its audio's SHA-256, its talkgroup and its start time to the second.

Not the protocol and not the form of the system's name: the rdio-scanner plugin sends a call as
system `11` (label `metro`), the OpenMHz plugin as `/metro/upload`, and that is one call. Equal
bytes alone are not one call: silent or tone-only WAVs of one length are byte-equal across calls.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import wave
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Vault, VaultFactory, make_settings
from tests.wire import TR_AUDIO_NAME, fixture_bytes, openmhz, rdio_trunk_recorder
from tr_vault.call import CallMeta, StoredAudio
from tr_vault.journal import (
    Duplicate,
    Inserted,
    connect,
    insert_call,
    migrate,
    migration_files,
)

M4A = fixture_bytes("call-9131-1764001234.m4a")
SUCCESS = "Call imported successfully.\n"
T0 = 1764001234  # 2025-11-24 16:20:34 UTC


def silent_wav(seconds: float = 2.0) -> bytes:
    """What a recorder writes for a call nobody spoke on: the same bytes for every such call."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * int(8000 * seconds))
    return out.getvalue()


SILENCE = silent_wav()
SILENCE_SHA = hashlib.sha256(SILENCE).hexdigest()
M4A_SHA = hashlib.sha256(M4A).hexdigest()


def tr_name(talkgroup: int, start: int) -> str:
    """How trunk-recorder names a call's file."""
    return f"{talkgroup}-{start}_851012500.0-call_7.wav"


async def rdio(vault: Vault, audio: bytes, talkgroup: int, start: int, name: str) -> None:
    parts = rdio_trunk_recorder(
        audio, talkgroup=str(talkgroup), date_time=str(start), audio_name=name
    )
    response = await vault.post("/api/call-upload", parts)
    assert response.status_code == 200, response.text
    assert response.text == SUCCESS


def kinds(vault: Vault, call_id: int) -> list[str]:
    return [e["kind"] for e in vault.events(call_id)]


def stored_files(vault: Vault) -> list[Path]:
    return sorted(p for p in vault.settings.audio_dir.rglob("*") if p.is_file())


# -- equal bytes, different calls ----------------------------------------------------------


async def test_silent_wavs_on_two_talkgroups_and_two_times_are_three_calls(vault: Vault) -> None:
    sent = [(9131, T0), (9132, T0), (9131, T0 + 7)]
    for talkgroup, start in sent:
        await rdio(vault, SILENCE, talkgroup, start, tr_name(talkgroup, start))

    calls = vault.calls()
    assert [(c["talkgroup"], c["start_time"]) for c in calls] == [
        (9131, "2025-11-24 16:20:34.000"),
        (9132, "2025-11-24 16:20:34.000"),
        (9131, "2025-11-24 16:20:41.000"),
    ]
    assert {c["sha256"] for c in calls} == {SILENCE_SHA}
    assert [c["key"] for c in calls] == [f"metro/2025-11-24/{tr_name(*s)}" for s in sent]
    for call in calls:
        assert kinds(vault, call["id"]) == ["received"]
        assert call["duplicate_of"] is None
        assert vault.audio_path(call["key"]).read_bytes() == SILENCE
    assert len(stored_files(vault)) == 3
    assert vault.incoming() == []


async def test_equal_bytes_under_one_file_name_get_keys_of_their_own(vault: Vault) -> None:
    """A recorder that names files without talkgroup or time: the name clashes, the calls don't."""
    name = "call.wav"
    folder = "metro/2025-11-24"
    tag = SILENCE_SHA[:12]
    await rdio(vault, SILENCE, 9131, T0, name)
    await rdio(vault, SILENCE, 9132, T0, name)  # another talkgroup
    await rdio(vault, SILENCE, 9131, T0 + 7, name)  # another second
    await rdio(vault, SILENCE, 9133, T0, name)
    await rdio(vault, SILENCE, 9132, T0, name)  # a resend of the second call

    calls = vault.calls()
    assert [c["key"] for c in calls] == [
        f"{folder}/call.wav",
        f"{folder}/call-{tag}.wav",
        f"{folder}/call-{tag}-tg9131-162041.wav",
        f"{folder}/call-{tag}-tg9133-162034.wav",
    ]
    assert kinds(vault, calls[1]["id"]) == ["received", "duplicate"]
    for call in calls:
        assert vault.audio_path(call["key"]).read_bytes() == SILENCE
    assert len(stored_files(vault)) == 4
    assert vault.incoming() == []


async def test_a_day_of_silent_calls_under_one_name_never_runs_out_of_keys(vault: Vault) -> None:
    # More calls than the six names the key scheme had before the identity-derived one.
    for talkgroup in range(100, 110):
        await rdio(vault, SILENCE, talkgroup, T0, "call.wav")
    calls = vault.calls()
    assert len(calls) == 10
    assert len({c["key"] for c in calls}) == 10
    assert len(stored_files(vault)) == 10


# -- one call, whatever route it came by ------------------------------------------------------


@pytest.mark.parametrize(
    "rdio_first", [True, False], ids=["rdio-then-openmhz", "openmhz-then-rdio"]
)
async def test_the_same_recording_through_both_plugins_is_one_call(
    vault: Vault, rdio_first: bool
) -> None:
    async def via_rdio() -> None:
        await rdio(vault, M4A, 9131, T0, TR_AUDIO_NAME)

    async def via_openmhz() -> None:
        response = await vault.post("/metro/upload", openmhz(M4A, filename=TR_AUDIO_NAME))
        assert response.status_code == 200
        assert response.text == ""

    first, second = (via_rdio, via_openmhz) if rdio_first else (via_openmhz, via_rdio)
    await first()
    await second()

    [call] = vault.calls()
    assert call["protocol"] == ("rdio" if rdio_first else "openmhz")
    assert call["key"] == f"metro/2025-11-24/{TR_AUDIO_NAME}"
    received, duplicate = vault.events(call["id"])
    assert (received["kind"], duplicate["kind"]) == ("received", "duplicate")
    expected = (
        {"protocol": "openmhz", "system": "metro"}
        if rdio_first
        else {"protocol": "rdio", "system": "11"}
    )
    assert json.loads(duplicate["detail"]) == {**expected, "audio_name": TR_AUDIO_NAME}
    assert stored_files(vault) == [vault.audio_path(call["key"])]
    assert vault.audio_path(call["key"]).read_bytes() == M4A
    assert vault.incoming() == []


async def test_a_plain_resend_is_one_call(vault: Vault) -> None:
    for _ in range(3):
        await rdio(vault, SILENCE, 9131, T0, tr_name(9131, T0))
    for _ in range(2):
        response = await vault.post("/metro/upload", openmhz(M4A))
        assert response.status_code == 200
    silent, spoken = vault.calls()
    assert kinds(vault, silent["id"]) == ["received", "duplicate", "duplicate"]
    assert kinds(vault, spoken["id"]) == ["received", "duplicate"]
    assert len(stored_files(vault)) == 2


async def test_identity_is_the_start_second_not_the_millisecond(vault: Vault) -> None:
    # SDRTrunk and scripts may send milliseconds; the OpenMHz plugin sends whole seconds.
    parts = rdio_trunk_recorder(M4A, date_time="2025-11-24T16:20:34.750Z")
    assert (await vault.post("/api/call-upload", parts)).status_code == 200
    assert (await vault.post("/metro/upload", openmhz(M4A))).status_code == 200
    [call] = vault.calls()
    assert call["start_time"] == "2025-11-24 16:20:34.750"
    assert kinds(vault, call["id"]) == ["received", "duplicate"]


async def test_equal_audio_talkgroup_and_second_on_another_system_is_the_same_call(
    vault: Vault,
) -> None:
    """The rule names no system (see the README): the names of one system differ by route."""
    await rdio(vault, M4A, 9131, T0, TR_AUDIO_NAME)
    other = rdio_trunk_recorder(M4A, key="other-key", system="99", system_label="")
    assert (await vault.post("/api/call-upload", other)).status_code == 200
    [call] = vault.calls()
    [_, duplicate] = vault.events(call["id"])
    assert json.loads(duplicate["detail"])["system"] == "99"


# -- migration 0003 over a journal of the old schema -----------------------------------------

OLD_ROW = (
    "INSERT INTO calls (id, protocol, system, system_label, talkgroup, start_time, audio_name,"
    " metadata, key, content_type, size, sha256, md5, state, attempts, next_attempt_at,"
    " claimed_by, claimed_at, claim_expires_at, received_at, uploaded_at, etag, verified_at,"
    " cached, pruned_at)"
    " VALUES (:id, :protocol, :system, :label, :tg, :start, :name, '{\"x\":1}', :key,"
    " 'audio/mp4', 100, :sha, 'md5', :state, :attempts, :due, :claimed_by, :claimed_at,"
    " :expires, '2025-11-24 16:21:00.000', :uploaded, :etag, :uploaded, :cached, :pruned)"
)


def old_row(id: int, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": id, "protocol": "rdio", "system": "11", "label": "metro", "tg": 9131,
        "start": "2025-11-24 16:20:34.000", "name": f"{id}.m4a", "key": f"metro/2025-11-24/{id}.m4a",
        "sha": M4A_SHA, "state": "done", "attempts": 1, "due": None, "claimed_by": None,
        "claimed_at": None, "expires": None, "uploaded": "2025-11-24 16:22:00.000",
        "etag": '"e"', "cached": 1, "pruned": None,
    }  # fmt: skip
    row.update(values)
    return row


OLD_ROWS = [
    old_row(1),
    # The same call, sent again through the OpenMHz plugin (a millisecond later, too).
    old_row(2, protocol="openmhz", system="metro", label=None, start="2025-11-24 16:20:34.500",
            key=f"metro/2025-11-24/1-{M4A_SHA[:12]}.m4a"),
    # Equal bytes on the same talkgroup and second, on a system of its own.
    old_row(3, system="12", label=None, key="12/2025-11-24/3.m4a", state="pending", attempts=0,
            due="2025-11-24 16:21:00.000", claimed_by="run:w1", claimed_at="2025-11-24 16:21:01.000",
            expires="2025-11-24 16:23:01.000", uploaded=None, etag=None),
    old_row(4, system="13", tg=9132, key="13/2025-11-24/4.m4a"),  # same bytes, other talkgroup
    old_row(5, sha="b" * 64, key="metro/2025-11-24/5.m4a", cached=0,
            pruned="2025-12-24 16:22:00.000"),
    old_row(6, sha="c" * 64, key="metro/2025-11-24/6.m4a", state="failed", attempts=10,
            start="2025-11-24 16:20:35.000"),
]  # fmt: skip


def old_journal(db: Path, tmp_path: Path) -> sqlite3.Connection:
    """A journal of the schema before 0003 (migrations 0001 and 0002 only), with calls."""
    old = tmp_path / "old-migrations"
    old.mkdir()
    for number, path in migration_files():
        if number <= 2:
            (old / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    conn = connect(db)
    assert migrate(conn, old) == [1, 2]
    conn.execute("BEGIN")
    for row in OLD_ROWS:
        conn.execute(OLD_ROW, row)
        for kind in ("received", "upload_ok", "verified"):
            conn.execute(
                "INSERT INTO events (call_id, at, kind, detail) VALUES (?, ?, ?, ?)",
                (row["id"], "2025-11-24 16:21:00.000", kind, json.dumps({"n": row["id"]})),
            )
    conn.execute("COMMIT")
    return conn


def everything(conn: sqlite3.Connection, table: str) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY id")]


def test_migration_0003_keeps_every_row_id_and_event(tmp_path: Path) -> None:
    conn = old_journal(tmp_path / "vault.db", tmp_path)
    calls_before = everything(conn, "calls")
    events_before = everything(conn, "events")
    assert "duplicate_of" not in calls_before[0]

    assert migrate(conn) == [n for n, _ in migration_files() if n > 2]

    calls_after = everything(conn, "calls")
    # 0003; 0004 and 0005 (NULL: as before)
    added_later = ("duplicate_of", "bucket", "object_key", "site", "rebuilt", "checked_at")
    assert [{k: v for k, v in c.items() if k not in added_later} for c in calls_after] == (
        calls_before
    )
    assert all(c["bucket"] is None and c["object_key"] is None for c in calls_after)
    assert {c["id"]: c["duplicate_of"] for c in calls_after} == {
        1: None, 2: 1, 3: 1, 4: None, 5: None, 6: None
    }  # fmt: skip
    events_after = everything(conn, "events")
    assert events_after[: len(events_before)] == events_before
    added = [
        (e["call_id"], e["kind"], json.loads(e["detail"]))
        for e in events_after[len(events_before) :]
    ]
    assert [(call_id, kind) for call_id, kind, _ in added] == [
        (2, "duplicate_of"), (3, "duplicate_of"), (1, "duplicate"), (1, "duplicate")
    ]  # fmt: skip
    assert added[0][2]["call_id"] == 1
    assert added[2][2] == {
        "protocol": "openmhz", "system": "metro", "audio_name": "2.m4a", "call_id": 2,
        "by": "migration 0003",
    }  # fmt: skip

    indexes = {
        r["name"]: r["sql"]
        for r in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'")
    }
    assert "substr(start_time, 1, 19)" in indexes["calls_identity"]
    assert indexes["calls_identity"].startswith("CREATE UNIQUE INDEX")
    for name in ("calls_due", "calls_prunable", "calls_state_size", "calls_system_start",
                 "calls_talkgroup_start", "calls_received", "calls_claimed", "events_call",
                 "events_kind_at"):  # fmt: skip
        assert name in indexes
    # UNIQUE (system, sha256) is gone; UNIQUE (key) stays.
    unique = [
        [c["name"] for c in conn.execute(f"PRAGMA index_info('{i['name']}')")]
        for i in conn.execute("PRAGMA index_list('calls')")
        if i["unique"] and i["origin"] == "u"
    ]
    assert unique == [["key"]]
    triggers = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
    assert triggers == {
        "events_no_update",
        "events_no_delete",
        "call_counts_insert",  # 0009
        "call_counts_delete",
        "call_counts_update",
    }
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("SELECT name FROM sqlite_temp_master").fetchall() == []
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM events")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO events (call_id, at, kind) VALUES (99, 'x', 'x')")

    assert migrate(conn) == []
    conn.close()


def meta(talkgroup: int, start: float, system: str = "metro") -> CallMeta:
    return CallMeta(
        protocol="openmhz", system=system, system_label=None, talkgroup=talkgroup,
        start_time=start, audio_name="n.m4a", content_type="audio/mp4",
    )  # fmt: skip


def test_after_0003_the_first_row_of_a_merged_identity_answers_for_it(tmp_path: Path) -> None:
    conn = old_journal(tmp_path / "vault.db", tmp_path)
    migrate(conn)
    now = T0 + 3600.0

    def insert(talkgroup: int, start: float, sha: str, key: str) -> object:
        audio = StoredAudio(key=key, size=100, sha256=sha, md5="md5")
        return insert_call(conn, meta(talkgroup, start), audio, "pending", now, None)

    assert insert(9131, T0 + 0.9, M4A_SHA, "metro/2025-11-24/new.m4a") == Duplicate(
        1, "metro/2025-11-24/1.m4a"
    )
    assert insert(9132, T0, M4A_SHA, "metro/2025-11-24/new.m4a") == Duplicate(
        4, "13/2025-11-24/4.m4a"
    )
    new = insert(9131, T0 + 1, M4A_SHA, "metro/2025-11-24/new.m4a")
    assert isinstance(new, Inserted)
    assert new.call_id == 7
    # The unique index itself refuses a second row of one identity.
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        conn.execute(
            "INSERT INTO calls (protocol, system, talkgroup, start_time, audio_name, metadata,"
            " key, content_type, size, sha256, md5, state, received_at) VALUES ('rdio', '77',"
            " 9131, '2025-11-24 16:20:35.250', 'n', '{}', 'k', 'audio/mp4', 1, ?, 'm', 'done',"
            " '2025-11-24 16:20:35.250')",
            (M4A_SHA,),
        )
    plan = " ".join(
        r[3]
        for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT id, key FROM calls WHERE sha256 = ? AND talkgroup = ?"
            " AND substr(start_time, 1, 19) = ? AND duplicate_of IS NULL",
            (M4A_SHA, 9131, "2025-11-24 16:20:34"),
        )
    )
    assert "calls_identity" in plan
    conn.close()


def test_0003_on_a_fresh_journal(tmp_path: Path) -> None:
    conn = connect(tmp_path / "vault.db")
    assert migrate(conn) == [n for n, _ in migration_files()]
    assert conn.execute("SELECT count(*) FROM calls").fetchone()[0] == 0
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


async def test_a_server_on_an_old_journal_migrates_it_and_dedups_against_it(
    tmp_path: Path, make_vault: VaultFactory
) -> None:
    settings = make_settings(tmp_path)
    old_journal(settings.db_path, tmp_path).close()

    vault = await make_vault()
    assert [(c["id"], c["duplicate_of"]) for c in vault.calls()] == [
        (1, None), (2, 1), (3, 1), (4, None), (5, None), (6, None)
    ]  # fmt: skip
    # Rows 1-3 are one identity now: a resend of that call, by either plugin, is row 1's.
    await rdio(vault, M4A, 9131, T0, TR_AUDIO_NAME)
    assert (await vault.post("/metro/upload", openmhz(M4A))).status_code == 200
    assert len(vault.calls()) == 6
    assert kinds(vault, 1)[-2:] == ["duplicate", "duplicate"]
    assert kinds(vault, 2)[-1] == "duplicate_of"
    assert kinds(vault, 3)[-1] == "duplicate_of"
    # The same bytes a second later are a call of their own.
    await rdio(vault, M4A, 9131, T0 + 1, tr_name(9131, T0 + 1))
    assert len(vault.calls()) == 7
    assert vault.incoming() == []
