"""OpenMHz upload replays: trunk-recorder's openmhz_uploader, part for part."""

from __future__ import annotations

import hashlib
import json

from tests.conftest import Vault
from tests.wire import fixture_bytes, openmhz

M4A = fixture_bytes("call-9131-1764001234.m4a")


async def test_openmhz_upload_is_stored_with_every_field(vault: Vault) -> None:
    response = await vault.post("/Metro/upload", openmhz(M4A))
    assert response.status_code == 200
    assert response.text == ""
    [call] = vault.calls()
    assert call["protocol"] == "openmhz"
    assert call["system"] == "metro"  # OpenMHz lowercases the short name
    assert call["talkgroup"] == 9131
    assert call["frequency"] == 851012500
    assert call["source"] == 1402211
    assert call["start_time"] == "2025-11-24 16:20:34.000"
    assert call["stop_time"] == "2025-11-24 16:20:39.000"
    assert call["duration"] == 5
    assert call["emergency"] == 0
    assert call["content_type"] == "audio/mp4"
    assert call["key"] == "metro/2025-11-24/9131-1764001234_851012500.0-call_123.m4a"
    assert call["sha256"] == hashlib.sha256(M4A).hexdigest()
    metadata = json.loads(call["metadata"])
    assert "api_key" not in metadata
    assert metadata["error_count"] == "0"
    assert metadata["patch_list"] == []
    assert vault.audio_path(call["key"]).read_bytes() == M4A


async def test_openmhz_errors_keep_openmhz_texts(vault: Vault) -> None:
    bad_key = await vault.post("/metro/upload", openmhz(M4A, api_key="wrong"))
    assert bad_key.status_code == 401
    assert bad_key.text == "API Keys do not match!\n"
    # omhz-key is limited to metro / 11
    other = await vault.post("/county/upload", openmhz(M4A))
    assert other.status_code == 401
    no_tg = await vault.post("/metro/upload", openmhz(M4A, talkgroup=None))
    assert no_tg.status_code == 400
    assert "talkgroup_num" in no_tg.text
    bad_name = await vault.post("/metro/upload", openmhz(M4A, filename="call.exe"))
    assert bad_name.status_code == 400
    assert bad_name.text.startswith("Error, invalid filename")
    assert vault.calls() == []
    assert vault.incoming() == []


async def test_openmhz_traversal_in_short_name_is_refused(vault: Vault) -> None:
    response = await vault.post("/..%2F..%2Fetc/upload", openmhz(M4A))
    assert response.status_code in (400, 404)
    response = await vault.post("/.hidden/upload", openmhz(M4A))
    assert response.status_code == 400
    assert vault.calls() == []


async def test_openmhz_bad_source_list_is_kept(vault: Vault) -> None:
    response = await vault.post(
        "/metro/upload", openmhz(M4A, source_list='[{"src": 1, "tag": "a"b"}]')
    )
    assert response.status_code == 200
    [call] = vault.calls()
    [event] = vault.events(call["id"])
    assert "source_list: not valid JSON" in event["detail"]
