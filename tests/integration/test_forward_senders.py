"""The rdio-scanner, OpenMHz and Broadcastify senders against the downstream fakes.

Calls come into a real tr_vault through trunk-recorder's own requests (tests/wire.py), so each
sender is fed a journal row exactly as the relay will; what the fake receives is compared with
what the plugin sends for that call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel

from tests.conftest import Vault
from tests.downstream import (
    BCFY_SKIPPED,
    RDIO_SUCCESS,
    FakeService,
    Recorded,
    open_broadcastify,
    open_openmhz,
    open_rdio_scanner,
)
from tests.wire import (
    TR_AUDIO_NAME,
    TR_META,
    Part,
    fixture_bytes,
    multipart,
    openmhz,
    rdio_trunk_recorder,
    trunk_recorder_meta_upload,
)
from tr_vault.call import CallRow
from tr_vault.forward.base import Answer, Destination, Outcome, SystemCredentials
from tr_vault.forward.senders import SENDERS
from tr_vault.forward.senders.broadcastify import BroadcastifySender
from tr_vault.forward.senders.openmhz import OpenMHzSender
from tr_vault.forward.senders.rdio import RdioScannerSender

M4A = fixture_bytes("call-9131-1764001234.m4a")
WAV = fixture_bytes("call-9131-1764001234.wav")
RDIO_KEY = "tr-key"  # a key the test vault takes too


@dataclasses.dataclass
class BytesAudio:
    """An `Audio` over bytes, handed out in small chunks."""

    data: bytes
    content_type: str = "audio/mp4"
    filename: str = TR_AUDIO_NAME
    chunk: int = 16384

    @property
    def size(self) -> int:
        return len(self.data)

    async def chunks(self) -> AsyncIterator[bytes]:
        for at in range(0, len(self.data), self.chunk):
            await trio.lowlevel.checkpoint()
            yield self.data[at : at + self.chunk]


@dataclasses.dataclass
class LazyAudio:
    """`size` bytes made chunk by chunk, never all at once; notes how much of the body the
    server had received when the last chunk was made (streaming: nearly all of it)."""

    size: int
    received: Callable[[], int]
    content_type: str = "audio/mp4"
    filename: str = "big.m4a"
    chunk: int = 65536
    received_before_last: int = -1
    sha256: str = ""

    def _chunk(self, index: int) -> bytes:
        return hashlib.sha256(index.to_bytes(8, "big")).digest() * (self.chunk // 32)

    async def chunks(self) -> AsyncIterator[bytes]:
        digest = hashlib.sha256()
        sent = 0
        index = 0
        while sent < self.size:
            piece = self._chunk(index)[: self.size - sent]
            if sent + len(piece) >= self.size:
                self.received_before_last = self.received()
            digest.update(piece)
            sent += len(piece)
            index += 1
            await trio.lowlevel.checkpoint()
            yield piece
        self.sha256 = digest.hexdigest()


def _tr_meta_m4a() -> list[Part]:
    """A user's script posting the m4a and its call JSON (the m4a trunk-recorder compressed)."""
    parts = trunk_recorder_meta_upload(M4A)
    parts[0] = Part("audio", M4A, filename=TR_AUDIO_NAME, content_type="audio/mp4")
    return parts


def _row(vault: Vault, index: int = -1) -> CallRow:
    fields = {f.name for f in dataclasses.fields(CallRow)}
    row = vault.calls()[index]
    return CallRow(**{k: v for k, v in row.items() if k in fields})


async def _ingest(vault: Vault, path: str, parts: list[Part]) -> CallRow:
    response = await vault.post(path, parts)
    assert response.status_code == 200, response.text
    return _row(vault)


def _destination(kind: str, url: str, **options: Any) -> Destination:
    return Destination(name=f"test-{kind}", kind=kind, url=url, **options)


async def _deliver(
    sender: Any, destination: Destination, row: CallRow, audio: Any, *, within: float = 10
) -> Answer:
    async with httpx.AsyncClient(timeout=30) as client:
        with trio.fail_after(within):
            answer: Answer = await sender.deliver(client, destination, row, audio)
            return answer


