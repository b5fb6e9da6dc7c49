"""rdio-scanner call-upload replays: what trunk-recorder and SDRTrunk send, and how we answer."""

from __future__ import annotations

import hashlib
import json

from tests.conftest import Vault, VaultFactory
from tests.wire import (
    TR_AUDIO_NAME,
    Part,
    fixture_bytes,
    rdio_trunk_recorder,
    sdrtrunk,
    sdrtrunk_test,
    trunk_recorder_meta_upload,
)

M4A = fixture_bytes("call-9131-1764001234.m4a")
M4A_2 = fixture_bytes("call-2201-1764001301.m4a")
WAV = fixture_bytes("call-9131-1764001234.wav")
SUCCESS = "Call imported successfully.\n"


async def test_trunk_recorder_upload_is_stored_durably_with_every_field(vault: Vault) -> None:
    response = await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))

    assert response.status_code == 200
    assert response.text == SUCCESS
    [call] = vault.calls()
    assert call["protocol"] == "rdio"
    assert call["system"] == "11"
    assert call["system_label"] == "metro"
    assert call["talkgroup"] == 9131
    assert call["talkgroup_label"] == "FD Dispatch"
    assert call["talkgroup_tag"] == "Fire Dispatch"
    assert call["talkgroup_group"] == "Fire"
    assert call["source"] == 1402211
    assert call["frequency"] == 851012500
    assert call["start_time"] == "2025-11-24 16:20:34.000"
    assert call["audio_name"] == TR_AUDIO_NAME
    assert call["content_type"] == "audio/mp4"
    assert call["key"] == f"metro/2025-11-24/{TR_AUDIO_NAME}"
    assert call["size"] == len(M4A)
    assert call["sha256"] == hashlib.sha256(M4A).hexdigest()
    assert call["md5"] == hashlib.md5(M4A).hexdigest()
    assert call["state"] == "done"  # local-only: nothing left to upload
    assert call["cached"] == 1
    assert call["attempts"] == 0
    metadata = json.loads(call["metadata"])
    assert "key" not in metadata  # the API key is never stored
    assert metadata["sources"] == [{"pos": 0.0, "src": 1402211}]
    assert metadata["frequencies"][0]["freq"] == 851012500
    assert metadata["talkgroupName"] == "Fire Dispatch Main"
    assert vault.audio_path(call["key"]).read_bytes() == M4A
    assert [e["kind"] for e in vault.events(call["id"])] == ["received"]
    assert vault.incoming() == []


async def test_sdrtrunk_upload_and_its_connection_test(vault: Vault) -> None:
    probe = await vault.post("/api/call-upload", sdrtrunk_test())
    assert probe.status_code == 417
    assert probe.text.lower().startswith("incomplete call data: no talkgroup")

    wrong = await vault.post("/api/call-upload", sdrtrunk_test(key="nope"))
    assert wrong.status_code == 401
    assert wrong.text == "Invalid API key for system 11 talkgroup 0.\n"

    response = await vault.post("/api/call-upload", sdrtrunk(M4A_2))
    assert response.status_code == 200
    assert response.text == SUCCESS
    [call] = vault.calls()
    assert call["talkgroup"] == 2201
    assert call["source"] == 4411
    assert call["content_type"] == "audio/mpeg"
    assert call["key"] == "metro/2025-11-24/20251124_163141metro_PD_North_TO_2201_FROM_4411.mp3"
    assert json.loads(call["metadata"])["talkerAlias"] == "CAR 12"
    assert vault.audio_path(call["key"]).read_bytes() == M4A_2


async def test_sdrtrunk_wrong_key_is_refused_before_the_audio_is_read(vault: Vault) -> None:
    response = await vault.post("/api/call-upload", sdrtrunk(M4A_2, key="wrong"))
    assert response.status_code == 401
    assert response.headers["connection"] == "close"
    assert vault.calls() == []
    assert vault.incoming() == []


