"""`tr-vault verify`: the bucket re-checked against the journal, and what it does about it.

SeaweedFS is the store here: it keeps user metadata and answers HEAD like S3 does.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import Vault, VaultFactory, s3_settings, wait_until
from tests.s3_fixtures import MotoS3, S3Bucket
from tests.wire import fixture_bytes, rdio_trunk_recorder
from tr_vault.app import prune_once
from tr_vault.config import Settings
from tr_vault.verify import Selection, VerifyRequest, parse_when, verify_from_settings

M4A = fixture_bytes("call-9131-1764001234.m4a")
M4A_2 = fixture_bytes("call-2201-1764001301.m4a")
WAV = fixture_bytes("call-9131-1764001234.wav")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def env_of(settings: Settings, **overrides: str) -> dict[str, str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "TR_VAULT_DATA_DIR": str(settings.data_dir),
        "TR_VAULT_SITE": settings.site,
        "S3_BUCKET": settings.s3_bucket,
        "S3_ENDPOINT": settings.s3_endpoint,
        "S3_REGION": settings.s3_region,
        "S3_ACCESS_KEY": settings.s3_access_key,
        "S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
    }
    env.update(overrides)
    return env


async def cli_verify(settings: Settings, *args: str) -> tuple[int, str, str]:
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "tr_vault", "verify", *args],
            env=env_of(settings),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def three_done(vault: Vault) -> list[dict[str, Any]]:
    for audio, when in ((M4A, "1764001234"), (M4A_2, "1764001301"), (WAV, "1764001400")):
        parts = rdio_trunk_recorder(audio, date_time=when, audio_name=f"9131-{when}_85.m4a")
        assert (await vault.post("/api/call-upload", parts)).status_code == 200
    await wait_until(lambda: [c["state"] for c in vault.calls()] == ["done"] * 3)
    return vault.calls()


def prune_all(vault: Vault, ids: list[int]) -> None:
    conn = vault.db()
    marks = ",".join("?" * len(ids))
    conn.execute(
        f"UPDATE calls SET uploaded_at = '2020-01-01 00:00:00.000' WHERE id IN ({marks})", ids
    )
    conn.commit()
    conn.close()


def kinds(vault: Vault, call_id: int) -> list[str]:
    return [e["kind"] for e in vault.events(call_id)]


async def test_a_changed_and_a_deleted_object_are_found_and_acted_on(
    make_vault: VaultFactory, seaweed_s3: S3Bucket
) -> None:
    vault = await make_vault(**s3_settings(seaweed_s3, s3_cache_retention=3600))
    changed, deleted, _intact = await three_done(vault)
    # `deleted` is pruned first: its only copy is then the object.
    prune_all(vault, [deleted["id"]])
    assert (await prune_once(vault.settings, dry_run=False)).count("delete") == 1
    assert not vault.audio_path(deleted["key"]).exists()

    code, out, _ = await cli_verify(vault.settings, "--json")
    assert code == 0, out
    assert json.loads(out)["outcomes"]["ok"] == 3
    checked = {c["id"]: c["checked_at"] for c in vault.calls()}
    assert all(checked.values())

    s3 = seaweed_s3.client()
    s3.put_object(Bucket=seaweed_s3.bucket, Key=changed["object_key"], Body=b"other bytes")
    s3.delete_object(Bucket=seaweed_s3.bucket, Key=deleted["object_key"])

    code, out, _ = await cli_verify(vault.settings, "--json")
    assert code == 1
    report = json.loads(out)
    assert report["outcomes"] == {"ok": 1, "missing": 1, "changed": 1, "unchecked": 0}
    found = {f["call_id"]: (f["outcome"], f["action"]) for f in report["findings"]}
    assert found == {changed["id"]: ("changed", "requeued"), deleted["id"]: ("missing", "lost")}
    assert report["requests"] == 3

    # The lost call is in a state of its own, with its reason, everywhere an operator looks.
    row = next(c for c in vault.calls() if c["id"] == deleted["id"])
    assert row["state"] == "lost"
    assert "no local copy" in row["last_error"]
    assert "lost" in kinds(vault, deleted["id"])
    summary = (await vault.client.get(f"{vault.url}/api/journal/summary")).json()
    assert summary["states"]["lost"]["calls"] == 1
    metrics = (await vault.client.get(f"{vault.url}/metrics")).text
    assert "tr_vault_calls_lost 1.0" in metrics
    with trio.fail_after(60):
        status = await trio.run_process(
            [sys.executable, "-m", "tr_vault", "status"],
            env=env_of(vault.settings),
            capture_stdout=True,
        )
    assert "    lost: 1 calls" in status.stdout.decode()

    # The changed one went back to the queue and is uploaded again: the key holds other
    # bytes now, so it gets a key of its own, and the original bytes are in the bucket.
    assert "verify_changed" in kinds(vault, changed["id"])
    await wait_until(
        lambda: next(c for c in vault.calls() if c["id"] == changed["id"])["state"] == "done"
    )
    again = next(c for c in vault.calls() if c["id"] == changed["id"])
    assert again["object_key"] != changed["object_key"]
    assert seaweed_s3.read(again["object_key"]) == M4A
    assert seaweed_s3.read(changed["object_key"]) == b"other bytes"  # not ours to delete

    # Verified again: clean, and the lost call is not `done`, so not checked as if it were.
    code, out, _ = await cli_verify(vault.settings, "--json")
    assert code == 0, out
    assert json.loads(out)["checked"] == 2


async def test_a_missing_object_with_the_audio_cached_is_uploaded_again(
    make_vault: VaultFactory, seaweed_s3: S3Bucket
) -> None:
    vault = await make_vault(**s3_settings(seaweed_s3))
    [first, *_] = await three_done(vault)
    seaweed_s3.client().delete_object(Bucket=seaweed_s3.bucket, Key=first["object_key"])
    report = await verify_from_settings(
        vault.settings, VerifyRequest(Selection(site=vault.settings.site_name))
    )
    assert report.counts == {"ok": 2, "missing": 1}
    assert report.actions == {"requeued": 1}
    assert not report.clean
    await wait_until(lambda: vault.calls()[0]["state"] == "done")
    assert vault.calls()[0]["object_key"] == first["object_key"]  # back where it was
    assert seaweed_s3.read(first["object_key"]) == M4A
    assert kinds(vault, first["id"])[-3:] == ["verify_missing", "upload_ok", "verified"]


async def test_deep_finds_bytes_changed_under_intact_metadata(
    make_vault: VaultFactory, seaweed_s3: S3Bucket
) -> None:
    """Same size, same sha256 metadata, other bytes: only re-hashing the download sees it."""
    vault = await make_vault(**s3_settings(seaweed_s3))
    [call, *_] = await three_done(vault)
    s3 = seaweed_s3.client()
    forged = bytes(len(M4A))
    head = s3.head_object(Bucket=seaweed_s3.bucket, Key=call["object_key"])
    s3.put_object(
        Bucket=seaweed_s3.bucket, Key=call["object_key"], Body=forged, Metadata=head["Metadata"]
    )
    light = await verify_from_settings(
        vault.settings, VerifyRequest(Selection(site=vault.settings.site_name), act=False)
    )
    assert light.clean
    deep = await verify_from_settings(
        vault.settings,
        VerifyRequest(Selection(site=vault.settings.site_name), deep=True, act=False),
    )
    assert deep.counts == {"ok": 2, "changed": 1}
    assert deep.requests == 6  # a HEAD and a GET each
    [finding] = deep.findings
    assert "do not hash" in finding.detail
    assert finding.action == "reported"
    assert vault.calls()[0]["state"] == "done"  # act=False: nothing changed


async def test_selection_by_time_system_and_sample(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    vault = await make_vault(**s3_settings(moto_s3))
    calls = await three_done(vault)
    conn = vault.db()
    for call, day in zip(calls, ("2026-11-01", "2026-11-15", "2026-11-30"), strict=True):
        conn.execute(
            "UPDATE calls SET received_at = ? WHERE id = ?", (f"{day} 12:00:00.000", call["id"])
        )
    conn.commit()
    conn.close()
    site = vault.settings.site_name

    async def checked(**selection: Any) -> int:
        report = await verify_from_settings(
            vault.settings, VerifyRequest(Selection(**{"site": site, **selection}), act=False)
        )
        return report.checked

    assert await checked(since="2026-11-10 00:00:00.000") == 2
    assert await checked(since="2026-11-10 00:00:00.000", until="2026-11-20 00:00:00.000") == 1
    assert await checked(systems=("metro",)) == 3
    assert await checked(systems=("11",)) == 3
    assert await checked(systems=("other",)) == 0
    assert await checked(sample=2) == 2
    assert await checked(site="elsewhere") == 0
    code, out, _ = await cli_verify(vault.settings, "--since", "2026-11-10", "--json")
    assert code == 0 and json.loads(out)["checked"] == 2


async def test_only_this_sites_rows_are_changed(make_vault: VaultFactory, moto_s3: MotoS3) -> None:
    vault = await make_vault(**s3_settings(moto_s3, site="north"))
    calls = await three_done(vault)
    # One row as another site's (as a restore or rebuild of that site would leave it).
    conn = vault.db()
    conn.execute("UPDATE calls SET site = 'south', cached = 0 WHERE id = ?", (calls[0]["id"],))
    conn.commit()
    conn.close()
    for call in calls:
        moto_s3.client().delete_object(Bucket=moto_s3.bucket, Key=call["object_key"])
    code, out, _ = await cli_verify(vault.settings, "--json")
    assert code == 1
    assert json.loads(out)["checked"] == 2  # north's rows only
    assert {c["id"]: c["state"] for c in vault.calls()}[calls[0]["id"]] == "done"
    code, out, _ = await cli_verify(vault.settings, "--site", "south", "--json")
    report = json.loads(out)
    assert code == 1 and report["checked"] == 1
    assert report["findings"][0]["action"] == "reported"
    assert {c["id"]: c["state"] for c in vault.calls()}[calls[0]["id"]] == "done"


async def test_the_cli_says_what_is_wrong_with_its_flags(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    vault = await make_vault(**s3_settings(moto_s3))
    code, _, err = await cli_verify(vault.settings, "--since", "yesterday-ish")
    assert code == 2 and "neither a date or time" in err
    code, _, err = await cli_verify(vault.settings, "--site", "a", "--all-sites")
    assert code == 2 and "not both" in err
    code, _, err = await cli_verify(vault.settings, "--all-sites")
    assert code == 1 and "tr-vault rebuild --from-bucket --all-sites" in err
    code, out, err = await cli_verify(vault.settings)  # nothing to check: clean
    assert code == 0 and "checked" in out


async def test_local_only_mode_has_nothing_to_verify(vault: Vault) -> None:
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "tr_vault", "verify"],
            env={"PATH": "/usr/bin:/bin", "TR_VAULT_DATA_DIR": str(vault.settings.data_dir)},
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 1
    assert b"local-only mode" in done.stderr


def test_when_is_a_date_a_time_or_a_duration_ago() -> None:
    now = 1_764_600_000.0  # 2025-12-01 14:40:00 UTC
    assert parse_when("2026-11-30", now) == "2026-11-30 00:00:00.000"
    assert parse_when("2026-11-30T18:00Z", now) == "2026-11-30 18:00:00.000"
    assert parse_when("2026-11-30T18:00+02:00", now) == "2026-11-30 16:00:00.000"
    assert parse_when("24h", now) == "2025-11-30 14:40:00.000"
    with pytest.raises(ValueError, match="duration ago"):
        parse_when("soon", now)


async def test_scheduled_verify_samples_and_counts_what_it_finds(
    make_vault: VaultFactory, seaweed_s3: S3Bucket
) -> None:
    vault = await make_vault(
        **s3_settings(seaweed_s3, verify_interval=0.2, verify_sample=3, s3_cache_retention=3600)
    )
    calls = await three_done(vault)
    prune_all(vault, [calls[1]["id"]])
    await prune_once(vault.settings, dry_run=False)
    seaweed_s3.client().delete_object(Bucket=seaweed_s3.bucket, Key=calls[1]["object_key"])
    await wait_until(lambda: vault.calls()[1]["state"] == "lost", within=30)
    metrics = (await vault.client.get(f"{vault.url}/metrics")).text
    assert 'tr_vault_verify_results_total{outcome="missing"} 1.0' in metrics
    assert "tr_vault_verify_last_run_timestamp_seconds" in metrics
    assert "lost" in kinds(vault, calls[1]["id"])


async def test_presigned_playback_of_a_verified_call_has_the_exact_bytes(
    make_vault: VaultFactory, seaweed_s3: S3Bucket
) -> None:
    """What verify vouches for is what a player gets."""
    vault = await make_vault(**s3_settings(seaweed_s3, s3_cache_retention=1))
    [call, *_] = await three_done(vault)
    prune_all(vault, [call["id"]])
    await prune_once(vault.settings, dry_run=False)
    report = await verify_from_settings(
        vault.settings, VerifyRequest(Selection(site=vault.settings.site_name), deep=True)
    )
    assert report.clean
    response = await vault.client.get(f"{vault.url}/api/calls/{call['id']}/audio")
    assert response.status_code == 307
    async with httpx.AsyncClient(trust_env=False) as client:
        assert sha((await client.get(response.headers["location"])).content) == sha(M4A)
