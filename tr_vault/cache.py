"""The local audio cache: where an upload becomes durable before it is acknowledged.

An upload streams into a temp file under `audio/.incoming/` (same filesystem as its final
place) while it is hashed and counted. Once the request is accepted the file is marked with
the key it is about to take (an extended attribute), fsynced, hard-linked to its key path (a
link never replaces an existing file, so two recordings with the same name can never
overwrite each other) and the directory is fsynced. Only then is the journal row committed
and 200 sent; the temp name is dropped after the commit.

So a process killed between the link and the commit leaves a temp file that names its key:
at start-up (`prepare`, then `recover`) the key path of a temp file whose key no row holds is
removed with it. A file no row owns never outlives a restart, and the recorder's resend finds
its own name free.

`tr-vault import` runs beside the server and commits calls a batch at a time, so its files
stay linked without a row for longer than an upload's. Its temp files live in a directory of
their own, `.incoming/import-{token}/`, flocked for as long as the run lives: `prepare` leaves
a locked one alone, and recovers one whose run is gone (the kernel drops the lock however the
process ends) exactly like `.incoming` itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from tr_vault.call import StoredAudio
from tr_vault.durable import fsync_path

INCOMING = ".incoming"
KEY_XATTR = "user.tr_vault.key"  # on a temp file: the key path it is (being) linked under
IMPORT_PREFIX = "import-"  # .incoming/import-{token}/: the temp files of one `tr-vault import`


@dataclass(frozen=True)
class Staged:
    """A temp file a crash left after linking it under `key` (its row may be missing)."""

    key: str
    temp: Path


def _mark(path: Path, key: str) -> None:
    """Record on the file (its inode) which key it is about to be linked under."""
    with contextlib.suppress(OSError):  # no user xattrs here: a crash may then leave an orphan
        os.setxattr(path, KEY_XATTR, key.encode())


def _marked_key(path: Path) -> str | None:
    try:
        return os.getxattr(path, KEY_XATTR).decode()
    except OSError:
        return None


def _sort_temps(directory: Path) -> tuple[int, list[Staged]]:
    """Remove the temp files of `directory` that no key was linked to; return how many, and
    the ones that were (for `AudioCache.recover`)."""
    removed, staged = 0, []
    for stray in directory.iterdir():
        if not stray.is_file():
            continue
        key = _marked_key(stray) if stray.stat().st_nlink > 1 else None
        if key is None:
            stray.unlink(missing_ok=True)
            removed += 1
        else:
            staged.append(Staged(key, stray))
    return removed, staged


class Spooled(Protocol):
    """A hashed, counted file in a temp directory of the cache: what `commit` links."""

    @property
    def path(self) -> Path: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def md5(self) -> str: ...
    def close(self) -> None: ...


class ImportStaging:
    """The temp directory of one `tr-vault import` run, locked (flock) until `close`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def temp_path(self) -> Path:
        """A fresh temp file name in this directory (for a copy, or a hard link)."""
        return self.path / f"{secrets.token_hex(8)}.part"

    def new_temp(self) -> TempAudio:
        return TempAudio(self.temp_path())

    def leftovers(self) -> tuple[int, list[Staged]]:
        """What an interrupted batch left here, sorted as `prepare` sorts `.incoming`."""
        return _sort_temps(self.path)

    def close(self) -> None:
        """Remove the directory if empty (else the next `prepare` recovers it); unlock."""
        with contextlib.suppress(OSError):
            self.path.rmdir()
        os.close(self._fd)


