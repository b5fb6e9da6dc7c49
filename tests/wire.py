"""Byte-exact replicas of the requests the recorders send (part order, dispositions, types)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BOUNDARY = "------------------------d74496d66958873e"


@dataclass(frozen=True)
class Part:
    name: str
    value: bytes | str
    filename: str | None = None
    content_type: str | None = None
    filename_first: bool = False  # SDRTrunk writes `filename="…"; name="audio"`


def multipart(parts: list[Part], boundary: str = BOUNDARY) -> tuple[bytes, str]:
    """A multipart/form-data body as libcurl writes it, and its Content-Type header."""
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\n".encode()
        if part.filename is not None and part.filename_first:
            disp = f'form-data; filename="{part.filename}"; name="{part.name}"'
        elif part.filename is not None:
            disp = f'form-data; name="{part.name}"; filename="{part.filename}"'
        else:
            disp = f'form-data; name="{part.name}"'
        out += f"Content-Disposition: {disp}\r\n".encode()
        if part.content_type:
            out += f"Content-Type: {part.content_type}\r\n".encode()
        out += b"\r\n"
        out += part.value.encode() if isinstance(part.value, str) else part.value
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


TR_AUDIO_NAME = "9131-1764001234_851012500.0-call_123.m4a"
TR_FREQUENCIES = (
    '[{"freq": 851012500, "time": 1764001234, "pos": 0.00, "len": 4.87,'
    ' "errorCount": 0, "spikeCount": 0}]'
)
TR_SOURCES = '[{"pos": 0.00, "src": 1402211}]'


def rdio_trunk_recorder(
    audio: bytes,
    *,
    key: str = "tr-key",
    system: str = "11",
    system_label: str = "metro",
    talkgroup: str = "9131",
    date_time: str = "1764001234",
    audio_name: str = TR_AUDIO_NAME,
    sources: str = TR_SOURCES,
    frequencies: str = TR_FREQUENCIES,
    drop: tuple[str, ...] = (),
) -> list[Part]:
    """trunk-recorder's rdioscanner_uploader: audio first, the key 7th of 16."""
    parts = [
        Part("audio", audio, filename=audio_name, content_type="application/octet-stream"),
        Part("audioName", audio_name),
        Part("audioType", "audio/mp4"),
        Part("dateTime", date_time),
        Part("frequencies", frequencies),
        Part("frequency", "851012500"),
        Part("key", key),
        Part("patches", "[]"),
        Part("talkgroup", talkgroup),
        Part("talkgroupGroup", "Fire"),
        Part("talkgroupLabel", "FD Dispatch"),
        Part("talkgroupTag", "Fire Dispatch"),
        Part("talkgroupName", "Fire Dispatch Main"),
        Part("sources", sources),
        Part("system", system),
        Part("systemLabel", system_label),
    ]
    return [p for p in parts if p.name not in drop]


def sdrtrunk(audio: bytes, *, key: str = "tr-key", system: str = "11") -> list[Part]:
    """SDRTrunk's Rdio Scanner broadcaster: key first, audio last, filename before name."""
    return [
        Part("key", key),
        Part("system", system),
        Part("dateTime", "1764001301"),
        Part("talkgroup", "2201"),
        Part("source", "4411"),
        Part("frequency", "852387500"),
        Part("talkgroupLabel", "PD North"),
        Part("talkgroupGroup", "Police"),
        Part("systemLabel", "metro"),
        Part("patches", "[]"),
        Part("talkerAlias", "CAR 12"),
        Part("audioName", "20251124_163141metro_PD_North_TO_2201_FROM_4411.mp3"),
        Part("audio", audio, filename="20251124_163141metro_PD_North_TO_2201_FROM_4411.mp3",
             filename_first=True),
    ]  # fmt: skip


def sdrtrunk_test(*, key: str = "tr-key", system: str = "11") -> list[Part]:
    """SDRTrunk's connection test."""
    return [Part("key", key), Part("system", system), Part("test", "1")]


def openmhz(
    audio: bytes,
    *,
    api_key: str = "omhz-key",
    filename: str = "9131-1764001234_851012500.0-call_123.m4a",
    talkgroup: str | None = "9131",
    source_list: str = '[{"pos": 0.00, "src": 1402211}]',
) -> list[Part]:
    """trunk-recorder's openmhz_uploader, part for part."""
    parts = [
        Part("call", audio, filename=filename, content_type="application/octet-stream"),
        Part("freq", "851012500"),
        Part("error_count", "0"),
        Part("spike_count", "0"),
        Part("start_time", "1764001234"),
        Part("stop_time", "1764001239"),
        Part("call_length", "5"),
        Part("talkgroup_num", talkgroup or ""),
        Part("emergency", "0"),
        Part("api_key", api_key),
        Part("patch_list", "[]"),
        Part("source_list", source_list),
    ]
    return [p for p in parts if not (p.name == "talkgroup_num" and talkgroup is None)]