def _framing_matches(request: Recorded) -> bool:
    """The body is exactly what libcurl writes for these parts (tests/wire.multipart)."""
    content_type = request.header("content-type") or ""
    boundary = content_type.partition("boundary=")[2]
    parts = [
        Part(p.name, p.value, filename=p.filename, content_type=p.content_type)
        for p in request.parts or ()
    ]
    body, _ = multipart(parts, boundary=boundary)
    return body == request.body


def test_registry_has_the_three_kinds() -> None:
    for kind in ("rdio-scanner", "openmhz", "broadcastify"):
        assert SENDERS[kind].kind == kind


# -- rdio-scanner ---------------------------------------------------------------------------


def _rdio(url: str, **options: Any) -> Destination:
    return _destination("rdio-scanner", url, **{"api_key": RDIO_KEY, **options})


async def test_rdio_request_is_the_plugins(vault: Vault) -> None:
    wire = rdio_trunk_recorder(M4A, key=RDIO_KEY)
    row = await _ingest(vault, "/api/call-upload", wire)
    async with open_rdio_scanner({RDIO_KEY: {11}}) as rdio:
        answer = await _deliver(RdioScannerSender(), _rdio(rdio.url), row, BytesAudio(M4A))
        assert answer.outcome is Outcome.DELIVERED, answer
        assert answer.status == 200
        [request] = rdio.requests
    assert request.method == "POST" and request.path == "/api/call-upload"
    assert request.field_names == [p.name for p in wire]
    assert request.header("user-agent") == "TrunkRecorder1.0"
    assert request.header("expect") is None and not request.chunked
    assert int(request.header("content-length") or 0) == len(request.body)
    assert _framing_matches(request)
    for sent in wire:
        got = request.part(sent.name)
        assert got is not None
        assert (got.filename, got.content_type) == (sent.filename, sent.content_type), sent.name
        want = sent.value if isinstance(sent.value, bytes) else sent.value.encode()
        if sent.name in ("sources", "frequencies", "patches"):
            assert json.loads(got.value) == json.loads(want), sent.name
        else:
            assert got.value == want, sent.name
    [call] = rdio.calls
    assert call.audio == M4A and call.fields["system"] == "11"


async def test_rdio_outcomes(vault: Vault) -> None:
    row = await _ingest(vault, "/api/call-upload", rdio_trunk_recorder(M4A, key=RDIO_KEY))
    sender = RdioScannerSender()
    async with open_rdio_scanner({RDIO_KEY: {11}, "narrow": {12}}) as rdio:
        dest = _rdio(rdio.url)
        assert (await _deliver(sender, dest, row, BytesAudio(M4A))).outcome is Outcome.DELIVERED
        # rdio-scanner v6 answers a duplicate like any call and drops it afterwards.
        again = await _deliver(sender, dest, row, BytesAudio(M4A))
        assert again.outcome is Outcome.DELIVERED and rdio.duplicates == 1
        rdio.answer_duplicates = True
        dup = await _deliver(sender, dest, row, BytesAudio(M4A))
        assert dup.outcome is Outcome.ALREADY_THERE and len(rdio.calls) == 1

        for key in ("wrong", "narrow"):
            bad = await _deliver(sender, _rdio(rdio.url, api_key=key), row, BytesAudio(M4A))
            assert bad.outcome is Outcome.MISCONFIGURED and bad.status == 401
            assert "Invalid API key for system 11 talkgroup 9131." in bad.detail

        empty = await _deliver(sender, dest, row, BytesAudio(b"\0" * 44))
        assert empty.outcome is Outcome.REJECTED and empty.status == 417
        assert "Incomplete call data: no audio" in empty.detail

        for status, body, outcome in [
            (400, "Invalid content-type\n", Outcome.REJECTED),
            (503, "Service Unavailable\n", Outcome.TRANSIENT),
            (500, "internal\n", Outcome.TRANSIENT),
            (502, "", Outcome.TRANSIENT),
            (429, "slow down\n", Outcome.TRANSIENT),
            (201, "Created\n", Outcome.DELIVERED),  # trunk-recorder v5.2 takes any 2xx
        ]:
            rdio.answer_next(status, body)
            got = await _deliver(sender, dest, row, BytesAudio(M4A))
            assert (got.outcome, got.status) == (outcome, status), (status, got)

        rdio.unavailable = 503
        assert (await _deliver(sender, dest, row, BytesAudio(M4A))).outcome is Outcome.TRANSIENT


