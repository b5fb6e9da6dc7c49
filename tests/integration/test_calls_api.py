"""Playback, listing, one call's history, the journal summary and metrics, over HTTP."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest

from tests.conftest import Vault, VaultFactory, s3_settings, wait_until
from tests.s3_fixtures import S3Bucket
from tests.wire import fixture_bytes, openmhz, rdio_trunk_recorder
from tr_vault.app import prune_once

M4A = fixture_bytes("call-9131-1764001234.m4a")
M4A_2 = fixture_bytes("call-2201-1764001301.m4a")
WAV = fixture_bytes("call-9131-1764001234.wav")


async def get(vault: Vault, path: str, **kw: Any) -> httpx.Response:
    return await vault.client.get(vault.url + path, **kw)


async def test_cached_playback_with_range_and_conditional_requests(vault: Vault) -> None:
    assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
    [call] = vault.calls()
    url = f"/api/calls/{call['id']}/audio"

    whole = await get(vault, url)
    assert whole.status_code == 200
    assert whole.content == M4A
    assert whole.headers["content-type"] == "audio/mp4"
    assert whole.headers["content-length"] == str(len(M4A))
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["etag"] == f'"{call["sha256"]}"'
    assert "last-modified" in whole.headers
    assert whole.headers["content-disposition"].startswith("inline; filename=")

    part = await get(vault, url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == M4A[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(M4A)}"

    same = await get(vault, url, headers={"If-None-Match": whole.headers["etag"]})
    assert same.status_code == 304
    assert same.content == b""


async def test_unknown_call_and_uncached_unuploaded_call_are_404_with_reasons(
    vault: Vault,
) -> None:
    missing = await get(vault, "/api/calls/999/audio")
    assert missing.status_code == 404
    assert missing.json() == {"error": "no call 999"}
    assert (await get(vault, "/api/calls/999")).status_code == 404

    assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
    [call] = vault.calls()
    # A pending call whose cached file was lost (disk failure): nowhere to play it from.
    vault.audio_path(call["key"]).unlink()
    conn = vault.db()
    conn.execute(
        "UPDATE calls SET state = 'pending', cached = 0, last_error = 'S3 unreachable'"
        " WHERE id = ?",
        (call["id"],),
    )
    conn.commit()
    conn.close()
    response = await get(vault, f"/api/calls/{call['id']}/audio")
    assert response.status_code == 404
    assert response.json()["error"] == (
        f"call {call['id']} is not cached and not in S3 yet (state pending,"
        " last error: S3 unreachable)"
    )


@pytest.mark.parametrize("backend", ["moto_s3", "seaweed_s3"])
async def test_pruned_call_redirects_to_a_presigned_url_with_exact_bytes(
    make_vault: VaultFactory, backend: str, request: pytest.FixtureRequest
) -> None:
    bucket: S3Bucket = request.getfixturevalue(backend)
    vault = await make_vault(**s3_settings(bucket, s3_cache_retention=3600))
    assert (await vault.post("/api/trunk-recorder-call-upload", _meta_upload())).status_code == 200
    await wait_until(lambda: [c["state"] for c in vault.calls()] == ["done"])
    [call] = vault.calls()
    # Make the call older than the retention, then run one pruner pass.
    conn = vault.db()
    conn.execute("UPDATE calls SET uploaded_at = '2020-01-01 00:00:00.000'")
    conn.commit()
    conn.close()
    report = await prune_once(vault.settings, dry_run=False)
    assert report.count("delete") == 1
    assert not vault.audio_path(call["key"]).exists()

    response = await get(vault, f"/api/calls/{call['id']}/audio")
    assert response.status_code == 307
    location = response.headers["location"]
    assert "X-Amz-Signature=" in location
    async with httpx.AsyncClient() as client:
        fetched = await client.get(location)
        assert fetched.status_code == 200
        assert fetched.content == WAV
        assert hashlib.sha256(fetched.content).hexdigest() == call["sha256"]
        assert fetched.headers["content-type"] == "audio/wav"  # the part said audio/x-wav
        if backend == "seaweed_s3":
            ranged = await client.get(location, headers={"Range": "bytes=0-99"})
            assert ranged.status_code == 206
            assert ranged.content == WAV[:100]


def _meta_upload() -> list[Any]:
    from tests.wire import trunk_recorder_meta_upload

    return trunk_recorder_meta_upload(WAV)


async def test_listing_filters_and_keyset_pagination(vault: Vault) -> None:
    for n in range(7):
        parts = rdio_trunk_recorder(
            M4A + bytes([n]),
            date_time=str(1764001234 + n * 60),
            talkgroup="9131" if n % 2 else "2201",
            audio_name=f"call-{n}.m4a",
        )
        assert (await vault.post("/api/call-upload", parts)).status_code == 200
    assert (await vault.post("/county/upload", openmhz(M4A_2, api_key="tr-key"))).status_code == 200

    everything = (await get(vault, "/api/calls")).json()
    assert len(everything["calls"]) == 8
    assert everything["next_cursor"] is None
    starts = [c["start_time"] for c in everything["calls"]]
    assert starts == sorted(starts, reverse=True)

    pages: list[int] = []
    cursor = None
    while True:
        params = {"system": "metro", "limit": "3", **({"cursor": cursor} if cursor else {})}
        page = (await get(vault, "/api/calls", params=params)).json()
        pages.append(len(page["calls"]))
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [3, 3, 1]

    tg = (await get(vault, "/api/calls", params={"talkgroup": "9131"})).json()["calls"]
    assert {c["talkgroup"] for c in tg} == {9131}
    assert len(tg) == 4
    window = (
        await get(
            vault, "/api/calls", params={"since": "1764001294", "until": "2025-11-24T16:24:34Z"}
        )
    ).json()["calls"]
    assert [c["audio_name"] for c in window] == ["call-3.m4a", "call-2.m4a", "call-1.m4a"]
    county = (await get(vault, "/api/calls", params={"system": "county"})).json()["calls"]
    assert [c["protocol"] for c in county] == ["openmhz"]
    assert county[0]["audio_url"] == f"/api/calls/{county[0]['id']}/audio"
    assert "claimed_by" not in county[0]

    for bad in ({"limit": "0"}, {"limit": "x"}, {"state": "gone"}, {"since": "yesterday"},
                {"cursor": "nope"}, {"talkgroup": "abc"}):  # fmt: skip
        response = await get(vault, "/api/calls", params=bad)
        assert response.status_code == 400, bad
        assert next(iter(bad)) in response.json()["error"]


async def test_one_call_with_events_and_the_summary(vault: Vault) -> None:
    await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))
    await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))  # duplicate
    [call] = vault.calls()
    detail = (await get(vault, f"/api/calls/{call['id']}")).json()
    assert detail["call"]["sha256"] == call["sha256"]
    assert detail["call"]["metadata"]["systemLabel"] == "metro"
    assert [e["kind"] for e in detail["events"]] == ["received", "duplicate"]

    summary = (await get(vault, "/api/journal/summary")).json()
    assert summary["states"]["done"] == {"calls": 1, "bytes": len(M4A)}
    assert summary["states"]["pending"] == {"calls": 0, "bytes": 0}
    assert summary["cached"] == {"calls": 1, "bytes": len(M4A)}
    assert summary["oldest_pending"] is None
    assert summary["upload_errors_last_hour"] == 0


async def test_metrics(vault: Vault) -> None:
    await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))
    await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))
    await vault.post("/api/call-upload", rdio_trunk_recorder(M4A_2, key="bad"))
    text = (await get(vault, "/metrics")).text
    assert 'tr_vault_calls_received_total{protocol="rdio",result="stored"} 1.0' in text
    assert 'tr_vault_calls_received_total{protocol="rdio",result="duplicate"} 1.0' in text
    assert 'tr_vault_calls_received_total{protocol="rdio",result="401"} 1.0' in text
    assert f"tr_vault_cached_bytes {float(len(M4A))}" in text
    assert "tr_vault_calls_pending 0.0" in text
    for name in ("tr_vault_upload_attempts", "tr_vault_upload_duration_seconds",
                 "tr_vault_prune_deletions", "tr_vault_head_errors", "tr_vault_calls_failed"):  # fmt: skip
        assert f"# TYPE {name}" in text
    assert all(line.startswith(("#", "tr_vault_")) for line in text.splitlines() if line.strip())


async def test_read_keys(make_vault: VaultFactory) -> None:
    vault = await make_vault(read_keys="listen-key")
    await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))
    assert (await get(vault, "/api/calls")).status_code == 401
    assert (
        await get(vault, "/api/calls", headers={"Authorization": "Bearer nope"})
    ).status_code == 401
    ok = await get(vault, "/api/calls", headers={"Authorization": "Bearer listen-key"})
    assert ok.status_code == 200
    audio = await get(vault, "/api/calls/1/audio", params={"key": "listen-key"})
    assert audio.content == M4A
    assert (await get(vault, "/healthz")).status_code == 200
