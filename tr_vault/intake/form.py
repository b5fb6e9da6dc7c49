"""Streaming a multipart upload: the audio part goes straight to a temp file in the cache.

Built on the `multipart` package's sans-IO `PushMultipartParser`, fed the chunks hypercorn
delivers, so the audio is written once, hashed as it arrives, never held whole in memory; it
costs a seventh of the CPU of werkzeug's decoder, which this module used before (README,
"Libraries, and why"). Part headers are read by werkzeug's rules (the first Content-Type and
Content-Disposition of a part, RFC 2231 names), so what a part means did not change with the
parser. The body is read with an idle timeout per chunk: a slow recorder on a poor link may
take minutes for a WAV, but a connection that stops sending is cut.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from multipart import MultipartError, MultipartSegment, ParserLimitReached, PushMultipartParser
from werkzeug.http import parse_options_header

from tr_vault.cache import AudioCache, TempAudio
from tr_vault.errors import IntakeError

MAX_FIELD_BYTES = 1024 * 1024  # `meta` JSON of a long call is tens of KB
MAX_FIELDS_TOTAL = 2 * 1024 * 1024
MAX_PARTS = 200
# Part headers: a line (a Content-Disposition with a long file name) and lines per part; their
# product is the 1 MiB of header text a part could hold before.
MAX_HEADER_LINE = 64 * 1024
MAX_PART_HEADERS = 16
_ESCAPES = frozenset("%\\")  # what werkzeug would decode in a quoted name


@dataclass
class UploadForm:
    """What a multipart upload carried: text fields, and the audio part spooled to disk."""

    fields: dict[str, str] = field(default_factory=dict)
    audio: TempAudio | None = None
    audio_filename: str | None = None
    audio_content_type: str | None = None

    def get(self, *names: str) -> str | None:
        """The first non-empty field among `names` (protocols renamed fields over time)."""
        for name in names:
            value = self.fields.get(name)
            if value is not None and value.strip() != "":
                return value.strip()
        return None

    def get_named(self, *names: str) -> tuple[str, str | None]:
        """`get`, with the name the value came by (the first name when none): an error about
        it names the field the client sent."""
        for name in names:
            value = self.get(name)
            if value is not None:
                return name, value
        return names[0], None

    def discard(self) -> None:
        if self.audio is not None:
            self.audio.discard()


@dataclass(frozen=True)
class FormLimits:
    max_bytes: int
    idle_timeout: float


def multipart_boundary(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data body, or the rdio-scanner 400 answer."""
    if not content_type:
        raise IntakeError(400, "Invalid content-type\n")
    mimetype, options = parse_options_header(content_type)
    if mimetype != "multipart/form-data":
        raise IntakeError(400, "Not a multipart content\n")
    boundary = options.get("boundary")
    # RFC 2046: 1 to 70 ASCII characters (an RFC 2231 `boundary*=` may decode to anything).
    if not boundary or len(boundary) > 70 or not boundary.isascii():
        raise IntakeError(400, "Invalid content-type\n")
    return boundary.encode("ascii")


async def read_form(
    body: AsyncIterable[bytes],
    *,
    content_type: str | None,
    content_length: int | None,
    cache: AudioCache,
    audio_field: str,
    limits: FormLimits,
    before_audio: Callable[[UploadForm], None] | None = None,
) -> UploadForm:
    """Read a whole multipart body; the part named `audio_field` is spooled to a cache temp file.

    `before_audio` sees the fields that came before the audio part and may refuse the upload
    early (SDRTrunk sends its key first). On any error the temp file is removed. Every refusal
    that leaves some of the body unread says `close`, so hypercorn does not wait for it.
    """
    boundary = multipart_boundary(content_type)
    if content_length is not None and content_length > limits.max_bytes:
        raise too_large(limits)
    parser = _Parser(
        boundary,
        max_header_size=MAX_HEADER_LINE,
        max_header_count=MAX_PART_HEADERS,
        max_segment_count=MAX_PARTS,
    )
    form = UploadForm()
    reader = _PartReader(form, cache, audio_field, before_audio)
    received = 0
    complete = False
    iterator = aiter(body)
    try:
        while True:
            try:
                with trio.fail_after(limits.idle_timeout):
                    chunk = await anext(iterator)
            except StopAsyncIteration:
                break
            except trio.TooSlowError:
                raise IntakeError(
                    408, f"Upload stalled: no data for {limits.idle_timeout:g} s\n", close=True
                ) from None
            received += len(chunk)
            if received > limits.max_bytes:
                raise too_large(limits)
            if chunk:  # an empty chunk would tell the parser that the body ended
                reader.feed(parser, chunk)
        try:
            parser.close()  # past the final boundary, or it raises
        except MultipartError:
            raise IntakeError(
                400, "Malformed multipart body: it ends before its last boundary\n"
            ) from None
        complete = True
    except IntakeError as exc:
        form.discard()
        exc.close = exc.close or not complete  # the rest of the body was not read
        raise
    except MultipartError as exc:
        form.discard()
        raise _malformed(exc) from None
    except OSError as exc:
        form.discard()
        raise IntakeError(
            507, f"The server could not write the audio ({exc.strerror}); try again later\n"
        ) from None
    except BaseException:
        form.discard()
        raise
    if form.audio is not None:
        form.audio.close()
    return form


