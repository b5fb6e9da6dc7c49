"""An in-memory ObjectStore fake for testing the loops' logic (never our S3 client)."""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from tr_vault.errors import ObjectExists, ObjectNotFound, StorageError
from tr_vault.storage.base import LIST_PAGE, Key, ListedObject, ObjectInfo, ObjectRef, PutResult


@dataclass
class Stored:
    data: bytes
    sha256: str
    content_type: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class MemoryStore:
    """Objects in a dict.

    `faults` is a queue of errors the next operations raise (the store probe's PUT and HEAD
    count too); `refusals` are errors an operation raises for as long as they are set (an
    outage); `put_delays` slow the PUT of particular keys; `on_put` runs at each PUT.
    """

    objects: dict[str, Stored] = field(default_factory=dict)
    faults: deque[tuple[str, BaseException]] = field(default_factory=deque)
    refusals: dict[str, StorageError] = field(default_factory=dict)
    puts: list[tuple[str, float]] = field(default_factory=list)  # (key, trio time)
    heads: list[tuple[str, float]] = field(default_factory=list)
    lists: list[tuple[str, float]] = field(default_factory=list)  # (prefix, trio time) per page
    put_delay: float = 0.0
    put_delays: dict[str, float] = field(default_factory=dict)
    on_put: Callable[[str], None] | None = None

    def locate(self, key: str) -> ObjectRef:
        return ObjectRef("", key)

    @staticmethod
    def _key(key: Key) -> str:
        """Objects are filed by full key; a bucket other than the store's own is its prefix."""
        if isinstance(key, ObjectRef):
            return f"{key.bucket}:{key.key}" if key.bucket else key.key
        return key

    def fail(self, op: str, error: BaseException, times: int = 1) -> None:
        for _ in range(times):
            self.faults.append((op, error))

    def outage(self, error: StorageError | None) -> None:
        """Every operation raises `error` until called again with None."""
        self.refusals.clear()
        if error is not None:
            for op in ("check", "put", "head", "get", "delete", "list"):
                self.refusals[op] = error

    def _fault(self, op: str) -> None:
        if op in self.refusals:
            raise self.refusals[op]
        if self.faults and self.faults[0][0] == op:
            raise self.faults.popleft()[1]

    async def check(self) -> None:
        await trio.lowlevel.checkpoint()
        self._fault("check")

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
        key = self._key(key)
        self.puts.append((key, trio.current_time()))
        if self.on_put is not None:
            self.on_put(key)
        delay = self.put_delays.get(key, self.put_delay)
        if delay:
            await trio.sleep(delay)
        await trio.lowlevel.checkpoint()
        self._fault("put")
        if if_absent and key in self.objects:
            raise ObjectExists(f"put {key}: 412", code="PreconditionFailed", status=412)
        data = path.read_bytes()
        meta = dict(metadata or {})
        meta["sha256"] = sha256_hex
        self.objects[key] = Stored(data, sha256_hex, content_type, meta)
        return PutResult(etag=hashlib.md5(data).hexdigest())

    async def head(self, key: Key) -> ObjectInfo:
        key = self._key(key)
        self.heads.append((key, trio.current_time()))
        await trio.lowlevel.checkpoint()
        self._fault("head")
        obj = self.objects.get(key)
        if obj is None:
            raise ObjectNotFound(f"head {key}: 404", status=404)
        return ObjectInfo(
            key=key,
            size=len(obj.data),
            etag=hashlib.md5(obj.data).hexdigest(),
            sha256=obj.sha256,
            content_type=obj.content_type,
            metadata=dict(obj.metadata),
        )

    async def get(self, key: Key) -> bytes:
        key = self._key(key)
        await trio.lowlevel.checkpoint()
        self._fault("get")
        obj = self.objects.get(key)
        if obj is None:
            raise ObjectNotFound(f"get {key}: 404", status=404)
        return obj.data

    @asynccontextmanager
    async def open_stream(self, key: Key) -> AsyncGenerator[AsyncIterator[bytes], None]:
        data = await self.get(key)

        async def chunks() -> AsyncGenerator[bytes, None]:
            for start in range(0, len(data), 65536):
                await trio.lowlevel.checkpoint()
                yield data[start : start + 65536]

        yield chunks()

    async def list_objects(
        self,
        prefix: str,
        *,
        max_keys: int = LIST_PAGE,
        on_page: Callable[[int], None] | None = None,
    ) -> AsyncIterator[ListedObject]:
        """The store's own objects (not those filed under another bucket), in key order."""
        keys = sorted(k for k in self.objects if k.startswith(prefix) and ":" not in k)
        step = max(1, min(LIST_PAGE, max_keys))
        for at in range(0, max(1, len(keys)), step):
            self.lists.append((prefix, trio.current_time()))
            await trio.lowlevel.checkpoint()
            self._fault("list")
            page = [k for k in keys[at : at + step] if k in self.objects]
            if on_page is not None:
                on_page(len(page))
            for key in page:
                data = self.objects[key].data
                yield ListedObject(key, len(data), hashlib.md5(data).hexdigest(), None)

    async def delete(self, key: Key) -> None:
        key = self._key(key)
        await trio.lowlevel.checkpoint()
        self.objects.pop(key, None)

    def presign_get(
        self,
        key: Key,
        *,
        expires_in: float,
        content_type: str | None = None,
        filename: str | None = None,
    ) -> str:
        return f"memory://{self._key(key)}?expires_in={expires_in:g}"

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
