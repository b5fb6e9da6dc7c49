"""The intake's multipart parser against werkzeug's decoder, which it replaced.

For bodies the recorders could send (the `tests/wire.py` replicas, with generated values,
names, file names and part types), `read_form` fed in chunks cut anywhere must find the same
fields, the same audio bytes, file name and part type as werkzeug's `MultipartDecoder` read
by the old rules (first occurrence wins, UTF-8 with replacement) from the whole body. The reference lives here
only: werkzeug stays installed as quart's own parser.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from tests.wire import Part, multipart, openmhz, rdio_trunk_recorder, sdrtrunk
from tr_vault.cache import AudioCache
from tr_vault.errors import IntakeError
from tr_vault.intake.form import FormLimits, _disposition, read_form


@dataclass
class Read:
    fields: dict[str, str] = field(default_factory=dict)
    audio: bytes | None = None
    filename: str | None = None
    content_type: str | None = None


def werkzeug_read(body: bytes, boundary: bytes, chunks: list[int], audio_field: str) -> Read | str:
    """What the intake read with werkzeug's decoder, by the rules form.py had then (or the
    refusal of a second audio part)."""
    decoder = MultipartDecoder(boundary, max_parts=200)
    out = Read()
    audio = bytearray()
    name: str | None = None
    data = bytearray()
    in_audio = False
    pieces = [body[a:b] for a, b in zip([0, *chunks], [*chunks, len(body)], strict=True)]
    for piece in [*pieces, None]:
        decoder.receive_data(piece)
        while not isinstance(event := decoder.next_event(), NeedData | Epilogue):
            if isinstance(event, File) and event.name == audio_field:
                if out.audio is not None:
                    return f"More than one '{audio_field}' file part\n"
                in_audio, out.audio = True, b""
                out.filename = event.filename or None
                out.content_type = event.headers.get("content-type")
            elif isinstance(event, Field | File):
                name = event.name
                data.clear()
            elif isinstance(event, Data) and in_audio:
                audio += event.data
                in_audio = event.more_data
            elif isinstance(event, Data):
                data += event.data
                if not event.more_data and name is not None:
                    out.fields.setdefault(name, data.decode("utf-8", errors="replace"))
                    name = None
        if isinstance(event, Epilogue):
            break
    if out.audio is not None:
        out.audio = bytes(audio)
    return out


def vault_read(body: bytes, content_type: str, chunks: list[int], audio_field: str) -> Read | str:
    async def pieces() -> AsyncIterator[bytes]:
        for a, b in zip([0, *chunks], [*chunks, len(body)], strict=True):
            if b > a:
                yield body[a:b]

    async def main(root: Path) -> Read | str:
        try:
            async with aclosing(pieces()) as body_chunks:
                form = await read_form(
                    body_chunks,
                    content_type=content_type,
                    content_length=len(body),
                    cache=AudioCache(root),
                    audio_field=audio_field,
                    limits=FormLimits(max_bytes=64 * 1024 * 1024, idle_timeout=5),
                )
        except IntakeError as exc:
            assert not any((root / ".incoming").iterdir())  # the temp file is gone
            return exc.body
        out = Read(dict(form.fields), None, form.audio_filename, form.audio_content_type)
        if form.audio is not None:
            out.audio = form.audio.path.read_bytes()
            assert form.audio.sha256 == hashlib.sha256(out.audio).hexdigest()
        form.discard()
        return out

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / ".incoming").mkdir()
        return trio.run(main, Path(tmp))


# Names, file names and types as clients write them, and the characters that need care in a
# quoted parameter (no CR/LF or quote: those would break the replica's framing itself).
texts = st.text(
    st.characters(codec="utf-8", exclude_characters='"\r\n', exclude_categories=["Cs"]),
    max_size=20,
)
values = st.one_of(texts, st.binary(max_size=300))
extra_parts = st.lists(
    st.builds(
        Part,
        name=st.one_of(texts, st.sampled_from(["audio", "call", "key", "system"])),
        value=values,
        filename=st.none() | texts,
        content_type=st.none() | st.sampled_from(["text/plain", "audio/mpeg", "x/y; a=b"]),
        filename_first=st.booleans(),
    ),
    max_size=6,
)
BUILDERS = {
    "audio": (rdio_trunk_recorder, sdrtrunk),
    "call": (openmhz,),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    audio_field=st.sampled_from(sorted(BUILDERS)),
    which=st.integers(0, 1),
    audio=st.binary(min_size=0, max_size=70_000),
    extra=extra_parts,
    at=st.integers(0, 20),
    cuts=st.lists(st.integers(0, 10**6), max_size=8),
)
def test_the_parser_reads_what_werkzeug_read(
    audio_field: str, which: int, audio: bytes, extra: list[Part], at: int, cuts: list[int]
) -> None:
    builders = BUILDERS[audio_field]
    parts = builders[which % len(builders)](audio)
    parts[at % (len(parts) + 1) : at % (len(parts) + 1)] = extra
    body, content_type = multipart(parts)
    chunks = sorted({c % (len(body) + 1) for c in cuts})
    boundary = content_type.split("boundary=")[1].encode()
    # werkzeug reads the body whole: in pieces it can keep a stray CR (its lone-CR line break)
    # at the end of the last field when a piece ends inside the final `\r\n--boundary--`.
    expected = werkzeug_read(body, boundary, [], audio_field)
    assert vault_read(body, content_type, chunks, audio_field) == expected


@given(
    name=texts,
    filename=st.none() | st.text(max_size=20),
    first=st.booleans(),
)
def test_the_disposition_shortcut_reads_as_werkzeug_does(
    name: str, filename: str | None, first: bool
) -> None:
    params = [f'name="{name}"'] + ([] if filename is None else [f'filename="{filename}"'])
    value = "form-data; " + "; ".join(reversed(params) if first else params)
    _, options = parse_options_header(value)
    assert _disposition(value) == (options.get("name"), options.get("filename"))
