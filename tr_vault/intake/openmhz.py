"""The OpenMHz upload API, as trunk-recorder's openmhz_uploader sends it.

`POST /{short_name}/upload` with the `call` file part. OpenMHz answers every error with 500;
tr_vault answers with proper 4xx codes but keeps OpenMHz's texts where the meaning is the same,
because the v5.2 plugin stops retrying on some of them (those are all permanent here too).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath

from tr_vault.auth import ApiKeys
from tr_vault.call import CallMeta
from tr_vault.errors import IntakeError
from tr_vault.intake import fields as f
from tr_vault.intake.form import UploadForm

AUDIO_FIELD = "call"
SUCCESS = ""
ALLOWED_EXTENSIONS = frozenset({".m4a", ".mp3", ".wav", ".aac"})
BAD_KEY = "API Keys do not match!\n"


def short_name(path_segment: str) -> str:
    """The system's short name from the path; OpenMHz lowercases it."""
    return f.safe_name(path_segment.lower(), "system short name")


def check_key(system: str, form: UploadForm, keys: ApiKeys) -> None:
    """401 `API Keys do not match!` unless the key's scope names `system`: the short name of
    the path, the one identifier OpenMHz has (no form field can change it)."""
    if keys and not keys.check(form.get("api_key"), system):
        raise IntakeError(401, BAD_KEY)


def early_key_check(system: str, keys: ApiKeys) -> Callable[[UploadForm], None]:
    def check(form: UploadForm) -> None:
        if form.get("api_key") is not None:
            check_key(system, form, keys)

    return check


def upload(system: str, form: UploadForm, keys: ApiKeys) -> CallMeta:
    """Validate an OpenMHz upload into a call, or raise its answer."""
    check_key(system, form, keys)
    if form.audio is None or not form.audio_filename:
        raise IntakeError(400, "Error, invalid filename:\n")
    raw_name = form.audio_filename
    if PurePosixPath(raw_name).suffix.lower() not in ALLOWED_EXTENSIONS:
        raise IntakeError(400, f"Error, invalid filename: {raw_name}\n")
    name = f.safe_name(raw_name, "file name")
    if form.audio.size == 0:
        raise IntakeError(400, "Missing audio: the 'call' file part is empty\n")
    talkgroup = f.required("talkgroup_num", form.get("talkgroup_num"), f.positive_int)
    if talkgroup is None:
        raise IntakeError(
            400, "Missing or invalid 'talkgroup_num': a talkgroup id > 0 is required\n"
        )
    start = f.required("start_time", form.get("start_time"), f.epoch)
    if start is None:
        raise IntakeError(400, "Missing or invalid 'start_time': Unix seconds are required\n")
    notes: list[str] = []
    sources = f.optional_json("source_list", form.get("source_list"), notes)
    # OpenMHz goes by the name's extension (checked above), not the part's Content-Type.
    content_type = f.audio_type(name, [], notes)
    metadata = f.text_fields(form.fields, drop=("api_key",))
    f.keep_part_type(form.audio_content_type, content_type, metadata)
    return CallMeta(
        protocol="openmhz",
        system=system,
        system_label=system,
        talkgroup=talkgroup,
        start_time=start,
        audio_name=name,
        content_type=content_type,
        source=f.first_source("source_list", sources, notes),
        frequency=f.optional("freq", form.get("freq"), f.any_int, notes),
        stop_time=f.optional("stop_time", form.get("stop_time"), f.epoch, notes),
        duration=f.optional("call_length", form.get("call_length"), f.any_float, notes),
        emergency=(f.optional("emergency", form.get("emergency"), f.any_int, notes) or 0) > 0,
        metadata=metadata,
        notes=tuple(notes),
    )