async def test_trunk_recorder_meta_route(vault: Vault) -> None:
    response = await vault.post("/api/trunk-recorder-call-upload", trunk_recorder_meta_upload(WAV))
    assert response.status_code == 200
    assert response.text == SUCCESS
    [call] = vault.calls()
    assert call["protocol"] == "rdio-tr"
    assert call["system"] == "11"
    assert call["system_label"] == "metro"  # from meta's short_name
    assert call["talkgroup"] == 9131
    assert call["talkgroup_label"] == "FD Dispatch"
    assert call["frequency"] == 851012500
    assert call["source"] == 1402211
    assert call["stop_time"] == "2025-11-24 16:20:39.000"
    assert call["duration"] == 5
    assert call["content_type"] == "audio/wav"  # the part said audio/x-wav
    assert json.loads(call["metadata"])["meta"]["recorder_num"] == 3
    assert vault.audio_path(call["key"]).read_bytes() == WAV

    bad = await vault.post(
        "/api/trunk-recorder-call-upload", trunk_recorder_meta_upload(M4A_2, meta="{nope")
    )
    assert bad.status_code == 417
    assert bad.text == "Invalid call data\n"
    assert len(vault.calls()) == 1
    assert vault.incoming() == []


async def test_bad_key_removes_the_audio_at_once(vault: Vault) -> None:
    response = await vault.post("/api/call-upload", rdio_trunk_recorder(M4A, key="wrong"))
    assert response.status_code == 401
    assert response.text == "Invalid API key for system 11 talkgroup 9131.\n"
    assert vault.calls() == []
    assert vault.incoming() == []


async def test_key_not_allowed_for_that_system(vault: Vault) -> None:
    # other-key may only upload for system 99
    response = await vault.post("/api/call-upload", rdio_trunk_recorder(M4A, key="other-key"))
    assert response.status_code == 401
    ok = await vault.post(
        "/api/call-upload", rdio_trunk_recorder(M4A, key="other-key", system="99", system_label="")
    )
    assert ok.status_code == 200
    # omhz-key is allowed for the short name "metro" and the id 11
    assert (
        await vault.post("/api/call-upload", rdio_trunk_recorder(M4A_2, key="omhz-key"))
    ).status_code == 200


async def test_incomplete_calls_get_rdio_scanner_answers(vault: Vault) -> None:
    cases = {
        "no talkgroup": rdio_trunk_recorder(M4A, drop=("talkgroup",)),
        "no datetime": rdio_trunk_recorder(M4A, drop=("dateTime",)),
        "no system": rdio_trunk_recorder(M4A, drop=("system",)),
        "no audio": rdio_trunk_recorder(b"RIFF" + bytes(40)),
    }
    for reason, parts in cases.items():
        response = await vault.post("/api/call-upload", parts)
        assert response.status_code == 417, reason
        assert response.text == f"Incomplete call data: {reason}\n\n"
    bad_tg = await vault.post("/api/call-upload", rdio_trunk_recorder(M4A, talkgroup="abc"))
    assert bad_tg.status_code == 417
    assert vault.calls() == []
    assert vault.incoming() == []


async def test_malformed_optional_json_is_kept_not_rejected(vault: Vault) -> None:
    # trunk-recorder 5.2 writes unit tags unescaped: `"tag": "Engine "12""`.
    sources = '[{"pos": 0.00, "src": 1402211, "tag": "Engine "12""}]'
    response = await vault.post(
        "/api/call-upload",
        rdio_trunk_recorder(M4A, sources=sources, frequencies="[{oops"),
    )
    assert response.status_code == 200
    [call] = vault.calls()
    metadata = json.loads(call["metadata"])
    assert metadata["sources"] == sources  # raw text kept
    assert metadata["frequencies"] == "[{oops"
    [event] = vault.events(call["id"])
    notes = json.loads(event["detail"])["notes"]
    assert any(n.startswith("sources: not valid JSON") for n in notes)
    assert any(n.startswith("frequencies: not valid JSON") for n in notes)


async def test_oversize_upload_is_refused_and_leaves_nothing(make_vault: VaultFactory) -> None:
    vault = await make_vault(max_upload_mb=1)
    big = M4A * 120  # ~1.3 MB
    response = await vault.post("/api/call-upload", rdio_trunk_recorder(big))
    assert response.status_code == 413
    assert "TR_VAULT_MAX_UPLOAD_MB" in response.text
    assert vault.calls() == []
    assert vault.incoming() == []

    # Without a Content-Length (chunked), the limit is counted while streaming.
    from tests.wire import multipart

    body, content_type = multipart(rdio_trunk_recorder(big))

    async def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    chunked = await vault.client.post(
        vault.url + "/api/call-upload", content=chunks(), headers={"Content-Type": content_type}
    )
    assert chunked.status_code == 413
    assert vault.calls() == []
    assert vault.incoming() == []
    # The server still serves a normal upload afterwards.
    assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200


