"""`tr-vault rebuild --from-bucket`: the journal back from the objects alone.

Calls go in through the real server and uploader; the rebuild then runs on a fresh data
directory against the same bucket. SeaweedFS is the strict store (signatures on every LIST
page and HEAD); moto serves where strictness does not matter.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.conftest import VaultFactory, make_settings, s3_settings, wait_until
from tests.s3_fixtures import MotoS3, S3Bucket
from tests.wire import fixture_bytes, openmhz, rdio_trunk_recorder
from tr_vault import objectmeta
from tr_vault.call import CallMeta, StoredAudio
from tr_vault.cli import main
from tr_vault.config import Settings
from tr_vault.errors import ConfigError
from tr_vault.journal import Journal, NewCall, insert_calls
from tr_vault.lock import hold_data_dir
from tr_vault.objectmeta import host_site
from tr_vault.rebuild import RebuildReport, RebuildRequest, Scope, rebuild, rebuild_from_settings
from tr_vault.storage.base import audio_object_key
from tr_vault.storage.local import FileStore
from tr_vault.timefmt import from_db

M4A = fixture_bytes("call-9131-1764001234.m4a")
M4A_2 = fixture_bytes("call-2201-1764001301.m4a")
WAV = fixture_bytes("call-9131-1764001234.wav")
LABEL = "Zürich Feuerwehr 🚒"
SAME = (
    "system", "system_label", "talkgroup", "talkgroup_label", "start_time", "protocol", "size",
    "sha256", "audio_name", "content_type", "bucket", "object_key", "site",
)  # fmt: skip


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rows(db: Path, sql: str = "SELECT * FROM calls ORDER BY object_key") -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


async def three_calls(make_vault: VaultFactory, bucket: S3Bucket, **overrides: Any) -> Settings:
    """Three calls (two rdio, one OpenMHz) uploaded and verified; the server stopped again."""
    vault = await make_vault(**s3_settings(bucket, **overrides))
    first = rdio_trunk_recorder(M4A)
    first = [p if p.name != "talkgroupLabel" else type(p)(p.name, LABEL) for p in first]
    second = rdio_trunk_recorder(
        M4A_2, talkgroup="2201", date_time="1764001301",
        audio_name="2201-1764001301_851012500.0-call_124.m4a",
    )  # fmt: skip
    assert (await vault.post("/api/call-upload", first)).status_code == 200
    assert (await vault.post("/api/call-upload", second)).status_code == 200
    third = openmhz(WAV, filename="9131-1764001234_851012500.0-call_125.wav")
    assert (await vault.post("/metro/upload", third)).status_code == 200
    await wait_until(
        lambda: len(vault.calls()) == 3 and all(c["state"] == "done" for c in vault.calls())
    )
    await vault.stop()
    return vault.settings


def elsewhere(tmp_path: Path, bucket: S3Bucket, name: str, **overrides: Any) -> Settings:
    """A node with an empty data directory on the same bucket."""
    return make_settings(tmp_path, data_dir=tmp_path / name, **s3_settings(bucket, **overrides))


def counts(report: RebuildReport) -> dict[str, int]:
    return {k: v for k, v in report.counts.items() if v}


# -- from the bucket alone -----------------------------------------------------------------------


async def test_every_call_comes_back_from_the_bucket_alone_and_only_once(
    make_vault: VaultFactory, seaweed_s3: S3Bucket, tmp_path: Path
) -> None:
    original = await three_calls(make_vault, seaweed_s3)
    before = rows(original.db_path)
    fresh = elsewhere(tmp_path, seaweed_s3, "fresh")

    # Two keys a LIST page: the three calls take two pages (the probe is not under audio/).
    target, report = await rebuild_from_settings(fresh, RebuildRequest(page_size=2))
    assert target.kind == "journal" and target.path == str(fresh.db_path)
    assert report.listed == 3 and counts(report) == {"metadata": 3}
    assert (report.list_pages, report.heads) == (2, 3)
    assert report.sites == {host_site(): 3}
    after = rows(fresh.db_path)
    assert [{k: r[k] for k in SAME} for r in after] == [{k: r[k] for k in SAME} for r in before]
    for old, new in zip(before, after, strict=True):
        assert new["duration"] == pytest.approx(old["duration"], abs=0.0005)
        assert (new["state"], new["cached"], new["rebuilt"]) == ("done", 0, "metadata")
        assert new["etag"] == old["etag"] and new["md5"] == old["md5"]
        assert json.loads(new["metadata"])["call-id"] == str(old["id"])
        [event] = rows(fresh.db_path, f"SELECT * FROM events WHERE call_id = {new['id']}")
        assert event["kind"] == "rebuilt"
        assert json.loads(event["detail"]) == {
            "object_key": old["object_key"], "bucket": seaweed_s3.bucket, "from": "metadata",
            "site": host_site(), "call_id": old["id"],
        }  # fmt: skip
    assert {r["protocol"] for r in after} == {"rdio", "openmhz"}
    assert LABEL in {r["talkgroup_label"] for r in after}

    # Again: every object is known by its key, without a HEAD; nothing is added.
    _, again = await rebuild_from_settings(fresh, RebuildRequest())
    assert counts(again) == {"known": 3}
    assert (again.list_pages, again.heads) == (1, 0)
    assert rows(fresh.db_path) == after


async def test_a_journal_with_rows_keeps_them_and_gains_only_what_it_lacks(tmp_path: Path) -> None:
    """A pending row of the same call is that call (no second row); a pending row that holds
    the key of another object's call leaves that object its own row under another key."""
    store = FileStore(tmp_path / "bucket")
    calls = [
        ("metro/2025-11-24/9131-1764001234_851012500.0-call_1.m4a", M4A, 9131, 1764001234.0),
        ("metro/2025-11-24/2201-1764001301_851012500.0-call_2.m4a", M4A_2, 2201, 1764001301.0),
    ]
    for n, (key, data, talkgroup, start) in enumerate(calls, 1):
        path = tmp_path / f"a{n}"
        path.write_bytes(data)
        meta = objectmeta.call_metadata(
            call_id=n, site="node-a", protocol="rdio", system="11", system_label="metro",
            talkgroup=talkgroup, talkgroup_label=None, start_time=_db(start), duration=4.87,
            audio_name=key.rsplit("/", 1)[1],
        )  # fmt: skip
        await store.put_file(
            audio_object_key(key), path, size=len(data), md5_hex=hashlib.md5(data).hexdigest(),
            sha256_hex=sha(data), content_type="audio/mp4", metadata=meta,
        )  # fmt: skip
    journal = await Journal.open(tmp_path / "vault.db", site="node-a")
    try:
        same_call = _meta(9131, 1764001234.0, "9131-1764001234_851012500.0-call_1.m4a")
        first = StoredAudio("metro/2025-11-24/first.m4a", len(M4A), sha(M4A), "0" * 32)
        other = _meta(7, 1764009999.0, "x.m4a")
        known = [
            NewCall(same_call, first, None),
            NewCall(other, StoredAudio(calls[1][0], 3, "e" * 64, "0" * 32), None),
        ]
        await journal.call(insert_calls, known, "pending", journal.clock(), site=journal.site)
        report = await rebuild(journal, store, Scope("node-a"))
    finally:
        await journal.close()
    assert counts(report) == {"known": 1, "metadata": 1}
    table = rows(tmp_path / "vault.db", "SELECT * FROM calls ORDER BY id")
    assert [(r["state"], r["rebuilt"]) for r in table] == [
        ("pending", None), ("pending", None), ("done", "metadata"),
    ]  # fmt: skip
    rebuilt = table[2]
    assert rebuilt["sha256"] == sha(M4A_2) and rebuilt["talkgroup"] == 2201
    assert (
        rebuilt["key"]
        == f"metro/2025-11-24/2201-1764001301_851012500.0-call_2-{sha(M4A_2)[:12]}.m4a"
    )
    assert rebuilt["object_key"] == audio_object_key(calls[1][0])
    assert rebuilt["bucket"] == ""  # a directory has no bucket name


