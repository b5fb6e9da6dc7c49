"""Broadcastify Calls: trunk-recorder's broadcastify_uploader exchange, rebuilt from a call.

Two steps. A metadata POST to `{url}` (multipart: `metadata`, the trunk-recorder call JSON as
the file `call_meta.json`; `callDuration`; `systemId`; `apiKey`) answered `200` with
`CODE MESSAGE`: `0 <upload URL>` to go on, `1 SKIPPED...` (another recorder sent this call:
done), `1 REJECTED...` (refused for good). Then a PUT of the audio to that URL, raw,
`Content-Type: audio/aac` with an explicit length, streamed. The plugin needs compressWav: only
m4a/aac audio goes. Each step has the destination's timeout.

Differences from the plugin, on purpose: the plugin counts the call sent once curl completes
the PUT whatever its status; here a PUT must answer 2xx (else TRANSIENT: the retry's metadata
POST answers `1 SKIPPED` if it did land). The plugin retries every other `1 ...` answer; here
a `1` answer that names the API key is MISCONFIGURED. Broadcastify's exact texts for a bad key
are not in the plugin's source nor on the protocol page, so that match is a guess on the word
(`API-Key`, `apikey`, `api key`), and everything else stays TRANSIENT, as the plugin has it.
"""

from __future__ import annotations

import json
import re

import httpx

from tr_vault.call import CallRow
from tr_vault.forward.base import Answer, Audio, Destination, Outcome
from tr_vault.forward.callview import TrCall, from_row
from tr_vault.forward.multipart import Form, TextPart
from tr_vault.forward.senders.exchange import Reply, cut, exchange

__all__ = ["BroadcastifySender", "build_form", "classify_metadata"]

KIND = "broadcastify"
USER_AGENT = "TrunkRecorder1.0"
AUDIO_TYPE = "audio/aac"  # what the plugin declares for its m4a
COMPRESSED_TYPES = frozenset({"audio/mp4", "audio/aac"})
_BAD_KEY = re.compile(r"api[-_ ]?key", re.IGNORECASE)


def _what(call: TrCall, step: str) -> str:
    return f"Broadcastify {step} for system {call.short_name}"


def build_form(destination: Destination, call: TrCall) -> Form | Answer:
    """The metadata POST's four parts, or REJECTED (no key or id for the system, or audio
    that is not m4a/aac)."""
    what = _what(call, "metadata POST")
    creds = call.credentials(destination.per_system)
    if creds is None or not creds.api_key or not creds.system_id:
        return Answer(
            Outcome.REJECTED,
            f"{what}: no Broadcastify key and system id for this system: set"
            f" [destinations.per_system.{call.short_name}] api_key and system_id",
        )
    if call.content_type not in COMPRESSED_TYPES:
        return Answer(
            Outcome.REJECTED,
            f"{what}: Broadcastify takes m4a/aac audio, this call is {call.content_type}"
            f" ({call.audio_name}): have trunk-recorder compress it (compressWav)",
        )
    meta = json.dumps(call.call_json(), separators=(",", ":"), ensure_ascii=False)
    return Form(
        [
            TextPart("metadata", meta, filename="call_meta.json", content_type="application/json"),
            TextPart("callDuration", f"{call.length:f}"),  # std::to_string(double)
            TextPart("systemId", str(creds.system_id)),
            TextPart("apiKey", creds.api_key),
        ]
    )


def classify_metadata(reply: Reply, what: str) -> Answer | str:
    """The metadata POST's answer: the upload URL to PUT to, or the final `Answer`."""
    if reply.status != 200:
        return reply.answer(Outcome.TRANSIENT, what)
    code, space, message = reply.text.strip().partition(" ")
    message = message.strip()
    if code == "0" and space and message.startswith(("http://", "https://")):
        return message
    if code == "1" and message.startswith("SKIPPED"):
        return reply.answer(Outcome.ALREADY_THERE, what)
    if code == "1" and message.startswith("REJECTED"):
        return reply.answer(Outcome.REJECTED, what)
    if code == "1" and _BAD_KEY.search(message):
        return reply.answer(Outcome.MISCONFIGURED, what)
    return reply.answer(Outcome.TRANSIENT, what)


class BroadcastifySender:
    """Kind `broadcastify`."""

    kind = KIND

    async def deliver(
        self, client: httpx.AsyncClient, destination: Destination, call: CallRow, audio: Audio
    ) -> Answer:
        view = from_row(call)
        form = build_form(destination, view)
        if isinstance(form, Answer):
            return form
        what = _what(view, "metadata POST")
        reply = await exchange(
            client,
            "POST",
            destination.url,
            what=what,
            within=destination.timeout,
            headers={**form.headers, "User-Agent": USER_AGENT},
            content=form.body(),
        )
        if isinstance(reply, Answer):
            return reply
        upload_url = classify_metadata(reply, what)
        if isinstance(upload_url, Answer):
            return upload_url
        what = _what(view, "audio PUT")
        put = await exchange(
            client,
            "PUT",
            upload_url,
            what=what,
            within=destination.timeout,
            headers={
                "Content-Type": AUDIO_TYPE,
                "Content-Length": str(audio.size),
                "User-Agent": USER_AGENT,
            },
            content=audio.chunks(),
        )
        if isinstance(put, Answer):
            return put
        if 200 <= put.status < 300:
            return Answer(Outcome.DELIVERED, f"{what}: HTTP {put.status}", put.status)
        return Answer(Outcome.TRANSIENT, f"{what}: HTTP {put.status} {cut(put.text)!r}", put.status)
