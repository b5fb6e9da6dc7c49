"""Streaming a multipart upload: the audio part goes straight to a temp file in the cache.

Built on werkzeug's sans-IO `MultipartDecoder` (the parser quart itself uses), fed from the raw
request body, so the audio is written once, hashed as it arrives, never held whole in memory.
The body is read with an idle timeout per chunk: a slow recorder on a poor link may take
minutes for a WAV, but a connection that stops sending is cut.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field

import trio
from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from tr_vault.cache import AudioCache, TempAudio
from tr_vault.errors import IntakeError

FEED_SLICE = 64 * 1024
MAX_FIELD_BYTES = 1024 * 1024  # `meta` JSON of a long call is tens of KB
MAX_FIELDS_TOTAL = 2 * 1024 * 1024
MAX_PARTS = 200


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
    early (SDRTrunk sends its key first). On any error the temp file is removed.
    """
    boundary = multipart_boundary(content_type)
    if content_length is not None and content_length > limits.max_bytes:
        raise too_large(limits)
    decoder = MultipartDecoder(boundary, max_parts=MAX_PARTS)
    form = UploadForm()
    reader = _PartReader(form, cache, audio_field, before_audio)
    received = 0
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
            for start in range(0, len(chunk), FEED_SLICE):
                decoder.receive_data(chunk[start : start + FEED_SLICE])
                reader.drain(decoder)
        decoder.receive_data(None)
        reader.drain(decoder)
        if not reader.complete:
            raise IntakeError(400, "Malformed multipart body: it ends before its last boundary\n")
    except IntakeError as exc:
        form.discard()
        exc.close = exc.close or not reader.complete  # the rest of the body was not read
        raise
    except ValueError as exc:  # werkzeug's parse errors
        form.discard()
        raise IntakeError(400, f"Malformed multipart body: {exc}\n") from None
    except RequestEntityTooLarge:  # the decoder's part count
        form.discard()
        raise IntakeError(
            413, f"Malformed multipart body: more than {MAX_PARTS} parts\n", close=True
        ) from None
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


class _PartReader:
    """Turns decoder events into the form, writing audio data to the temp file as it comes."""

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
        self.complete = False

    def drain(self, decoder: MultipartDecoder) -> None:
        while True:
            event = decoder.next_event()
            if isinstance(event, NeedData):
                if len(decoder.buffer) > MAX_FIELD_BYTES:
                    raise IntakeError(400, "Malformed multipart body: a part header is too long\n")
                return
            if isinstance(event, File) and event.name == self.audio_field:
                self._start_audio(event.filename, event.headers)
            elif isinstance(event, Field | File):
                self.field_name = event.name
                self.field_data.clear()
            elif isinstance(event, Data):
                self._data(event.data, event.more_data)
            elif isinstance(event, Epilogue):
                self.complete = True
                return

    def _start_audio(self, filename: str, headers: Headers) -> None:
        if self.form.audio is not None:
            raise IntakeError(400, f"More than one '{self.audio_field}' file part\n")
        if self.before_audio is not None:
            self.before_audio(self.form)
        self.form.audio = self.cache.new_temp()
        self.form.audio_filename = filename or None
        self.form.audio_content_type = headers.get("content-type")
        self.writing_audio = True

    def _data(self, data: bytes, more: bool) -> None:
        if self.writing_audio:
            assert self.form.audio is not None
            self.form.audio.write(data)
            if not more:
                self.writing_audio = False
            return
        self.field_bytes += len(data)
        self.field_data += data
        if len(self.field_data) > MAX_FIELD_BYTES or self.field_bytes > MAX_FIELDS_TOTAL:
            raise IntakeError(400, f"Field '{self.field_name}' is too large\n")
        if not more and self.field_name is not None:
            self.form.fields.setdefault(
                self.field_name, self.field_data.decode("utf-8", errors="replace")
            )
            self.field_name = None
