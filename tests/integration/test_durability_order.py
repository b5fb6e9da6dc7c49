"""The promise, observed in order: no upload is answered 200 before its file (and the key
mark on it) is fsynced, linked under its key, its directory fsynced and its row committed.

Concurrent uploads go through the group commit together; each step is recorded as it
completes (os.fsync and os.link wrapped in the server's own process, the journal's
transaction wrapped where intake uses it, the answer where the client receives it), all into
one list whose order is the order things happened in.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

import tr_vault.intake.store
from tests.conftest import Vault
from tests.wire import fixture_bytes, rdio_trunk_recorder

M4A = fixture_bytes("call-9131-1764001234.m4a")
CALLS = 12


async def test_no_upload_is_answered_before_its_file_directory_and_row_are_durable(
    vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    log: list[tuple[str, str, int]] = []  # (step, path or name, inode); list.append is atomic
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        real_fsync(fd)
        log.append(("fsync", str(Path(f"/proc/self/fd/{fd}").readlink()), os.fstat(fd).st_ino))

    def link(src: str | Path, dst: str | Path, **kwargs: object) -> None:
        real_link(src, dst, **kwargs)  # type: ignore[arg-type]
        log.append(("link", str(dst), Path(dst).stat().st_ino))

    real_transaction = tr_vault.intake.store.transaction

    @contextmanager
    def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        with real_transaction(conn):
            yield conn
        keys = [row[0] for row in conn.execute("SELECT key FROM calls")]
        log.append(("committed", "\n".join(keys), 0))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(tr_vault.intake.store, "transaction", transaction)

    async def upload(n: int) -> None:
        parts = rdio_trunk_recorder(
            M4A + n.to_bytes(2, "big"), audio_name=f"call-{n}.m4a", date_time=str(1764001234 + n)
        )
        response = await vault.post("/api/call-upload", parts)
        assert response.status_code == 200, response.text
        log.append(("answered", f"call-{n}.m4a", 0))

    async with trio.open_nursery() as nursery:
        for n in range(CALLS):
            nursery.start_soon(upload, n)

    calls = vault.calls()
    assert len(calls) == CALLS
    commits = [i for i, (step, _, _) in enumerate(log) if step == "committed"]
    assert len(commits) < CALLS  # some uploads did share a commit
    for call in calls:
        path = vault.audio_path(call["key"])
        inode = path.stat().st_ino
        linked = next(i for i, (s, p, _) in enumerate(log) if s == "link" and p == str(path))
        data_synced = [i for i, (s, _, ino) in enumerate(log) if s == "fsync" and ino == inode]
        dir_synced = [
            i for i, (s, p, _) in enumerate(log) if s == "fsync" and p == str(path.parent)
        ]
        committed = next(i for i in commits if call["key"] in log[i][1].split("\n"))
        answered = next(
            i
            for i, (s, name, _) in enumerate(log)
            if s == "answered" and name == call["audio_name"]
        )
        assert data_synced and data_synced[0] < linked, call["key"]  # data and mark, then name
        assert any(linked < i < committed for i in dir_synced), call["key"]  # name, then row
        assert committed < answered, call["key"]  # row, then 200
