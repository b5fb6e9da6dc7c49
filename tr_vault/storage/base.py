"""A place to put bytes: the one small protocol the uploader, pruner and playback depend on.

Backends (`s3.py`, `local.py`) translate their own failures into the `StorageError` tree of
`tr_vault.errors`; nothing above `storage/` sees an httpx exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD tells about an object."""

    key: str
    size: int
    etag: str | None
    sha256: str | None  # our `x-amz-meta-sha256` metadata, when the object carries it
    content_type: str | None
    # Every user metadata item (S3: `x-amz-meta-{name}`), names lower-case, values as stored
    # (tr_vault's are ASCII, percent-encoded: see `tr_vault.objectmeta`).
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ObjectRef:
    """An object addressed absolutely: its bucket and its full key (prefix included).

    What a call's row records once its upload is verified, so that a later change of
    `S3_PREFIX` or `S3_BUCKET` does not move the calls already stored. An empty `bucket`
    means the store's own. The store methods take a `str` key (relative to the store's
    prefix, as always) or an `ObjectRef`.
    """

    bucket: str
    key: str


Key = str | ObjectRef


@dataclass(frozen=True)
class PutResult:
    etag: str | None


LIST_PAGE = 1000  # keys per listing page: S3's own maximum for ListObjectsV2


@dataclass(frozen=True)
class ListedObject:
    """One entry of a listing: what a LIST tells without a HEAD (no metadata).

    `key` is relative to the store's prefix, like every `str` key (`locate(key)` gives the
    bucket and full key); `last_modified` is Unix seconds, None when the store does not say.
    """

    key: str
    size: int
    etag: str | None
    last_modified: float | None


def audio_object_key(key: str, site: str | None = None) -> str:
    """The object key of a call's audio, relative to the store's prefix: `audio/{key}`, or
    `audio/{site}/{key}` with a site segment (TR_VAULT_SITE set explicitly)."""
    return f"audio/{site}/{key}" if site else f"audio/{key}"


def call_object(key: str, bucket: str | None, object_key: str | None) -> Key:
    """Where a call's object is: the bucket and full key its row recorded at verification,
    else (rows uploaded before migration 0004) `audio/{key}` under today's prefix."""
    if object_key:
        return ObjectRef(bucket or "", object_key)
    return audio_object_key(key)


class ObjectStore(Protocol):
    """Object storage as tr_vault uses it. A `str` key is relative to the store's own prefix;
    an `ObjectRef` names a bucket and full key (see `locate`)."""

    def locate(self, key: str) -> ObjectRef:
        """Where `key` (relative to the prefix) is in the store today: bucket and full key."""
        ...

    async def check(self) -> None:
        """Prove the store is usable (S3: HeadBucket).

        Raises `StoragePermanent` for bad credentials or a missing bucket, and
        `StorageUnavailable` when the store cannot be reached.
        """
        ...

    async def put_file(
        self,
        key: Key,
        path: Path,
        *,
        size: int,
        md5_hex: str,
        sha256_hex: str,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
    ) -> PutResult:
        """Upload the file at `path`, streamed, with integrity headers the store checks.

        `size` bytes are sent with an explicit Content-Length and Content-MD5; the SHA-256 is
        stored as object metadata so a later HEAD can verify it, beside `metadata` (ASCII
        names and values; S3: `x-amz-meta-{name}`). With `if_absent` the PUT never replaces
        an object: when the key exists it raises `ObjectExists` (S3: `If-None-Match: *`, or
        a HEAD before the PUT where the store does not honour the condition).
        """
        ...

    async def head(self, key: Key) -> ObjectInfo:
        """The object's size and metadata.

        Raises `ObjectNotFound` only on a clear 404 for the key; `StorageUnavailable` for
        anything it cannot decide (network, timeouts, 5xx); `StoragePermanent` for 403 and such.
        """
        ...

    async def get(self, key: Key) -> bytes:
        """The whole object (for verification and small reads)."""
        ...

    def open_stream(self, key: Key) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """The object's bytes in chunks, never whole in memory (the relay forwards pruned
        calls from here). Raises like `head` on entry; `StorageUnavailable` while reading."""
        ...

    def list_objects(
        self,
        prefix: str,
        *,
        max_keys: int = LIST_PAGE,
        on_page: Callable[[int], None] | None = None,
    ) -> AsyncIterator[ListedObject]:
        """Every object whose key (relative to the store's prefix) starts with `prefix`, in
        key order, fetched `max_keys` at a time; `on_page(n)` after each page of `n` entries
        (a request, for S3).

        Only `tr-vault rebuild --from-bucket` lists: the loops read the journal, never the
        bucket (invariant 4). Raises like `head`, `StorageUnavailable` for what it cannot decide.
        """
        ...

    async def delete(self, key: Key) -> None:
        """Remove the object; deleting a missing key is not an error."""
        ...

    def presign_get(
        self,
        key: Key,
        *,
        expires_in: float,
        content_type: str | None = None,
        filename: str | None = None,
    ) -> str:
        """A URL that GETs the object without credentials until it expires (no request made).

        `content_type` and `filename` become `response-content-type` and an inline
        `response-content-disposition`.
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