async def test_rdio_trailing_slash_and_system_ids(vault: Vault) -> None:
    """A configured trailing slash does not give `//api/call-upload`; a call that came in by
    OpenMHz (a short name only) needs `per_system.<name>.system_id`, else it is REJECTED."""
    row = await _ingest(vault, "/metro/upload", openmhz(M4A))
    sender = RdioScannerSender()
    async with open_rdio_scanner({RDIO_KEY: None}) as rdio:
        refused = await _deliver(sender, _rdio(rdio.url + "/"), row, BytesAudio(M4A))
        assert refused.outcome is Outcome.REJECTED and "system_id" in refused.detail
        assert rdio.requests == []
        dest = _rdio(rdio.url + "/", per_system={"metro": SystemCredentials(system_id=11)})
        ok = await _deliver(sender, dest, row, BytesAudio(M4A))
        assert ok.outcome is Outcome.DELIVERED, ok
        [call] = rdio.calls
    assert call.fields["system"] == "11" and call.fields["systemLabel"] == "metro"
    assert call.fields["talkgroup"] == "9131" and call.fields["dateTime"] == "1764001234"
    assert call.fields["frequency"] == "851012500"
    assert json.loads(call.fields["sources"]) == [{"pos": 0.0, "src": 1402211}]
    assert call.audio_filename == row.audio_name and call.audio == M4A


async def test_rdio_from_trunk_recorder_meta(vault: Vault) -> None:
    """A call that came with trunk-recorder's call JSON gets the plugin's fields from it."""
    row = await _ingest(vault, "/api/trunk-recorder-call-upload", trunk_recorder_meta_upload(WAV))
    async with open_rdio_scanner({RDIO_KEY: None}) as rdio:
        ok = await _deliver(RdioScannerSender(), _rdio(rdio.url), row, BytesAudio(WAV))
        assert ok.outcome is Outcome.DELIVERED, ok
        [call] = rdio.calls
    fields = call.fields
    assert fields["audioType"] == "audio/wav" and fields["system"] == "11"
    assert (fields["talkgroupLabel"], fields["talkgroupTag"]) == ("FD Dispatch", "Fire Dispatch")
    assert (fields["talkgroupGroup"], fields["talkgroupName"]) == ("Fire", "Fire Dispatch Main")
    assert json.loads(fields["frequencies"]) == [
        {"freq": 851012500, "time": 1764001234, "pos": 0.0, "len": 4.87,
         "errorCount": 0, "spikeCount": 0}
    ]  # fmt: skip
    assert json.loads(fields["sources"]) == [{"pos": 0.0, "src": 1402211}]


async def test_network_trouble_is_transient(vault: Vault) -> None:
    row = await _ingest(vault, "/api/call-upload", rdio_trunk_recorder(M4A, key=RDIO_KEY))
    sender = RdioScannerSender()
    async with open_rdio_scanner({RDIO_KEY: None}) as rdio:
        rdio.delay = 5.0
        start = trio.current_time()
        slow = await _deliver(sender, _rdio(rdio.url, timeout=0.3), row, BytesAudio(M4A))
        assert slow.outcome is Outcome.TRANSIENT and "within 0.3 s" in slow.detail
        assert trio.current_time() - start < 2
        rdio.delay = 0.0
        await rdio.go_down()
        down = await _deliver(sender, _rdio(rdio.url), row, BytesAudio(M4A))
        assert down.outcome is Outcome.TRANSIENT and "ConnectError" in down.detail
        await rdio.come_up()
        up = await _deliver(sender, _rdio(rdio.url), row, BytesAudio(M4A))
        assert up.outcome is Outcome.DELIVERED
        # A timeout of the client's own (httpx) is transient too.
        rdio.delay = 5.0
        async with httpx.AsyncClient(timeout=0.2) as client:
            got = await sender.deliver(client, _rdio(rdio.url), row, BytesAudio(M4A))
        assert got.outcome is Outcome.TRANSIENT and "timed out" in got.detail


