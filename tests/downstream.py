"""Downstream test servers: a fake rdio-scanner, OpenMHz and Broadcastify Calls, on 127.0.0.1.

They answer the way the real services do (status codes and texts from rdio-scanner v6
`server/api.go` / `call.go`, OpenMHz's `controllers/uploads.js` as the protocol page records
it, trunk-recorder's `broadcastify_uploader` for the Broadcastify exchange), keep what they
accepted, and record every request byte for byte, so tests can assert on part order, part
headers and audio bytes. Each is a small HTTP/1.1 server (h11 on trio) that a test can switch
down (connections refused), make answer 503, slow down, or script.

    async with open_rdio_scanner(keys={"k": None}) as rdio:       # key -> systems (None: all)
        ...  # point a destination at rdio.url; then:
        rdio.calls            # [ReceivedCall]: fields (in order) and audio bytes, accepted only
        rdio.requests         # [Recorded]: every request (method, path, headers, body, parts)
        rdio.duplicates       # how many uploads rdio-scanner would have dropped as duplicates

    async with open_openmhz(systems={"metro": "omhz-key"}, talkgroups={"metro": {9131}}) as omhz:
        ...  # POST {omhz.url}/metro/upload; omhz.calls, omhz.requests as above

    async with open_broadcastify(systems={1234: "bcfy-key"}, reject_talkgroups={99}) as bcfy:
        ...  # POST bcfy.url (the calls endpoint, bcfy.calls_url) -> "0 {bcfy.url}/upload/<token>",
             # PUT the audio there; bcfy.calls holds what completed both steps

Controls, on every fake (`FakeService`):
    await fake.go_down()        # close the listener: connections are refused (and cut)
    await fake.come_up()        # listen again on the same port
    fake.unavailable = 503      # answer every request with this status (None: normal)
    fake.delay = 2.5            # seconds to wait, after reading a request, before answering
    fake.answer_next(500, "boom", times=2, delay=0.0)   # scripted answers, taken first
    fake.reset()                # forget calls and requests (not the configuration)

`Recorded.parts` is the multipart body parsed (`FormPart`: name, filename, content_type,
value bytes); `Recorded.chunked` says whether the body came with Transfer-Encoding: chunked.
Broadcastify's answer for a wrong key is not published by the plugin or the protocol page:
this fake says `1 Invalid-API-Key` (`bad_key_answer=` changes it).
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import TypeVar

import h11
import trio
import trio.lowlevel

__all__ = [
    "FakeBroadcastify",
    "FakeOpenMHz",
    "FakeRdioScanner",
    "FakeService",
    "FormPart",
    "ReceivedCall",
    "Recorded",
    "Response",
    "open_broadcastify",
    "open_openmhz",
    "open_rdio_scanner",
    "parse_multipart",
]

RDIO_SUCCESS = "Call imported successfully.\n"
RDIO_DUPLICATE = "duplicate call rejected\n"
BCFY_SKIPPED = "1 SKIPPED---ALREADY-RECEIVED-THIS-CALL"
BCFY_REJECTED = "1 REJECTED---TALKGROUP-NOT-ALLOWED"
BCFY_BAD_KEY = "1 Invalid-API-Key"
OMHZ_BAD_KEY = "API Keys do not match!\n"
_RECEIVE = 65536


@dataclass(frozen=True)
class FormPart:
    name: str
    value: bytes
    filename: str | None = None
    content_type: str | None = None
    disposition: str = ""

    @property
    def text(self) -> str:
        return self.value.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Recorded:
    """One request as it arrived."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]  # names lowercased, in order
    body: bytes
    chunked: bool
    parts: tuple[FormPart, ...] | None  # None: not multipart/form-data (or not parsable)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name.lower():
                return value
        return None

    def part(self, name: str) -> FormPart | None:
        for part in self.parts or ():
            if part.name == name:
                return part
        return None

    @property
    def field_names(self) -> list[str]:
        return [p.name for p in self.parts or ()]