class TempAudio:
    """A temp file being written, with its running SHA-256, MD5 and size."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "xb")  # noqa: SIM115 - closed in finish()/discard()
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._sha256.update(data)
        self._md5.update(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @property
    def md5(self) -> str:
        return self._md5.hexdigest()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def discard(self) -> None:
        """Remove the temp file; safe to call twice."""
        self.close()
        self.path.unlink(missing_ok=True)


class AudioCache:
    """Audio files under `root`, addressed by their storage key (`system/date/file`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / INCOMING
        self._abandoned: list[ImportStaging] = []  # locked by `abandoned_imports` for `recover`

    def prepare(self) -> tuple[int, list[Staged]]:
        """Create the directories and remove the temp files a crash left behind (uploads',
        and those of import runs that are gone); returns how many, and those that were
        already linked under a key (for `recover`)."""
        self.incoming.mkdir(parents=True, exist_ok=True)
        removed, staged = _sort_temps(self.incoming)
        more, more_staged = self.abandoned_imports()
        return removed + more, staged + more_staged

    def abandoned_imports(self) -> tuple[int, list[Staged]]:
        """`prepare` for the directories of import runs that are gone (their lock is free)
        and only those: a running import's, and `.incoming`'s own files, are left alone.
        Each directory stays locked until `recover` has finished it."""
        removed, staged = 0, []
        with contextlib.suppress(FileNotFoundError):
            for entry in self.incoming.iterdir():
                if not entry.name.startswith(IMPORT_PREFIX) or entry.is_symlink():
                    continue
                try:
                    fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
                except OSError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # its run is alive
                    os.close(fd)
                    continue
                staging = ImportStaging(entry, fd)
                self._abandoned.append(staging)
                n, found = staging.leftovers()
                removed += n
                staged += found
        return removed, staged

    def open_import_staging(self) -> ImportStaging:
        """A temp directory for an import run, locked for as long as the run holds it."""
        self.incoming.mkdir(parents=True, exist_ok=True)
        while True:
            path = self.incoming / f"{IMPORT_PREFIX}{secrets.token_hex(8)}"
            path.mkdir()
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink > 0:
                return ImportStaging(path, fd)
            # Another start took the new, unlocked directory for an abandoned one: again.
            os.close(fd)

    def recover(self, staged: Sequence[Staged], recorded: set[str]) -> list[str]:
        """Finish what a crash interrupted: a linked temp file whose key has a row was
        committed (drop the temp name); one whose key has none was never acknowledged (drop
        the key path too, if it is still that file). Returns the key paths removed."""
        removed = []
        for item in staged:
            if item.key not in recorded:
                with contextlib.suppress(ValueError, FileNotFoundError):
                    target = self.path(item.key)
                    if target.samefile(item.temp):
                        target.unlink()
                        fsync_path(target.parent)
                        removed.append(item.key)
            item.temp.unlink(missing_ok=True)
        for staging in self._abandoned:
            staging.close()
        self._abandoned.clear()
        return removed

    def new_temp(self) -> TempAudio:
        return TempAudio(self.incoming / f"{secrets.token_hex(8)}.part")

    def path(self, key: str) -> Path:
        parts = key.split("/")
        if any(p in ("", ".", "..") or p.startswith(".") or "\\" in p for p in parts):
            raise ValueError(f"unsafe storage key {key!r}")
        return self.root.joinpath(*parts)

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    async def commit(self, temp: Spooled, candidates: Sequence[str]) -> StoredAudio:
        """Make `temp` durable under the first free key of `candidates` (one thread hop).

        The temp name stays until `temp.discard()`, which the caller runs once the row is
        committed (or refused): until then a crash is recoverable by `recover`.
        """
        temp.close()
        key = await trio.to_thread.run_sync(self._commit_sync, temp.path, candidates)
        return StoredAudio(key=key, size=temp.size, sha256=temp.sha256, md5=temp.md5)

    async def commit_many(
        self, items: Sequence[tuple[Spooled, Sequence[str]]]
    ) -> list[StoredAudio]:
        """`commit` for a batch, in one thread hop: each file is fsynced and linked, then each
        directory that got a name is fsynced once (`tr-vault import`: one directory fsync per
        day folder and batch, not per call). All durable once it returns, as with `commit`."""
        for temp, _ in items:
            temp.close()
        keys = await trio.to_thread.run_sync(
            self._commit_many_sync, [(temp.path, candidates) for temp, candidates in items]
        )
        return [
            StoredAudio(key=key, size=temp.size, sha256=temp.sha256, md5=temp.md5)
            for key, (temp, _) in zip(keys, items, strict=True)
        ]

    async def remove(self, key: str, *, prune_dirs: bool = False) -> None:
        """Delete a cached file; with `prune_dirs`, also its date and system directories
        once they are empty."""
        await trio.to_thread.run_sync(self._remove_sync, key, prune_dirs)

    def _commit_sync(self, source: Path, candidates: Sequence[str]) -> str:
        """Link `source` under the first free candidate; the temp name stays (see the module
        docstring). One fsync of the file (the mark rides along), one of the directory;
        each name already taken costs one more fsync for its new mark."""
        key = self._link_sync(source, candidates)
        fsync_path(self.path(key).parent)
        return key

    def _commit_many_sync(self, items: Sequence[tuple[Path, Sequence[str]]]) -> list[str]:
        keys = [self._link_sync(source, candidates) for source, candidates in items]
        self.sync_directories(keys)
        return keys

    # -- for a caller's own worker thread (intake's group commit, in the journal's) ---------

    def link_sync(
        self,
        source: Path,
        candidates: Sequence[str],
        taken: Callable[[str], bool] = lambda key: False,
    ) -> str:
        """Link `source` under the first candidate that `taken` does not rule out and no
        file holds (the file and its mark fsynced before); the directory's fsync is the
        caller's (`sync_directories`), once for every file of a batch."""
        return self._link_sync(source, [key for key in candidates if not taken(key)])

    def sync_directories(self, keys: Iterable[str]) -> None:
        """fsync each directory that got one of `keys`, once: the links are then durable."""
        for directory in dict.fromkeys(self.path(key).parent for key in keys):
            fsync_path(directory)

    def remove_sync(self, key: str) -> None:
        """`remove` in the caller's thread (a link whose row was not committed)."""
        self._remove_sync(key, False)

    def _link_sync(self, source: Path, candidates: Sequence[str]) -> str:
        """`_commit_sync` but the directory's fsync, which is the caller's."""
        for key in candidates:
            target = self.path(key)
            _mark(source, key)
            fsync_path(source)  # the data, and the mark, before any name points at them
            try:
                self._make_dirs(target.parent)
                os.link(source, target)
            except FileExistsError:
                continue
            except FileNotFoundError:  # the pruner removed an empty directory meanwhile
                self._make_dirs(target.parent)
                try:
                    os.link(source, target)
                except FileExistsError:
                    continue
            return key
        raise FileExistsError(f"every candidate key is taken: {list(candidates)}")

    def _make_dirs(self, directory: Path) -> None:
        """mkdir -p, fsyncing each parent whose entry list changed."""
        missing = []
        d = directory
        while not d.exists():
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            fsync_path(d.parent)

    def _remove_sync(self, key: str, prune_dirs: bool) -> None:
        path = self.path(key)
        path.unlink(missing_ok=True)
        parent = path.parent
        if prune_dirs:
            while parent != self.root:
                try:
                    parent.rmdir()
                except OSError:  # not empty (or already gone): stop climbing
                    break
                parent = parent.parent
        with contextlib.suppress(FileNotFoundError):  # another removal took the directory
            fsync_path(parent)