def _db(ts: float) -> str:
    from tr_vault.timefmt import to_db

    return to_db(ts)


def _meta(talkgroup: int, start: float, name: str) -> CallMeta:
    return CallMeta(
        protocol="rdio", system="11", system_label="metro", talkgroup=talkgroup,
        start_time=start, audio_name=name, content_type="audio/mp4",
    )  # fmt: skip


# -- objects without our metadata ----------------------------------------------------------------


async def test_objects_without_metadata_are_reported_and_rebuilt_from_their_key(
    moto_s3: MotoS3, tmp_path: Path
) -> None:
    client = moto_s3.client()

    def put(key: str, body: bytes, **extra: Any) -> str:
        etag: str = client.put_object(Bucket=moto_s3.bucket, Key=key, Body=body, **extra)["ETag"]
        return etag.strip('"')

    recorder = "audio/metro/2025-11-24/9131-1764001234_851012500.0-call_7.m4a"
    off_day = "audio/metro/2025-11-25/9131-1764001234_851012500.0-call_8.m4a"
    plain = "audio/metro/2025-11-24/Dispatch 16.20.34.mp3"
    early = "audio/west/2025-11-20/early.wav"  # tr_vault's first objects: sha256 only
    etag = put(recorder, M4A, ContentType="audio/mp4")
    put(off_day, M4A_2)
    put(plain, b"mp3 bytes")
    put(early, WAV, Metadata={"sha256": sha(WAV)})
    put("audio/README.txt", b"not a call")  # not in the key layout
    put("audio/metro/notadate/x.m4a", b"nor this")
    put("audio/metro/2025-11-24/./x.m4a", b"a key no store URL can address as it is")
    put(".tr-vault/probe", b"probe")  # outside audio/: never listed
    put("journal/generations/0/x.ltx", b"the replica")

    settings = elsewhere(tmp_path, moto_s3, "fresh")
    _, report = await rebuild_from_settings(settings, RebuildRequest())
    assert report.listed == 7
    assert counts(report) == {"key": 4, "not_a_call": 3}
    assert sorted(f.object_key for f in report.key_only) == sorted(
        [recorder, off_day, plain, early]
    )
    assert sorted(f.object_key for f in report.not_a_call) == [
        "audio/README.txt", "audio/metro/2025-11-24/./x.m4a", "audio/metro/notadate/x.m4a",
    ]  # fmt: skip
    table = {r["object_key"]: r for r in rows(settings.db_path)}
    assert all(r["rebuilt"] == "key" and r["state"] == "done" for r in table.values())
    assert all(r["protocol"] == "unknown" and r["site"] is None for r in table.values())
    # A trunk-recorder name whose start falls on the key's date tells talkgroup and second.
    r = table[recorder]
    assert (r["system"], r["talkgroup"], r["start_time"]) == ("metro", 9131, _db(1764001234))
    assert (r["sha256"], r["md5"], r["etag"]) == (f"unknown:{recorder}", etag, etag)
    assert (r["size"], r["content_type"], r["audio_name"]) == (
        len(M4A),
        "audio/mp4",
        recorder.rsplit("/", 1)[1],
    )
    assert r["key"] == "metro/2025-11-24/9131-1764001234_851012500.0-call_7.m4a"
    # Otherwise nothing is guessed: talkgroup 0, the date at midnight.
    for key in (off_day, plain):
        assert table[key]["talkgroup"] == 0
        assert table[key]["start_time"] == key.split("/")[2] + " 00:00:00.000"
        assert table[key]["sha256"] == f"unknown:{key}"
    assert table[plain]["content_type"] == "audio/mpeg"  # moto's default type says nothing
    assert table[early]["sha256"] == sha(WAV)  # what the object does say is kept
    events = rows(settings.db_path, "SELECT call_id, detail FROM events WHERE kind = 'rebuilt'")
    notes = {json.loads(e["detail"])["object_key"]: json.loads(e["detail"]) for e in events}
    assert notes[recorder]["from"] == "key"
    assert notes[recorder]["talkgroup_and_start"] == "trunk-recorder file name"
    assert notes[plain]["talkgroup_and_start"] == "unknown"
    assert notes[early]["sha256"] == "object metadata"

    _, again = await rebuild_from_settings(settings, RebuildRequest())
    assert counts(again) == {"known": 4, "not_a_call": 3} and again.heads == 0


