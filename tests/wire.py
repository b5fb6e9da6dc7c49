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