async def test_traversal_in_system_and_file_names_never_writes_outside(vault: Vault) -> None:
    for parts in (
        rdio_trunk_recorder(M4A, system_label="../../etc"),
        rdio_trunk_recorder(M4A, audio_name="../../../evil.m4a"),
        rdio_trunk_recorder(M4A, audio_name=".hidden.m4a"),
        rdio_trunk_recorder(M4A, audio_name="a\\..\\b.m4a"),
    ):
        response = await vault.post("/api/call-upload", parts)
        assert response.status_code == 400
        assert "plain name" in response.text
    assert vault.calls() == []
    root = vault.settings.data_dir
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert all(str(p).startswith(("vault.db", "tr-vault.lock")) for p in files), files

    # Odd but harmless characters are rewritten, not refused.
    ok = await vault.post(
        "/api/call-upload",
        rdio_trunk_recorder(M4A, system_label="Metro County", audio_name="a b.m4a"),
    )
    assert ok.status_code == 200
    assert vault.calls()[0]["key"] == "Metro_County/2025-11-24/a_b.m4a"


async def test_wrong_method_and_content_type(vault: Vault) -> None:
    response = await vault.client.get(vault.url + "/api/call-upload")
    assert response.status_code == 405
    assert response.text == "Unsupported method\n"
    form = await vault.client.post(vault.url + "/api/call-upload", data={"a": "b"})
    assert form.status_code == 400
    assert form.text == "Not a multipart content\n"
    none = await vault.client.post(vault.url + "/api/call-upload", content=b"x")
    assert none.status_code == 400
    assert none.text == "Invalid content-type\n"


async def test_double_slash_path_is_served(vault: Vault) -> None:
    response = await vault.post("//api/call-upload", rdio_trunk_recorder(M4A))
    assert response.status_code == 200
    assert response.text == SUCCESS
    assert len(vault.calls()) == 1


async def test_duplicate_upload_answers_success_and_adds_no_call(vault: Vault) -> None:
    first = await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))
    again = await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))
    assert first.status_code == again.status_code == 200
    assert again.text == SUCCESS
    [call] = vault.calls()
    assert [e["kind"] for e in vault.events(call["id"])] == ["received", "duplicate"]
    files = [p for p in vault.settings.audio_dir.rglob("*.m4a")]
    assert len(files) == 1
    assert vault.incoming() == []


async def test_two_calls_seconds_apart_are_two_calls(vault: Vault) -> None:
    a = await vault.post("/api/call-upload", rdio_trunk_recorder(M4A, date_time="1764001234"))
    b = await vault.post(
        "/api/call-upload",
        rdio_trunk_recorder(M4A_2, date_time="1764001236", audio_name="9131-1764001236.m4a"),
    )
    assert a.status_code == b.status_code == 200
    assert len(vault.calls()) == 2


async def test_same_name_different_audio_gets_its_own_key(vault: Vault) -> None:
    # Two recorders covering one system send different audio under one file name.
    await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))
    await vault.post("/api/call-upload", rdio_trunk_recorder(M4A_2))
    first, second = vault.calls()
    assert first["key"] != second["key"]
    sha = hashlib.sha256(M4A_2).hexdigest()
    assert second["key"] == f"metro/2025-11-24/9131-1764001234_851012500.0-call_123-{sha[:12]}.m4a"
    assert vault.audio_path(first["key"]).read_bytes() == M4A
    assert vault.audio_path(second["key"]).read_bytes() == M4A_2


async def test_rfc3339_and_millisecond_times(vault: Vault) -> None:
    await vault.post(
        "/api/call-upload", rdio_trunk_recorder(M4A, date_time="2025-11-24T16:20:34.250Z")
    )
    parts = [p for p in rdio_trunk_recorder(M4A_2, drop=("dateTime",))]
    parts.append(Part("timestamp", "1764001301500"))
    await vault.post("/api/call-upload", parts)
    first, second = vault.calls()
    assert first["start_time"] == "2025-11-24 16:20:34.250"
    assert second["start_time"] == "2025-11-24 16:21:41.500"