# -- sites ---------------------------------------------------------------------------------------


async def test_site_keeps_to_its_site_and_all_sites_fills_the_catalog(
    make_vault: VaultFactory, moto_s3: MotoS3, tmp_path: Path
) -> None:
    north = await three_calls(make_vault, moto_s3, data_dir=tmp_path / "north", site="north")
    south = await three_calls(make_vault, moto_s3, data_dir=tmp_path / "south", site="south")
    unnamed = await three_calls(make_vault, moto_s3, data_dir=tmp_path / "host")  # host name
    moto_s3.client().put_object(
        Bucket=moto_s3.bucket, Key="audio/metro/2025-11-24/legacy.m4a", Body=b"old"
    )  # names no site at all
    assert len(moto_s3.keys()) == 10

    # The north node again, on an empty disk: its own calls and the one of no site.
    node = elsewhere(tmp_path, moto_s3, "north-new", site="north")
    _, report = await rebuild_from_settings(node, RebuildRequest())
    assert counts(report) == {"metadata": 3, "key": 1, "other_site": 6}
    assert report.heads == 3 + 3 + 1  # south's keys name their site: no HEAD for them
    assert report.sites == {"north": 3, "south": 3, host_site(): 3, "": 1}
    got = rows(node.db_path)
    assert sorted(r["object_key"] for r in got if r["site"] == "north") == sorted(
        r["object_key"] for r in rows(north.db_path)
    )
    assert [r["object_key"] for r in got if r["site"] is None] == [
        "audio/metro/2025-11-24/legacy.m4a"
    ]

    # Another site's calls on request, and then not the objects of no site.
    other = elsewhere(tmp_path, moto_s3, "adopt", site="north")
    _, report = await rebuild_from_settings(other, RebuildRequest(site="south"))
    assert counts(report) == {"metadata": 3, "other_site": 7}
    assert {r["site"] for r in rows(other.db_path)} == {"south"}
    assert sorted(r["sha256"] for r in rows(other.db_path)) == sorted(
        r["sha256"] for r in rows(south.db_path)
    )

    # Every site into the catalog; the journal is neither written nor created, and the lock
    # is not taken (a server may run beside it).
    viewer = elsewhere(tmp_path, moto_s3, "viewer")
    with hold_data_dir(viewer.data_dir):
        target, report = await rebuild_from_settings(viewer, RebuildRequest(all_sites=True))
    assert target.kind == "catalog" and Path(target.path) == viewer.data_dir / "catalog.db"
    assert counts(report) == {"metadata": 9, "key": 1}
    assert not viewer.db_path.exists()
    catalog = rows(Path(target.path))
    assert sorted(r["object_key"] for r in catalog) == sorted(moto_s3.keys())
    by_site = {
        s: sorted(r["sha256"] for r in catalog if r["site"] == s) for s in ("north", "south")
    }
    assert by_site["north"] == sorted(r["sha256"] for r in rows(north.db_path))
    assert by_site["south"] == sorted(r["sha256"] for r in rows(south.db_path))
    assert {r["site"] for r in catalog} == {"north", "south", host_site(), None}
    # Cross-site search is plain SQL; the same call of three sites has three rows.
    conn = sqlite3.connect(target.path)
    try:
        per_site = conn.execute(
            "SELECT coalesce(site, '') AS site, count(*) FROM calls WHERE talkgroup = 9131"
            " GROUP BY 1 ORDER BY 1"
        ).fetchall()
    finally:
        conn.close()
    assert dict(per_site) == {host_site(): 2, "north": 2, "south": 2}
    _, again = await rebuild_from_settings(viewer, RebuildRequest(all_sites=True))
    assert counts(again) == {"known": 10} and again.heads == 0
    assert unnamed.site_name == host_site()


