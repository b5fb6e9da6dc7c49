"""A crash between linking a call's file and committing its row leaves a file no row owns:
the next start removes it (nothing was acknowledged for it), keeps every file that has its
row, and the recorder's resend finds its own name free. Uploads in progress are never taken
for such leftovers."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import VaultFactory
from tests.loops import open_bench
from tests.wire import fixture_bytes, rdio_trunk_recorder
from tr_vault.cache import KEY_XATTR

AUDIO = b"\x00\x00\x00\x20ftypM4A " + bytes(range(256)) * 8
M4A = fixture_bytes("call-9131-1764001234.m4a")
OTHER = fixture_bytes("call-2201-1764001301.m4a")
NAME = "metro/2025-11-24/9131-1764001234_851012500.0-call_123.m4a"


def crash_after_link(audio_dir: Path, key: str, data: bytes, token: str) -> Path:
    """The state a SIGKILL leaves between the link and the commit."""
    temp = audio_dir / ".incoming" / f"{token}.part"
    temp.write_bytes(data)
    os.setxattr(temp, KEY_XATTR, key.encode())
    target = audio_dir / key
    target.parent.mkdir(parents=True, exist_ok=True)
    os.link(temp, target)
    return target


async def test_a_restart_removes_the_file_of_a_row_never_committed(
    make_vault: VaultFactory,
) -> None:
    vault = await make_vault()
    kept = await vault.post("/api/call-upload", rdio_trunk_recorder(M4A, audio_name="kept.m4a"))
    assert kept.status_code == 200
    [row] = vault.calls()
    await vault.stop()
    audio = vault.settings.audio_dir
    orphan = crash_after_link(audio, NAME, OTHER, "0000000000000001")
    # A committed call whose temp name the crash left behind: it stays.
    temp = audio / ".incoming" / "0000000000000002.part"
    os.link(audio / row["key"], temp)
    os.setxattr(temp, KEY_XATTR, row["key"].encode())
    await vault.start()
    assert not orphan.exists()
    assert (audio / row["key"]).read_bytes() == M4A
    assert vault.incoming() == []
    # The recorder resends the call it got no 200 for: it takes its own name.
    resent = await vault.post("/api/call-upload", rdio_trunk_recorder(OTHER))
    assert resent.status_code == 200
    assert [c["key"] for c in vault.calls()] == [row["key"], NAME]


async def test_a_file_whose_row_is_being_committed_is_not_an_orphan(tmp_path: Path) -> None:
    # `tr-vault import` links a batch of files before it commits their rows: meanwhile a
    # recorder sends different audio under one of those names. The upload takes another name
    # and leaves the import's file alone.
    bench = await open_bench(tmp_path)
    imported = bench.cache.path("metro/2025-11-24/9131-1764001235.m4a")
    imported.parent.mkdir(parents=True)
    imported.write_bytes(b"the import's audio, its row not yet committed")
    uploaded = await bench.add_call(AUDIO, 1)
    assert uploaded.key != "metro/2025-11-24/9131-1764001235.m4a"
    assert imported.read_bytes() == b"the import's audio, its row not yet committed"
    assert bench.cache.path(uploaded.key).read_bytes() == AUDIO
    assert [r[0] for r in bench.rows("SELECT key FROM calls")] == [uploaded.key]
