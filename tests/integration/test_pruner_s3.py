"""The pruner against a real S3 server (moto): lost objects, outages, directory clean-up."""

from __future__ import annotations

from tests.conftest import Vault, VaultFactory, s3_settings, wait_until
from tests.s3_fixtures import MotoS3
from tests.wire import fixture_bytes, rdio_trunk_recorder
from tr_vault.app import prune_once

M4A = fixture_bytes("call-9131-1764001234.m4a")
M4A_2 = fixture_bytes("call-2201-1764001301.m4a")


def age_everything(vault: Vault) -> None:
    conn = vault.db()
    conn.execute("UPDATE calls SET uploaded_at = '2020-01-01 00:00:00.000'")
    conn.commit()
    conn.close()


async def two_uploaded_calls(make_vault: VaultFactory, moto_s3: MotoS3) -> Vault:
    vault = await make_vault(**s3_settings(moto_s3, s3_cache_retention=3600))
    await vault.post("/api/call-upload", rdio_trunk_recorder(M4A, system_label="north"))
    await vault.post("/api/call-upload", rdio_trunk_recorder(M4A_2, system_label="south"))
    await wait_until(lambda: [c["state"] for c in vault.calls()] == ["done", "done"])
    age_everything(vault)
    return vault


async def test_prune_removes_files_and_their_empty_directories(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    vault = await two_uploaded_calls(make_vault, moto_s3)
    report = await prune_once(vault.settings, dry_run=False)
    assert report.count("delete") == 2
    audio = vault.settings.audio_dir
    assert sorted(p.name for p in audio.iterdir()) == [".incoming"]


async def test_s3_unreachable_during_a_pass_deletes_nothing(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    vault = await two_uploaded_calls(make_vault, moto_s3)
    moto_s3.stop()
    report = await prune_once(vault.settings, dry_run=False)
    # The store probe fails first: no candidate is even looked at.
    assert report.skipped is not None and "ConnectError" in report.skipped
    assert report.decisions == [] and report.heads == 0
    assert [c["cached"] for c in vault.calls()] == [1, 1]
    assert all(vault.audio_path(c["key"]).exists() for c in vault.calls())


async def test_object_deleted_behind_our_back_is_reuploaded(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    vault = await two_uploaded_calls(make_vault, moto_s3)
    lost, kept = vault.calls()
    moto_s3.client().delete_object(Bucket=moto_s3.bucket, Key=f"audio/{lost['key']}")
    report = await prune_once(vault.settings, dry_run=False)
    assert sorted(d.action for d in report.decisions) == ["delete", "reupload"]
    assert vault.audio_path(lost["key"]).exists()
    assert not vault.audio_path(kept["key"]).exists()
    assert "missing_in_s3" in [e["kind"] for e in vault.events(lost["id"])]
    # The running server's workers pick the row up again (they poll the journal).
    await wait_until(lambda: vault.calls()[0]["state"] == "done", within=30)
    assert moto_s3.read(f"audio/{lost['key']}") == M4A


async def test_replaced_object_keeps_the_file(make_vault: VaultFactory, moto_s3: MotoS3) -> None:
    vault = await two_uploaded_calls(make_vault, moto_s3)
    first, _ = vault.calls()
    moto_s3.client().put_object(
        Bucket=moto_s3.bucket, Key=f"audio/{first['key']}", Body=b"other bytes",
        Metadata={"sha256": first["sha256"]},
    )  # fmt: skip
    report = await prune_once(vault.settings, dry_run=False)
    kept = [d for d in report.decisions if d.action == "keep"]
    assert [d.candidate.id for d in kept] == [first["id"]]
    assert kept[0].why.startswith("size mismatch")
    assert vault.audio_path(first["key"]).exists()
