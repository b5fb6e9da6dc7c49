"""A call's audio for a sender: the cached file, else the object in S3, streamed either way.

Opened before the send so that the source is settled up front: an open cached file survives
the pruner or S3-only eviction removing its name mid-send. Nothing is read whole into memory.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import PurePosixPath
from typing import BinaryIO

import trio

from tr_vault.audio_types import stored_type
from tr_vault.cache import AudioCache
from tr_vault.call import CallRow
from tr_vault.storage.base import Key, ObjectStore, call_object

CHUNK_SIZE = 256 * 1024


class AudioGone(Exception):
    """Neither a cached copy nor an object in the store: nothing to forward, ever."""


class CachedAudio:
    """The cached file, held open; every `chunks()` reads it from the start."""

    def __init__(self, call: CallRow, f: BinaryIO, link: str | None) -> None:
        self.size = call.size
        self.content_type = stored_type(call.content_type, call.key)
        self.filename = PurePosixPath(call.key).name
        self.link = link
        self._file = f

    async def chunks(self) -> AsyncIterator[bytes]:
        await trio.to_thread.run_sync(self._file.seek, 0)
        while chunk := await trio.to_thread.run_sync(self._file.read, CHUNK_SIZE):
            yield chunk

    def close(self) -> None:
        self._file.close()


class StoredAudio:
    """The object in the store; every `chunks()` is a new streamed GET."""

    def __init__(self, call: CallRow, store: ObjectStore, key: Key, link: str | None) -> None:
        self.size = call.size
        self.content_type = stored_type(call.content_type, call.key)
        self.filename = PurePosixPath(call.key).name
        self.link = link
        self._store = store
        self._key = key

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        async with self._store.open_stream(self._key) as body:
            async for chunk in body:
                yield chunk

    def close(self) -> None:
        """Nothing held between sends."""


ForwardAudio = CachedAudio | StoredAudio


async def open_audio(
    call: CallRow,
    cache: AudioCache,
    store: ObjectStore | None,
    *,
    presign_expiry: float,
    public_url: str,
) -> ForwardAudio:
    """The call's audio, with a link to it for senders that pass links (webhooks): presigned
    when the object is in the store, else tr_vault's own audio URL (with `public_url`)."""
    in_store = store is not None and call.state == "done" and call.verified_at is not None
    link = None
    if in_store:
        assert store is not None
        key = call_object(call.key, call.bucket, call.object_key)
        link = store.presign_get(
            key,
            expires_in=presign_expiry,
            content_type=stored_type(call.content_type, call.key),
            filename=PurePosixPath(call.key).name,
        )
    elif public_url:
        link = f"{public_url.rstrip('/')}/api/calls/{call.id}/audio"
    if call.cached:
        try:
            f = await trio.to_thread.run_sync(cache.path(call.key).open, "rb")
        except FileNotFoundError:
            pass  # evicted since the row was read: the store has it, if anyone
        else:
            return CachedAudio(call, f, link)
    if in_store:
        assert store is not None
        return StoredAudio(call, store, call_object(call.key, call.bucket, call.object_key), link)
    raise AudioGone(
        f"call {call.id}: no cached copy of {call.key} and no verified object in the store"
    )
