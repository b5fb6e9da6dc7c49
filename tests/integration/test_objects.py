"""Objects that describe themselves, rows that record where they went, PUTs that never
replace an object, the site layout of keys, and the PUT settings (storage class, SSE)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Vault, VaultFactory, s3_settings, wait_until
from tests.s3_fixtures import MotoS3, S3Bucket
from tests.wire import TR_AUDIO_NAME, Part, fixture_bytes, rdio_trunk_recorder
from tr_vault import objectmeta
from tr_vault.app import prune_once
from tr_vault.config import Settings
from tr_vault.errors import ConfigError, ObjectExists
from tr_vault.objectmeta import host_site
from tr_vault.storage.base import ObjectRef
from tr_vault.storage.s3 import S3Store

M4A = fixture_bytes("call-9131-1764001234.m4a")
M4A_2 = fixture_bytes("call-2201-1764001301.m4a")
M4A_3 = M4A_2[:-1] + bytes([M4A_2[-1] ^ 0xFF])  # other bytes, same length and type
WAV = fixture_bytes("call-9131-1764001234.wav")
CALL_KEY = f"metro/2025-11-24/{TR_AUDIO_NAME}"
LABEL = "Zürich Feuerwehr 🚒 Einsatz"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def with_label(parts: list[Part], label: str) -> list[Part]:
    return [Part(p.name, label) if p.name == "talkgroupLabel" else p for p in parts]


def kinds(vault: Vault, call_id: int) -> list[str]:
    return [e["kind"] for e in vault.events(call_id)]


async def one_done(vault: Vault, parts: list[Part]) -> dict[str, Any]:
    assert (await vault.post("/api/call-upload", parts)).status_code == 200
    await wait_until(lambda: bool(vault.calls()) and vault.calls()[-1]["state"] == "done")
    return vault.calls()[-1]


# -- metadata ------------------------------------------------------------------------------------


def test_metadata_is_ascii_and_small_even_for_long_unicode_values() -> None:
    long = "é" * 500 + "🚒" * 200
    meta = objectmeta.call_metadata(
        call_id=123456789, site=long, protocol=long, system=long, system_label=long,
        talkgroup=2**40, talkgroup_label=long, start_time="2025-11-24 16:20:34.000",
        duration=12345.678, audio_name=long,
    )  # fmt: skip
    assert all(k.isascii() and v.isascii() for k, v in meta.items())
    meta["sha256"] = "f" * 64
    assert objectmeta.metadata_bytes(meta) <= objectmeta.MAX_TOTAL < 2048
    assert objectmeta.decode(meta["talkgroup-label"]).startswith("é" * 20)
    # cut between whole characters: it still decodes to valid text
    assert "\ufffd" not in objectmeta.decode(meta["talkgroup-label"])
    assert objectmeta.encode(LABEL) == "Z%C3%BCrich%20Feuerwehr%20%F0%9F%9A%92%20Einsatz"
    assert objectmeta.decode(objectmeta.encode(LABEL)) == LABEL
    assert objectmeta.encode("50%") == "50%25"


async def test_a_call_object_carries_what_rebuilds_its_row(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    vault = await make_vault(**s3_settings(moto_s3))
    call = await one_done(vault, with_label(rdio_trunk_recorder(M4A), LABEL))
    assert call["bucket"] == moto_s3.bucket
    assert call["object_key"] == f"audio/{CALL_KEY}"  # no TR_VAULT_SITE: today's layout
    head = moto_s3.client().head_object(Bucket=moto_s3.bucket, Key=call["object_key"])
    meta = head["Metadata"]
    assert all(v.isascii() for v in meta.values())
    expected = {
        "sha256": sha(M4A),
        "call-id": str(call["id"]),
        "site": host_site(),
        "protocol": call["protocol"],
        "system": "11",
        "system-label": "metro",
        "talkgroup": "9131",
        "talkgroup-label": LABEL,
        "start-time": call["start_time"].replace(" ", "T") + "Z",
        "duration": f"{call['duration'] or 0:.3f}",
        "audio-name": TR_AUDIO_NAME,
    }
    if call["duration"] is None:
        del expected["duration"]
    assert objectmeta.decoded(meta) == expected


# -- the site layout -----------------------------------------------------------------------------


async def test_an_explicit_site_goes_into_the_key(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    vault = await make_vault(**s3_settings(moto_s3, s3_prefix="vault", site="North Tower/2"))
    call = await one_done(vault, rdio_trunk_recorder(M4A))
    assert call["object_key"] == f"vault/audio/North_Tower_2/{CALL_KEY}"
    assert moto_s3.keys() == [call["object_key"]]
    assert moto_s3.read(call["object_key"]) == M4A
    head = moto_s3.client().head_object(Bucket=moto_s3.bucket, Key=call["object_key"])
    assert head["Metadata"]["site"] == "North_Tower_2"
    # playback follows the recorded key once the cached file is gone
    conn = vault.db()
    conn.execute("UPDATE calls SET cached = 0")
    conn.commit()
    conn.close()
    vault.audio_path(call["key"]).unlink()
    response = await vault.client.get(f"{vault.url}/api/calls/{call['id']}/audio")
    assert response.status_code == 307
    assert "/vault/audio/North_Tower_2/metro/" in response.headers["location"]


def test_site_defaults_to_the_host_name_and_stays_out_of_the_key(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.site_name == host_site() and not settings.site_in_key
    assert Settings(_env_file=None, site=" a/b c ").site_name == "a_b_c"  # type: ignore[call-arg]


# -- a PUT never replaces an object --------------------------------------------------------------


@pytest.mark.parametrize("store_name", ["moto_s3", "seaweed_s3"])
async def test_two_nodes_one_bucket_one_site_keep_both_recordings(
    make_vault: VaultFactory, store_name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    bucket: S3Bucket = request.getfixturevalue(store_name)
    common = s3_settings(bucket, site="node-x")
    first = await make_vault(data_dir=tmp_path / "node-a", **common)
    second = await make_vault(data_dir=tmp_path / "node-b", **common)
    a = await one_done(first, rdio_trunk_recorder(M4A))
    b = await one_done(second, rdio_trunk_recorder(M4A_2))  # same name, system and day
    assert a["key"] == b["key"] == CALL_KEY  # each node's cache key is the plain name
    stem, ext = TR_AUDIO_NAME.rsplit(".", 1)
    assert a["object_key"] == f"audio/node-x/{CALL_KEY}"
    assert b["object_key"] == f"audio/node-x/metro/2025-11-24/{stem}-{sha(M4A_2)[:12]}.{ext}"
    assert bucket.keys() == sorted([a["object_key"], b["object_key"]])
    assert bucket.read(a["object_key"]) == M4A
    assert bucket.read(b["object_key"]) == M4A_2
    assert "key_collision" not in kinds(first, a["id"])
    [collision] = [e for e in second.events(b["id"]) if e["kind"] == "key_collision"]
    detail = json.loads(collision["detail"])
    assert detail["object_key"] == a["object_key"]
    assert detail["found_sha256"] == sha(M4A)
    assert detail["found"] == {"call-id": str(a["id"]), "site": "node-x"}
    # the second node plays its own call from its recorded key
    second_store = S3Store.from_settings(second.settings)
    try:
        assert await second_store.get(ObjectRef(b["bucket"], b["object_key"])) == M4A_2
    finally:
        await second_store.aclose()

    # The other way round on another name: now the first node meets the second's object, so
    # each journal holds a collision of its own, and all four recordings are intact.
    other = "9131-1764009999_851012500-call_2.m4a"
    d = await one_done(second, rdio_trunk_recorder(WAV, audio_name=other, date_time="1764009999"))
    c = await one_done(first, rdio_trunk_recorder(M4A_3, audio_name=other, date_time="1764009999"))
    assert "key_collision" in kinds(first, c["id"])
    assert "key_collision" not in kinds(second, d["id"])
    assert len(bucket.keys()) == 4
    for row, audio in ((a, M4A), (b, M4A_2), (c, M4A_3), (d, WAV)):
        assert bucket.read(row["object_key"]) == audio


async def test_an_earlier_attempt_that_landed_is_done_without_a_second_object(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    # What an ambiguous PUT (answer lost) leaves: our bytes and our SHA-256 at our key.
    moto_s3.client().put_object(
        Bucket=moto_s3.bucket, Key=f"audio/{CALL_KEY}", Body=M4A, Metadata={"sha256": sha(M4A)}
    )
    vault = await make_vault(**s3_settings(moto_s3))
    call = await one_done(vault, rdio_trunk_recorder(M4A))
    assert call["object_key"] == f"audio/{CALL_KEY}"
    assert call["attempts"] == 1
    assert moto_s3.keys() == [f"audio/{CALL_KEY}"]
    head = moto_s3.client().head_object(Bucket=moto_s3.bucket, Key=call["object_key"])
    assert head["Metadata"] == {"sha256": sha(M4A)}  # 412: the object was not replaced
    assert not {"key_collision", "damaged_object", "upload_error"} & set(kinds(vault, call["id"]))


async def test_head_before_put_where_the_condition_is_off(
    make_vault: VaultFactory, moto_s3: MotoS3, tmp_path: Path
) -> None:
    common = s3_settings(moto_s3, s3_conditional_put="false", site="s")
    first = await make_vault(data_dir=tmp_path / "a", **common)
    second = await make_vault(data_dir=tmp_path / "b", **common)
    a = await one_done(first, rdio_trunk_recorder(M4A))
    b = await one_done(second, rdio_trunk_recorder(M4A_2))
    assert a["object_key"] != b["object_key"]
    assert moto_s3.read(a["object_key"]) == M4A and moto_s3.read(b["object_key"]) == M4A_2
    assert "key_collision" in kinds(second, b["id"])


# -- the row records where its object went -------------------------------------------------------


async def test_calls_pruned_before_a_prefix_change_still_play(
    make_vault: VaultFactory, moto_s3: MotoS3, tmp_path: Path
) -> None:
    data = tmp_path / "node"
    old = await make_vault(data_dir=data, **s3_settings(moto_s3, s3_prefix="old"))
    call = await one_done(old, rdio_trunk_recorder(M4A))
    conn = old.db()
    conn.execute("UPDATE calls SET uploaded_at = '2020-01-01 00:00:00.000'")
    conn.commit()
    conn.close()
    assert (await prune_once(old.settings, dry_run=False)).count("delete") == 1
    await old.stop()

    new = await make_vault(
        data_dir=data, **s3_settings(moto_s3, s3_prefix="new", s3_cache_retention=1)
    )
    response = await new.client.get(f"{new.url}/api/calls/{call['id']}/audio")
    assert response.status_code == 307
    location = response.headers["location"]
    assert f"/{moto_s3.bucket}/old/audio/{CALL_KEY}" in location
    async with httpx.AsyncClient(trust_env=False) as client:
        assert (await client.get(location)).content == M4A
    # New uploads go under the new prefix; the old object is pruned against its own key.
    later = await one_done(new, rdio_trunk_recorder(M4A_2, date_time="1764001300"))
    assert later["object_key"].startswith("new/audio/")
    assert sorted(moto_s3.keys()) == sorted([f"old/audio/{CALL_KEY}", later["object_key"]])

    # Lost from the bucket: the pruner notices at the recorded key, the upload goes back there.
    conn = new.db()
    conn.execute("UPDATE calls SET cached = 1, pruned_at = NULL WHERE id = ?", (call["id"],))
    conn.execute("UPDATE calls SET uploaded_at = '2020-01-01 00:00:00.000'")
    conn.commit()
    conn.close()
    new.audio_path(call["key"]).parent.mkdir(parents=True, exist_ok=True)
    new.audio_path(call["key"]).write_bytes(M4A)
    moto_s3.client().delete_object(Bucket=moto_s3.bucket, Key=f"old/audio/{CALL_KEY}")
    report = await prune_once(new.settings, dry_run=True)
    assert {d.candidate.id: d.action for d in report.decisions}[call["id"]] == "reupload"
    await prune_once(new.settings, dry_run=False)
    await wait_until(lambda: new.calls()[0]["state"] == "done", within=30)
    assert moto_s3.read(f"old/audio/{CALL_KEY}") == M4A
    assert new.calls()[0]["object_key"] == f"old/audio/{CALL_KEY}"


async def test_rows_from_before_the_migration_keep_todays_behaviour(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    vault = await make_vault(**s3_settings(moto_s3))
    call = await one_done(vault, rdio_trunk_recorder(M4A))
    conn = vault.db()
    conn.execute("UPDATE calls SET bucket = NULL, object_key = NULL, cached = 0")
    conn.commit()
    conn.close()
    response = await vault.client.get(f"{vault.url}/api/calls/{call['id']}/audio")
    assert response.status_code == 307
    assert f"/{moto_s3.bucket}/audio/{CALL_KEY}" in response.headers["location"]


# -- storage class and SSE -----------------------------------------------------------------------


class Recorder:
    def __init__(self, status: int = 200) -> None:
        self.requests: list[httpx.Request] = []
        self.status = status

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, headers={"ETag": '"abc"'})


async def test_storage_class_and_sse_kms_headers_are_sent_and_signed(tmp_path: Path) -> None:
    recorder = Recorder()
    store = S3Store(
        bucket="b", endpoint="http://127.0.0.1:9", access_key="K", secret_key="S",
        transport=httpx.MockTransport(recorder), storage_class="glacier_ir", sse="aws:kms",
        sse_kms_key_id="arn:aws:kms:us-east-1:1:key/k", conditional_put=True,
    )  # fmt: skip
    path = tmp_path / "a"
    path.write_bytes(b"abc")
    args: dict[str, Any] = dict(
        size=3, md5_hex=hashlib.md5(b"abc").hexdigest(), sha256_hex=sha(b"abc"),
        content_type="audio/mp4",
    )  # fmt: skip
    await store.put_file("audio/x.m4a", path, metadata={"call-id": "1"}, if_absent=True, **args)
    await store.put_file(".tr-vault/probe", path, **args)  # the probe: no class, no condition
    await store.aclose()
    call, probe = recorder.requests
    assert call.headers["x-amz-storage-class"] == "GLACIER_IR"
    assert call.headers["x-amz-server-side-encryption"] == "aws:kms"
    assert call.headers["x-amz-server-side-encryption-aws-kms-key-id"].endswith("key/k")
    assert call.headers["if-none-match"] == "*"
    assert call.headers["x-amz-meta-call-id"] == "1"
    signed = call.headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    for name in ("x-amz-storage-class", "x-amz-server-side-encryption", "if-none-match",
                 "x-amz-server-side-encryption-aws-kms-key-id", "x-amz-meta-call-id"):  # fmt: skip
        assert name in signed, name
    assert "x-amz-storage-class" not in probe.headers and "if-none-match" not in probe.headers
    assert probe.headers["x-amz-server-side-encryption"] == "aws:kms"


async def test_412_is_object_exists(tmp_path: Path) -> None:
    store = S3Store(
        bucket="b", endpoint="http://127.0.0.1:9", access_key="K", secret_key="S",
        transport=httpx.MockTransport(Recorder(412)), conditional_put=True,
    )  # fmt: skip
    path = tmp_path / "a"
    path.write_bytes(b"abc")
    with pytest.raises(ObjectExists):
        await store.put_file(
            "audio/x", path, size=3, md5_hex=hashlib.md5(b"abc").hexdigest(),
            sha256_hex=sha(b"abc"), content_type="audio/mp4", if_absent=True,
        )  # fmt: skip
    await store.aclose()


async def test_seaweedfs_takes_storage_class_and_sse_s3(
    make_vault: VaultFactory, seaweed_s3: S3Bucket
) -> None:
    vault = await make_vault(
        **s3_settings(seaweed_s3, s3_storage_class="STANDARD_IA", s3_sse="AES256")
    )
    call = await one_done(vault, rdio_trunk_recorder(M4A))
    assert seaweed_s3.read(call["object_key"]) == M4A
    head = seaweed_s3.client().head_object(Bucket=seaweed_s3.bucket, Key=call["object_key"])
    assert head["Metadata"]["call-id"] == str(call["id"])
    assert head.get("StorageClass", "STANDARD_IA") == "STANDARD_IA"


def test_settings_refuse_unplayable_classes_and_default_etag_checks(tmp_path: Path) -> None:
    from tr_vault.config import load_settings

    base: dict[str, Any] = {"_env_file": None, "data_dir": tmp_path}
    for name in ("GLACIER", "DEEP_ARCHIVE", "NOPE"):
        with pytest.raises(ConfigError, match="S3_STORAGE_CLASS"):
            load_settings(**base, s3_storage_class=name)
    with pytest.raises(ConfigError, match="S3_SSE"):
        load_settings(**base, s3_sse="rot13")
    with pytest.raises(ConfigError, match="S3_SSE_KMS_KEY_ID"):
        load_settings(**base, s3_sse="AES256", s3_sse_kms_key_id="k")
    assert load_settings(**base).verify_etag
    assert load_settings(**base, s3_sse="AES256").verify_etag
    assert not load_settings(**base, s3_sse="aws:kms").verify_etag
    assert load_settings(**base, s3_sse="aws:kms", s3_verify_etag=True).verify_etag
    assert load_settings(**base, s3_storage_class="standard_ia").s3_storage_class == "STANDARD_IA"
