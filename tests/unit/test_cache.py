"""The audio cache's file handling."""

from __future__ import annotations

from pathlib import Path

import trio

from tr_vault.cache import AudioCache


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
