"""`tr-vault import DIR`: a trunk-recorder capture tree journaled as if each call was uploaded.

Trees are laid out as trunk-recorder writes them (`{shortName}/{YYYY}/{M}/{D}/`, names
`{tg}-{start}_{freq}-call_{n}.{m4a,wav,json}`), from the fixture audio with a distinct tail per
call so that every call has its own SHA-256.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from tests.conftest import VaultFactory, make_settings, s3_settings, wait_until
from tests.helpers import query, sha
from tests.s3_fixtures import MotoS3
from tests.wire import TR_AUDIO_NAME, TR_META, fixture_bytes, rdio_trunk_recorder
from tr_vault.cache import IMPORT_PREFIX, AudioCache
from tr_vault.cli import main
from tr_vault.importer import (
    PREFERRED,
    ImportReport,
    ImportRequest,
    Mode,
    import_tree,
    path_system,
)

M4A = fixture_bytes("call-9131-1764001234.m4a")
WAV = fixture_bytes("call-9131-1764001234.wav")
BASE = 1764001234  # 2025-11-24 16:20:34 UTC
BROKEN = {
    "broken_json": 1,
    "missing_sidecar": 1,
    "empty_audio": 1,
    "unaccepted_type": 1,
    "bad_talkgroup": 1,
    "bad_start_time": 1,
    "missing_audio": 1,
}


@dataclass
class Tree:
    root: Path
    calls: dict[Path, bytes] = field(default_factory=dict)  # the audio each call should keep
    wavs: list[Path] = field(default_factory=list)  # WAVs beside an m4a (not imported)


def day_dir(root: Path, system: str, start: int) -> Path:
    t = time.gmtime(start)  # trunk-recorder uses local time; the import does not care
    return root / system / str(t.tm_year) / str(t.tm_mon) / str(t.tm_mday)


def sidecar(talkgroup: object, start: object, **extra: object) -> dict[str, Any]:
    meta: dict[str, Any] = dict(TR_META)
    meta.update(talkgroup=talkgroup, start_time=start, stop_time=start, **extra)
    return meta


def write_call(
    directory: Path, stem: str, audio: bytes | None, meta: dict[str, Any] | str | None,
    ext: str = ".m4a",
) -> Path:  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    if audio is not None:
        (directory / f"{stem}{ext}").write_bytes(audio)
    if meta is not None:
        text = meta if isinstance(meta, str) else json.dumps(meta, indent=2)
        (directory / f"{stem}.json").write_text(text)
    return directory / f"{stem}{ext}"


def build_tree(
    root: Path, calls: int, *, broken: bool = True, wav_every: int = 10, spacing: int = 600
) -> Tree:
    """`calls` good calls over a few days and two systems, and (with `broken`) one file of
    each kind the import must skip, plus a transmissionArchive WAV (ignored)."""
    tree = Tree(root)
    for i in range(calls):
        start = BASE + i * spacing
        talkgroup = 1000 + i % 40
        freq = 851012500 + (i % 3) * 12500
        system = "county" if i % 7 == 0 else "metro"
        stem = f"{talkgroup}-{start}_{freq}-call_{i}"
        audio = M4A + i.to_bytes(4, "big")
        meta = sidecar(talkgroup, start, freq=freq, call_length=5 + i % 4)
        if system == "county":
            del meta["short_name"]  # the path names the system instead
        path = write_call(day_dir(root, system, start), stem, audio, meta)
        tree.calls[path] = audio
        if i % wav_every == 0:
            wav = path.with_suffix(".wav")
            wav.write_bytes(WAV + i.to_bytes(4, "big"))
            tree.wavs.append(wav)
    if broken:
        d = day_dir(root, "metro", BASE)
        write_call(d, "1-1764001234_851012500-call_9001", M4A + b"a", '{"talkgroup": 1,')
        write_call(d, "1-1764001234_851012500-call_9002", M4A + b"b", None)
        write_call(d, "1-1764001234_851012500-call_9003", b"", sidecar(1, BASE + 3))
        write_call(d, "1-1764001234_851012500-call_9004", M4A + b"d", sidecar(1, BASE + 4), ".amr")
        write_call(d, "1-1764001234_851012500-call_9005", M4A + b"e", sidecar(2**70, BASE))
        write_call(d, "1-1764001234_851012500-call_9006", M4A + b"f", sidecar(1, 100))
        write_call(d, "1-1764001234_851012500-call_9007", None, sidecar(1, BASE + 7))
        (d / "1-1764001234_851012500.wav").write_bytes(WAV)  # one transmission, no JSON
        (d / "notes.txt").write_text("not a call")
    return tree


async def cli(data_dir: Path, *args: str, cwd: Path, **env: str) -> tuple[int, str, str]:
    environment = {"PATH": "/usr/bin:/bin", "TR_VAULT_DATA_DIR": str(data_dir), **env}
    with trio.fail_after(120):
        done = await trio.run_process(
            [sys.executable, "-m", "tr_vault", "import", *args],
            env=environment,
            cwd=cwd,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def key_of(path: Path, system: str) -> str:
    start = int(path.name.split("-")[1].split("_")[0])
    return f"{system}/{time.strftime('%Y-%m-%d', time.gmtime(start))}/{path.name}"


def system_of(path: Path) -> str:
    return path.parts[-5]


# -- without a server: local-only ------------------------------------------------------------


async def test_import_journals_each_call_and_a_second_run_adds_nothing(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "capture", 300)
    data = tmp_path / "data"
    code, out, err = await cli(data, str(tree.root), "--json", cwd=tmp_path)
    assert code == 1, err  # some files were skipped; the rest is imported
    report = json.loads(out)
    assert report["imported"] == 300
    assert report["duplicates"] == 0
    assert report["state"] == "done"
    assert report["skipped_by_reason"] == BROKEN
    assert report["skipped"] == sum(BROKEN.values()) == len(report["skipped_files"])
    assert report["transmissions_ignored"] == 1
    assert report["alternates"] == len(tree.wavs) == 30
    assert report["bytes"] == sum(len(b) for b in tree.calls.values())
    assert report["copied"] == 300 and report["linked"] == 0
    listed = {Path(s["path"]).name: s["reason"] for s in report["skipped_files"]}
    assert listed == {
        "1-1764001234_851012500-call_9001.json": "broken_json",
        "1-1764001234_851012500-call_9002.m4a": "missing_sidecar",
        "1-1764001234_851012500-call_9003.m4a": "empty_audio",
        "1-1764001234_851012500-call_9004.amr": "unaccepted_type",
        "1-1764001234_851012500-call_9005.json": "bad_talkgroup",
        "1-1764001234_851012500-call_9006.json": "bad_start_time",
        "1-1764001234_851012500-call_9007.json": "missing_audio",
    }
    assert set(report) >= {
        "dir", "mode", "state", "imported", "duplicates", "skipped", "skipped_by_reason",
        "bytes", "bytes_read", "seconds", "calls_per_second", "mb_per_second", "skipped_files",
    }  # fmt: skip

    db = data / "vault.db"
    rows = query(db, "SELECT * FROM calls ORDER BY id")
    assert len(rows) == 300
    assert {r["state"] for r in rows} == {"done"}
    assert {r["protocol"] for r in rows} == {"import"}
    by_key = {r["key"]: r for r in rows}
    for path, audio in tree.calls.items():
        row = by_key[key_of(path, system_of(path))]  # intake's key: {system}/{date}/{file}
        assert (data / "audio" / row["key"]).read_bytes() == audio
        assert row["sha256"] == sha(audio) and row["size"] == len(audio)
        assert row["content_type"] == "audio/mp4" and row["cached"] == 1
    first = by_key[key_of(next(iter(tree.calls)), "county")]
    assert first["system"] == first["system_label"] == "county"  # from the path
    assert first["talkgroup"] == 1000 and first["start_time"] == "2025-11-24 16:20:34.000"
    assert (first["talkgroup_label"], first["talkgroup_tag"], first["talkgroup_group"]) == (
        "FD Dispatch", "Fire Dispatch", "Fire",
    )  # fmt: skip
    assert (first["source"], first["frequency"], first["duration"]) == (1402211, 851012500, 5.0)
    metadata = json.loads(first["metadata"])
    assert metadata["meta"]["talkgroup_description"] == "Fire Dispatch Main"  # kept whole
    assert metadata["import"]["mode"] == "copy"
    events = query(db, "SELECT kind, detail FROM events WHERE call_id = ?", first["id"])
    assert [e["kind"] for e in events] == ["received"]
    assert ".m4a imported (compressed first); " in events[0]["detail"]  # the WAV: noted
    assert ".wav left" in events[0]["detail"]
    assert not list((data / "audio" / ".incoming").iterdir())  # the temp directory is gone

    n_events = query(db, "SELECT count(*) AS n FROM events")[0]["n"]
    code, out, _ = await cli(data, str(tree.root), "--json", cwd=tmp_path)
    again = json.loads(out)
    assert code == 1
    assert (again["imported"], again["duplicates"]) == (0, 300)
    assert again["skipped_by_reason"] == BROKEN
    assert query(db, "SELECT count(*) AS n FROM calls")[0]["n"] == 300
    assert query(db, "SELECT count(*) AS n FROM events")[0]["n"] == n_events  # nothing added


def test_exit_codes_and_text_output(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "capture", 5, broken=False)
    data = tmp_path / "data"
    runner = CliRunner(env={"TR_VAULT_DATA_DIR": str(data)})
    done = runner.invoke(main, ["import", str(tree.root)])
    assert done.exit_code == 0, done.output
    assert re.search(r"^  imported\s+5$", done.output, re.M)
    assert re.search(r"^  calls/s\s+\d+$", done.output, re.M)
    # The same first two calls again (same bytes, talkgroup, second), and the broken files.
    done = runner.invoke(main, ["import", str(build_tree(tmp_path / "more", 2).root)])
    assert done.exit_code == 1  # skipped files: listed, the rest imported
    assert "skipped  broken_json" in done.output
    assert re.search(r"^  duplicates\s+2$", done.output, re.M)

    for args in (
        [str(tree.root), "--link", "--move"],
        [str(tmp_path / "nowhere")],
        [str(data / "audio")],  # inside the cache itself
        [str(tree.root), "--system", "../etc"],
    ):
        done = runner.invoke(main, ["import", *args])
        assert done.exit_code == 2, (args, done.output)


async def test_system_option_overrides_the_sidecar(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "capture", 3, broken=False)
    report = await import_tree(make_settings(tmp_path), ImportRequest(tree.root, system="north"))
    assert report.imported == 3
    rows = query(make_settings(tmp_path).db_path, "SELECT system, key FROM calls")
    assert {r["system"] for r in rows} == {"north"}
    assert all(r["key"].startswith("north/2025-11-2") for r in rows)


# -- --link and --move -------------------------------------------------------------------------


async def test_link_shares_the_inode(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "capture", 20, broken=False)
    settings = make_settings(tmp_path)
    report = await import_tree(settings, ImportRequest(tree.root, mode=Mode.LINK))
    assert (report.imported, report.linked, report.copied) == (20, 20, 0)
    for path in tree.calls:
        cached = settings.audio_dir / key_of(path, system_of(path))
        assert cached.stat().st_ino == path.stat().st_ino
        assert path.stat().st_nlink == 2  # the recording and the cache: no temp name left
    again = await import_tree(settings, ImportRequest(tree.root, mode=Mode.LINK))
    assert (again.imported, again.duplicates) == (0, 20)


async def test_move_takes_the_call_out_of_the_tree(tmp_path: Path) -> None:
    # One directory of many calls, a batch of 50: the walk reads on in a directory whose
    # earlier calls --move is removing, and must not take their WAVs for calls of their own.
    tree = build_tree(tmp_path / "capture", 240, broken=False, wav_every=2, spacing=10)
    settings = make_settings(tmp_path)
    report = await import_tree(settings, ImportRequest(tree.root, mode=Mode.MOVE, batch=50))
    assert (report.imported, report.linked, report.skipped) == (240, 240, {})
    assert report.alternates == len(tree.wavs) == 120
    assert report.sources_removed == 240 * 2 + 120  # recording, sidecar, the WAV beside
    for path, audio in tree.calls.items():
        cached = settings.audio_dir / key_of(path, system_of(path))
        assert cached.read_bytes() == audio and cached.stat().st_nlink == 1
    assert not [p for p in tree.root.rglob("*") if p.is_file()]
    again = await import_tree(settings, ImportRequest(tree.root, mode=Mode.MOVE))
    assert (again.imported, again.duplicates, again.skipped) == (0, 0, {})


async def test_move_of_calls_the_vault_holds_removes_them(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "capture", 10, broken=False)
    settings = make_settings(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(tree.root, copy)
    assert (await import_tree(settings, ImportRequest(tree.root))).imported == 10
    report = await import_tree(settings, ImportRequest(copy, mode=Mode.MOVE))
    assert (report.imported, report.duplicates, report.sources_removed) == (0, 10, 21)
    assert not [p for p in copy.rglob("*") if p.is_file()]


def _other_filesystem() -> Iterator[Path]:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm")
    with tempfile.TemporaryDirectory(dir=shm) as where:
        yield Path(where)


@pytest.fixture
def other_filesystem() -> Iterator[Path]:
    yield from _other_filesystem()


async def test_link_across_filesystems_copies_and_says_so(
    tmp_path: Path, other_filesystem: Path
) -> None:
    if other_filesystem.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the data directory")
    tree = build_tree(other_filesystem / "capture", 5, broken=False)
    settings = make_settings(tmp_path)
    report = await import_tree(settings, ImportRequest(tree.root, mode=Mode.MOVE))
    assert (report.imported, report.linked, report.copied) == (5, 0, 5)
    assert report.link_fallbacks == {"copied (Invalid cross-device link: no hard link)": 5}
    for path, audio in tree.calls.items():
        assert not path.exists()  # moved all the same: copied, then removed
        assert (settings.audio_dir / key_of(path, system_of(path))).read_bytes() == audio


# -- with the server running -------------------------------------------------------------------


async def test_import_beside_a_running_server_is_uploaded(
    make_vault: VaultFactory, moto_s3: MotoS3, tmp_path: Path
) -> None:
    vault = await make_vault(**s3_settings(moto_s3))
    tree = build_tree(tmp_path / "capture", 60, broken=False)
    report = await import_tree(vault.settings, ImportRequest(tree.root))
    assert (report.imported, report.state) == (60, "pending")
    # No wake-up crosses processes: the idle workers' poll (5 s) finds the new rows.
    await wait_until(lambda: {c["state"] for c in vault.calls()} == {"done"}, within=60)
    by_key = {c["key"]: c for c in vault.calls()}
    for path, audio in tree.calls.items():
        call = by_key[key_of(path, system_of(path))]
        assert moto_s3.read(call["object_key"]) == audio
    again = await import_tree(vault.settings, ImportRequest(tree.root))
    assert (again.imported, again.duplicates) == (0, 60)


async def test_an_uploaded_call_and_its_archived_copy_are_one_call(
    make_vault: VaultFactory, tmp_path: Path
) -> None:
    """The plugin uploads the m4a and the archive keeps it: importing the archive adds no
    second row, and a call imported first is a duplicate when it is uploaded."""
    vault = await make_vault()
    assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
    capture = tmp_path / "capture"
    d = day_dir(capture, "metro", BASE)
    write_call(d, TR_AUDIO_NAME.removesuffix(".m4a"), M4A, dict(TR_META))
    (d / TR_AUDIO_NAME.replace(".m4a", ".wav")).write_bytes(WAV)  # compressWav keeps both
    other = M4A + b"-imported-first"
    write_call(d, "9131-1764009999_851012500.0-call_124", other, sidecar(9131, 1764009999))
    report = await import_tree(vault.settings, ImportRequest(capture))
    assert (report.imported, report.duplicates) == (1, 1)
    upload = rdio_trunk_recorder(
        other, date_time="1764009999", audio_name="9131-1764009999_851012500.0-call_124.m4a"
    )
    assert (await vault.post("/api/call-upload", upload)).status_code == 200
    calls = vault.calls()
    assert [c["protocol"] for c in calls] == ["rdio", "import"]
    assert calls[0]["key"] == f"metro/2025-11-24/{TR_AUDIO_NAME}"
    assert [e["kind"] for e in vault.events(calls[1]["id"])] == ["received", "duplicate"]


# -- crash safety: the temp directory of a run ---------------------------------------------------

CHILD = """
import sys, time, trio
from pathlib import Path
from tr_vault.cache import AudioCache
cache = AudioCache(Path(sys.argv[1]))
staging = cache.open_import_staging()
temp = staging.new_temp()
temp.write(b"linked, never journaled" * 10)
trio.run(cache.commit, temp, [sys.argv[2]])
print("ready", flush=True)
time.sleep(600)
"""


async def test_a_server_start_spares_a_running_import_and_recovers_a_dead_one(
    make_vault: VaultFactory, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path)
    key = "metro/2025-11-24/mid-batch.m4a"
    async with trio.open_nursery() as nursery:
        send, receive = trio.open_memory_channel[bytes](1)

        async def run_child(*, task_status: trio.TaskStatus[trio.Process]) -> None:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-c", CHILD, str(settings.audio_dir), key],
                stdout=subprocess.PIPE,
                cwd=tmp_path,
            )
            task_status.started(process)
            assert process.stdout is not None
            await send.send(await process.stdout.receive_some(64))
            await process.wait()

        process: trio.Process = await nursery.start(run_child)
        with trio.fail_after(30):
            assert (await receive.receive()).startswith(b"ready")
        target = settings.audio_dir / key
        assert target.exists()

        vault = await make_vault()  # recover_cache runs while the import is alive
        assert target.exists()
        assert [p.name[: len(IMPORT_PREFIX)] for p in vault.incoming()] == [IMPORT_PREFIX]
        await vault.stop()

        process.send_signal(signal.SIGKILL)  # the import dies mid-batch
        with trio.fail_after(10):
            await process.wait()
        await vault.start()
        assert not target.exists()  # linked, never journaled: removed
        assert vault.incoming() == []
        nursery.cancel_scope.cancel()


async def test_the_next_import_recovers_a_dead_ones_temp_directory(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    cache = AudioCache(settings.audio_dir)
    staging = cache.open_import_staging()
    temp = staging.new_temp()
    temp.write(M4A)
    await cache.commit(temp, ["metro/2025-11-24/orphan.m4a"])
    os.close(staging._fd)  # what the kernel does when the process dies
    empty = tmp_path / "empty"
    empty.mkdir()
    report = await import_tree(settings, ImportRequest(empty))
    assert isinstance(report, ImportReport) and report.imported == 0
    assert not (settings.audio_dir / "metro/2025-11-24/orphan.m4a").exists()
    assert not staging.path.exists()


# -- small rules ---------------------------------------------------------------------------------


def test_compressed_audio_is_preferred_and_every_stored_type_is_looked_for() -> None:
    assert PREFERRED[0] == ".m4a" and PREFERRED[-2:] == (".wav", ".wave")


def test_the_system_from_the_path() -> None:
    root = Path("/srv/capture")
    assert path_system(root / "metro/2025/11/24", root) == "metro"
    assert path_system(Path("/srv/metro/2025/11/24"), Path("/srv/metro/2025/11/24")) == "metro"
    assert path_system(root / "metro/2025/11/24/extra", root) == "metro"
    assert path_system(root / "flat", root) == "flat"
    assert path_system(root, root) is None
