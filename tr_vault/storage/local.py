"""Object storage in a local directory, like Litestream's file replica.

Used by the loop tests and the store contract suite, and usable as an archive on a second disk
or a network mount. Each object is a file at `root/prefix/key`; its metadata (size, MD5,
SHA-256, content type) lives in a JSON sidecar next to it, so `head` answers like S3's HEAD.
Writes are atomic (temp file, fsync, rename, directory fsync); blocking I/O runs in threads.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import trio

from tr_vault.durable import fsync_path
from tr_vault.errors import (
    ConfigError,
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StoragePermanent,
    StorageUnavailable,
    VerificationError,
)
from tr_vault.storage.base import (
    LIST_PAGE,
    Key,
    ListedObject,
    ObjectInfo,
    ObjectRef,
    ObjectStore,
    PutResult,
)

SIDECAR_SUFFIX = ".tr-vault.json"
TEMP_PREFIX = ".tr-vault-tmp-"
CHUNK_SIZE = 1024 * 1024

T = TypeVar("T")


def _write_atomic(target: Path, write: Callable[[Any], None], *, exclusive: bool = False) -> None:
    """Write through `write(file)` into a temp file beside `target`, fsync, rename over it.

    With `exclusive`, the temp file is hard-linked to `target` instead, which fails with
    `FileExistsError` when `target` exists: nothing is ever replaced.
    """
    temp = target.with_name(f"{TEMP_PREFIX}{secrets.token_hex(6)}-{target.name}")
    try:
        with open(temp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(temp, target)
            temp.unlink()
        else:
            temp.replace(target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


class FileStore:
    """A directory that behaves like a bucket: atomic puts, HEAD with our metadata.

    Like S3 with Content-MD5, a put whose bytes do not match the given size and digests is
    refused (`VerificationError`, code `BadDigest`) and leaves nothing behind.
    """

    def __init__(
        self, root: Path, *, prefix: str = "", limiter: trio.CapacityLimiter | None = None
    ) -> None:
        self.root = Path(root)
        self.prefix = prefix.strip("/")
        if self.prefix and any(p in ("", ".", "..") for p in self.prefix.split("/")):
            raise ConfigError(f"prefix {prefix!r} has an empty, '.' or '..' segment")
        self._limiter = limiter

    def __repr__(self) -> str:
        return f"FileStore(root={str(self.root)!r}, prefix={self.prefix!r})"

    def locate(self, key: str) -> ObjectRef:
        """The full key under the root (a directory has no bucket name: it stays empty)."""
        return ObjectRef("", self.object_key(key))

    def object_key(self, key: Key) -> str:
        """The full key under the root: `prefix/key`, or `key` without a prefix; an
        `ObjectRef`'s key as it is (its bucket must be empty: one directory, one bucket)."""
        full = isinstance(key, ObjectRef)
        if isinstance(key, ObjectRef):
            if key.bucket:
                raise StoragePermanent(f"{key.bucket}/{key.key}: a file store has no buckets")
            key = key.key
        parts = key.split("/")
        if (
            not key
            or any(p in ("", ".", "..") or p.startswith(TEMP_PREFIX) for p in parts)
            or key.endswith(SIDECAR_SUFFIX)
        ):
            raise StoragePermanent(f"invalid object key {key!r}")
        if full:
            return key
        return f"{self.prefix}/{key}" if self.prefix else key

    def path_for(self, key: Key) -> Path:
        """Where the object's bytes live (for tests and operators)."""
        return self.root.joinpath(*PurePosixPath(self.object_key(key)).parts)

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(path.name + SIDECAR_SUFFIX)

    async def _run(self, what: str, fn: Callable[[], T]) -> T:
        """Run blocking I/O in a thread; OS errors become `StorageError`s naming `what`."""
        try:
            return await trio.to_thread.run_sync(fn, limiter=self._limiter)
        except StorageError:
            raise
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"{what}: not found", code="NoSuchKey", status=404) from exc
        except PermissionError as exc:
            raise StorageUnavailable(f"{what}: {exc}", code="AccessDenied") from exc
        except OSError as exc:
            raise StorageUnavailable(f"{what}: {exc}") from exc

    async def check(self) -> None:
        """The root exists (created if need be) and is a writable directory."""

        def check_sync() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise StorageUnavailable(f"check {self.root}: directory is not writable")

        try:
            await self._run(f"check {self.root}", check_sync)
        except ObjectNotFound as exc:  # a parent vanished while creating: not a clear 404
            raise StorageUnavailable(str(exc)) from exc

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
        """Copy the file in atomically, refusing bytes that do not match size and digests.

        `metadata` goes into the sidecar; with `if_absent` an existing object is never
        replaced (`ObjectExists`).
        """
        what = f"put {self.object_key(key)}"
        target = self.path_for(key)
        user_meta = {name.lower(): value for name, value in (metadata or {}).items()}
        user_meta["sha256"] = sha256_hex.lower()

        def put_sync() -> str:
            md5, sha256 = hashlib.md5(), hashlib.sha256()
            copied = 0

            def copy(out: Any) -> None:
                nonlocal copied
                with open(path, "rb") as src:
                    while copied < size:
                        chunk = src.read(min(CHUNK_SIZE, size - copied))
                        if not chunk:
                            break
                        md5.update(chunk)
                        sha256.update(chunk)
                        out.write(chunk)
                        copied += len(chunk)
                if copied != size:
                    raise StoragePermanent(f"{what}: {path} has {copied} bytes, expected {size}")
                if md5.hexdigest() != md5_hex.lower() or sha256.hexdigest() != sha256_hex.lower():
                    raise VerificationError(
                        f"{what}: BadDigest: the bytes read do not match the given MD5/SHA-256",
                        code="BadDigest",
                        status=400,
                    )

            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                _write_atomic(target, copy, exclusive=if_absent)
            except FileExistsError:
                raise ObjectExists(
                    f"{what}: an object is already at this key", code="PreconditionFailed"
                ) from None
            meta = {
                "size": size,
                "md5": md5.hexdigest(),
                "sha256": sha256.hexdigest(),
                "content_type": content_type,
                "metadata": user_meta,
            }
            _write_atomic(self._sidecar(target), lambda f: f.write(json.dumps(meta).encode()))
            fsync_path(target.parent)
            return md5.hexdigest()

        try:
            etag = await self._run(what, put_sync)
        except ObjectNotFound as exc:  # the source file is gone: a local problem, not a 404
            raise FileNotFoundError(f"{what}: cannot read {path}") from exc
        return PutResult(etag=etag)

    async def head(self, key: Key) -> ObjectInfo:
        """Size from the file itself; ETag, SHA-256 and type from the sidecar when it agrees."""
        target = self.path_for(key)

        def head_sync() -> ObjectInfo:
            size = target.stat().st_size
            try:
                meta = json.loads(self._sidecar(target).read_text())
            except (FileNotFoundError, ValueError):
                meta = {}
            if not isinstance(meta, dict) or meta.get("size") != size:
                meta = {}  # a stale or torn sidecar proves nothing about these bytes
            user_meta = meta.get("metadata")
            return ObjectInfo(
                key=key if isinstance(key, str) else key.key,
                size=size,
                etag=meta.get("md5"),
                sha256=meta.get("sha256"),
                content_type=meta.get("content_type"),
                metadata=dict(user_meta) if isinstance(user_meta, dict) else {},
            )

        return await self._run(f"head {self.object_key(key)}", head_sync)

    async def get(self, key: Key) -> bytes:
        return await self._run(f"get {self.object_key(key)}", self.path_for(key).read_bytes)

    @asynccontextmanager
    async def open_stream(self, key: Key) -> AsyncGenerator[AsyncIterator[bytes], None]:
        """The object's file, read in chunks off the event loop."""
        what = f"get {self.object_key(key)}"
        path = self.path_for(key)

        def open_file() -> BinaryIO:
            return path.open("rb")

        f = await self._run(what, open_file)

        async def chunks() -> AsyncGenerator[bytes, None]:
            while chunk := await self._run(what, partial(f.read, CHUNK_SIZE)):
                yield chunk

        try:
            yield chunks()
        finally:
            f.close()

    async def list_objects(
        self,
        prefix: str,
        *,
        max_keys: int = LIST_PAGE,
        on_page: Callable[[int], None] | None = None,
    ) -> AsyncIterator[ListedObject]:
        """The files under `root/prefix` whose key starts with `prefix`, in key order (sidecars
        and temp files are not objects); one thread hop for the walk, one per page of stats."""
        top = self.root.joinpath(*PurePosixPath(self.prefix).parts) if self.prefix else self.root
        folder = prefix.rpartition("/")[0]
        start = top.joinpath(*PurePosixPath(folder).parts) if folder else top

        def walk() -> list[str]:
            keys = []
            for parent, _dirs, names in os.walk(start):
                for name in names:
                    if name.endswith(SIDECAR_SUFFIX) or name.startswith(TEMP_PREFIX):
                        continue
                    key = (Path(parent) / name).relative_to(top).as_posix()
                    if key.startswith(prefix):
                        keys.append(key)
            return sorted(keys)

        def stat_page(keys: list[str]) -> list[ListedObject]:
            page = []
            for key in keys:
                path = top.joinpath(*PurePosixPath(key).parts)
                try:
                    st = path.stat()
                except FileNotFoundError:  # deleted since the walk, as a LIST would not show it
                    continue
                try:
                    meta = json.loads(self._sidecar(path).read_text())
                except (FileNotFoundError, ValueError):
                    meta = {}
                fresh = isinstance(meta, dict) and meta.get("size") == st.st_size
                etag = meta.get("md5") if fresh else None
                page.append(ListedObject(key, st.st_size, etag, st.st_mtime))
            return page

        keys = await self._run(f"list {prefix}", walk)
        step = max(1, min(LIST_PAGE, max_keys))
        for at in range(0, max(1, len(keys)), step):  # an empty listing is one empty page
            page = await self._run(f"list {prefix}", partial(stat_page, keys[at : at + step]))
            if on_page is not None:
                on_page(len(page))
            for entry in page:
                yield entry

    async def delete(self, key: Key) -> None:
        target = self.path_for(key)

        def delete_sync() -> None:
            target.unlink(missing_ok=True)
            self._sidecar(target).unlink(missing_ok=True)
            if target.parent.exists():
                fsync_path(target.parent)

        await self._run(f"delete {self.object_key(key)}", delete_sync)

    def presign_get(
        self,
        key: Key,
        *,
        expires_in: float,
        content_type: str | None = None,
        filename: str | None = None,
    ) -> str:
        """A `file://` URL: a directory has no signatures, expiry or response headers."""
        return self.path_for(key).absolute().as_uri()

    async def aclose(self) -> None:
        """Nothing to release."""

    async def __aenter__(self) -> FileStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


if TYPE_CHECKING:
    _: type[ObjectStore] = FileStore  # mypy checks the backend against the protocol
