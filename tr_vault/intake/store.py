"""From a validated upload to a durable call: cache file committed, then the journal row.

The order is the promise: fsync the file, link it under its key, fsync the directory, commit
the row; only then may the caller answer 200. The step runs shielded from cancellation, so a
client that hangs up mid-way still leaves a whole call (its resend is then a duplicate).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import trio

from tr_vault.cache import AudioCache, TempAudio
from tr_vault.call import CallMeta, StoredAudio
from tr_vault.forward.base import Destination
from tr_vault.forward.config import wanted_by
from tr_vault.intake.fields import safe_name
from tr_vault.journal import Duplicate, Inserted, Journal, KeyTaken, identity
from tr_vault.timefmt import utc_date

log = logging.getLogger(__name__)


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
    ) -> None:
        self.journal = journal
        self.cache = cache
        self.initial_state = initial_state
        self.on_stored = on_stored
        self.destinations = tuple(destinations)

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
        candidates = key_candidates(meta, temp.sha256)
        try:
            audio = await self.cache.commit(temp, candidates)
            return await self._record(meta, temp, audio, candidates)
        finally:
            temp.discard()  # committed or refused: the temp name has done its job

    async def _record(
        self, meta: CallMeta, temp: TempAudio, audio: StoredAudio, candidates: list[str]
    ) -> Accepted:
        detail = json.dumps({"protocol": meta.protocol, "notes": list(meta.notes)} if meta.notes
                            else {"protocol": meta.protocol})  # fmt: skip
        forward = wanted_by(self.destinations, meta) if self.destinations else ()
        while True:
            try:
                result = await self.journal.insert_call(
                    meta,
                    audio,
                    state=self.initial_state,
                    event_detail=detail,
                    destinations=forward,
                )
            except Exception:  # a journal error, or any other: no row points at the file
                await self.cache.remove(audio.key)
                raise
            if isinstance(result, Inserted):
                log.info(
                    "call received id=%d system=%s talkgroup=%d bytes=%d protocol=%s key=%s",
                    result.call_id,
                    meta.key_system,
                    meta.talkgroup,
                    audio.size,
                    meta.protocol,
                    audio.key,
                )
                return Accepted(result.call_id, audio.key, duplicate=False)
            if isinstance(result, Duplicate):
                await self.cache.remove(audio.key)
                log.info(
                    "call duplicate id=%d system=%s talkgroup=%d bytes=%d protocol=%s key=%s",
                    result.call_id,
                    meta.key_system,
                    meta.talkgroup,
                    audio.size,
                    meta.protocol,
                    result.key,
                )
                return Accepted(result.call_id, result.key, duplicate=True)
            assert isinstance(result, KeyTaken)
            # A row holds the name although its file is gone (pruned): take the next one.
            rest = candidates[candidates.index(audio.key) + 1 :]
            await self.cache.remove(audio.key)
            audio = await self.cache.commit(temp, rest)