async def test_audio_is_streamed(vault: Vault) -> None:
    """12 MB of audio, made chunk by chunk: the server has most of the body before the last
    chunk exists (a sender that read the audio whole first would show 0 here)."""
    row = await _ingest(vault, "/api/call-upload", rdio_trunk_recorder(M4A, key=RDIO_KEY))
    size = 12 * 1024 * 1024
    async with open_rdio_scanner({RDIO_KEY: None}) as rdio:
        audio = LazyAudio(size, lambda: rdio.bytes_received)
        ok = await _deliver(RdioScannerSender(), _rdio(rdio.url), row, audio, within=30)
        assert ok.outcome is Outcome.DELIVERED, ok
        [call] = rdio.calls
        [request] = rdio.requests
    assert len(call.audio) == size and hashlib.sha256(call.audio).hexdigest() == audio.sha256
    assert not request.chunked and int(request.header("content-length") or 0) == len(request.body)
    assert audio.received_before_last > size // 2, audio.received_before_last


# -- the fakes answer like the real services --------------------------------------------------


async def _post(fake: FakeService, path: str, parts: list[Part]) -> httpx.Response:
    body, content_type = multipart(parts)
    async with httpx.AsyncClient(timeout=10) as client:
        with trio.fail_after(10):
            return await client.post(
                fake.url + path, content=body, headers={"Content-Type": content_type}
            )


async def test_fakes_answer_trunk_recorder_replicas_as_the_services_do() -> None:
    async with open_rdio_scanner({"tr-key": {11}}) as rdio:
        ok = await _post(rdio, "/api/call-upload", rdio_trunk_recorder(M4A))
        assert (ok.status_code, ok.text) == (200, RDIO_SUCCESS)
        assert rdio.calls[0].audio == M4A and rdio.calls[0].audio_filename == TR_AUDIO_NAME
        again = await _post(rdio, "/api/call-upload", rdio_trunk_recorder(M4A))
        assert (again.status_code, again.text, rdio.duplicates) == (200, RDIO_SUCCESS, 1)
        bad = await _post(rdio, "/api/call-upload", rdio_trunk_recorder(M4A, key="nope"))
        assert (bad.status_code, bad.text) == (
            401,
            "Invalid API key for system 11 talkgroup 9131.\n",
        )
        test = await _post(rdio, "/api/call-upload", [Part("key", "tr-key"), Part("system", "11")])
        assert (test.status_code, test.text) == (417, "Incomplete call data: no talkgroup\n\n")
        no_tg = await _post(rdio, "/api/call-upload", rdio_trunk_recorder(M4A, drop=("talkgroup",)))
        assert no_tg.status_code == 417
        assert len(rdio.requests) == 5

    async with open_openmhz({"metro": "omhz-key"}, talkgroups={"metro": {9131}}) as omhz:
        ok = await _post(omhz, "/Metro/upload", openmhz(M4A))
        assert (ok.status_code, ok.text) == (200, "")
        assert omhz.calls[0].audio == M4A and omhz.calls[0].fields["short_name"] == "metro"
        cases = [
            ("/metro/upload", openmhz(M4A, api_key="x"), "API Keys do not match!\n"),
            ("/county/upload", openmhz(M4A), "ShortName does not exist: county\n"),
            (
                "/metro/upload",
                openmhz(M4A, talkgroup="77"),
                "Talkgroup does not exist, skipping.\n",
            ),
            ("/metro/upload", openmhz(M4A, filename="x.wav"), "Error, invalid filename:\n"),
        ]
        for path, parts, text in cases:
            got = await _post(omhz, path, parts)
            assert (got.status_code, got.text) == (500, text)
        bad_src = await _post(omhz, "/metro/upload", openmhz(M4A, source_list='[{"tag": "a"b"}]'))
        assert bad_src.status_code == 500 and bad_src.text.startswith("Error parsing sourcelist")

    async with open_broadcastify({1234: "bcfy-key"}, reject_talkgroups={2201}) as bcfy:
        meta = json.dumps(TR_META, separators=(",", ":"))
        step1 = [
            Part("metadata", meta, filename="call_meta.json", content_type="application/json"),
            Part("callDuration", "5.000000"),
            Part("systemId", "1234"),
            Part("apiKey", "bcfy-key"),
        ]
        first = await _post(bcfy, "/call-upload", step1)
        code, _, url = first.text.partition(" ")
        assert first.status_code == 200 and code == "0" and url.startswith(bcfy.url + "/upload/")
        async with httpx.AsyncClient() as client:
            put = await client.put(url, content=M4A, headers={"Content-Type": "audio/aac"})
            assert put.status_code == 200
            used = await client.put(url, content=M4A, headers={"Content-Type": "audio/aac"})
            assert used.status_code == 403
        assert bcfy.calls[0].audio == M4A and bcfy.calls[0].metadata["talkgroup"] == 9131
        repeat = await _post(bcfy, "/call-upload", step1)
        assert (repeat.status_code, repeat.text) == (200, BCFY_SKIPPED)
        rejected = json.dumps({**TR_META, "talkgroup": 2201})
        step1[0] = dataclasses.replace(step1[0], value=rejected)
        no = await _post(bcfy, "/call-upload", step1)
        assert no.text.startswith("1 REJECTED")


