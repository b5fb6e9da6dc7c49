"""The rdio-scanner call-upload API, as trunk-recorder's rdioscanner_uploader and SDRTrunk send it.

`POST /api/call-upload` carries one form field per value; `POST /api/trunk-recorder-call-upload`
carries trunk-recorder's call JSON in `meta`. Answers and their texts are rdio-scanner v6's,
because SDRTrunk reads them (its connection test needs `Incomplete call data: no talkgroup`).
"""

from __future__ import annotations

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


def _system_label(form: UploadForm, meta: dict[str, Any] | None = None) -> str:
    label = form.get("systemLabel") or ""
    if not label and meta and isinstance(meta.get("short_name"), str):
        label = meta["short_name"]
    return label


def _system_id(form: UploadForm) -> int | None:
    """The system id the key's scope is matched against: the `system` form field (both routes;
    rdio-scanner never takes it from `meta`). `systemLabel` and `meta.short_name` are labels the
    client chose: they are stored, never used to decide what a key may write."""
    return f.lenient(f.positive_int, form.get("system", "systemId"))


def check_key(form: UploadForm, keys: ApiKeys, talkgroup: int | None = None) -> None:
    """401 with rdio-scanner's text when the key may not upload for this system.

    Before the system id is known (or when it is absent, which is a 417 later) the key must be
    a configured one; once it is known, the key's scope must name that id.
    """
    if not keys:
        return
    key = form.get("key")
    system = _system_id(form)
    allowed = keys.known(key) if system is None else keys.check(key, str(system))
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


def _audio_name(form: UploadForm, notes: list[str]) -> tuple[str, str]:
    """The file name and the stored type (from audioType, the part's Content-Type, the name)."""
    raw = form.get("audioName", "audioFilename") or form.audio_filename
    if raw is None:
        tg = form.get("talkgroup", "talkgroupId") or "0"
        raw = f"{tg}-{form.get('dateTime', 'timestamp') or 'call'}"
    name = f.safe_name(raw, "audio file name")
    declarations = [
        form.get_named("audioType", "audioMime"),
        (f.PART_TYPE, form.audio_content_type),
    ]
    content_type = f.audio_type(name, declarations, notes)
    return f.ensure_extension(name, content_type), content_type


def _required_ids(
    form: UploadForm, keys: ApiKeys, talkgroup_field: tuple[str, str | None]
) -> tuple[int | None, int | None]:
    """System and talkgroup ids, after the key check: absent is rdio-scanner's 417, a number
    that does not fit is a 400 naming it."""
    check_key(form, keys, f.lenient(f.positive_int, talkgroup_field[1]))
    system = f.required(*form.get_named("system", "systemId"), f.positive_int)
    talkgroup = f.required(*talkgroup_field, f.positive_int)
    return system, talkgroup


def _source(
    field: tuple[str, str | None], list_name: str, sources: Any, notes: list[str]
) -> int | None:
    """The unit id of the `source` field, else the first in the sources list.

    A unit id the client sent that does not fit is noted and left NULL: no other id stands in.
    """
    name, value = field
    try:
        return f.positive_int(value) or f.first_source(list_name, sources, notes)
    except f.OutOfRange as exc:
        notes.append(f.out_of_range_note(name, value, exc))
        return None


def call_upload(form: UploadForm, keys: ApiKeys) -> CallMeta:
    """Validate `POST /api/call-upload` into a call, or raise the rdio-scanner answer."""
    system, talkgroup = _required_ids(form, keys, form.get_named("talkgroup", "talkgroupId"))
    start = f.required("dateTime", form.get("dateTime"), f.epoch)
    if start is None:
        start = f.required("timestamp", form.get("timestamp"), f.epoch_millis)
    size = form.audio.size if form.audio else 0
    _incomplete(size, start, system, talkgroup)
    assert start is not None and system is not None and talkgroup is not None

    notes: list[str] = []
    name, content_type = _audio_name(form, notes)
    sources = f.optional_json("sources", form.get("sources"), notes)
    f.optional_json("frequencies", form.get("frequencies"), notes)
    f.optional_json("patches", form.get("patches", "patched_talkgroups"), notes)
    source = _source(form.get_named("source", "unit"), "sources", sources, notes)
    metadata = f.text_fields(form.fields, drop=("key",))
    f.keep_part_type(form.audio_content_type, content_type, metadata)
    label = _system_label(form)
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
        frequency=f.optional("frequency", form.get("frequency"), f.any_int, notes),
        metadata=metadata,
        notes=tuple(notes),
    )


def trunk_recorder_call_upload(form: UploadForm, keys: ApiKeys) -> CallMeta:
    """Validate `POST /api/trunk-recorder-call-upload` (call JSON in `meta`)."""
    raw_meta = form.get("meta")
    try:
        meta = f.strict_json(raw_meta) if raw_meta is not None else {}
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise IntakeError(417, "Invalid call data\n")

    def pick(form_name: str, meta_name: str) -> tuple[str, str | None]:
        """A form field, else the `meta` value, with the name it came by."""
        value = form.get(form_name)
        if value is None and meta.get(meta_name) is not None:
            return f"meta.{meta_name}", str(meta[meta_name])
        return form_name, value

    system, talkgroup = _required_ids(form, keys, pick("talkgroup", "talkgroup"))
    start = f.required(*pick("dateTime", "start_time"), f.epoch)
    size = form.audio.size if form.audio else 0
    _incomplete(size, start, system, talkgroup)
    assert start is not None and system is not None and talkgroup is not None

    notes: list[str] = []
    name, content_type = _audio_name(form, notes)
    stop = f.optional(*pick("stopTime", "stop_time"), f.epoch_number, notes)
    emergency = f.optional(*pick("emergency", "emergency"), f.any_int, notes) or 0
    source = _source(form.get_named("source"), "meta.srcList", meta.get("srcList"), notes)
    metadata = f.text_fields(form.fields, drop=("key", "meta"))
    metadata["meta"] = meta
    f.keep_part_type(form.audio_content_type, content_type, metadata)
    label = _system_label(form, meta)
    return CallMeta(
        protocol="rdio-tr",
        system=str(system),
        system_label=f.safe_name(label, "systemLabel") if label else None,
        talkgroup=talkgroup,
        start_time=start,
        audio_name=name,
        content_type=content_type,
        talkgroup_label=f.label(pick("talkgroupLabel", "talkgroup_tag")[1]),
        talkgroup_tag=f.label(pick("talkgroupTag", "talkgroup_group_tag")[1]),
        talkgroup_group=f.label(pick("talkgroupGroup", "talkgroup_group")[1]),
        source=source,
        frequency=f.optional(*pick("frequency", "freq"), f.any_int, notes),
        stop_time=stop,
        duration=f.optional(*pick("callLength", "call_length"), f.any_float, notes),
        emergency=emergency > 0,
        metadata=metadata,
        notes=tuple(notes),
    )
