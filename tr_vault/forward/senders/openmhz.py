"""OpenMHz: trunk-recorder's openmhz_uploader request, rebuilt from a stored call.

`POST {url}/{system}/upload`, multipart in the plugin's order (the `call` file first, the
key 10th of 12), the audio streamed. The system is the short name on OpenMHz
(`per_system.<name>.system`, default the call's short name) and each system has its own key
(`per_system.<name>.api_key`). OpenMHz answers success with `200` and an empty body and every
error with `500` and a text; the v5.2 plugin gives up at once on the four texts below.

A wrong key or an unknown short name is about one system of the destination, not the whole of
it, but an `Answer` cannot say so: it is MISCONFIGURED with the system named in the detail.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import httpx

from tr_vault.call import CallRow
from tr_vault.forward.base import Answer, Audio, Destination, Outcome
from tr_vault.forward.callview import TrCall, from_row
from tr_vault.forward.multipart import FilePart, Form, TextPart
from tr_vault.forward.senders import trformat
from tr_vault.forward.senders.exchange import Reply, exchange

__all__ = ["OpenMHzSender", "build_form", "classify"]

KIND = "openmhz"
USER_AGENT = "TrunkRecorder1.0"
# What OpenMHz takes, by the file name's extension (it checks nothing else).
EXTENSION_BY_TYPE = {"audio/mp4": ".m4a", "audio/mpeg": ".mp3"}
ACCEPTED_EXTENSIONS = frozenset(EXTENSION_BY_TYPE.values())

# Texts of OpenMHz's 500 answers (controllers/uploads.js), by what they mean for us.
DESTINATION_TEXTS = ("API Keys do not match", "ShortName does not exist")
CALL_TEXTS = ("Talkgroup does not exist", "Error, invalid filename", "Error parsing sourcelist")
_CALL_REFUSED = frozenset({400, 411, 413, 415, 417, 422})
_DESTINATION_WRONG = frozenset({401, 403, 404, 405})


def _what(short_name: str) -> str:
    return f"OpenMHz upload for system {short_name}"


def _filename(call: TrCall) -> str | None:
    """The name OpenMHz sees: the stored one when its extension is taken, else the same stem
    with the extension of the stored type; None when the audio is not m4a or mp3."""
    if call.extension in ACCEPTED_EXTENSIONS:
        return call.audio_name
    extension = EXTENSION_BY_TYPE.get(call.content_type)
    if extension is None:
        return None
    return PurePosixPath(call.audio_name).stem + extension


def build_form(destination: Destination, call: TrCall, audio: Audio) -> tuple[str, Form] | Answer:
    """The short name to post under and the plugin's 12 parts, or REJECTED (no key for the
    system, or audio OpenMHz does not take)."""
    creds = call.credentials(destination.per_system)
    short_name = (creds.system if creds is not None else None) or call.short_name
    if creds is None or not creds.api_key:
        return Answer(
            Outcome.REJECTED,
            f"{_what(short_name)}: no OpenMHz key for this system: set"
            f" [destinations.per_system.{call.short_name}] api_key in the forwarding file",
        )
    filename = _filename(call)
    if filename is None:
        return Answer(
            Outcome.REJECTED,
            f"{_what(short_name)}: OpenMHz takes m4a or mp3 audio, this call is"
            f" {call.content_type} ({call.audio_name}): have trunk-recorder compress it"
            " (compressWav)",
        )
    fields = [
        ("freq", str(call.freq)),
        ("error_count", str(call.error_count)),
        ("spike_count", str(call.spike_count)),
        ("start_time", str(call.start_time)),
        ("stop_time", str(call.stop_time)),
        ("call_length", f"{call.length:.0f}"),
        ("talkgroup_num", str(call.talkgroup)),
        ("emergency", str(call.emergency)),
        ("api_key", creds.api_key),
        ("patch_list", trformat.patches(call)),
        ("source_list", trformat.sources(call)),
    ]
    audio_part = FilePart("call", filename, "application/octet-stream", audio.size, audio.chunks)
    return short_name, Form([audio_part, *(TextPart(name, value) for name, value in fields)])


def classify(reply: Reply, short_name: str) -> Answer:
    """OpenMHz's answer as an `Outcome`; the texts decide, whatever the status carrying them
    (OpenMHz sends 500, tr_vault and other look-alikes a 4xx)."""
    what = _what(short_name)
    if 200 <= reply.status < 300:
        return reply.answer(Outcome.DELIVERED, what)
    if any(text in reply.text for text in DESTINATION_TEXTS):
        return reply.answer(Outcome.MISCONFIGURED, what)
    if any(text in reply.text for text in CALL_TEXTS):
        return reply.answer(Outcome.REJECTED, what)
    if reply.status in _DESTINATION_WRONG:
        return reply.answer(Outcome.MISCONFIGURED, what)
    if reply.status in _CALL_REFUSED:
        return reply.answer(Outcome.REJECTED, what)
    return reply.answer(Outcome.TRANSIENT, what)


class OpenMHzSender:
    """Kind `openmhz`."""

    kind = KIND

    async def deliver(
        self, client: httpx.AsyncClient, destination: Destination, call: CallRow, audio: Audio
    ) -> Answer:
        built = build_form(destination, from_row(call), audio)
        if isinstance(built, Answer):
            return built
        short_name, form = built
        reply = await exchange(
            client,
            "POST",
            f"{destination.url.rstrip('/')}/{short_name}/upload",
            what=_what(short_name),
            within=destination.timeout,
            headers={**form.headers, "User-Agent": USER_AGENT},
            content=form.body(),
        )
        return reply if isinstance(reply, Answer) else classify(reply, short_name)