# -- OpenMHz ----------------------------------------------------------------------------------

OMHZ_KEY = "omhz-metro"


def _omhz(url: str, **options: Any) -> Destination:
    per_system = options.pop("per_system", {"metro": SystemCredentials(api_key=OMHZ_KEY)})
    return _destination("openmhz", url, per_system=per_system, **options)


async def test_openmhz_request_is_the_plugins(vault: Vault) -> None:
    wire = openmhz(M4A)
    row = await _ingest(vault, "/metro/upload", wire)
    async with open_openmhz({"metro": OMHZ_KEY}) as omhz:
        answer = await _deliver(OpenMHzSender(), _omhz(omhz.url), row, BytesAudio(M4A))
        assert answer.outcome is Outcome.DELIVERED, answer
        [request] = omhz.requests
    assert request.path == "/metro/upload"
    assert request.field_names == [p.name for p in wire]
    assert request.header("user-agent") == "TrunkRecorder1.0" and not request.chunked
    assert _framing_matches(request)
    for sent in wire:
        got = request.part(sent.name)
        assert got is not None
        assert (got.filename, got.content_type) == (sent.filename, sent.content_type), sent.name
        want = sent.value if isinstance(sent.value, bytes) else sent.value.encode()
        if sent.name == "api_key":
            assert got.text == OMHZ_KEY
        elif sent.name in ("source_list", "patch_list"):
            assert json.loads(got.value) == json.loads(want), sent.name
        else:
            assert got.value == want, sent.name