def too_large(limits: FormLimits) -> IntakeError:
    mb = limits.max_bytes // (1024 * 1024)
    return IntakeError(
        413,
        f"Upload too large: the limit is {mb} MB (TR_VAULT_MAX_UPLOAD_MB)\n",
        close=True,
    )


def _malformed(exc: MultipartError) -> IntakeError:
    """The parser's refusal in our words; raised mid-body, so the connection is closed."""
    message = str(exc.args[0]) if exc.args else str(exc)
    if isinstance(exc, ParserLimitReached):
        if "segment count" in message:
            return IntakeError(
                413, f"Malformed multipart body: more than {MAX_PARTS} parts\n", close=True
            )
        if "header" in message:
            return IntakeError(
                400, "Malformed multipart body: a part header is too long\n", close=True
            )
    return IntakeError(400, f"Malformed multipart body: {message}\n", close=True)


class _Parser(PushMultipartParser):  # type: ignore[misc]  # multipart ships no type hints
    """multipart's parser, leaving what a part is to `_PartReader`: it would refuse a
    disposition other than `form-data` and take the last of two, where werkzeug took any
    and the first."""

    def _create_segment(self, headerlist: list[tuple[str, str]]) -> MultipartSegment:
        return _Segment(headerlist)


class _Segment(MultipartSegment):  # type: ignore[misc]
    """A part's headers as the parser found them, not parsed again: `_PartReader` reads the
    two it needs, and multipart's own reading of them was a third of the parse's cost."""

    def __init__(self, headerlist: list[tuple[str, str]]) -> None:
        self.headerlist = headerlist
        self.bytes_received = 0
        self.complete = False


def _disposition(value: str) -> tuple[str | None, str | None]:
    """`name` and `filename` of a part's Content-Disposition, as werkzeug reads them (quoting,
    RFC 2231 `filename*=`, either order: SDRTrunk writes the filename first); the shape curl
    writes is split without werkzeug's regexes, which cost more than the rest of a part."""
    split = value.split('"', 4)
    if split[0] == "form-data; name=" and split[-1] == "" and not _ESCAPES.intersection(value):
        if len(split) == 3:
            return split[1], None
        if len(split) == 5 and split[2] == "; filename=":
            return split[1], split[3]
    _, options = parse_options_header(value)
    return options.get("name"), options.get("filename")


class _PartReader:
    """Turns parser events into the form, writing audio data to the temp file as it comes."""

    def __init__(
        self,
        form: UploadForm,
        cache: AudioCache,
        audio_field: str,
        before_audio: Callable[[UploadForm], None] | None,
    ) -> None:
        self.form = form
        self.cache = cache
        self.audio_field = audio_field
        self.before_audio = before_audio
        self.field_name: str | None = None
        self.field_data = bytearray()
        self.writing_audio = False
        self.field_bytes = 0

    def feed(self, parser: PushMultipartParser, chunk: bytes) -> None:
        event: Any
        for event in parser.parse(chunk):
            if event is None:  # the end of a part
                self._end()
            elif isinstance(event, MultipartSegment):
                self._start(event)
            else:
                self._data(event)

    def _start(self, segment: MultipartSegment) -> None:
        disposition: str | None = None
        content_type: str | None = None
        for name, value in segment.headerlist:  # the first of each wins, as in werkzeug
            if name == "Content-Disposition" and disposition is None:
                disposition = value.rstrip(" \t")
            elif name == "Content-Type" and content_type is None:
                content_type = value.rstrip(" \t")
        if disposition is None:
            raise IntakeError(400, "Malformed multipart body: Missing Content-Disposition header\n")
        for text in (disposition, content_type or ""):
            if "\n" in text or "\r" in text:
                raise IntakeError(
                    400, "Malformed multipart body: a part header line ends in a bare CR or LF\n"
                )
        name, filename = _disposition(disposition)
        self.writing_audio = False
        if filename is not None and name == self.audio_field:
            self._start_audio(filename, content_type)
        else:
            self.field_name = name
            self.field_data.clear()

    def _start_audio(self, filename: str, content_type: str | None) -> None:
        if self.form.audio is not None:
            raise IntakeError(400, f"More than one '{self.audio_field}' file part\n")
        if self.before_audio is not None:
            self.before_audio(self.form)
        self.form.audio = self.cache.new_temp()
        self.form.audio_filename = filename or None
        self.form.audio_content_type = content_type
        self.field_name = None
        self.writing_audio = True

    def _data(self, data: bytes) -> None:
        if self.writing_audio:
            assert self.form.audio is not None
            self.form.audio.write(data)
            return
        self.field_bytes += len(data)
        self.field_data += data
        if len(self.field_data) > MAX_FIELD_BYTES or self.field_bytes > MAX_FIELDS_TOTAL:
            raise IntakeError(400, f"Field '{self.field_name}' is too large\n")

    def _end(self) -> None:
        if self.writing_audio:
            self.writing_audio = False
        elif self.field_name is not None:
            self.form.fields.setdefault(
                self.field_name, self.field_data.decode("utf-8", errors="replace")
            )
            self.field_name = None