TR_META = {
    "freq": 851012500, "freq_error": 12, "signal": -48, "noise": -102, "source_num": 0,
    "recorder_num": 3, "tdma_slot": 0, "phase2_tdma": 0, "start_time": 1764001234,
    "stop_time": 1764001239, "emergency": 0, "priority": 0, "mode": 0, "duplex": 0,
    "encrypted": 0, "call_length": 5, "talkgroup": 9131, "talkgroup_tag": "FD Dispatch",
    "talkgroup_description": "Fire Dispatch Main", "talkgroup_group_tag": "Fire Dispatch",
    "talkgroup_group": "Fire", "audio_type": "digital", "short_name": "metro",
    "freqList": [{"freq": 851012500, "time": 1764001234, "pos": 0.0, "len": 4.87,
                  "error_count": 0, "spike_count": 0}],
    "srcList": [{"src": 1402211, "time": 1764001234, "pos": 0.0, "emergency": 0,
                 "signal_system": "", "tag": ""}],
}  # fmt: skip


def trunk_recorder_meta_upload(
    audio: bytes, *, key: str = "tr-key", meta: str | None = None
) -> list[Part]:
    """A user's script: `curl -F audio=@x.wav -F meta=@x.json -F system=11 -F key=…`."""
    return [
        Part("audio", audio, filename="9131-1764001234_851012500.0-call_123.wav",
             content_type="audio/x-wav"),
        Part("meta", meta if meta is not None else json.dumps(TR_META), filename="x.json",
             content_type="application/json"),
        Part("system", "11"),
        Part("key", key),
    ]  # fmt: skip


# trunk-recorder's broadcastify_uploader sends `call_json.dump()`: nlohmann's ordered_json,
# compact, in the sidecar's key order, UTF-8 unescaped.
BCFY_CALL_JSON = json.dumps(TR_META, separators=(",", ":"), ensure_ascii=False)
# The name tr_vault files it under: trunk-recorder's, but `-call_{n}` only once the JSON has a
# `call_num` (v5.2+); `.0` is the TDMA slot.
BCFY_AUDIO_NAME = "9131-1764001234_851012500.0.m4a"
TR_USER_AGENT = "TrunkRecorder1.0"


def broadcastify_trunk_recorder(
    *,
    api_key: str = "tr-key",
    system_id: str = "1234",
    call_json: str = BCFY_CALL_JSON,
    call_duration: str = "4.870000",
    src_alias: str | None = None,
) -> list[Part]:
    """broadcastify_uploader's metadata POST, part for part: the call JSON as a file part,
    `callDuration` (`std::to_string` of a double), `systemId`, `apiKey`, and `srcId_alias` when
    `broadcastifyOTA` has one."""
    parts = [
        Part("metadata", call_json, filename="call_meta.json", content_type="application/json"),
        Part("callDuration", call_duration),
        Part("systemId", system_id),
        Part("apiKey", api_key),
    ]
    if src_alias is not None:
        parts.append(Part("srcId_alias", src_alias))
    return parts


def curl_post(host: str, path: str, parts: list[Part]) -> bytes:
    """A multipart POST as libcurl writes it with the plugin's options (its user agent, no
    `Expect`): Content-Length before Content-Type."""
    body, content_type = multipart(parts)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {TR_USER_AGENT}\r\n"
        f"Accept: */*\r\nContent-Length: {len(body)}\r\nContent-Type: {content_type}\r\n\r\n"
    )
    return head.encode() + body


def curl_put(host: str, path: str, audio: bytes, *, length: int | None = None) -> bytes:
    """broadcastify_uploader's PUT of the m4a (CURLOPT_UPLOAD with the file's size): the
    `Content-Type: audio/aac` it sets, no `Expect`, no chunked encoding. `length=-1` leaves
    the Content-Length out (no recorder does; for the 411)."""
    declared = len(audio) if length is None else length
    size = f"Content-Length: {declared}\r\n" if declared >= 0 else ""
    head = (
        f"PUT {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {TR_USER_AGENT}\r\n"
        f"Accept: */*\r\nContent-Type: audio/aac\r\n{size}\r\n"
    )
    return head.encode() + audio