async def test_openmhz_from_rdio_call_and_outcomes(vault: Vault) -> None:
    """A call that came by rdio (system 11, label metro) goes to OpenMHz under its short name;
    every OpenMHz answer maps to its outcome, the system named in a key error."""
    row = await _ingest(vault, "/api/call-upload", rdio_trunk_recorder(M4A))
    sender = OpenMHzSender()
    async with open_openmhz(
        {"metro": OMHZ_KEY, "mc": "mc-key"}, talkgroups={"metro": {9131}}
    ) as omhz:
        ok = await _deliver(sender, _omhz(omhz.url), row, BytesAudio(M4A))
        assert ok.outcome is Outcome.DELIVERED, ok
        fields = omhz.calls[0].fields
        assert (fields["short_name"], fields["talkgroup_num"], fields["call_length"]) == (
            "metro",
            "9131",
            "5",
        )
        assert (fields["start_time"], fields["stop_time"], fields["freq"]) == (
            "1764001234",
            "1764001239",
            "851012500",
        )
        renamed = _omhz(
            omhz.url, per_system={"11": SystemCredentials(api_key="mc-key", system="MC")}
        )
        assert (await _deliver(sender, renamed, row, BytesAudio(M4A))).outcome is Outcome.DELIVERED
        assert omhz.requests[-1].path == "/MC/upload"

        wrong = _omhz(omhz.url, per_system={"metro": SystemCredentials(api_key="nope")})
        bad = await _deliver(sender, wrong, row, BytesAudio(M4A))
        assert bad.outcome is Outcome.MISCONFIGURED and "metro" in bad.detail
        assert "API Keys do not match!" in bad.detail
        gone = _omhz(omhz.url, per_system={"metro": SystemCredentials(api_key="k", system="zz")})
        missing = await _deliver(sender, gone, row, BytesAudio(M4A))
        assert (
            missing.outcome is Outcome.MISCONFIGURED
            and "ShortName does not exist" in missing.detail
        )

        no_creds = await _deliver(sender, _omhz(omhz.url, per_system={}), row, BytesAudio(M4A))
        assert no_creds.outcome is Outcome.REJECTED and "per_system.metro" in no_creds.detail

        for body, outcome in [
            ("Talkgroup does not exist, skipping.\n", Outcome.REJECTED),
            ("Error, invalid filename:\n", Outcome.REJECTED),
            ("Error parsing sourcelist SyntaxError", Outcome.REJECTED),
            ("Internal Server Error\n", Outcome.TRANSIENT),
        ]:
            omhz.answer_next(500, body)
            got = await _deliver(sender, _omhz(omhz.url), row, BytesAudio(M4A))
            assert got.outcome is outcome, (body, got)
        omhz.answer_next(502, "")
        assert (await _deliver(sender, _omhz(omhz.url), row, BytesAudio(M4A))).outcome is (
            Outcome.TRANSIENT
        )


async def test_openmhz_refuses_wav(vault: Vault) -> None:
    row = await _ingest(vault, "/api/trunk-recorder-call-upload", trunk_recorder_meta_upload(WAV))
    async with open_openmhz({"metro": OMHZ_KEY}) as omhz:
        got = await _deliver(OpenMHzSender(), _omhz(omhz.url), row, BytesAudio(WAV))
        assert got.outcome is Outcome.REJECTED and "m4a" in got.detail
        assert omhz.requests == []


# -- Broadcastify -----------------------------------------------------------------------------

BCFY_KEY = "bcfy-metro"


def _bcfy(url: str, **options: Any) -> Destination:
    per_system = options.pop(
        "per_system", {"metro": SystemCredentials(api_key=BCFY_KEY, system_id=1234)}
    )
    return _destination("broadcastify", url, per_system=per_system, **options)


async def test_broadcastify_exchange_is_the_plugins(vault: Vault) -> None:
    row = await _ingest(vault, "/api/trunk-recorder-call-upload", _tr_meta_m4a())
    async with open_broadcastify({1234: BCFY_KEY}) as bcfy:
        got = await _deliver(BroadcastifySender(), _bcfy(bcfy.calls_url), row, BytesAudio(M4A))
        assert got.outcome is Outcome.DELIVERED, got
        post, put = bcfy.requests
        [call] = bcfy.calls
    assert post.method == "POST" and post.path == "/call-upload"
    assert post.field_names == ["metadata", "callDuration", "systemId", "apiKey"]
    assert post.header("user-agent") == "TrunkRecorder1.0" and post.header("expect") is None
    assert _framing_matches(post)
    meta = post.part("metadata")
    assert meta is not None
    assert (meta.filename, meta.content_type) == ("call_meta.json", "application/json")
    assert json.loads(meta.value) == TR_META  # the recorder's own call JSON, whole
    assert meta.text == json.dumps(TR_META, separators=(",", ":"), ensure_ascii=False)
    assert [post.part(n).text for n in ("callDuration", "systemId", "apiKey")] == [  # type: ignore[union-attr]
        "5.000000",
        "1234",
        BCFY_KEY,
    ]
    assert put.method == "PUT" and put.header("content-type") == "audio/aac"
    assert put.header("content-length") == str(len(M4A)) and not put.chunked
    assert put.header("expect") is None and put.header("user-agent") == "TrunkRecorder1.0"
    assert call.audio == M4A


