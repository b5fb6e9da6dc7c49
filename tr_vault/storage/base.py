"""A place to put bytes: the one small protocol the uploader, pruner and playback depend on.

Backends (`s3.py`, `local.py`) translate their own failures into the `StorageError` tree of
`tr_vault.errors`; nothing above `storage/` sees an httpx exception.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class PutResult:
    etag: str | None


def audio_object_key(key: str) -> str:
    """The object key of a call's audio, relative to the store's prefix."""
    return f"audio/{key}"


class ObjectStore(Protocol):
    """Object storage as tr_vault uses it. Keys are relative to the store's own prefix."""

    async def check(self) -> None:
        """Prove the store is usable (S3: HeadBucket).

        Raises `StoragePermanent` for bad credentials or a missing bucket, and
        `StorageUnavailable` when the store cannot be reached.
        """
        ...

    async def put_file(
        self,
        key: str,
        path: Path,
        *,
        size: int,
        md5_hex: str,
        sha256_hex: str,
        content_type: str,
    ) -> PutResult:
        """Upload the file at `path`, streamed, with integrity headers the store checks.

        `size` bytes are sent with an explicit Content-Length and Content-MD5; the SHA-256 is
        stored as object metadata so a later HEAD can verify it.
        """
        ...

    async def head(self, key: str) -> ObjectInfo:
        """The object's size and metadata.

        Raises `ObjectNotFound` only on a clear 404 for the key; `StorageUnavailable` for
        anything it cannot decide (network, timeouts, 5xx); `StoragePermanent` for 403 and such.
        """
        ...

    async def get(self, key: str) -> bytes:
        """The whole object (for verification and small reads)."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""
        ...

    def presign_get(
        self,
        key: str,
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
