"""rdio-scanner: trunk-recorder's rdioscanner_uploader request, rebuilt from a stored call.

`POST {url}/api/call-upload`, multipart in the plugin's order (audio first, `key` 7th of 16),
the audio streamed. rdio-scanner answers `200 Call imported successfully.` for every call it
accepts, duplicates included (v6 only logs `duplicate call rejected`; servers that answer it
in the body, as SDRTrunk expects from some, get ALREADY_THERE), `401 Invalid API key for system
S talkgroup T.` for a key it does not know or that may not write there, `417 Incomplete call
data: <reason>` and `400` for a request it cannot read.
"""

from __future__ import annotations

import httpx

from tr_vault.call import CallRow
from tr_vault.forward.base import Answer, Audio, Destination, Outcome
from tr_vault.forward.callview import TrCall, from_row
from tr_vault.forward.multipart import FilePart, Form, TextPart
from tr_vault.forward.senders import trformat
from tr_vault.forward.senders.exchange import Reply, exchange

__all__ = ["RdioScannerSender", "build_form", "classify"]

KIND = "rdio-scanner"
PATH = "/api/call-upload"
USER_AGENT = "TrunkRecorder1.0"
SUCCESS = "Call imported successfully."
DUPLICATE = "duplicate call rejected"
WHAT = "rdio-scanner call-upload"

# Statuses that say the request itself is wrong: sending this call again cannot help.
_CALL_REFUSED = frozenset({400, 411, 413, 415, 417, 422})
# Statuses that say the destination is set up wrong (key, or a URL that is not rdio-scanner).
_DESTINATION_WRONG = frozenset({401, 403, 404, 405})


def _system_id(destination: Destination, call: TrCall) -> int | None:
    """rdio's numeric system id: `per_system.<name>.system_id`, else the call's own when it
    came with a number (rdio routes); OpenMHz and imported calls have only a short name."""
    creds = call.credentials(destination.per_system)
    if creds is not None and creds.system_id:
        return creds.system_id
    return int(call.system) if call.system.isdigit() and int(call.system) > 0 else None


def build_form(destination: Destination, call: TrCall, audio: Audio) -> Form | Answer:
    """The plugin's 16 parts for `call`, or REJECTED when the call has no rdio system id."""
    system_id = _system_id(destination, call)
    if system_id is None:
        return Answer(
            Outcome.REJECTED,
            f"{WHAT}: system {call.system!r} has no rdio-scanner system id: set"
            f" [destinations.per_system.{call.system}] system_id in the forwarding file",
        )
    creds = call.credentials(destination.per_system)
    key = (creds.api_key if creds is not None else None) or destination.api_key or ""
    fields = [
        ("audioName", call.audio_name),
        ("audioType", call.content_type),
        ("dateTime", str(call.start_time)),
        ("frequencies", trformat.frequencies(call)),
        ("frequency", str(call.freq)),
        ("key", key),
        ("patches", trformat.patches(call)),
        ("talkgroup", str(call.talkgroup)),
        ("talkgroupGroup", call.group),
        ("talkgroupLabel", call.alpha_tag),
        ("talkgroupTag", call.tag),
        ("talkgroupName", call.description),
        ("sources", trformat.sources(call)),
        ("system", str(system_id)),
        ("systemLabel", call.short_name),
    ]
    audio_part = FilePart(
        "audio", call.audio_name, "application/octet-stream", audio.size, audio.chunks
    )
    return Form([audio_part, *(TextPart(name, value) for name, value in fields)])


def classify(reply: Reply) -> Answer:
    """rdio-scanner's answer as an `Outcome` (see the module docstring for the texts)."""
    if 200 <= reply.status < 300:
        if DUPLICATE in reply.text.lower():
            return reply.answer(Outcome.ALREADY_THERE, WHAT)
        return reply.answer(Outcome.DELIVERED, WHAT)
    if reply.status in _DESTINATION_WRONG:
        return reply.answer(Outcome.MISCONFIGURED, WHAT)
    if reply.status in _CALL_REFUSED:
        return reply.answer(Outcome.REJECTED, WHAT)
    return reply.answer(Outcome.TRANSIENT, WHAT)


class RdioScannerSender:
    """Kind `rdio-scanner`."""

    kind = KIND

    async def deliver(
        self, client: httpx.AsyncClient, destination: Destination, call: CallRow, audio: Audio
    ) -> Answer:
        form = build_form(destination, from_row(call), audio)
        if isinstance(form, Answer):
            return form
        reply = await exchange(
            client,
            "POST",
            destination.url.rstrip("/") + PATH,
            what=WHAT,
            within=destination.timeout,
            headers={**form.headers, "User-Agent": USER_AGENT},
            content=form.body(),
        )
        return reply if isinstance(reply, Answer) else classify(reply)