async def test_broadcastify_outcomes(vault: Vault) -> None:
    """A call that came by rdio (no call JSON) gets one rebuilt; every answer class."""
    row = await _ingest(vault, "/api/call-upload", rdio_trunk_recorder(M4A))
    sender = BroadcastifySender()
    async with open_broadcastify({1234: BCFY_KEY}, reject_talkgroups={9131}) as bcfy:
        dest = _bcfy(bcfy.calls_url)
        rejected = await _deliver(sender, dest, row, BytesAudio(M4A))
        assert rejected.outcome is Outcome.REJECTED and "1 REJECTED" in rejected.detail
        bcfy.reject_talkgroups.clear()
        ok = await _deliver(sender, dest, row, BytesAudio(M4A))
        assert ok.outcome is Outcome.DELIVERED, ok
        meta = bcfy.calls[0].metadata
        assert (meta["talkgroup"], meta["start_time"], meta["short_name"]) == (
            9131,
            1764001234,
            "metro",
        )
        assert meta["srcList"][0]["src"] == 1402211  # type: ignore[index]
        again = await _deliver(sender, dest, row, BytesAudio(M4A))
        assert again.outcome is Outcome.ALREADY_THERE and len(bcfy.calls) == 1

        wrong = _bcfy(bcfy.calls_url, per_system={"11": SystemCredentials("nope", 1234)})
        bad = await _deliver(sender, wrong, row, BytesAudio(M4A))
        assert bad.outcome is Outcome.MISCONFIGURED and "metro" in bad.detail

        for status, body, outcome in [
            (200, "1 NO-TG-SENT", Outcome.TRANSIENT),  # the plugin retries any other code
            (200, "garbage", Outcome.TRANSIENT),
            (503, "", Outcome.TRANSIENT),
            (200, "1 SKIPPED---ALREADY-RECEIVED-THIS-CALL", Outcome.ALREADY_THERE),
        ]:
            bcfy.answer_next(status, body)
            got = await _deliver(sender, dest, row, BytesAudio(M4A))
            assert got.outcome is outcome, (body, got)

        # The PUT fails: the call is not there, so it is retried.
        bcfy.reset()
        bcfy.answer_next(200, f"0 {bcfy.url}/upload/none")
        failed_put = await _deliver(sender, dest, row, BytesAudio(M4A))
        assert failed_put.outcome is Outcome.TRANSIENT and "PUT" in failed_put.detail

        no_creds = await _deliver(
            sender, _bcfy(bcfy.calls_url, per_system={}), row, BytesAudio(M4A)
        )
        assert no_creds.outcome is Outcome.REJECTED and "per_system.metro" in no_creds.detail

        await bcfy.go_down()
        down = await _deliver(sender, dest, row, BytesAudio(M4A))
        assert down.outcome is Outcome.TRANSIENT


async def test_broadcastify_needs_compressed_audio(vault: Vault) -> None:
    row = await _ingest(vault, "/api/trunk-recorder-call-upload", trunk_recorder_meta_upload(WAV))
    async with open_broadcastify({1234: BCFY_KEY}) as bcfy:
        got = await _deliver(BroadcastifySender(), _bcfy(bcfy.calls_url), row, BytesAudio(WAV))
        assert got.outcome is Outcome.REJECTED and "compressWav" in got.detail
        assert bcfy.requests == []


@pytest.mark.parametrize("kind", ["openmhz", "broadcastify"])
async def test_slow_answer_is_transient(vault: Vault, kind: str) -> None:
    row = await _ingest(vault, "/api/trunk-recorder-call-upload", _tr_meta_m4a())
    if kind == "openmhz":
        async with open_openmhz({"metro": OMHZ_KEY}) as omhz:
            omhz.delay = 5
            got = await _deliver(
                OpenMHzSender(), _omhz(omhz.url, timeout=0.3), row, BytesAudio(M4A)
            )
    else:
        async with open_broadcastify({1234: BCFY_KEY}) as bcfy:
            bcfy.delay = 5
            dest = _bcfy(bcfy.calls_url, timeout=0.3)
            got = await _deliver(BroadcastifySender(), dest, row, BytesAudio(M4A))
    assert got.outcome is Outcome.TRANSIENT and "within 0.3 s" in got.detail
