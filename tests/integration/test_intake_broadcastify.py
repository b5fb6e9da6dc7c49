"""Broadcastify Calls replays: trunk-recorder's broadcastify_uploader exchange, byte for byte.

The requests go over a raw socket exactly as libcurl writes them (tests/wire.py), because the
answers to the PUT are judged by what curl makes of them: the plugin never reads the PUT's
status, only whether curl completed the transfer. So a refused PUT must be an unfinished
response (`complete` false), and only a stored call gets a whole `200`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trio
from trio.testing import MockClock

from tests.conftest import Vault, VaultFactory
from tests.wire import (
    BCFY_AUDIO_NAME,
    TR_META,
    broadcastify_trunk_recorder,
    curl_post,
    curl_put,
    fixture_bytes,
    rdio_trunk_recorder,
)

M4A = fixture_bytes("call-9131-1764001234.m4a")
M4A_2 = fixture_bytes("call-2201-1764001301.m4a")
CALL_UPLOAD = "/api/broadcastify/call-upload"
SKIPPED = "1 SKIPPED---ALREADY-RECEIVED-THIS-CALL"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool  # the whole declared body arrived (what curl calls a completed transfer)

    @property
    def text(self) -> str:
        return self.body.decode()


def _host(vault: Vault) -> str:
    return urlsplit(vault.url).netloc


async def exchange(vault: Vault, request: bytes) -> Answer:
    """Send `request` on a fresh connection, read one answer as curl would."""
    parts = urlsplit(vault.url)
    assert parts.hostname is not None and parts.port is not None
    with trio.fail_after(30):
        stream = await trio.open_tcp_stream(parts.hostname, parts.port)
        async with stream:
            # refused before the body was read: the answer is still there
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(request)
            data = b""
            while True:
                head, sep, body = data.partition(b"\r\n\r\n")
                if sep:
                    lines = head.decode("latin-1").split("\r\n")
                    headers = {
                        k.strip().lower(): v.strip()
                        for k, _, v in (line.partition(":") for line in lines[1:])
                    }
                    length = int(headers.get("content-length", "0"))
                    if len(body) >= length:
                        return Answer(int(lines[0].split()[1]), headers, body[:length], True)
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    chunk = b""
                if not chunk:
                    assert sep, f"no answer at all: {data!r}"
                    return Answer(int(lines[0].split()[1]), headers, body, False)
                data += chunk


async def post_metadata(vault: Vault, **kwargs: str) -> Answer:
    return await exchange(
        vault, curl_post(_host(vault), CALL_UPLOAD, broadcastify_trunk_recorder(**kwargs))
    )


async def issued_path(vault: Vault, **kwargs: str) -> str:
    """The path of the upload URL a metadata POST is answered with."""
    answer = await post_metadata(vault, **kwargs)
    assert answer.status == 200 and answer.complete, answer
    code, _, url = answer.text.partition(" ")
    assert code == "0", answer.text
    return urlsplit(url).path


async def put_audio(vault: Vault, path: str, audio: bytes = M4A) -> Answer:
    return await exchange(vault, curl_put(_host(vault), path, audio))


async def test_exchange_lands_like_the_other_intakes(vault: Vault) -> None:
    answer = await post_metadata(vault)
    assert answer.status == 200 and answer.complete
    assert answer.headers["content-type"].startswith("text/plain")
    code, _, url = answer.text.partition(" ")
    assert code == "0"
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == vault.url  # the Host the recorder used
    assert parts.path.startswith("/api/broadcastify/audio/")
    assert len(parts.path.rsplit("/", 1)[1]) >= 32  # secrets.token_urlsafe(24)
    assert "\n" not in answer.text  # curl would refuse a URL with a newline
    assert vault.calls() == []  # nothing is stored before the audio

    stored = await put_audio(vault, parts.path)
    assert stored.status == 200 and stored.complete
    [call] = vault.calls()  # committed by the time the 200 arrived
    assert call["protocol"] == "broadcastify"
    assert call["system"] == "metro"
    assert call["system_label"] == "metro"
    assert call["talkgroup"] == 9131
    assert call["talkgroup_label"] == "FD Dispatch"
    assert call["talkgroup_tag"] == "Fire Dispatch"
    assert call["talkgroup_group"] == "Fire"
    assert call["source"] == 1402211
    assert call["frequency"] == 851012500
    assert call["start_time"] == "2025-11-24 16:20:34.000"
    assert call["stop_time"] == "2025-11-24 16:20:39.000"
    assert call["duration"] == pytest.approx(4.87)  # callDuration, not the rounded call_length
    assert call["emergency"] == 0
    assert call["content_type"] == "audio/mp4"
    assert call["audio_name"] == BCFY_AUDIO_NAME
    assert call["key"] == f"metro/2025-11-24/{BCFY_AUDIO_NAME}"
    assert call["sha256"] == hashlib.sha256(M4A).hexdigest()
    assert call["size"] == len(M4A)
    metadata = json.loads(call["metadata"])
    assert "apiKey" not in metadata
    assert metadata["meta"] == TR_META
    assert metadata["systemId"] == "1234"
    assert metadata["broadcastify_system_id"] == 1234
    assert metadata["audio_part_content_type"] == "audio/aac"
    assert vault.audio_path(call["key"]).read_bytes() == M4A
    assert vault.incoming() == []
    [event] = vault.events(call["id"])
    assert json.loads(event["detail"])["protocol"] == "broadcastify"


async def test_a_repeat_is_skipped_and_so_is_a_call_from_the_rdio_route(vault: Vault) -> None:
    await put_audio(vault, await issued_path(vault))
    again = await post_metadata(vault)
    assert (again.status, again.text, again.complete) == (200, SKIPPED, True)

    # The same call sent by the rdio-scanner plugin first (system 11, label metro).
    other = await post_metadata(
        vault, call_json=json.dumps({**TR_META, "talkgroup": 2201, "start_time": 1764001301})
    )
    assert other.text.startswith("0 ")
    rdio = rdio_trunk_recorder(M4A_2, talkgroup="2202", date_time="1764001302")
    assert (await vault.post("/api/call-upload", rdio)).status_code == 200
    skipped = await post_metadata(
        vault, call_json=json.dumps({**TR_META, "talkgroup": 2202, "start_time": 1764001302.4})
    )
    assert skipped.text == SKIPPED
    assert len(vault.calls()) == 2


async def test_two_recorders_with_the_same_audio_make_one_call(vault: Vault) -> None:
    first, second = await issued_path(vault), await issued_path(vault)
    assert first != second
    assert (await put_audio(vault, first)).status == 200
    duplicate = await put_audio(vault, second)
    assert (duplicate.status, duplicate.complete) == (200, True)  # the same answer as stored
    [call] = vault.calls()
    assert [e["kind"] for e in vault.events(call["id"])] == ["received", "duplicate"]
    assert vault.incoming() == []


async def test_a_used_or_unknown_token_is_refused_so_that_curl_fails(vault: Vault) -> None:
    path = await issued_path(vault)
    assert (await put_audio(vault, path)).status == 200
    used = await put_audio(vault, path, M4A_2)
    assert (used.status, used.complete) == (404, False)
    assert "metadata again" in used.text
    unknown = await put_audio(vault, "/api/broadcastify/audio/not-a-token-we-gave")
    assert (unknown.status, unknown.complete) == (404, False)
    assert len(vault.calls()) == 1
    assert vault.incoming() == []


@pytest.fixture
async def clocked_vault(mock_clock: MockClock, make_vault: VaultFactory) -> Vault:
    """A vault on trio's MockClock running at real speed, so that a test can jump it."""
    mock_clock.rate = 1.0
    return await make_vault()


