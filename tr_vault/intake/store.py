"""From a validated upload to a durable call: cache file committed, then the journal row.

The order is the promise: fsync the file, link it under its key, fsync the directory, commit
the row; only then may the caller answer 200. Uploads that arrive together share these steps
(`GroupCommit`): one hop to the journal's thread links every file of the batch (each fsynced
first), fsyncs each day directory once and commits every row in one transaction, so one WAL
fsync; each caller still answers only after the commit that holds its own row. The step runs
shielded from cancellation, so a client that hangs up mid-way still leaves a whole call (its
resend is then a duplicate).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import trio

from tr_vault.cache import AudioCache, TempAudio
from tr_vault.call import CallMeta, StoredAudio
from tr_vault.errors import JournalError
from tr_vault.forward.base import Destination
from tr_vault.forward.config import wanted_by
from tr_vault.groupcommit import GroupCommit
from tr_vault.intake.fields import safe_name
from tr_vault.journal import Journal, add_call, duplicate_of, identity, key_recorded, transaction
from tr_vault.timefmt import to_db, utc_date

log = logging.getLogger(__name__)

MAX_BATCH = 64  # uploads per group commit: more than the uploads in flight by default


@dataclass(frozen=True)
class Accepted:
    call_id: int
    key: str
    duplicate: bool


def key_candidates(meta: CallMeta, sha256: str) -> list[str]:
    """`{system}/{YYYY-MM-DD}/{file}`, then names made unique by the call's identity.

    Two recorders covering one system can send different audio under one name: the second
    gets `{stem}-{sha12}{ext}`, so nothing is ever overwritten. Equal bytes (silence, a tone)
    under one name on another talkgroup or at another second are another call: the third name,
    `{stem}-{sha12}-tg{talkgroup}-{HHMMSS}{ext}`, is the identity itself (the date is the
    folder's), so calls of one day never run out of names. The numbered ones are a last resort.
    """
    folder = f"{safe_name(meta.key_system, 'system')}/{utc_date(meta.start_time)}"
    name = PurePosixPath(meta.audio_name)
    stem, ext = name.stem, name.suffix
    tag = sha256[:12]
    second = identity(meta, sha256)[2][11:].replace(":", "")
    names = [name.name, f"{stem}-{tag}{ext}", f"{stem}-{tag}-tg{meta.talkgroup}-{second}{ext}"]
    names += [f"{stem}-{tag}-{n}{ext}" for n in range(2, 6)]
    return [f"{folder}/{n}" for n in names]


@dataclass(frozen=True)
class _Upload:
    """One upload waiting for its group commit: a closed, hashed temp file and its row."""

    meta: CallMeta
    temp: TempAudio
    candidates: list[str]
    detail: str
    destinations: tuple[str, ...]


class Intake:
    """Stores validated uploads.

    `on_stored` is awaited with each new call id after its row is committed: it wakes the
    upload workers, or (sync mode) uploads the call before the answer goes out.
    `destinations` (TR_VAULT_FORWARD_FILE) get a delivery row of each call their filters
    want, in the call's own commit.
    """

    def __init__(
        self,
        journal: Journal,
        cache: AudioCache,
        *,
        initial_state: str,
        on_stored: Callable[[int], Awaitable[object]] | None = None,
        destinations: Sequence[Destination] = (),
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.journal = journal
        self.cache = cache
        self.initial_state = initial_state
        self.on_stored = on_stored
        self.destinations = tuple(destinations)
        self.batches: GroupCommit[_Upload, Accepted] = GroupCommit(
            self._commit, max_batch=max_batch
        )

    async def store(self, meta: CallMeta, temp: TempAudio) -> Accepted:
        with trio.CancelScope(shield=True):
            accepted = await self._store(meta, temp)
        if self.on_stored is not None and not accepted.duplicate:
            try:
                await self.on_stored(accepted.call_id)
            except Exception:  # the call is committed: it is safe, and the workers retry it
                log.exception("after storing call_id=%d", accepted.call_id)
        return accepted

    async def _store(self, meta: CallMeta, temp: TempAudio) -> Accepted:
        detail = json.dumps({"protocol": meta.protocol, "notes": list(meta.notes)} if meta.notes
                            else {"protocol": meta.protocol})  # fmt: skip
        forward = wanted_by(self.destinations, meta) if self.destinations else ()
        upload = _Upload(meta, temp, key_candidates(meta, temp.sha256), detail, tuple(forward))
        try:
            temp.close()
            accepted = await self.batches.submit(upload)
        finally:
            temp.discard()  # committed or refused: the temp name has done its job
        log.info(
            "call %s id=%d system=%s talkgroup=%d bytes=%d protocol=%s key=%s",
            "duplicate" if accepted.duplicate else "received",
            accepted.call_id,
            meta.key_system,
            meta.talkgroup,
            temp.size,
            meta.protocol,
            accepted.key,
        )
        return accepted

    async def _commit(self, uploads: list[_Upload]) -> list[Accepted | BaseException]:
        at = to_db(self.journal.clock())
        return await self.journal.call(
            _commit_sync, self.cache, uploads, self.initial_state, at, self.journal.site
        )


def _commit_sync(
    conn: sqlite3.Connection,
    cache: AudioCache,
    uploads: Sequence[_Upload],
    state: str,
    at: str,
    site: str | None,
) -> list[Accepted | BaseException]:
    """One group commit, in the journal's thread: link each new call's file (fsynced first)
    and insert its row, fsync the directories once, commit once. A call that fails alone
    (its savepoint rolled back, its link removed) fails only its own caller; a failure of the
    whole (the directory fsync, the commit) removes every link and fails them all."""
    outcomes: list[Accepted | BaseException] = []
    linked: list[str] = []
    try:
        with transaction(conn):
            for upload in uploads:
                outcomes.append(_commit_one(conn, cache, upload, state, at, site, linked))
            cache.sync_directories(linked)
    except BaseException:
        for key in linked:  # no committed row points at them
            with contextlib.suppress(OSError):
                cache.remove_sync(key)
        raise
    return outcomes


def _commit_one(
    conn: sqlite3.Connection,
    cache: AudioCache,
    upload: _Upload,
    state: str,
    at: str,
    site: str | None,
    linked: list[str],
) -> Accepted | Exception:
    """One call of a group commit, under its own savepoint. A duplicate (the same audio,
    talkgroup and second as a journaled call, or as an earlier call of this batch) gets an
    event and never a file; a new call takes the first candidate key no row holds and no
    file takes (a pruned call's row keeps its name)."""
    conn.execute("SAVEPOINT upload")
    key = None
    try:
        temp = upload.temp
        dup = duplicate_of(conn, upload.meta, temp.sha256, at)
        if dup is not None:
            conn.execute("RELEASE upload")
            return Accepted(dup.call_id, dup.key, duplicate=True)
        key = cache.link_sync(temp.path, upload.candidates, taken=lambda k: key_recorded(conn, k))
        audio = StoredAudio(key=key, size=temp.size, sha256=temp.sha256, md5=temp.md5)
        call_id = add_call(
            conn, upload.meta, audio, state, at, upload.detail, site, upload.destinations
        )
        conn.execute("RELEASE upload")
    except Exception as exc:
        if key is not None:
            with contextlib.suppress(OSError):
                cache.remove_sync(key)
        conn.execute("ROLLBACK TO upload")  # raises if the error ended the transaction
        conn.execute("RELEASE upload")
        if isinstance(exc, sqlite3.Error):
            return JournalError(f"journal: {exc}")
        return exc
    linked.append(key)
    return Accepted(call_id, key, duplicate=False)
