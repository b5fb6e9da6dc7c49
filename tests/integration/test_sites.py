"""Many sites, one bucket: each node uploads, prunes and verifies only its own calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import Vault, VaultFactory, s3_settings, wait_until
from tests.s3_fixtures import MotoS3
from tests.wire import TR_AUDIO_NAME, fixture_bytes, rdio_trunk_recorder
from tr_vault.app import prune_once
from tr_vault.verify import Selection, VerifyRequest, verify_from_settings

RECORDINGS = {
    "north": fixture_bytes("call-9131-1764001234.m4a"),
    "east": fixture_bytes("call-2201-1764001301.m4a"),
    "south": fixture_bytes("call-9131-1764001234.wav"),
}


def age_uploads(vault: Vault) -> None:
    conn = vault.db()
    conn.execute("UPDATE calls SET uploaded_at = '2020-01-01 00:00:00.000'")
    conn.commit()
    conn.close()


async def site_node(make_vault: VaultFactory, bucket: MotoS3, root: Path, site: str) -> Vault:
    return await make_vault(
        data_dir=root / site, **s3_settings(bucket, site=site, s3_cache_retention=3600)
    )


async def test_three_sites_share_a_bucket_and_each_minds_its_own(
    make_vault: VaultFactory, moto_s3: MotoS3, tmp_path: Path
) -> None:
    nodes = {site: await site_node(make_vault, moto_s3, tmp_path, site) for site in RECORDINGS}
    # The same system, talkgroup, day and file name at every site: only the site segment
    # keeps the keys apart.
    for site, node in nodes.items():
        assert (
            await node.post("/api/call-upload", rdio_trunk_recorder(RECORDINGS[site]))
        ).is_success
    for node in nodes.values():
        await wait_until(lambda node=node: [c["state"] for c in node.calls()] == ["done"])  # type: ignore[misc]
    rows: dict[str, dict[str, Any]] = {site: node.calls()[0] for site, node in nodes.items()}
    for site, row in rows.items():
        assert row["object_key"] == f"audio/{site}/metro/2025-11-24/{TR_AUDIO_NAME}"
        assert row["site"] == site
        assert moto_s3.read(row["object_key"]) == RECORDINGS[site]

    # Pruning: each node HEADs and evicts its own call only.
    for site, node in nodes.items():
        age_uploads(node)
        report = await prune_once(node.settings, dry_run=False)
        assert report.heads == 1
        assert [(d.candidate.object_key, d.action) for d in report.decisions] == [
            (rows[site]["object_key"], "delete")
        ]
        assert not node.audio_path(rows[site]["key"]).exists()

    # Verifying: east's object disappears; only east finds it, and only east's row is lost.
    moto_s3.client().delete_object(Bucket=moto_s3.bucket, Key=rows["east"]["object_key"])
    for site, node in nodes.items():
        report = await verify_from_settings(
            node.settings, VerifyRequest(Selection(site=node.settings.site_name))
        )
        assert report.checked == 1
        assert report.requests == 1
        assert report.clean is (site != "east")
    assert {site: node.calls()[0]["state"] for site, node in nodes.items()} == {
        "north": "done",
        "east": "lost",
        "south": "done",
    }
    # Every other site's object is untouched.
    assert sorted(moto_s3.keys()) == sorted(rows[s]["object_key"] for s in ("north", "south"))


async def test_rows_of_another_site_in_the_journal_are_left_alone(
    make_vault: VaultFactory, moto_s3: MotoS3, tmp_path: Path
) -> None:
    """A journal holding another site's rows (restored or rebuilt from that site) neither
    uploads nor prunes them: they are that node's."""
    node = await site_node(make_vault, moto_s3, tmp_path, "north")
    assert (
        await node.post("/api/call-upload", rdio_trunk_recorder(RECORDINGS["north"]))
    ).is_success
    await wait_until(lambda: [c["state"] for c in node.calls()] == ["done"])
    await node.stop()
    conn = node.db()
    conn.execute("UPDATE calls SET site = 'south', uploaded_at = '2020-01-01 00:00:00.000'")
    conn.commit()
    conn.close()
    report = await prune_once(node.settings, dry_run=False)
    assert report.decisions == []
    assert node.audio_path(node.calls()[0]["key"]).exists()

    # A pending row of the other site is not claimed by this node's workers.
    conn = node.db()
    conn.execute(
        "UPDATE calls SET state = 'pending', attempts = 0, next_attempt_at = '2020-01-01 00:00:00.000'"
    )
    conn.commit()
    conn.close()
    moto_s3.client().delete_object(Bucket=moto_s3.bucket, Key=node.calls()[0]["object_key"])
    await node.start()
    assert (
        await node.post(
            "/api/call-upload", rdio_trunk_recorder(RECORDINGS["east"], date_time="1764001301")
        )
    ).is_success
    await wait_until(lambda: [c["state"] for c in node.calls()] == ["pending", "done"])
    assert node.calls()[0]["attempts"] == 0
    assert moto_s3.keys() == [node.calls()[1]["object_key"]]
