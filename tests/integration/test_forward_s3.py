"""A pruned call is forwarded from S3 (moto): a webhook's presigned link and the streamed
GET that senders of audio read both give the exact bytes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from tests.conftest import VaultFactory, s3_settings, wait_until
from tests.s3_fixtures import MotoS3
from tests.webhooks import WebhookServer
from tests.wire import fixture_bytes, rdio_trunk_recorder
from tr_vault.app import prune_once
from tr_vault.cache import AudioCache
from tr_vault.forward.audio import StoredAudio, open_audio
from tr_vault.journal import get_call

M4A = fixture_bytes("call-9131-1764001234.m4a")


def delivery_states(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("SELECT state FROM deliveries")]
    finally:
        conn.close()


async def test_pruned_call_is_forwarded_from_s3(
    make_vault: VaultFactory, moto_s3: MotoS3, tmp_path: Path
) -> None:
    hook = WebhookServer()
    hook.status = 503  # down until the call is pruned
    forward = tmp_path / "forward.toml"
    forward.write_text(f'[[destinations]]\nname = "hook"\nkind = "webhook"\nurl = "{hook.url}"\n')
    try:
        vault = await make_vault(
            **s3_settings(moto_s3, s3_cache_retention=3600),
            forward_file=str(forward),
            forward_probe_max=0.5,
        )
        await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))
        await wait_until(lambda: [c["state"] for c in vault.calls()] == ["done"])
        conn = vault.db()
        conn.execute("UPDATE calls SET uploaded_at = '2020-01-01 00:00:00.000'")
        conn.commit()
        conn.close()
        report = await prune_once(vault.settings, dry_run=False)
        assert report.count("delete") == 1  # a pending delivery does not stop a confirmed prune
        assert not any(vault.settings.audio_dir.rglob("*.m4a"))
        # What a sender of audio reads: a streamed GET of the object.
        conn = sqlite3.connect(vault.settings.db_path)
        conn.row_factory = sqlite3.Row
        row = get_call(conn, 1)
        conn.close()
        assert row is not None and row.cached == 0
        async with moto_s3.store() as store:
            audio = await open_audio(
                row, AudioCache(vault.settings.audio_dir), store, presign_expiry=60, public_url=""
            )
            assert isinstance(audio, StoredAudio)
            assert b"".join([c async for c in audio.chunks()]) == M4A
        hook.status = 200
        await wait_until(lambda: len(hook.accepted()) == 1, within=30)
        link = hook.accepted()[0]["audio_url"]
        async with httpx.AsyncClient() as client:
            got = await client.get(link)
        assert got.status_code == 200 and got.content == M4A
        await wait_until(lambda: delivery_states(vault.settings.db_path) == ["done"])
    finally:
        hook.close()