async def test_the_server_lock_and_a_catalog_on_the_journal_are_refused(
    moto_s3: MotoS3, tmp_path: Path
) -> None:
    settings = elsewhere(tmp_path, moto_s3, "busy")
    with hold_data_dir(settings.data_dir), pytest.raises(ConfigError, match="nothing else may"):
        await rebuild_from_settings(settings, RebuildRequest())
    assert not settings.db_path.exists()
    with pytest.raises(ConfigError, match="this node's journal"):
        await rebuild_from_settings(
            settings, RebuildRequest(all_sites=True, catalog=str(settings.db_path))
        )
    local = make_settings(tmp_path, data_dir=tmp_path / "local")
    with pytest.raises(ConfigError, match="S3_BUCKET"):
        await rebuild_from_settings(local, RebuildRequest())


async def test_a_listing_the_key_may_not_make_is_an_error_naming_the_permission(
    seaweed_s3: S3Bucket, seaweed_write_only: S3Bucket, tmp_path: Path
) -> None:
    seaweed_s3.client().put_object(
        Bucket=seaweed_s3.bucket, Key="audio/m/2025-11-24/a.m4a", Body=b"a"
    )
    settings = elsewhere(tmp_path, seaweed_write_only, "w")
    _, report = await rebuild_from_settings(settings, RebuildRequest())
    assert counts(report) == {"error": 1} and not report.clean
    [error] = report.errors
    assert "listing stopped" in error.detail and "s3:ListBucket" in error.detail


# -- the command ---------------------------------------------------------------------------------


