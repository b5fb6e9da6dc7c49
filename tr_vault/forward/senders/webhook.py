"""Kind `webhook`: a JSON POST of the call's metadata with a link to its audio.

For transcription and alerting services that fetch the audio themselves: the link is a
presigned S3 URL when the object is in the bucket, else tr_vault's own audio URL (set
TR_VAULT_PUBLIC_URL). The api_key goes as a bearer token. 2xx is delivered; 401/403 a wrong
key (the destination is misconfigured); 409 already there; other 4xx refuse this call;
anything else (5xx, 429, network, redirects) is transient.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from tr_vault.call import CallRow
from tr_vault.forward.base import Answer, Audio, Destination, Outcome

DETAIL_CHARS = 300


def payload(call: CallRow, audio: Audio) -> dict[str, Any]:
    """The JSON body: what a consumer needs to file, alert on or transcribe the call."""
    try:
        received = json.loads(call.metadata)
    except ValueError:
        received = {}
    return {
        "id": call.id,
        "protocol": call.protocol,
        "system": call.system,
        "system_label": call.system_label,
        "talkgroup": call.talkgroup,
        "talkgroup_label": call.talkgroup_label,
        "talkgroup_tag": call.talkgroup_tag,
        "talkgroup_group": call.talkgroup_group,
        "source": call.source,
        "frequency": call.frequency,
        "start_time": call.start_time,
        "stop_time": call.stop_time,
        "duration": call.duration,
        "emergency": bool(call.emergency),
        "audio_name": call.audio_name,
        "audio_type": audio.content_type,
        "audio_size": call.size,
        "audio_sha256": call.sha256,
        "audio_url": getattr(audio, "link", None),
        "metadata": received,
    }


def classify(status: int, body: str) -> Answer:
    detail = f"HTTP {status}: {body.strip()[:DETAIL_CHARS]}".rstrip(": ")
    if 200 <= status < 300:
        return Answer(Outcome.DELIVERED, detail, status)
    if status == 409:
        return Answer(Outcome.ALREADY_THERE, detail, status)
    if status in (401, 403):
        return Answer(Outcome.MISCONFIGURED, f"{detail} (check api_key)", status)
    if 400 <= status < 500 and status not in (408, 429):
        return Answer(Outcome.REJECTED, detail, status)
    return Answer(Outcome.TRANSIENT, detail, status)


class WebhookSender:
    kind = "webhook"

    async def deliver(
        self, client: httpx.AsyncClient, destination: Destination, call: CallRow, audio: Audio
    ) -> Answer:
        headers = {"Idempotency-Key": f"tr-vault-{call.sha256[:16]}-{call.id}"}
        if destination.api_key:
            headers["Authorization"] = f"Bearer {destination.api_key}"
        try:
            response = await client.post(
                destination.url,
                json=payload(call, audio),
                headers=headers,
                follow_redirects=False,
            )
        except httpx.HTTPError as exc:
            return Answer(Outcome.TRANSIENT, f"{type(exc).__name__}: {exc}")
        return classify(response.status_code, response.text)