async def test_an_expired_token_is_refused_and_nothing_is_stored(
    clocked_vault: Vault, mock_clock: MockClock
) -> None:
    vault = clocked_vault
    path = await issued_path(vault)
    mock_clock.jump(vault.settings.broadcastify_upload_ttl + 1)
    expired = await put_audio(vault, path)
    assert (expired.status, expired.complete) == (410, False)
    assert "expired" in expired.text
    assert vault.calls() == []
    assert vault.incoming() == []
    # The plugin's retry starts over and gets a fresh URL.
    assert (await put_audio(vault, await issued_path(vault))).status == 200


async def test_a_bad_key_is_a_401_the_plugin_retries(vault: Vault) -> None:
    for key in ("wrong", "", "other-key"):  # other-key is limited to system 99
        answer = await post_metadata(vault, api_key=key)
        assert answer.status == 401, key
        assert not answer.text.startswith(("1 SKIPPED", "1 REJECTED", "0 "))
        assert "TR_VAULT_API_KEYS" in answer.text
    assert (await post_metadata(vault, api_key="omhz-key")).text.startswith("0 ")  # metro|11


async def test_the_scope_is_matched_against_the_short_name(make_vault: VaultFactory) -> None:
    vault = await make_vault(api_keys="bcfy-id:1234,metro-key:metro")
    # systemId is Broadcastify's numbering: it never widens a key.
    refused = await post_metadata(vault, api_key="bcfy-id")
    assert refused.status == 401
    assert "'metro'" in refused.text
    assert (await post_metadata(vault, api_key="metro-key")).text.startswith("0 ")


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"call_json": "{not json"}, "'metadata'"),
        ({"call_json": "[1, 2]"}, "'metadata'"),
        ({"call_json": json.dumps({**TR_META, "talkgroup": 0})}, "metadata.talkgroup"),
        ({"call_json": json.dumps({**TR_META, "talkgroup": 1e30})}, "metadata.talkgroup"),
        ({"call_json": json.dumps({**TR_META, "start_time": 12})}, "metadata.start_time"),
        ({"call_json": json.dumps({**TR_META, "short_name": ""})}, "metadata.short_name"),
        ({"call_json": json.dumps({**TR_META, "short_name": "../x"})}, "metadata.short_name"),
        ({"system_id": "0"}, "systemId"),
    ],
)
async def test_malformed_metadata_is_a_400_naming_the_field(
    vault: Vault, fields: dict[str, str], named: str
) -> None:
    answer = await post_metadata(vault, **fields)
    assert answer.status == 400
    assert named in answer.text
    assert not answer.text.startswith(("1 REJECTED", "1 SKIPPED"))


