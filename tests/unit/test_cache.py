"""The audio cache's file handling."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

import tr_vault.cache
from tr_vault.cache import KEY_XATTR, AudioCache


async def test_concurrent_removals_in_one_directory_clean_it_up(tmp_path: Path) -> None:
    # The pruner removes files with several HEADs in flight; whichever removal empties a
    # directory removes it, and the others must not trip over the missing directory.
    cache = AudioCache(tmp_path / "audio")
    cache.prepare()
    keys = [f"metro/2025-11-{day:02d}/call-{n}.m4a" for day in (1, 2) for n in range(40)]
    for key in keys:
        path = cache.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    for _ in range(3):
        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(lambda k=key: cache.remove(k, prune_dirs=True))
        assert sorted(p.name for p in cache.root.iterdir()) == [".incoming"]
        for key in keys:
            cache.path(key).parent.mkdir(parents=True, exist_ok=True)
            cache.path(key).write_bytes(b"x")


def test_unsafe_keys_are_refused(tmp_path: Path) -> None:
    cache = AudioCache(tmp_path)
    for key in ("../x", "a/../../b", ".incoming/x", "/etc/passwd", "a//b", ""):
        try:
            cache.path(key)
        except ValueError:
            continue
        raise AssertionError(f"{key!r} was accepted")


async def test_a_file_synced_for_a_name_taken_meanwhile_is_marked_again_for_its_new_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An upload fsyncs its file marked with the name it will most likely take; by its group
    # commit another file holds that name. The mark a restart reads (`recover`) must name the
    # key the file was linked under, and be fsynced again before that link.
    cache = AudioCache(tmp_path / "audio")
    cache.prepare()
    first, second = "metro/2025-11-24/call.m4a", "metro/2025-11-24/call-abc.m4a"
    cache.path(first).parent.mkdir(parents=True)
    cache.path(first).write_bytes(b"another recording")
    temp = cache.new_temp()
    temp.write(b"this recording")
    await cache.sync_temp(temp, first)
    assert os.getxattr(temp.path, KEY_XATTR) == first.encode()
    steps: list[str] = []
    fsync = tr_vault.cache.fsync_path
    monkeypatch.setattr(tr_vault.cache, "fsync_path", lambda p: (steps.append(str(p)), fsync(p)))
    key = cache.link_sync(temp.path, [first, second], synced_as=temp.synced_as)
    assert key == second
    assert os.getxattr(cache.path(second), KEY_XATTR) == second.encode()
    assert steps[:1] == [str(temp.path)]  # fsynced again, with its new mark, before the link
    assert cache.path(first).read_bytes() == b"another recording"
    assert cache.path(second).read_bytes() == b"this recording"
    # Its own name free: no fsync at link time, the one of `sync_temp` holds.
    steps.clear()
    other = cache.new_temp()
    other.write(b"a third recording")
    await cache.sync_temp(other, "metro/2025-11-24/third.m4a")
    assert steps == [str(other.path)]
    steps.clear()
    assert cache.link_sync(other.path, ["metro/2025-11-24/third.m4a"], synced_as=other.synced_as)
    assert steps == []
