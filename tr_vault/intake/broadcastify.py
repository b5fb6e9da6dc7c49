"""Broadcastify Calls, as trunk-recorder's broadcastify_uploader sends it: the metadata POST.

The plugin posts the call JSON (`metadata`, a file part), `callDuration`, `systemId` (the
Broadcastify system id) and `apiKey`, and uploads the audio only after the answer `0 <URL>`.
So the call is validated here, before any audio exists: what is missing or out of range is a
`400` naming the field (a non-200 the plugin logs and retries, and whose audio a v5.2
`archiveFilesOnFailure` keeps), never `1 REJECTED`, which the plugin counts as done.

The system is the JSON's `short_name`: it is what the call is filed under (`calls.system`, the
key's first segment) and so what a key's scope must name. The Broadcastify `systemId` is
checked to be an id and kept in the metadata, but never matched against a scope: it is another
numbering than rdio-scanner's ids, and an either-or match would let a number widen a key.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from tr_vault.auth import ApiKeys
from tr_vault.call import CallMeta
from tr_vault.errors import IntakeError
from tr_vault.intake import fields as f
from tr_vault.intake.form import UploadForm
from tr_vault.timefmt import to_db

PROTOCOL = "broadcastify"
METADATA_FIELD = "metadata"
NO_AUDIO = "\x00no audio part"  # `read_form`'s audio field: the metadata POST carries none
CONTENT_TYPE = "audio/mp4"  # the plugin needs compressWav and sends the .m4a
SKIPPED = "1 SKIPPED---ALREADY-RECEIVED-THIS-CALL"


def _bad_key(system: str | None, system_id: str | None) -> IntakeError:
    where = f" for system {f.shown(system)}" if system else ""
    return IntakeError(
        401,
        f"Invalid API key{where} (systemId {f.shown(system_id)}): not one of tr_vault's upload"
        " keys (TR_VAULT_API_KEYS), or a key whose scope does not name this system's"
        " short name\n",
    )


def _text(meta: dict[str, Any], name: str) -> str | None:
    """A JSON scalar as the text the field parsers take; None for absent, null, bool, list."""
    value = meta.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    return str(value)


def _call_json(form: UploadForm) -> dict[str, Any]:
    raw = form.get(METADATA_FIELD)
    if raw is None:
        raise IntakeError(
            400, "Missing 'metadata': the trunk-recorder call JSON (call_meta.json) is required\n"
        )
    try:
        meta = f.strict_json(raw)
    except ValueError as exc:
        raise IntakeError(400, f"Invalid 'metadata': not JSON ({exc})\n") from None
    if not isinstance(meta, dict):
        raise IntakeError(400, "Invalid 'metadata': not a JSON object\n")
    return meta


def audio_name(
    talkgroup: int, start: float, freq: int | None, meta: dict[str, Any], notes: list[str]
) -> str:
    """The name trunk-recorder gives the file it sends: `{tg}-{start}_{freq}[.{slot}]-call_{n}
    .m4a` (the slot only for TDMA recorders, `tdma_slot` -1 otherwise; `call_num` is in the
    JSON from v5.2 on, without it the name ends after the frequency)."""
    slot = f.optional("metadata.tdma_slot", _text(meta, "tdma_slot"), f.any_int, notes)
    call_num = f.optional("metadata.call_num", _text(meta, "call_num"), f.positive_int, notes)
    name = f"{talkgroup}-{int(start)}_{freq or 0}"
    if slot is not None and slot >= 0:
        name += f".{slot}"
    if call_num is not None:
        name += f"-call_{call_num}"
    return f.safe_name(name + ".m4a", "audio file name")


def call_metadata(form: UploadForm, keys: ApiKeys) -> CallMeta:
    """Validate a metadata POST into the call its PUT will store, or raise its answer.

    An unknown key is refused before the JSON is read; the scope is checked against the short
    name once it is known.
    """
    key = form.get("apiKey")
    system_id_text = form.get("systemId")
    if keys and not keys.known(key):
        raise _bad_key(None, system_id_text)
    meta = _call_json(form)
    short_name = meta.get("short_name")
    if not isinstance(short_name, str) or not short_name.strip():
        raise IntakeError(
            400, "Missing 'metadata.short_name': the system's short name is required\n"
        )
    system = f.safe_name(short_name, "metadata.short_name")
    if not keys.check(key, system):
        raise _bad_key(system, system_id_text)
    system_id = f.required("systemId", system_id_text, f.positive_int)
    if system_id is None:
        raise IntakeError(
            400, "Missing or invalid 'systemId': the Broadcastify system id, an integer > 0\n"
        )
    talkgroup = f.required("metadata.talkgroup", _text(meta, "talkgroup"), f.positive_int)
    if talkgroup is None:
        raise IntakeError(
            400, "Missing or invalid 'metadata.talkgroup': a talkgroup id > 0 is required\n"
        )
    start = f.required("metadata.start_time", _text(meta, "start_time"), f.epoch_number)
    if start is None:
        raise IntakeError(
            400, "Missing or invalid 'metadata.start_time': Unix seconds are required\n"
        )

    notes: list[str] = []
    freq = f.optional("metadata.freq", _text(meta, "freq"), f.any_int, notes)
    name = audio_name(talkgroup, start, freq, meta, notes)
    duration = f.optional("callDuration", form.get("callDuration"), f.any_float, notes)
    if duration is None:
        duration = f.optional(
            "metadata.call_length", _text(meta, "call_length"), f.any_float, notes
        )
    emergency = f.optional("metadata.emergency", _text(meta, "emergency"), f.any_int, notes)
    metadata = f.text_fields(form.fields, drop=("apiKey", METADATA_FIELD))
    metadata["meta"] = meta
    metadata["broadcastify_system_id"] = system_id
    return CallMeta(
        protocol=PROTOCOL,
        system=system,
        system_label=system,
        talkgroup=talkgroup,
        start_time=start,
        audio_name=name,
        content_type=CONTENT_TYPE,
        talkgroup_label=f.label(_text(meta, "talkgroup_tag")),
        talkgroup_tag=f.label(_text(meta, "talkgroup_group_tag")),
        talkgroup_group=f.label(_text(meta, "talkgroup_group")),
        source=f.first_source("metadata.srcList", meta.get("srcList"), notes),
        frequency=freq,
        stop_time=f.optional("metadata.stop_time", _text(meta, "stop_time"), f.epoch_number, notes),
        duration=duration,
        emergency=(emergency or 0) > 0,
        metadata=metadata,
        notes=tuple(notes),
    )


def already_received(conn: sqlite3.Connection, meta: CallMeta) -> int | None:
    """The id of a stored call of this system, talkgroup and start second, or None.

    A call's identity is its audio's SHA-256 with the talkgroup and start second, but the
    metadata POST comes before the audio: this is the test that can be made then, and it is
    Broadcastify's own (`1 SKIPPED` when another recorder sent the call). The system matches
    as either form of its name (`calls.system` or `system_label`), so a call that came by the
    rdio-scanner route (`11`, label `metro`) counts too. Two different recordings of one
    talkgroup starting in one second are then kept once; the one skipped is the same
    transmission, heard by another recorder.
    """
    second = int(meta.start_time)
    row = conn.execute(
        "SELECT id FROM calls WHERE talkgroup = ? AND start_time >= ? AND start_time < ?"
        " AND (lower(system) = ? OR lower(system_label) = ?) ORDER BY id LIMIT 1",
        (
            meta.talkgroup,
            to_db(second),
            to_db(second + 1),
            meta.system.lower(),
            meta.system.lower(),
        ),
    ).fetchone()
    return None if row is None else int(row[0])