async def test_odd_optional_values_never_cost_the_call(vault: Vault) -> None:
    meta = {**TR_META, "freq": "x", "srcList": "nope", "call_num": 77, "tdma_slot": -1}
    path = await issued_path(vault, call_json=json.dumps(meta), src_alias="ENGINE 7")
    assert (await put_audio(vault, path)).status == 200
    [call] = vault.calls()
    assert call["audio_name"] == "9131-1764001234_0-call_77.m4a"
    assert call["frequency"] is None and call["source"] is None
    assert json.loads(call["metadata"])["srcId_alias"] == "ENGINE 7"


async def test_the_put_needs_its_length_and_fits_the_limit(make_vault: VaultFactory) -> None:
    vault = await make_vault(max_upload_mb=1)
    path = await issued_path(vault)
    no_length = await exchange(vault, curl_put(_host(vault), path, b"", length=-1))
    assert (no_length.status, no_length.complete) == (411, False)
    too_big = curl_put(_host(vault), path, M4A, length=2 * 1024 * 1024)
    answer = await exchange(vault, too_big)
    assert (answer.status, answer.complete) == (413, False)
    assert vault.calls() == []
    # Refused before the token was spent.
    assert (await put_audio(vault, path)).status == 200


async def test_browsers_and_other_methods_are_refused(vault: Vault) -> None:
    request = curl_post(_host(vault), CALL_UPLOAD, broadcastify_trunk_recorder())
    with_origin = request.replace(b"Accept: */*\r\n", b"Accept: */*\r\nOrigin: http://x.test\r\n")
    assert (await exchange(vault, with_origin)).status == 403
    get = f"GET {CALL_UPLOAD} HTTP/1.1\r\nHost: {_host(vault)}\r\n\r\n".encode()
    assert (await exchange(vault, get)).status == 405
    path = await issued_path(vault)
    put = curl_put(_host(vault), path, M4A)
    assert (await exchange(vault, put.replace(b"PUT ", b"POST ", 1))).status == 405
    assert (await put_audio(vault, path)).status == 200


async def test_the_scheme_comes_from_a_trusted_proxy_only(make_vault: VaultFactory) -> None:
    vault = await make_vault(trusted_proxies="127.0.0.1")
    request = curl_post("vault.example.org", CALL_UPLOAD, broadcastify_trunk_recorder())
    forwarded = request.replace(b"Accept: */*\r\n", b"Accept: */*\r\nX-Forwarded-Proto: https\r\n")
    answer = await exchange(vault, forwarded)
    assert answer.text.startswith("0 https://vault.example.org/api/broadcastify/audio/")
    plain = await make_vault(data_dir=vault.settings.data_dir.with_name("other"))
    answer = await exchange(plain, forwarded)
    assert answer.text.startswith("0 http://vault.example.org/api/broadcastify/audio/")


@pytest.mark.skipif(shutil.which("curl") is None, reason="the curl command is not installed")
async def test_curl_counts_only_a_stored_call_as_sent(vault: Vault, tmp_path: Path) -> None:
    """The plugin's exchange driven by curl itself (its libcurl): exit 0 means the plugin
    counts the call as sent; any other code makes it retry."""
    meta = tmp_path / "call_meta.json"
    meta.write_text(json.dumps(TR_META, separators=(",", ":")))
    audio = tmp_path / BCFY_AUDIO_NAME
    audio.write_bytes(M4A)
    common = ["curl", "-sS", "-A", "TrunkRecorder1.0", "-H", "Expect:"]
    post = [
        *common,
        *("-F", f"metadata=@{meta};filename=call_meta.json;type=application/json"),
        *("-F", "callDuration=4.870000", "-F", "systemId=1234", "-F", "apiKey=tr-key"),
        vault.url + CALL_UPLOAD,
    ]
    with trio.fail_after(30):
        answer = await trio.run_process(post, capture_stdout=True)
    code, _, url = answer.stdout.decode().partition(" ")
    assert code == "0"
    put = [*common, "-T", str(audio), "-H", "Content-Type: audio/aac", "-H", "Transfer-Encoding:"]
    with trio.fail_after(30):
        sent = await trio.run_process([*put, url], capture_stdout=True, check=False)
        again = await trio.run_process([*put, url], capture_stdout=True, check=False)
    assert sent.returncode == 0
    assert len(vault.calls()) == 1
    assert again.returncode == 18  # CURLE_PARTIAL_FILE: the plugin retries, it does not drop
