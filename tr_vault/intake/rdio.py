"""The rdio-scanner call-upload API, as trunk-recorder's rdioscanner_uploader and SDRTrunk send it.

`POST /api/call-upload` carries one form field per value; `POST /api/trunk-recorder-call-upload`
carries trunk-recorder's call JSON in `meta`. Answers and their texts are rdio-scanner v6's,
because SDRTrunk reads them (its connection test needs `Incomplete call data: no talkgroup`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tr_vault.auth import ApiKeys
from tr_vault.call import CallMeta
from tr_vault.errors import IntakeError
from tr_vault.intake import fields as f
from tr_vault.intake.form import UploadForm

AUDIO_FIELD = "audio"
SUCCESS = "Call imported successfully.\n"
MIN_AUDIO_BYTES = 45  # rdio-scanner: audio of 44 bytes or less (an empty WAV header) is no audio


def _system_names(form: UploadForm, meta: dict[str, Any] | None = None) -> tuple[int | None, str]:
    system = f.positive_int(form.get("system", "systemId"))
    label = form.get("systemLabel") or ""
    if not label and meta and isinstance(meta.get("short_name"), str):
        label = meta["short_name"]
    return system, label


def check_key(form: UploadForm, keys: ApiKeys, talkgroup: int | None = None) -> None:
    """401 with rdio-scanner's text when the key may not upload for this system."""
    if not keys:
        return
    key = form.get("key")
    system, label = _system_names(form)
    allowed = keys.known(key) if system is None else keys.check(key, str(system), label)
    if not allowed:
        raise IntakeError(
            401,
            f"Invalid API key for system {system or form.get('system') or 0} "
            f"talkgroup {talkgroup or form.get('talkgroup') or 0}.\n",
        )


def early_key_check(keys: ApiKeys) -> Callable[[UploadForm], None]:
    """A `before_audio` hook: refuse a wrong key before the audio is read, when it came first."""

    def check(form: UploadForm) -> None:
        if form.get("key") is not None:
            check_key(form, keys)

    return check


def _incomplete(audio_size: int, start: float | None, system: int | None, tg: int | None) -> None:
    # rdio-scanner runs every check and reports the last that failed, so a connection test
    # (key, system, test=1) is answered "no talkgroup", which SDRTrunk waits for.
    reason = None
    if audio_size < MIN_AUDIO_BYTES:
        reason = "no audio"
    if start is None:
        reason = "no datetime"
    if system is None:
        reason = "no system"
    if tg is None:
        reason = "no talkgroup"
    if reason is not None:
        raise IntakeError(417, f"Incomplete call data: {reason}\n\n")


def _audio_name(form: UploadForm, content_type_hint: str | None) -> tuple[str, str]:
    raw = form.get("audioName", "audioFilename") or form.audio_filename
    declared = form.get("audioType", "audioMime") or content_type_hint
    if raw is None:
        tg = form.get("talkgroup", "talkgroupId") or "0"
        raw = f"{tg}-{form.get('dateTime', 'timestamp') or 'call'}"
    name = f.safe_name(raw, "audio file name")
    content_type = f.audio_type(name, declared)
    return f.ensure_extension(name, content_type), content_type


def call_upload(form: UploadForm, keys: ApiKeys) -> CallMeta:
    """Validate `POST /api/call-upload` into a call, or raise the rdio-scanner answer."""
    system, label = _system_names(form)
    talkgroup = f.positive_int(form.get("talkgroup", "talkgroupId"))
    check_key(form, keys, talkgroup)
    start = f.unix_or_rfc3339(form.get("dateTime"))
    if start is None:
        millis = f.positive_int(form.get("timestamp"))
        start = millis / 1000 if millis else None
    size = form.audio.size if form.audio else 0
    _incomplete(size, start, system, talkgroup)
    assert start is not None and system is not None and talkgroup is not None
    name, content_type = _audio_name(form, form.audio_content_type)

    notes: list[str] = []
    sources = f.optional_json("sources", form.get("sources"), notes)
    f.optional_json("frequencies", form.get("frequencies"), notes)
    f.optional_json("patches", form.get("patches", "patched_talkgroups"), notes)
    source = f.positive_int(form.get("source", "unit")) or f.first_source(sources)
    return CallMeta(
        protocol="rdio",
        system=str(system),
        system_label=f.safe_name(label, "systemLabel") if label else None,
        talkgroup=talkgroup,
        start_time=start,
        audio_name=name,
        content_type=content_type,
        talkgroup_label=f.label(form.get("talkgroupLabel")),
        talkgroup_tag=f.label(form.get("talkgroupTag")),
        talkgroup_group=f.label(form.get("talkgroupGroup", "talkgroupGroups")),
        source=source,
        frequency=f.any_int(form.get("frequency")),
        metadata=f.text_fields(form.fields, drop=("key",)),
        notes=tuple(notes),
    )


def trunk_recorder_call_upload(form: UploadForm, keys: ApiKeys) -> CallMeta:
    """Validate `POST /api/trunk-recorder-call-upload` (call JSON in `meta`)."""
    raw_meta = form.get("meta")
    try:
        meta = json.loads(raw_meta) if raw_meta is not None else {}
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise IntakeError(417, "Invalid call data\n")
    system, label = _system_names(form, meta)

    def pick(form_name: str, meta_name: str) -> str | None:
        value = form.get(form_name)
        if value is None and meta.get(meta_name) is not None:
            value = str(meta[meta_name])
        return value

    talkgroup = f.positive_int(pick("talkgroup", "talkgroup"))
    check_key(form, keys, talkgroup)
    start = f.unix_or_rfc3339(pick("dateTime", "start_time"))
    size = form.audio.size if form.audio else 0
    _incomplete(size, start, system, talkgroup)
    assert start is not None and system is not None and talkgroup is not None
    name, content_type = _audio_name(form, form.audio_content_type)
    stop = f.any_float(pick("stopTime", "stop_time"))
    sources = meta.get("srcList")
    emergency = f.any_int(pick("emergency", "emergency")) or 0
    metadata = f.text_fields(form.fields, drop=("key", "meta"))
    metadata["meta"] = meta
    return CallMeta(
        protocol="rdio-tr",
        system=str(system),
        system_label=f.safe_name(label, "systemLabel") if label else None,
        talkgroup=talkgroup,
        start_time=start,
        audio_name=name,
        content_type=content_type,
        talkgroup_label=f.label(pick("talkgroupLabel", "talkgroup_tag")),
        talkgroup_tag=f.label(pick("talkgroupTag", "talkgroup_group_tag")),
        talkgroup_group=f.label(pick("talkgroupGroup", "talkgroup_group")),
        source=f.positive_int(form.get("source")) or f.first_source(sources),
        frequency=f.any_int(pick("frequency", "freq")),
        stop_time=stop if stop and stop > 0 else None,
        duration=f.any_float(pick("callLength", "call_length")),
        emergency=emergency > 0,
        metadata=metadata,
    )