@dataclass(frozen=True)
class ReceivedCall:
    """What a fake accepted: the text fields in arrival order and the audio bytes."""

    fields: dict[str, str]
    audio: bytes
    audio_filename: str | None
    audio_content_type: str | None


@dataclass(frozen=True)
class Response:
    status: int
    body: str = ""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class _Scripted:
    response: Response
    times: int
    delay: float


def _boundary(content_type: str | None) -> str | None:
    if not content_type:
        return None
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return None
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            return value.strip('"')
    return None


def _disposition_params(disposition: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in disposition.split(";")[1:]:
        key, _, value = item.strip().partition("=")
        out[key.lower()] = value.strip('"')
    return out


def parse_multipart(body: bytes, boundary: str) -> tuple[FormPart, ...] | None:
    """The parts of a multipart/form-data body, in order; None when it is not well formed."""
    delimiter = b"--" + boundary.encode()
    if not body.startswith(delimiter):
        return None
    sections = body.split(b"\r\n" + delimiter)
    first = sections[0][len(delimiter) :]
    sections = [first, *sections[1:]]
    parts: list[FormPart] = []
    for section in sections:
        if section.startswith(b"--"):
            return tuple(parts)  # the closing delimiter
        if not section.startswith(b"\r\n"):
            return None
        head, sep, value = section[2:].partition(b"\r\n\r\n")
        if not sep:
            return None
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n"):
            key, _, val = line.partition(":")
            headers[key.strip().lower()] = val.strip()
        disposition = headers.get("content-disposition", "")
        params = _disposition_params(disposition)
        if "name" not in params:
            return None
        parts.append(
            FormPart(
                name=params["name"],
                value=value,
                filename=params.get("filename"),
                content_type=headers.get("content-type"),
                disposition=disposition,
            )
        )
    return None  # no closing delimiter


class FakeService:
    """The HTTP side every fake shares: listener, controls, recording. Subclasses `handle`."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.requests: list[Recorded] = []
        self.unavailable: int | None = None
        self.delay = 0.0
        self.bytes_received = 0  # request bytes read so far (a test can watch a body stream in)
        self._script: list[_Scripted] = []
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._listener: trio.SocketListener | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def answer_next(
        self, status: int, body: str = "", *, times: int = 1, delay: float = 0.0
    ) -> None:
        """The next `times` requests get this answer (after `delay` seconds) instead."""
        self._script.append(_Scripted(Response(status, body), times, delay))

    def reset(self) -> None:
        self.requests.clear()

    async def come_up(self) -> None:
        """Listen (again) on the port; the first call picks a free one."""
        assert self._nursery is not None
        if self._scope is not None:
            return
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        listener = listeners[0]
        self.port = listener.socket.getsockname()[1]
        self._listener = listener
        scope = trio.CancelScope()
        self._scope = scope

        async def accept_loop() -> None:
            with scope, contextlib.suppress(trio.ClosedResourceError):
                async with listener, trio.open_nursery() as connections:
                    while True:
                        stream = await listener.accept()
                        connections.start_soon(self._serve_connection, stream)

        self._nursery.start_soon(accept_loop)

    async def go_down(self) -> None:
        """Stop listening and cut open connections: new ones are refused."""
        if self._scope is None or self._listener is None:
            return
        self._scope.cancel()
        self._listener.socket.close()  # refused from now on, not only once the task ends
        self._scope = None
        self._listener = None
        await trio.lowlevel.checkpoint()

    @property
    def is_up(self) -> bool:
        return self._scope is not None

    def handle(self, request: Recorded) -> Response:
        raise NotImplementedError

    def _respond(self, request: Recorded) -> tuple[Response, float]:
        if self._script:
            scripted = self._script[0]
            scripted.times -= 1
            if scripted.times <= 0:
                self._script.pop(0)
            return scripted.response, scripted.delay
        if self.unavailable is not None:
            return Response(self.unavailable, "Service Unavailable\n"), self.delay
        return self.handle(request), self.delay

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            with contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError
            ):
                while True:
                    request = await self._read_request(conn, stream)
                    if request is None:
                        return
                    self.requests.append(request)
                    response, delay = self._respond(request)
                    if delay:
                        await trio.sleep(delay)
                    await self._send(conn, stream, response)
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()

    async def _read_request(
        self, conn: h11.Connection, stream: trio.SocketStream
    ) -> Recorded | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return None
            if event is h11.NEED_DATA:
                data = await stream.receive_some(_RECEIVE)
                self.bytes_received += len(data)
                conn.receive_data(data)
                if not data and conn.their_state is h11.IDLE:
                    return None
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                headers = tuple(
                    (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in head.headers
                )
                recorded = Recorded(
                    method=head.method.decode(),
                    path=head.target.decode("latin-1"),
                    headers=headers,
                    body=bytes(body),
                    chunked=any(
                        k == "transfer-encoding" and "chunked" in v.lower() for k, v in headers
                    ),
                    parts=None,
                )
                boundary = _boundary(recorded.header("content-type"))
                if boundary is not None:
                    recorded = replace(recorded, parts=parse_multipart(bytes(body), boundary))
                return recorded
            else:  # ConnectionClosed, PAUSED
                return None

    async def _send(
        self, conn: h11.Connection, stream: trio.SocketStream, response: Response
    ) -> None:
        body = response.body.encode()
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *response.headers,
        ]
        data = conn.send(h11.Response(status_code=response.status, headers=headers))
        data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
        data += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(data)


def _fields(request: Recorded, file_field: str) -> tuple[dict[str, str], FormPart | None]:
    fields: dict[str, str] = {}
    file_part = None
    for part in request.parts or ():
        if part.name == file_field and file_part is None:
            file_part = part
        else:
            fields[part.name] = part.text
    return fields, file_part


def _positive(value: str | None) -> int | None:
    try:
        number = int((value or "").strip())
    except ValueError:
        return None
    return number if number > 0 else None


def _received(fields: dict[str, str], audio: FormPart | None) -> ReceivedCall:
    return ReceivedCall(
        fields=fields,
        audio=audio.value if audio else b"",
        audio_filename=audio.filename if audio else None,
        audio_content_type=audio.content_type if audio else None,
    )


class FakeRdioScanner(FakeService):
    """rdio-scanner v6's `POST /api/call-upload`.

    `keys`: API key -> the system ids it may write (None: all). Duplicates (same system and
    talkgroup, start within `duplicate_window` seconds, rdio-scanner's default 0.5 s) are
    answered 200 `Call imported successfully.` like any call (rdio-scanner checks after
    answering) and not stored; `answer_duplicates=True` answers `duplicate call rejected`.
    """

    def __init__(
        self,
        keys: Mapping[str, set[int] | None],
        *,
        duplicate_window: float = 0.5,
        answer_duplicates: bool = False,
    ) -> None:
        super().__init__()
        self.keys = dict(keys)
        self.duplicate_window = duplicate_window
        self.answer_duplicates = answer_duplicates
        self.calls: list[ReceivedCall] = []
        self.duplicates = 0

    def reset(self) -> None:
        super().reset()
        self.calls.clear()
        self.duplicates = 0

    def handle(self, request: Recorded) -> Response:
        if request.path.rstrip("?") != "/api/call-upload":
            if request.path.startswith("//"):
                return Response(301, "", (("Location", request.path.lstrip("/")),))
            return Response(404, "404 page not found\n")
        if request.method != "POST":
            return Response(405, "Unsupported method\n")
        content_type = request.header("content-type")
        if not content_type or "/" not in content_type:
            return Response(400, "Invalid content-type\n")
        if not content_type.lower().startswith("multipart/"):
            return Response(400, "Not a multipart content\n")
        if request.parts is None:
            return Response(417, "multipart: NextPart: EOF\n\n")
        fields, audio = _fields(request, "audio")
        key = fields.pop("key", "")
        system = _positive(fields.get("system") or fields.get("systemId"))
        talkgroup = _positive(fields.get("talkgroup") or fields.get("talkgroupId"))
        start = _positive(fields.get("dateTime"))
        # v6 runs every check and reports the last that failed.
        reason = None
        if audio is None or len(audio.value) <= 44:
            reason = "no audio"
        if start is None:
            reason = "no datetime"
        if system is None:
            reason = "no system"
        if talkgroup is None:
            reason = "no talkgroup"
        if reason is not None:
            return Response(417, f"Incomplete call data: {reason}\n\n")
        allowed = self.keys.get(key, set())
        if key not in self.keys or (allowed is not None and system not in allowed):
            return Response(401, f"Invalid API key for system {system} talkgroup {talkgroup}.\n")
        assert start is not None
        for call in self.calls:
            same = (
                _positive(call.fields.get("system")) == system
                and _positive(call.fields.get("talkgroup")) == talkgroup
            )
            earlier = _positive(call.fields.get("dateTime")) or 0
            if same and abs(earlier - start) <= self.duplicate_window:
                self.duplicates += 1
                return Response(200, RDIO_DUPLICATE if self.answer_duplicates else RDIO_SUCCESS)
        self.calls.append(_received(fields, audio))
        return Response(200, RDIO_SUCCESS)


class FakeOpenMHz(FakeService):
    """OpenMHz's `POST /{shortName}/upload`: 200 with an empty body, every error a 500 text.

    `systems`: short name -> API key; `talkgroups`: short name -> known talkgroups (a system
    absent from it takes any talkgroup, as with OpenMHz's "Ignore Unknown Talkgroups" off).
    """

    def __init__(
        self, systems: Mapping[str, str], *, talkgroups: Mapping[str, set[int]] | None = None
    ) -> None:
        super().__init__()
        self.systems = {k.lower(): v for k, v in systems.items()}
        self.talkgroups = {k.lower(): v for k, v in (talkgroups or {}).items()}
        self.calls: list[ReceivedCall] = []

    def reset(self) -> None:
        super().reset()
        self.calls.clear()

    def handle(self, request: Recorded) -> Response:
        segments = request.path.split("?")[0].strip("/").split("/")
        if request.method != "POST" or len(segments) != 2 or segments[1] != "upload":
            return Response(404, "Cannot " + request.method + " " + request.path + "\n")
        short_name = segments[0].lower()
        fields, call = _fields(request, "call")
        name = (call.filename or "") if call else ""
        if call is None or not name.lower().endswith((".m4a", ".mp3")):
            return Response(500, "Error, invalid filename:\n")
        if short_name not in self.systems:
            return Response(500, f"ShortName does not exist: {short_name}\n")
        if fields.get("api_key") != self.systems[short_name]:
            return Response(500, OMHZ_BAD_KEY)
        try:
            json.loads(fields.get("source_list") or "[]")
        except ValueError as exc:
            return Response(500, f"Error parsing sourcelist {exc}")
        talkgroup = _positive(fields.get("talkgroup_num"))
        known = self.talkgroups.get(short_name)
        if talkgroup is None or (known is not None and talkgroup not in known):
            return Response(500, "Talkgroup does not exist, skipping.\n")
        fields.pop("api_key", None)
        self.calls.append(_received({"short_name": short_name, **fields}, call))
        return Response(200, "")


@dataclass
class _Pending:
    fields: dict[str, str]
    metadata: dict[str, object]
    identity: tuple[int, int, int]


@dataclass
class BroadcastifyCall:
    """A call that completed both steps: the metadata POST's fields and the PUT's bytes."""

    fields: dict[str, str]
    metadata: dict[str, object]
    audio: bytes
    put: Recorded


class FakeBroadcastify(FakeService):
    """Broadcastify Calls as trunk-recorder's broadcastify_uploader meets it.

    `POST {calls_path}` with `metadata` (call JSON file), `callDuration`, `systemId`, `apiKey`
    answers `0 {url}/upload/<token>` (one use), `1 SKIPPED---ALREADY-RECEIVED-THIS-CALL` for a
    call (system, talkgroup, start time) already received, `reject_answer` for a talkgroup in
    `reject_talkgroups`; `PUT /upload/<token>` stores the audio and answers 200.
    """

    def __init__(
        self,
        systems: Mapping[int, str],
        *,
        reject_talkgroups: set[int] | None = None,
        calls_path: str = "/call-upload",
        reject_answer: str = BCFY_REJECTED,
        bad_key_answer: str = BCFY_BAD_KEY,
    ) -> None:
        super().__init__()
        self.systems = dict(systems)
        self.reject_talkgroups = set(reject_talkgroups or ())
        self.calls_path = calls_path
        self.reject_answer = reject_answer
        self.bad_key_answer = bad_key_answer
        self.calls: list[BroadcastifyCall] = []
        self.skipped = 0
        self._pending: dict[str, _Pending] = {}

    @property
    def calls_url(self) -> str:
        return self.url + self.calls_path

    def reset(self) -> None:
        super().reset()
        self.calls.clear()
        self.skipped = 0
        self._pending.clear()

    def handle(self, request: Recorded) -> Response:
        if request.method == "POST" and request.path == self.calls_path:
            return self._metadata(request)
        if request.method == "PUT" and request.path.startswith("/upload/"):
            return self._put(request)
        return Response(404, "Not Found\n")

    def _metadata(self, request: Recorded) -> Response:
        fields, meta_part = _fields(request, "metadata")
        try:
            metadata = json.loads(meta_part.value) if meta_part else None
        except ValueError:
            metadata = None
        if not isinstance(metadata, dict):
            return Response(200, "1 INVALID-METADATA")
        system = _positive(fields.get("systemId"))
        if system is None or self.systems.get(system) != fields.get("apiKey"):
            return Response(200, self.bad_key_answer)
        talkgroup = _positive(str(metadata.get("talkgroup", "")))
        if talkgroup is None:
            return Response(200, "1 NO-TG-SENT")
        if talkgroup in self.reject_talkgroups:
            return Response(200, self.reject_answer)
        identity = (system, talkgroup, _positive(str(metadata.get("start_time", ""))) or 0)
        if any(_identity(c) == identity for c in self.calls):
            self.skipped += 1
            return Response(200, BCFY_SKIPPED)
        token = secrets.token_hex(12)
        self._pending[token] = _Pending(fields, metadata, identity)
        return Response(200, f"0 {self.url}/upload/{token}")

    def _put(self, request: Recorded) -> Response:
        pending = self._pending.pop(request.path.removeprefix("/upload/"), None)
        if pending is None:
            return Response(403, "AccessDenied: the upload URL is unknown or used\n")
        self.calls.append(BroadcastifyCall(pending.fields, pending.metadata, request.body, request))
        return Response(200, "")


def _identity(call: BroadcastifyCall) -> tuple[int, int, int]:
    md = call.metadata
    return (
        _positive(call.fields.get("systemId")) or 0,
        _positive(str(md.get("talkgroup", ""))) or 0,
        _positive(str(md.get("start_time", ""))) or 0,
    )


S = TypeVar("S", bound=FakeService)


@asynccontextmanager
async def _running(service: S) -> AsyncIterator[S]:
    async with trio.open_nursery() as nursery:
        service._nursery = nursery
        await service.come_up()
        try:
            yield service
        finally:
            await service.go_down()
            nursery.cancel_scope.cancel()


def open_rdio_scanner(
    keys: Mapping[str, set[int] | None], **options: bool | float
) -> contextlib.AbstractAsyncContextManager[FakeRdioScanner]:
    """A running fake rdio-scanner (see `FakeRdioScanner` for the options)."""
    return _running(FakeRdioScanner(keys, **options))  # type: ignore[arg-type]


def open_openmhz(
    systems: Mapping[str, str], *, talkgroups: Mapping[str, set[int]] | None = None
) -> contextlib.AbstractAsyncContextManager[FakeOpenMHz]:
    return _running(FakeOpenMHz(systems, talkgroups=talkgroups))


def open_broadcastify(
    systems: Mapping[int, str], **options: object
) -> contextlib.AbstractAsyncContextManager[FakeBroadcastify]:
    return _running(FakeBroadcastify(systems, **options))  # type: ignore[arg-type]