def _env(bucket: S3Bucket, data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "TR_VAULT_DATA_DIR": str(data_dir),
        "S3_BUCKET": bucket.bucket,
        "S3_ENDPOINT": bucket.url,
        "S3_REGION": bucket.region,
        "S3_ACCESS_KEY": bucket.access_key,
        "S3_SECRET_KEY": bucket.secret_key,
        **extra,
    }


def test_the_command_exit_codes_and_json(
    moto_s3: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the working tree
    client = moto_s3.client()
    for n in range(3):
        data = f"call {n}".encode()
        meta = objectmeta.call_metadata(
            call_id=n + 1, site="cli", protocol="rdio", system="11", system_label="metro",
            talkgroup=100 + n, talkgroup_label=None, start_time=_db(1764001234 + n),
            duration=1.5, audio_name=f"{100 + n}-{1764001234 + n}_851012500.0-call_{n}.m4a",
        )  # fmt: skip
        client.put_object(
            Bucket=moto_s3.bucket, Key=f"audio/cli/metro/2025-11-24/{meta['audio-name']}",
            Body=data, Metadata={**meta, "sha256": sha(data)},
        )  # fmt: skip
    client.put_object(Bucket=moto_s3.bucket, Key="audio/metro/2025-11-24/old.m4a", Body=b"o")
    data_dir = tmp_path / "data"
    env = _env(moto_s3, data_dir, TR_VAULT_SITE="cli")
    runner = CliRunner()

    done = runner.invoke(main, ["rebuild", "--from-bucket", "--json", "--page-size", "2"], env=env)
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["target"] == {
        "kind": "journal",
        "path": str(data_dir / "vault.db"),
        "site": "cli",
    }
    assert report["listed"] == 4 and report["clean"] is True
    assert report["outcomes"] == {
        "metadata": 3, "key": 1, "known": 0, "other_site": 0, "not_a_call": 0, "error": 0,
    }  # fmt: skip
    assert report["requests"] == {"list": 2, "head": 4, "total": 6}
    assert report["sites"] == {"cli": 3, "": 1}
    assert [k["object_key"] for k in report["key_only"]] == ["audio/metro/2025-11-24/old.m4a"]
    assert report["errors"] == [] and report["not_a_call"] == []
    assert {"seconds", "objects_per_second"} <= set(report)

    text = runner.invoke(main, ["rebuild", "--from-bucket"], env=env)
    assert text.exit_code == 0, text.output
    assert "already known" in text.stdout and "1 (1 LIST, 0 HEAD)" in text.stdout

    with hold_data_dir(data_dir):
        busy = runner.invoke(main, ["rebuild", "--from-bucket"], env=env)
    assert busy.exit_code == 1 and "nothing else may run on it" in busy.output

    gone = runner.invoke(
        main, ["rebuild", "--from-bucket", "--json"], env={**env, "S3_BUCKET": "no-such-bucket"}
    )
    assert gone.exit_code == 1
    failed = json.loads(gone.stdout)
    assert failed["clean"] is False and failed["outcomes"]["error"] == 1
    assert "listing stopped" in failed["errors"][0]["detail"]

    catalog = tmp_path / "all.db"
    every = runner.invoke(
        main, ["rebuild", "--from-bucket", "--all-sites", "--catalog", str(catalog), "--json"],
        env=env,
    )  # fmt: skip
    assert every.exit_code == 0, every.output
    assert json.loads(every.stdout)["target"] == {
        "kind": "catalog",
        "path": str(catalog),
        "site": None,
    }

    assert runner.invoke(main, ["rebuild"], env=env).exit_code == 2
    assert (
        runner.invoke(
            main, ["rebuild", "--from-bucket", "--site", "a", "--all-sites"], env=env
        ).exit_code
        == 2
    )
    assert (
        runner.invoke(main, ["rebuild", "--from-bucket", "--catalog", "x.db"], env=env).exit_code
        == 2
    )


def test_start_times_come_back_to_the_millisecond() -> None:
    meta = objectmeta.call_metadata(
        call_id=1, site="s", protocol="rdio", system="11", system_label=None, talkgroup=1,
        talkgroup_label=None, start_time="2025-11-24 16:20:34.750", duration=None,
        audio_name="a.m4a",
    )  # fmt: skip
    from tr_vault.rebuild import _start_time

    assert _start_time(objectmeta.decode(meta["start-time"])) == "2025-11-24 16:20:34.750"
    assert from_db("2025-11-24 16:20:34.750") == 1764001234.75
