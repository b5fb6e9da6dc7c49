"""Property-based fuzzing of the HTTP surface (hypothesis), against one real server per test.

What is generated:

- **Uploads** on the three routes (`/api/call-upload`, `/api/trunk-recorder-call-upload`,
  `/{short_name}/upload`), starting from the byte-exact replicas of `tests/wire.py`
  (trunk-recorder's two plugins, SDRTrunk and its connection test, a `meta` script). Each
  example varies up to two *dimensions* of the replica and sends the rest as the client would,
  so that a bent value still meets the code behind every other check:
  - `values`: field values of every kind (numbers huge, negative, fractional, inf/nan, Unicode
    digits; times; Unicode and control characters; empty and 1 MiB values; path traversal in
    names and labels: `../`, `..\\`, absolute paths, NUL; JSON broken, non-finite, deep);
  - `key`, `audio` (empty, tiny, 64 KiB edges, past `TR_VAULT_MAX_UPLOAD_MB`, holding the
    delimiter), `meta` (trunk-recorder's call JSON with values replaced, lone surrogates,
    dropped, nested deep, the text broken), `builder` (another client's request on this route);
  - `parts`: dropped, duplicated, moved, renamed, turned into files or fields, re-typed, added,
    200+ of them;
  - `boundary`, `content-type` (quoted, RFC 2231, missing, wrong), `style` (part headers in
    odd case, bare LF, unquoted, a preamble, no closing boundary), `edit` (the body truncated or
    corrupted), `headers` (names in odd case, any order, duplicates, an `Origin`), `framing`
    (`Content-Length` short, long, absent, garbage or doubled; chunked; written in pieces; a
    stall), `target` (doubled slashes, encodings, traversal in the OpenMHz short name),
    `method`.
- **Reads** (`/api/calls` and its filters, `/api/calls/{id}`, `/audio` with Range and
  conditional headers, the summary, `/metrics`, the probes) with generated query strings: any
  names and values, encoded several ways, huge numbers, real cursors bent out of shape.

The invariants, checked after every example (README "Answers", "Reads", "Security"):

1. An answer, and never a 5xx: 503 and 507 only where the README allows them (every upload
   slot busy, the journal locked by another writer, a disk below `TR_VAULT_MIN_FREE_MB`), none
   of which holds here (one request at a time, no other writer, a roomy disk).
2. No file appears outside `<data_dir>/audio/` but the journal's, the lock and the store probe.
3. Every file of the audio cache (outside `.incoming/`) is the file of a journal row with that
   `key`, and every cached row has its file; `.incoming/` is empty once the answer is in.
4. `GET /healthz` still answers `200`, and nothing was logged at ERROR.
5. An acknowledged upload (`200` and rdio-scanner's success text, or OpenMHz's empty `200`) has
   a row whose cached file has the SHA-256 of the audio part sent (when the body leaves no
   doubt which bytes that part holds; otherwise the stored audio must at least be bytes of the
   body), and that call reads back by id, its audio byte for byte. A refusal adds no row.
6. Reads answer JSON on the JSON routes, carry the security headers, name the parameter in a
   400 (`{"error": "NAME: ..."}`), respect their filters and limit, serve the cached bytes.

Hypothesis drives each property from a worker thread (`trio.to_thread`) and hops back into the
test's trio loop for every request: pytest-trio runs each example of an async `@given` test in a
fresh `trio.run`, which cannot keep one server (a `make_vault` nursery) across examples.

Profiles, read at import (the autouse `clean_env` fixture removes TR_VAULT_* variables before a
test runs):

    TR_VAULT_FUZZ_PROFILE   `ci` (default): a fixed number of examples per property,
                            derandomized, so every run generates the same examples;
                            `soak`: TR_VAULT_FUZZ_EXAMPLES per property from a random seed,
                            printed (`make soak` selects it)
    TR_VAULT_FUZZ_EXAMPLES  examples per property in the soak profile (default 2000)
    TR_VAULT_FUZZ_SEED      the soak's seed (default: a random one; pass it back to replay)
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import os
import random
import re
import sqlite3
import string
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, quote_plus, unquote

import h11
import pytest
import trio
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st

from tests.conftest import Vault, VaultFactory
from tests.wire import (
    BOUNDARY,
    TR_AUDIO_NAME,
    TR_META,
    Part,
    fixture_bytes,
    multipart,
    openmhz,
    rdio_trunk_recorder,
    sdrtrunk,
    sdrtrunk_test,
    trunk_recorder_meta_upload,
)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# -- profiles -----------------------------------------------------------------------------------

PROFILE = os.environ.get("TR_VAULT_FUZZ_PROFILE", "ci")
SOAK_EXAMPLES = int(os.environ.get("TR_VAULT_FUZZ_EXAMPLES", "2000"))
SOAK_SEED = int(os.environ.get("TR_VAULT_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
if PROFILE not in ("ci", "soak"):
    raise RuntimeError(f"TR_VAULT_FUZZ_PROFILE={PROFILE!r}: use 'ci' or 'soak'")

_COMMON: dict[str, Any] = {
    "deadline": None,  # one example is a few HTTP exchanges and an fsync or two
    "database": None,  # nothing written into the checkout; a failure prints its example
    "suppress_health_check": [
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
}
settings.register_profile("tr-vault-fuzz-ci", derandomize=True, **_COMMON)
settings.register_profile(
    "tr-vault-fuzz-soak", max_examples=SOAK_EXAMPLES, print_blob=True, **_COMMON
)


def fuzz(ci_examples: int) -> Callable[[F], F]:
    """The profile's settings for one property: `ci_examples` in CI; in a soak, the soak's
    count and seed."""

    def apply(fn: F) -> F:
        if PROFILE == "soak":
            soak: F = seed(SOAK_SEED)(settings(settings.get_profile("tr-vault-fuzz-soak"))(fn))
            return soak
        ci: F = settings(settings.get_profile("tr-vault-fuzz-ci"), max_examples=ci_examples)(fn)
        return ci

    return apply


async def run_property(prop: Callable[[], None]) -> None:
    """Run a `@given` function in a worker thread; it reaches the server through `on_loop`."""
    if PROFILE == "soak":
        print(f"\nfuzz soak: seed={SOAK_SEED} examples={SOAK_EXAMPLES} (TR_VAULT_FUZZ_SEED)")
    await trio.to_thread.run_sync(prop)


def on_loop(fn: Callable[..., Any], *args: Any) -> Any:
    """From the property's thread: run the async `fn(*args)` in the test's trio loop."""
    return trio.from_thread.run(fn, *args)


# -- the server under test ----------------------------------------------------------------------

M4A = fixture_bytes("call-9131-1764001234.m4a")
M4A_2 = fixture_bytes("call-2201-1764001301.m4a")
WAV = fixture_bytes("call-9131-1764001234.wav")
RDIO_SUCCESS = "Call imported successfully.\n"
SUCCESS = {"rdio": RDIO_SUCCESS, "rdio-tr": RDIO_SUCCESS, "openmhz": ""}
AUDIO_FIELD = {"rdio": "audio", "rdio-tr": "audio", "openmhz": "call"}
ROUTE_PATH = {
    "rdio": "/api/call-upload",
    "rdio-tr": "/api/trunk-recorder-call-upload",
    "openmhz": "/metro/upload",
}
MAX_UPLOAD_MB = 2
VAULT_SETTINGS: dict[str, Any] = {
    "idle_timeout": 1.0,  # a stalled upload (a long Content-Length) is cut after a second
    "max_upload_mb": MAX_UPLOAD_MB,  # small enough to cross it now and then
    "shutdown_grace": 2.0,
}
ANSWER_WITHIN = 15.0  # seconds: every request is answered (or cut) well before this
# What tr_vault may create in its data dir besides `audio/`: the journal, the lock, the probe.
DATA_FILES = frozenset(
    ["vault.db", "vault.db-wal", "vault.db-shm", "vault.db-journal", "tr-vault.lock", "store-probe"]
)
ESCAPE = "tr-vault-fuzz-escape"  # the name every generated traversal aims to create
STORED_TYPES = frozenset(
    [
        "audio/mp4",
        "audio/aac",
        "audio/mpeg",
        "audio/wav",
        "audio/ogg",
        "audio/flac",
        "audio/webm",
        "application/octet-stream",
    ]
)
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "content-security-policy": "default-src 'none'; sandbox",
}


def route_of(target: str) -> str | None:
    """The upload route the server serves `target` with (None: the quart app), as hypercorn
    decodes the path and tr_vault collapses doubled slashes."""
    path = re.sub("/{2,}", "/", unquote(target.partition("?")[0]))
    if path == "/api/call-upload":
        return "rdio"
    if path == "/api/trunk-recorder-call-upload":
        return "rdio-tr"
    if re.match(r"^/(.+)/upload$", path) and not path.startswith("/api/"):
        return "openmhz"
    return None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def to_bytes(value: bytes | str) -> bytes:
    # surrogatepass: a lone surrogate goes out as the (invalid) UTF-8 a sloppy client writes
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")


# -- a raw HTTP/1.1 client: every byte of the request is the test's -----------------------------


@dataclass
class Answer:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names, first wins
    body: bytes = b""
    problem: str | None = None  # why no whole answer came (closed, reset, timeout)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 300 else self.body[:300] + b"..."
        return f"Answer(status={self.status}, body={body!r}, problem={self.problem!r})"


async def exchange(
    port: int, chunks: Sequence[bytes], *, head: bool = False, eof: bool = False
) -> Answer:
    """Write `chunks` (one request) and read the first answer; `eof`: half-close after."""
    parser = h11.Connection(h11.CLIENT)  # only reads; this request sets what it expects
    parser.send(h11.Request(method="HEAD" if head else "GET", target="/", headers=[("Host", "x")]))
    parser.send(h11.EndOfMessage())
    answer = Answer()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        with trio.move_on_after(ANSWER_WITHIN) as timer:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_send, stream, chunks, eof)
                await _read(stream, parser, answer)
                nursery.cancel_scope.cancel()
        if timer.cancelled_caught:
            answer.problem = f"no answer within {ANSWER_WITHIN:g} s"
    finally:
        await stream.aclose()
    return answer


async def _send(stream: trio.SocketStream, chunks: Sequence[bytes], eof: bool) -> None:
    try:
        for chunk in chunks:
            await stream.send_all(chunk)
            await trio.lowlevel.checkpoint()  # the pieces go out as separate writes
        if eof:
            await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the server answered early (401, 413, ...) and closed: the answer is read


async def _read(stream: trio.SocketStream, parser: h11.Connection, answer: Answer) -> None:
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:
            answer.problem = f"unparsable answer: {exc}"
            return
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError as exc:
                answer.problem = f"connection reset: {exc}"
                return
            parser.receive_data(data)
        elif isinstance(event, h11.Response):
            answer.status = event.status_code
            for name, value in event.headers:
                answer.headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        elif isinstance(event, h11.Data):
            answer.body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return
        elif isinstance(event, h11.ConnectionClosed):
            answer.problem = "closed mid-answer" if answer.status else "closed without an answer"
            return
        # else h11.InformationalResponse (100 Continue): the answer follows


def request_head(method: str, target: str, headers: Sequence[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogatepass")


async def get(port: int, target: str) -> Answer:
    head = request_head("GET", target, [("Host", "127.0.0.1"), ("Connection", "close")])
    return await exchange(port, [head])


# -- multipart, written as the replicas write it unless a style says otherwise -------------------


@dataclass(frozen=True)
class Style:
    """How parts are written. The default is libcurl's, byte for byte (`tests.wire.multipart`)."""

    disposition: str = "Content-Disposition"  # the part header names, as written
    part_type: str = "Content-Type"
    newline: str = "\r\n"  # after each part header line
    quoted: bool = True  # name="x" or name=x
    preamble: bytes = b""
    closing: bool = True  # the closing `--boundary--`
    epilogue: bytes = b"\r\n"

    def is_plain(self) -> bool:
        return self.newline == "\r\n" and self.quoted and self.closing


def encode_parts(parts: Sequence[Part], boundary: str, style: Style = Style()) -> bytes:
    out = bytearray(style.preamble)
    q = '"' if style.quoted else ""
    for part in parts:
        out += to_bytes(f"--{boundary}\r\n")
        name = f"name={q}{part.name}{q}"
        if part.filename is not None:
            filename = f"filename={q}{part.filename}{q}"
            params = f"{filename}; {name}" if part.filename_first else f"{name}; {filename}"
        else:
            params = name
        out += to_bytes(f"{style.disposition}: form-data; {params}{style.newline}")
        if part.content_type:
            out += to_bytes(f"{style.part_type}: {part.content_type}{style.newline}")
        out += to_bytes(style.newline)
        out += to_bytes(part.value)
        out += b"\r\n"
    if style.closing:
        out += to_bytes(f"--{boundary}--") + style.epilogue
    return bytes(out)


def chunked(body: bytes, pieces: Sequence[int]) -> bytes:
    """`body` in HTTP chunks cut at `pieces` (per mille)."""
    cuts = sorted({len(body) * p // 1000 for p in pieces} | {0, len(body)})
    out = bytearray()
    for a, b in itertools.pairwise(cuts):
        if b > a:
            out += f"{b - a:x}\r\n".encode() + body[a:b] + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


def short(value: bytes | str, keep: int = 60) -> str:
    """A value for an example's repr: whole when small, else its length, head and digest."""
    if len(value) <= keep * 2:
        return repr(value)
    kind = "bytes" if isinstance(value, bytes) else "chars"
    return f"<{len(value)} {kind} {value[:keep]!r}... sha256={sha256(to_bytes(value))[:12]}>"


def meta_repr(text: str) -> str | None:
    """A `meta` JSON text as its difference from trunk-recorder's (`TR_META`), if it is one."""
    try:
        meta = json.loads(text)
    except ValueError:
        return None
    if not isinstance(meta, dict):
        return None
    changed = {k: v for k, v in meta.items() if k not in TR_META or TR_META[k] != v}
    dropped = [k for k in TR_META if k not in meta]
    for ensure_ascii in (True, False):
        if json.dumps(meta, ensure_ascii=ensure_ascii) == text:
            return f"<json.dumps(TR_META | {changed!r} - {dropped!r}, ensure_ascii={ensure_ascii})>"
    return f"<{len(text)} chars: TR_META | {changed!r} - {dropped!r}, as other JSON text>"


def part_repr(p: Part) -> str:
    attrs = (("filename", p.filename), ("content_type", p.content_type))
    extra = "".join(f", {k}={v!r}" for k, v in attrs if v is not None)
    first = ", filename_first=True" if p.filename_first else ""
    meta = meta_repr(p.value) if p.name == "meta" and isinstance(p.value, str) else None
    return f"Part({p.name!r}, {meta or short(p.value)}{extra}{first})"


def parts_repr(parts: Sequence[Part]) -> str:
    """Runs of equal parts are written once with their count (200+ parts stay readable)."""
    out = []
    for part, run in itertools.groupby(parts):
        count = len(list(run))
        out.append(part_repr(part) + (f" * {count}" if count > 1 else ""))
    return "[" + ", ".join(out) + "]"


# -- one upload, as the fuzzer builds it ----------------------------------------------------------


@dataclass(frozen=True)
class Framing:
    """How the body travels: its Content-Length (true or not), chunks, pieces, a stall."""

    length: str = "exact"  # exact | short | long | missing | garbage | conflict | chunked
    delta: int = 0  # how far `short` / `long` are off
    garbage: str = ""
    pieces: tuple[int, ...] = ()  # the request is written cut at these offsets (per mille)
    stall: bool = False  # `long` and then silence: the idle timeout has to answer

    @property
    def eof(self) -> bool:
        """The client half-closes: a `long` body that ends before its length."""
        return self.length == "long" and not self.stall

    @property
    def lies(self) -> bool:
        """Not HTTP framing: bytes after the message, or a message that never ends. The HTTP
        layer may then answer for itself (hypercorn's bare 400) or cut an answer off."""
        return self.length not in ("exact", "chunked")


@dataclass(frozen=True)
class BodyEdit:
    kind: str  # truncate | insert | flip
    at: int  # per mille of the body
    data: bytes = b""


@dataclass(frozen=True)
class UploadCase:
    focus: tuple[str, ...]  # the dimensions this example varies (the rest is the replica's)
    method: str
    target: str
    parts: tuple[Part, ...]
    boundary: str
    headers: tuple[tuple[str, str], ...]  # as sent, in order; "{length}" is filled in
    style: Style = Style()
    framing: Framing = Framing()
    edit: BodyEdit | None = None
    resend: bool = False  # sent twice, as a recorder resends what it thinks failed

    def __repr__(self) -> str:
        shown = [
            f"focus={self.focus!r}",
            f"method={self.method!r}",
            f"target={self.target!r}",
            f"parts={parts_repr(self.parts)}",
            f"boundary={self.boundary!r}",
            f"headers={self.headers!r}",
        ]
        if self.style != Style():
            shown.append(f"style={self.style!r}")
        if self.framing != Framing():
            shown.append(f"framing={self.framing!r}")
        if self.edit is not None:
            edit = self.edit
            shown.append(f"edit=BodyEdit({edit.kind!r}, {edit.at}, {short(edit.data)})")
        if self.resend:
            shown.append("resend=True")
        return "UploadCase(" + ", ".join(shown) + ")"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # how hypothesis prints an example
        p.text(repr(self))

    @property
    def route(self) -> str | None:
        return route_of(self.target)

    def unique(self, run: int) -> UploadCase:
        """This case with its audio made a recording of its own for this run (its last bytes
        are the run's number): a replay of a failing example then meets the state it met
        (no duplicate of itself, its file names free but for its own leftovers)."""
        nonce = f"~{run:07d}".encode()

        def mark(p: Part) -> Part:
            if p.filename is None or not isinstance(p.value, bytes) or len(p.value) < 45:
                return p  # too short to be a call's audio (rdio-scanner: 44 bytes or less)
            return replace(p, value=p.value[: -len(nonce)] + nonce)

        return replace(self, parts=tuple(mark(p) for p in self.parts))

    def body(self) -> bytes:
        body = encode_parts(self.parts, self.boundary, self.style)
        edit = self.edit
        if edit is None or not body:
            return body
        at = min(len(body) * edit.at // 1000, len(body) - 1)
        if edit.kind == "truncate":
            return body[:at]
        if edit.kind == "insert":
            return body[:at] + edit.data + body[at:]
        flipped = body[at] ^ (edit.data[:1] or b"\x01")[0]
        return body[:at] + bytes([flipped]) + body[at + 1 :]

    def wire(self) -> list[bytes]:
        """The request as written, in pieces."""
        body = self.body()
        framing = self.framing
        lengths = {
            "exact": str(len(body)),
            "short": str(max(0, len(body) - framing.delta)),
            "long": str(len(body) + framing.delta),
            "garbage": framing.garbage,
            "conflict": str(len(body)),
        }
        headers: list[tuple[str, str]] = []
        for name, value in self.headers:
            if value != "{length}":
                headers.append((name, value))
            elif framing.length not in ("missing", "chunked"):
                headers.append((name, lengths[framing.length]))
                if framing.length == "conflict":
                    headers.append((name, str(len(body) + 1)))
        if framing.length == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
            body = chunked(body, framing.pieces)
        data = request_head(self.method, self.target, headers) + body
        cuts = sorted({len(data) * p // 1000 for p in framing.pieces} | {0, len(data)})
        return [data[a:b] for a, b in itertools.pairwise(cuts) if b > a]

    def audio_parts(self) -> list[Part]:
        route = self.route
        if route is None:
            return []
        return [p for p in self.parts if p.name == AUDIO_FIELD[route] and p.filename is not None]

    def unambiguous(self) -> bool:
        """True when any correct parser must find the audio part's value exactly as written:
        a standard Content-Type naming the body's boundary, plain part headers, no value that
        holds a delimiter (werkzeug takes CR, LF or CRLF before `--boundary`), and the body at
        most cut short, never altered."""
        if self.edit is not None and self.edit.kind != "truncate":
            return False
        if not re.fullmatch(r"[0-9A-Za-z_.\-]{1,70}", self.boundary) or not self.style.is_plain():
            return False
        standard = (
            f"multipart/form-data; boundary={self.boundary}",
            f'multipart/form-data; boundary="{self.boundary}"',
        )
        types = [v for n, v in self.headers if n.lower() == "content-type"]
        if not types or types[0] not in standard:
            return False
        delimiters = [lb + b"--" + self.boundary.encode() for lb in (b"\r", b"\n")]
        for part in self.parts:
            for text in (part.name, part.filename or "", part.content_type or ""):
                if not text.isprintable() or any(c in text for c in '"\\;'):
                    return False
            if any(d in to_bytes(part.value) for d in delimiters):
                return False
        return True


# -- strategies: values ---------------------------------------------------------------------------


def sometimes(default: T, other: st.SearchStrategy[T], one_in: int = 4) -> st.SearchStrategy[T]:
    """`default` most of the time, else a draw from `other`; shrinks towards `default`."""
    return st.integers(0, one_in - 1).flatmap(
        lambda n: other if n == one_in - 1 else st.just(default)
    )


# fmt: off
EDGE_NUMBERS = (
    "0", "-0", "1", "-1", "00", "007", "9223372036854775807", "9223372036854775808",
    "-9223372036854775808", "-9223372036854775809", "18446744073709551616", "1e20", "1e400",
    "-1e400", "1.5", "-1.5", ".5", "5.", "1e-400", "inf", "-inf", "+inf", "Infinity", "nan",
    "NaN", "-nan", "1_000", "+5", " 5", "5 ", "0x10", "1,5", "\u00b2", "\u0661\u0662",
    "\u0663", "\uff11\uff12", "5\x00", "1764001234", "1764001234.999", "1764001234000",
    "315532799", "315532800", "4102444799", "4102444800", "253402300799", "253402300800",
    "-62135596800", "9131", "2201", "11", "99",
)
EDGE_TIMES = (
    "0000-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59",
    "9999-12-31T23:59:59.999999Z", "1979-12-31T23:59:59Z", "1980-01-01T00:00:00Z",
    "2099-12-31T23:59:59Z", "2100-01-01T00:00:00Z", "2025-02-30T00:00:00Z",
    "2025-11-24T16:20:34+24:00", "2025-11-24T25:00:00Z", "2025-W48-1", "2025-328",
    "2025-11-24T16:20:34.123456789Z", "1764001234", "now", "T", "-", "",
)
TRAVERSALS = (
    "..", ".", "../", "..\\", "../{e}", "../../{e}", "../../../{e}.m4a", "..\\..\\{e}.m4a",
    "/{e}.m4a", "/tmp/{e}.m4a", "{tmp}/{e}.m4a", "{data}/{e}", "{audio}/../{e}.m4a",
    "{audio}/{e}.m4a", "C:\\{e}.m4a", "{e}\x00.m4a", "\x00{e}", ".{e}", "metro/../../{e}",
    "%2e%2e%2f{e}", "..%2f{e}", "..\uff0f{e}", "{e}/..", " ../", "../ ", " .. ",
    "\\\\server\\share", "~", "~/{e}", "/dev/null", "/proc/self/fd/0", "{e}\\..\\..", "./{e}",
    "{e}:stream", ".\u200b./",
)
BROKEN_JSON = (
    "[", "{", "[1,", '{"a"', "]", "nul", "[NaN]", "[Infinity, -Infinity]", "[1e400]",
    '[{"src": 1e400}]', '[{"src": 99999999999999999999}]', '[{"src": -1}]', '[{"src": "x"}]',
    '[{"src": true}]', '{"src": 1}', '"\\ud800"', '["\\udfff", "\\ud83d"]', '[{"src": 1.5}]',
    "[" + "9" * 5000 + "]", "[-" + "9" * 5000 + "]", "[1" + "0" * 400 + ".5]", "[]", "{}",
    "null", "[\x00]", '"\x00"', '["\\u0000"]', "[1]xxxx", "\ufeff[]",
)
FILENAMES = (
    TR_AUDIO_NAME, "a.m4a", "a.M4A", "a.mp3", "a.wav", "a.aac", "a.exe", "a", "a.", ".m4a", "",
    " ", "a.m4a\x00.exe", "a.m4a.exe", "CON.m4a", "x" * 300 + ".m4a", "\u00e9.m4a", "a b.m4a",
    "a;b.m4a", 'a"b.m4a', "a\r\nX-Evil: 1.m4a", "a\\b.m4a", "-.m4a", "_.wav", "a." + "x" * 200,
)
KEYS = (
    "tr-key", "omhz-key", "other-key", "", " ", "wrong", "TR-KEY", "tr-key ", "tr-key\x00",
    "tr-key,other-key", "tr-key:11",
)
PART_TYPES = (
    "application/octet-stream", "audio/mp4", "audio/x-wav", "audio/mpeg", "text/html",
    "audio/mpeg\u00e9", "Audio/MPEG; charset=binary", "", " ", "audio/", "/",
    "multipart/form-data", "audio/mp4\x00", "a" * 500,
)
SEGMENTS = (
    "metro", "METRO", "Metro", "11", "county", "99", "..", ".", "../metro", "metro/..",
    "%2e%2e", "%2E%2E%2F" + ESCAPE, "a%2Fb", "a/b", "%00", "metro%00", "%FF", "m%C3%A9tro", "~",
    "-", "_", "%20metro", "metro%20", "con", "x" * 200, "x" * 300, "a%5Cb", ".metro",
    "metro/upload", "api",
)
# What the meta route reads from `meta` (tr_vault.intake.rdio.trunk_recorder_call_upload).
META_READ = (
    "talkgroup", "start_time", "stop_time", "freq", "call_length", "emergency", "short_name",
    "talkgroup_tag", "talkgroup_group_tag", "talkgroup_group", "srcList",
)
# fmt: on

numbers = st.one_of(
    st.sampled_from(EDGE_NUMBERS),
    st.integers().map(str),
    st.floats().map(repr),
    st.floats().map(str),
    st.integers(0, 5000).map(lambda n: "9" * n),
    st.integers(-(2**70), 2**70).map(lambda n: f"{n}e{n % 400}"),
)


def _iso(moment: datetime, form: int) -> str:
    text = moment.isoformat()
    forms = [
        text,
        text.replace("+00:00", "Z"),
        text.replace("+00:00", "z"),
        text.replace("T", " "),
        text.replace("T", "t"),
        moment.strftime("%Y-%m-%dT%H:%M"),
        moment.strftime("%Y%m%dT%H%M%S"),
        text + "Z",
    ]
    return forms[form % len(forms)]


offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
times = st.one_of(
    st.builds(_iso, st.datetimes(timezones=st.none() | offsets), st.integers(0, 7)),
    st.sampled_from(EDGE_TIMES),
    st.integers(-(10**13), 10**13).map(str),
)
# characters() leaves surrogates out, and text() drawing from a union of alphabets weighs each
# by its size (surrogates: 2048 of 1.1M code points). Lone surrogates are what JSON may escape
# ("\ud800") and sloppy clients write as (invalid) UTF-8, so they get a branch of their own.
SURROGATES = ("\ud800", "\udbff", "\udc00", "\udfff", "\ud83d")


def unicode_text(min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[str]:
    chars = st.one_of(st.characters(), st.sampled_from(SURROGATES))
    return st.lists(chars, min_size=min_size, max_size=max_size).map("".join)


texts = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Zs"]), max_size=10),
    st.sampled_from(["", " ", "-", "\x00", "\r\n", "\t", "\x7f", "\u00e9", "metro", "11"]),
)
long_values = st.builds(
    lambda char, n: char * n,
    st.sampled_from(["9", "a", "\u00e9", "/", "\x00", "[", ".", " ", "-"]),
    st.one_of(
        st.integers(0, 400),
        st.integers(0, 20_000),
        st.sampled_from([1_048_575, 1_048_576, 1_048_577, 2_097_153]),  # MAX_FIELD_BYTES, limit
    ),
)


def deep(depth: int, opener: str) -> str:
    closer = "]" if opener.startswith("[") else "}"
    return opener * depth + ("1" if opener.endswith(":") else "") + closer * depth


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(0, 2**200).map(lambda n: n * 10**300),  # past what a float holds
    st.floats(),
    unicode_text(max_size=12),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(unicode_text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
deep_json = st.builds(
    deep,
    st.one_of(st.integers(1, 1200), st.integers(1, 100_000)),
    st.sampled_from(["[", '{"a":', '[{"src":']),
)
json_texts = st.one_of(
    json_values.map(json.dumps),
    json_values.map(lambda v: json.dumps(v, ensure_ascii=False)),
    deep_json,
    st.sampled_from(BROKEN_JSON),
)


@dataclass(frozen=True)
class Roots:
    """Where the server lives: generated traversals aim at and around these."""

    tmp: Path
    data: Path
    audio: Path

    @classmethod
    def of(cls, vault: Vault, tmp: Path) -> Roots:
        return cls(tmp, vault.settings.data_dir, vault.settings.audio_dir)

    def traversals(self) -> st.SearchStrategy[str]:
        return st.sampled_from(
            [t.format(e=ESCAPE, tmp=self.tmp, data=self.data, audio=self.audio) for t in TRAVERSALS]
        )

    def values(self) -> st.SearchStrategy[bytes | str]:
        return st.one_of(
            numbers,
            times,
            texts,
            self.traversals(),
            json_texts,
            long_values,
            st.binary(max_size=64),
        )

    def filenames(self) -> st.SearchStrategy[str]:
        return st.one_of(
            st.sampled_from(FILENAMES),
            self.traversals().map(lambda t: t + ".m4a"),
            self.traversals(),
            st.text(max_size=30).map(lambda t: t + ".m4a"),
        )


keys = st.sampled_from(KEYS)
part_types = st.one_of(st.sampled_from(PART_TYPES), st.text(max_size=20))


@st.composite
def call_audio(draw: st.DrawFn) -> bytes:
    """What a recorder sends: a fixture recording, a few bytes longer (a call of its own)."""
    return draw(st.sampled_from([M4A, M4A_2, WAV])) + draw(st.binary(min_size=1, max_size=8))


@st.composite
def odd_audio(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "edge", "large", "delimiter"]))
    if kind == "random":
        return draw(st.binary(max_size=2000))
    if kind == "edge":  # around rdio-scanner's "no audio" (44 bytes) and the 64 KiB feed slice
        n = draw(st.sampled_from([0, 1, 44, 45, 46, 65535, 65536, 65537]))
        return random.Random(n).randbytes(n)
    if kind == "large":  # up to past TR_VAULT_MAX_UPLOAD_MB
        n = draw(st.integers(100_000, MAX_UPLOAD_MB * 1024 * 1024 + 100_000))
        return random.Random(draw(st.integers(0, 2**32))).randbytes(n)
    # audio holding the boundary's delimiter: the client's own mistake, never the server's
    delimiter = draw(st.sampled_from([b"\r\n--", b"\n--", b"\r--"])) + BOUNDARY.encode()
    return M4A[:100] + delimiter + M4A[100:]


# -- strategies: the parts, from the replicas ---------------------------------------------------

FOCI = (
    "values", "key", "meta", "builder", "audio", "parts", "boundary", "content-type", "style",
    "edit", "headers", "framing", "target", "method", "resend",
)  # fmt: skip
BUILDERS = ("trunk-recorder", "sdrtrunk", "sdrtrunk-test", "meta", "openmhz")
# Each route's own dimension comes up more often: the meta route's JSON, the others' fields.
FAVOURED = {
    "rdio": ("values", "values"),
    "rdio-tr": ("meta", "meta", "meta"),
    "openmhz": ("values", "values"),
}
NATIVE = {
    "rdio": ("trunk-recorder", "trunk-recorder", "sdrtrunk"),
    "rdio-tr": ("meta", "meta", "trunk-recorder"),
    "openmhz": ("openmhz",),
}
KNOWN_FIELDS = sorted(
    {p.name for p in rdio_trunk_recorder(b"") + sdrtrunk(b"") + openmhz(b"")}
    | set(
        [
            "meta",
            "test",
            "systemId",
            "talkgroupId",
            "timestamp",
            "audioFilename",
            "audioMime",
            "unit",
            "stopTime",
            "callLength",
            "emergency",
            "patched_talkgroups",
            "talkgroupGroups",
        ]
    )
)


@st.composite
def replica(draw: st.DrawFn, route: str, focus: frozenset[str], roots: Roots) -> list[Part]:
    """A real client's request; with `values` in focus some of its arguments are bent."""

    def value(default: str, strategy: st.SearchStrategy[Any]) -> Any:
        return draw(sometimes(default, strategy, one_in=3)) if "values" in focus else default

    def varied(dimension: str, default: Any, strategy: st.SearchStrategy[Any]) -> Any:
        return draw(strategy) if dimension in focus else default

    native = st.sampled_from(NATIVE[route])
    builder = draw(st.sampled_from(BUILDERS) if "builder" in focus else native)
    audio = draw(odd_audio() if "audio" in focus else call_audio())
    key = varied("key", "omhz-key" if builder == "openmhz" else "tr-key", keys)
    values = roots.values()
    if builder == "trunk-recorder":
        talkgroup = str(draw(st.sampled_from([9131, 2201, 1, 42])))
        start = str(1764001234 + draw(st.integers(0, 10**6)))
        return rdio_trunk_recorder(
            audio,
            key=key,
            system=value("11", values),
            system_label=value("metro", st.one_of(roots.traversals(), texts)),
            talkgroup=value(talkgroup, values),
            date_time=value(start, values),
            audio_name=value(TR_AUDIO_NAME, roots.filenames()),
            sources=value('[{"pos": 0.00, "src": 1402211}]', json_texts),
            frequencies=value("[]", json_texts),
        )
    if builder == "sdrtrunk":
        return sdrtrunk(audio, key=key, system=value("11", values))
    if builder == "sdrtrunk-test":
        return sdrtrunk_test(key=key, system=value("11", values))
    if builder == "meta":
        return trunk_recorder_meta_upload(
            audio, key=key, meta=varied("meta", None, meta_texts(roots))
        )
    return openmhz(
        audio,
        api_key=key,
        filename=value("9131-1764001234_851012500.0-call_123.m4a", roots.filenames()),
        talkgroup=value("9131", st.one_of(st.none(), values)),
        source_list=value('[{"pos": 0.00, "src": 1402211}]', json_texts),
    )


@st.composite
def meta_texts(draw: st.DrawFn, roots: Roots) -> str:
    """trunk-recorder's call JSON with values replaced, dropped, deepened or the text broken."""
    meta: dict[str, Any] = dict(TR_META)
    read = st.sampled_from(META_READ)  # three in four: a key the server reads
    names = st.one_of(read, read, read, st.sampled_from(sorted(TR_META)))
    deep_value = None
    for name in draw(st.lists(names, min_size=1, max_size=3)):
        action = draw(st.sampled_from(["unicode", "json", "text", "drop", "deep"]))
        if action == "drop":
            meta.pop(name, None)
        elif action == "json":
            meta[name] = draw(json_values)
        elif action == "unicode":  # lone surrogates too: JSON escapes them ("\ud800")
            meta[name] = draw(unicode_text(min_size=1, max_size=8))
        elif action == "text":
            meta[name] = draw(st.one_of(numbers, times, roots.traversals(), texts))
        else:
            meta[name] = "__deep__"
            deep_value = draw(deep_json)
    # ensure_ascii writes a lone surrogate as its escape, which the server reads back as one
    text = json.dumps(meta, ensure_ascii=draw(sometimes(True, st.just(False))))
    if deep_value is not None:
        text = text.replace('"__deep__"', deep_value)
    shape = draw(sometimes("dict", st.sampled_from(["truncated", "list", "scalar", "raw"])))
    if shape == "truncated":
        return text[: draw(st.integers(0, len(text)))]
    if shape == "list":
        return f"[{text}]"
    if shape == "scalar":
        return draw(st.sampled_from(["1", '"x"', "null", "true", "NaN", "[]", ""]))
    if shape == "raw":  # a number Python reads as inf, or cannot read, in place of a value
        raw = draw(st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "9" * 5000, "1e20"]))
        name = draw(st.sampled_from(["talkgroup", "start_time", "stop_time", "freq", "emergency"]))
        return re.sub(f'"{name}": [^,}}]+', f'"{name}": {raw}', text, count=1)
    return text


@st.composite
def mutated(draw: st.DrawFn, parts: list[Part], roots: Roots) -> tuple[Part, ...]:
    """`parts` with parts dropped, duplicated, moved, renamed, re-valued, re-typed, added."""
    parts = list(parts)
    ops = ["drop", "duplicate", "move", "value", "rename", "filename", "type", "add", "many"]
    for op in draw(st.lists(st.sampled_from(ops), min_size=1, max_size=4)):
        if op == "add":
            name = draw(st.one_of(st.sampled_from(KNOWN_FIELDS), st.text(max_size=12)))
            parts.insert(draw(st.integers(0, len(parts))), Part(name, draw(roots.values())))
            continue
        if op == "many":  # around werkzeug's max_parts (200)
            parts += [Part("x", "1")] * draw(st.sampled_from([150, 199, 200, 201, 260]))
            continue
        if not parts:
            continue
        i = draw(st.integers(0, len(parts) - 1))
        p = parts[i]
        if op == "drop":
            del parts[i]
        elif op == "duplicate":
            copy = replace(p, value=draw(sometimes(p.value, roots.values(), one_in=2)))
            parts.insert(draw(st.integers(0, len(parts))), copy)
        elif op == "move":
            del parts[i]
            parts.insert(draw(st.integers(0, len(parts))), p)
        elif op == "value":
            parts[i] = replace(p, value=draw(roots.values()))
        elif op == "rename":
            odd = [p.name.upper(), p.name.capitalize(), p.name + " ", "", "audio", "call"]
            name = draw(
                st.one_of(st.sampled_from(KNOWN_FIELDS), st.sampled_from(odd), st.text(max_size=12))
            )
            parts[i] = replace(p, name=name)
        elif op == "filename":
            parts[i] = replace(p, filename=draw(st.one_of(st.none(), roots.filenames())))
        elif op == "type":
            parts[i] = replace(p, content_type=draw(st.one_of(st.none(), part_types)))
    return tuple(parts)


# -- strategies: the request around the parts ---------------------------------------------------

boundaries = st.one_of(
    st.text(
        st.sampled_from(string.ascii_letters + string.digits + "'()+_,-./:=?"),
        min_size=1,
        max_size=70,
    ),
    st.sampled_from(["a", "-", "--", "x" * 71, "x" * 200, "\u00e9", "a b", 'a"b', "a;b", " a"]),
)


def content_types(boundary: str) -> st.SearchStrategy[str | None]:
    return st.sampled_from(
        [
            None,
            f'multipart/form-data; boundary="{boundary}"',
            f"Multipart/Form-Data; BOUNDARY={boundary}",
            f"multipart/form-data;boundary={boundary}",
            f"multipart/form-data; charset=utf-8; boundary={boundary}",
            f"multipart/form-data; boundary={boundary}; boundary=other",
            f"multipart/form-data; boundary={boundary}x",
            f"multipart/form-data; boundary*=UTF-8''{quote(boundary)}",
            "multipart/form-data; boundary*=UTF-8''%E2%82%AC",
            "multipart/form-data; boundary*=ISO-8859-1''%E9",
            "multipart/form-data; boundary=",
            'multipart/form-data; boundary=""',
            "multipart/form-data",
            f"multipart/mixed; boundary={boundary}",
            "application/x-www-form-urlencoded",
            "application/json",
            "text/plain",
            "",
            ";",
            f"multipart/form-data; boundary={boundary}\x00",
            f"multipart/form-data; boundary=\u00e9{boundary}",
        ]
    )


def cased(name: str, how: str, bits: int) -> str:
    if how == "lower":
        return name.lower()
    if how == "upper":
        return name.upper()
    if how == "odd":  # content-TYPE, CoNtEnT-tYpE, ...
        return "".join(c.upper() if bits >> (i % 30) & 1 else c.lower() for i, c in enumerate(name))
    return name


EXTRA_HEADERS: dict[str, st.SearchStrategy[tuple[str, str]]] = {
    "origin": st.tuples(st.just("Origin"), st.sampled_from(["http://evil.example", "null", ""])),
    "second-type": st.tuples(
        st.just("Content-Type"),
        st.sampled_from(
            ["application/octet-stream", "text/plain", "multipart/form-data; boundary=z"]
        ),
    ),
    "expect": st.just(("Expect", "100-continue")),
    "close": st.just(("Connection", "close")),
    "keep-alive": st.just(("Connection", "keep-alive")),
    "forwarded": st.just(("X-Forwarded-For", "203.0.113.9")),
    "junk": st.tuples(
        st.just("X-Junk"), st.text(st.characters(min_codepoint=32, max_codepoint=126))
    ),
    "host": st.tuples(st.just("Host"), st.sampled_from(["localhost", "127.0.0.1:1", "[::1]", "x"])),
}


@st.composite
def header_lists(
    draw: st.DrawFn, content_type: str | None, varied: bool
) -> tuple[tuple[str, str], ...]:
    """curl's headers; `varied`: extra and duplicate ones, names in odd case, any order."""
    headers = [
        ("Host", "127.0.0.1"),
        ("User-Agent", "TrunkRecorder1.0"),
        ("Accept", "*/*"),
        ("Content-Length", "{length}"),
    ]
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    if not varied:
        return tuple(headers)
    extras = draw(st.lists(st.sampled_from(sorted(EXTRA_HEADERS)), max_size=3, unique=True))
    headers += [draw(EXTRA_HEADERS[name]) for name in extras]
    how = draw(st.sampled_from(["as-is", "lower", "upper", "odd"]))
    bits = draw(st.integers(0, 2**30))
    headers = [(cased(n, how, bits), v) for n, v in headers]
    return tuple(draw(sometimes(headers, st.permutations(headers), one_in=2)))


pieces = st.lists(st.integers(0, 1000), max_size=8).map(tuple)
framings = st.one_of(
    st.builds(Framing, length=st.just("short"), delta=st.integers(1, 400)),
    st.builds(Framing, length=st.just("long"), delta=st.integers(1, 400)),
    st.builds(Framing, length=st.just("long"), delta=st.integers(1, 10), stall=st.just(True)),
    st.builds(Framing, length=st.sampled_from(["missing", "conflict", "chunked"]), pieces=pieces),
    st.builds(
        Framing,
        length=st.just("garbage"),
        garbage=st.sampled_from(["abc", "-1", "1e3", " 12 ", "12, 12", "0x10", "", "9" * 30]),
    ),
    st.builds(Framing, pieces=pieces),
)
body_edits = st.one_of(
    st.builds(BodyEdit, kind=st.just("truncate"), at=st.integers(0, 1000)),
    st.builds(
        BodyEdit,
        kind=st.sampled_from(["insert", "flip"]),
        at=st.integers(0, 1000),
        data=st.binary(min_size=1, max_size=40),
    ),
)
styles = st.builds(
    Style,
    disposition=st.sampled_from(
        ["Content-Disposition", "content-disposition", "CONTENT-DISPOSITION", "content-DISPOSITION"]
    ),
    part_type=st.sampled_from(["Content-Type", "content-type", "CONTENT-TYPE"]),
    newline=st.sampled_from(["\r\n", "\n"]),
    quoted=st.booleans(),
    preamble=st.sampled_from([b"", b"\r\n", b"This is a multi-part message in MIME format.\r\n"]),
    closing=st.booleans(),
    epilogue=st.sampled_from([b"\r\n", b"", b"\r\nepilogue junk\r\n"]),
)
methods = st.sampled_from(["GET", "PUT", "HEAD", "OPTIONS", "DELETE", "post", "PATCH"])


def targets(route: str) -> st.SearchStrategy[str]:
    if route == "openmhz":
        segments = st.one_of(
            st.sampled_from(SEGMENTS),
            st.text(min_size=1, max_size=20).map(lambda t: quote(t, safe="")),
        )
        return segments.flatmap(
            lambda s: st.sampled_from(
                [f"/{s}/upload", f"//{s}/upload", f"/{s}//upload", f"/{s}/upload?x=1"]
            )
        )
    path = ROUTE_PATH[route]
    return st.sampled_from(
        [
            f"/{path}",
            f"{path}/",
            f"{path}?key=tr-key",
            path.upper(),
            f"{path}%00",
            path.replace("/api/", "/api//"),
            path.replace("call", "%63all"),
            f"{path}/..{path.rsplit('/', 1)[1]}",
            *ROUTE_PATH.values(),
            "/api/metro/upload",
            "/upload",
        ]
    )


@st.composite
def upload_cases(draw: st.DrawFn, route: str, roots: Roots) -> UploadCase:
    """A replica for `route`, up to two of its dimensions varied (none: as the client sends)."""
    dimensions = st.sampled_from(FOCI + FAVOURED[route])
    focus = frozenset(draw(st.lists(dimensions, max_size=2, unique=True)))

    def varied(dimension: str, default: Any, strategy: st.SearchStrategy[Any]) -> Any:
        return draw(strategy) if dimension in focus else default

    parts = draw(replica(route, focus, roots))
    boundary = varied("boundary", BOUNDARY, boundaries)
    standard = f"multipart/form-data; boundary={boundary}"
    content_type = varied("content-type", standard, content_types(boundary))
    return UploadCase(
        focus=tuple(f for f in FOCI if f in focus),
        method=varied("method", "POST", methods),
        target=varied("target", ROUTE_PATH[route], targets(route)),
        parts=varied("parts", tuple(parts), mutated(parts, roots)),
        boundary=boundary,
        headers=draw(header_lists(content_type, "headers" in focus)),
        style=varied("style", Style(), styles),
        framing=varied("framing", Framing(), framings),
        edit=varied("edit", None, body_edits),
        resend="resend" in focus,
    )


# -- invariants ---------------------------------------------------------------------------------


class ErrorLog(logging.Handler):
    """Every record at ERROR or above, from any logger (hypercorn logs an app's exceptions)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def tree(root: Path) -> set[str]:
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath).relative_to(root)
        out.update((base / name).as_posix() for name in (*dirnames, *filenames))
    return out


def names_in(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def strict_json(body: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in a JSON answer")

    return json.loads(body, parse_constant=refuse)


class Invariants:
    """What must hold after every example, whatever it sent."""

    def __init__(self, vault: Vault, roots: Roots, log: ErrorLog) -> None:
        self.vault = vault
        self.roots = roots
        self.log = log
        self.port = int(vault.url.rsplit(":", 1)[1])
        self.baseline = tree(roots.tmp)
        self.outside = {d: names_in(d) for d in (roots.tmp.parent, Path("/tmp"))}
        self.logged = 0
        self.stopped_by: str | None = None
        self.files_before: set[str] = set()
        self.tally: dict[str, int] = {}

    def guard(self, example: Callable[[T], None], case: T) -> None:
        """Run one example; once the server has stopped, say which example stopped it (every
        later one fails for that reason alone)."""
        if self.stopped_by is not None:
            raise AssertionError(f"the server stopped during an earlier example: {self.stopped_by}")
        try:
            example(case)
        except OSError as exc:
            if not self.vault._stopped.is_set():
                raise
            self.stopped_by = repr(case)
            raise AssertionError("the server stopped during this example") from exc

    def begin(self) -> dict[int, dict[str, Any]]:
        """At the start of an example: what was logged or cached before is not its doing."""
        self.logged = len(self.log.records)
        self.files_before = self.cached_files()
        return self.rows()

    def count(self, answer: Answer) -> None:
        outcome = str(answer.status or "none")
        self.tally[outcome] = self.tally.get(outcome, 0) + 1

    def rows(self) -> dict[int, dict[str, Any]]:
        conn = sqlite3.connect(f"file:{self.vault.settings.db_path}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            sql = "SELECT id, key, sha256, size, cached, state FROM calls"
            return {r["id"]: dict(r) for r in conn.execute(sql)}
        finally:
            conn.close()

    def cached_files(self) -> set[str]:
        audio = self.roots.audio
        return {
            p.relative_to(audio).as_posix()
            for p in audio.rglob("*")
            if p.is_file() and p.relative_to(audio).parts[0] != ".incoming"
        }

    def incoming(self) -> list[str]:
        return sorted(names_in(self.roots.audio / ".incoming"))

    def check_status(self, answer: Answer) -> None:
        """1: never a 5xx the README does not name for a condition that holds."""
        status = answer.status
        if status is None or status < 500:
            return
        if status == 507:
            stat = os.statvfs(self.roots.audio)
            free = stat.f_bavail * stat.f_frsize
            low = self.vault.settings.min_free_mb * 1024 * 1024
            assert free < low, f"507 with {free} bytes free: {answer!r}"
            return
        # 503 is for every upload slot busy or the journal locked by another writer: neither
        # holds with one request at a time and no other writer. Raised from the server's own
        # exception: hypothesis tells failures apart by it, and the report shows its traceback.
        raise AssertionError(f"HTTP {status}: {answer!r}") from self.server_exception()

    def check_files(self) -> None:
        """2: nothing new outside `audio/` but the journal, the lock and the probe."""
        data = self.roots.data.relative_to(self.roots.tmp).as_posix()
        allowed = {f"{data}/{name}" for name in DATA_FILES}
        for path in sorted(tree(self.roots.tmp) - self.baseline):
            inside = path.startswith(f"{data}/audio/") or path in allowed
            assert inside, f"a file outside {self.roots.audio}: {self.roots.tmp / path}"
        for directory, before in self.outside.items():
            escaped = {n for n in names_in(directory) - before if ESCAPE in n}
            assert not escaped, f"escaped into {directory}: {sorted(escaped)}"

    def check_cache(self, rows: dict[int, dict[str, Any]], *, answered: bool) -> None:
        """3: every cached file is its row's; every cached row has its file; no temp file.
        Only files new in this example count against it (a replay must meet what it met)."""
        by_key = {r["key"]: r for r in rows.values()}
        files = self.cached_files()
        for key in sorted(files - self.files_before):
            assert key in by_key, f"cached file {key!r} belongs to no journal row"
            assert by_key[key]["cached"] == 1, f"row {by_key[key]['id']} not cached: {key!r}"
        for row in rows.values():
            if row["cached"]:
                assert row["key"] in files, f"row {row['id']} is cached, {row['key']!r} gone"
        if not answered:  # no answer of the app's to wait for: it may still be unwinding
            for _ in range(100):
                if not self.incoming():
                    break
                on_loop(trio.sleep, 0.05)
        assert self.incoming() == [], f".incoming/ after the answer: {self.incoming()}"

    def server_exception(self) -> BaseException | None:
        """The exception the server logged during this example, if any."""
        for record in self.log.records[self.logged :]:
            if record.exc_info and record.exc_info[1] is not None:
                return record.exc_info[1]
        return None

    def check_alive(self) -> None:
        """4: /healthz answers; nothing was logged at ERROR."""
        answer = on_loop(get, self.port, "/healthz")
        assert (answer.status, answer.body) == (200, b"ok\n"), f"/healthz: {answer!r}"
        new = self.log.records[self.logged :]
        if new:
            logged = "; ".join(f"{r.name}: {r.getMessage()}" for r in new)
            raise AssertionError(f"logged at ERROR: {logged}") from self.server_exception()

    def after_upload(
        self, case: UploadCase, answer: Answer, before: dict[int, dict[str, Any]]
    ) -> None:
        note(f"answer: {answer!r}")
        self.check_status(answer)
        # An answer, unless the request could go without one: its framing lied, or the server
        # answered early and closed while the body was still being written (a reset may then
        # drop the answer before it is read).
        if answer.problem is not None:
            early = answer.problem.startswith(("connection reset", "closed"))
            assert case.framing.lies or early, f"no answer: {answer.problem}"
        rows = self.rows()
        new = sorted(set(rows) - set(before))
        route = case.route
        if answer.status == 200 and route is not None:
            assert answer.text == SUCCESS[route], f"200 without the success text: {answer!r}"
            self.check_acknowledged(case, rows, new)
        elif answer.status is not None:
            assert not new, f"refused with {answer.status}, yet rows {new} were stored"
        assert len(new) <= 1, f"one request, {len(new)} rows: {new}"
        # The app answers after its cleanup; the HTTP layer (when the framing lied) may answer
        # while the app still unwinds.
        self.check_cache(rows, answered=answer.status is not None and not case.framing.lies)
        self.check_files()
        self.check_alive()

    def check_acknowledged(
        self, case: UploadCase, rows: dict[int, dict[str, Any]], new: list[int]
    ) -> None:
        """5: the acknowledged audio is in the cache, under a row, and reads back."""
        if case.unambiguous():
            audio_parts = case.audio_parts()
            assert len(audio_parts) == 1, f"acknowledged with {len(audio_parts)} audio file parts"
            audio = to_bytes(audio_parts[0].value)
            digest = sha256(audio)
            matching = [r for r in rows.values() if r["sha256"] == digest]
            assert matching, f"acknowledged, but no row has the audio's SHA-256 {digest}"
            row = rows[new[0]] if new else matching[0]
            assert row["sha256"] == digest, f"the new row is not the audio sent: {row}"
            assert row["size"] == len(audio), row
        elif new:
            row = rows[new[0]]
        else:
            return  # a duplicate of a call this example cannot name
        assert row["cached"] == 1, row
        stored = self.vault.audio_path(row["key"]).read_bytes()
        assert sha256(stored) == row["sha256"], f"row {row['id']}: the file is not its SHA-256"
        assert len(stored) == row["size"], row
        if not case.unambiguous():
            assert stored in case.body(), f"row {row['id']}: stored audio that was never sent"
        one = on_loop(get, self.port, f"/api/calls/{row['id']}")
        assert one.status == 200, f"GET /api/calls/{row['id']}: {one!r}"
        strict_json(one.body)
        playback = on_loop(get, self.port, f"/api/calls/{row['id']}/audio")
        assert playback.status == 200, f"GET /api/calls/{row['id']}/audio: {playback!r}"
        assert playback.body == stored, f"/api/calls/{row['id']}/audio is not the cached file"


# -- the upload properties ----------------------------------------------------------------------


async def fuzz_uploads(make_vault: VaultFactory, tmp_path: Path, route: str, examples: int) -> None:
    vault = await make_vault(**VAULT_SETTINGS)
    await vault.client.aclose()  # the fuzz speaks raw HTTP; no keep-alive connection lingers
    roots = Roots.of(vault, tmp_path)
    with error_log() as log:
        invariants = Invariants(vault, roots, log)
        port = invariants.port

        runs = itertools.count()

        def send(case: UploadCase) -> Answer:
            before = invariants.begin()
            head, eof = case.method == "HEAD", case.framing.eof
            answer: Answer = on_loop(lambda: exchange(port, case.wire(), head=head, eof=eof))
            invariants.count(answer)
            invariants.after_upload(case, answer, before)
            return answer

        def example(case: UploadCase) -> None:
            case = case.unique(next(runs))
            first = send(case)
            if case.resend:
                rows = invariants.rows()
                again = send(case)
                note(f"resent: {again!r}")
                if first.status == 200 and case.route is not None:
                    assert (again.status, again.text) == (200, first.text), "a resend refused"
                    assert invariants.rows().keys() == rows.keys(), "a resend stored again"

        @fuzz(examples)
        @given(case=upload_cases(route, roots))
        def upload(case: UploadCase) -> None:
            invariants.guard(example, case)

        try:
            await run_property(upload)
        finally:
            rows = len(invariants.rows())
            print(f"\n{route}: answers {dict(sorted(invariants.tally.items()))}, {rows} calls")


@pytest.mark.soak
async def test_fuzz_rdio_call_upload(make_vault: VaultFactory, tmp_path: Path) -> None:
    await fuzz_uploads(make_vault, tmp_path, "rdio", 150)


@pytest.mark.soak
async def test_fuzz_trunk_recorder_call_upload(make_vault: VaultFactory, tmp_path: Path) -> None:
    await fuzz_uploads(make_vault, tmp_path, "rdio-tr", 150)


@pytest.mark.soak
async def test_fuzz_openmhz_upload(make_vault: VaultFactory, tmp_path: Path) -> None:
    await fuzz_uploads(make_vault, tmp_path, "openmhz", 150)


# -- the read property --------------------------------------------------------------------------

# fmt: off
READ_PATHS = (
    "/api/calls", "/api/calls", "/api/calls", "/api/calls/{id}", "/api/calls/{id}",
    "/api/calls/{id}/audio", "/api/calls/{id}/audio", "/api/journal/summary", "/metrics",
    "/healthz", "/readyz", "/api/calls/", "/api/journal", "/api/nope", "/api/calls/{id}/events",
    "/api/calls/{id}/audio/x", "//api/calls", "/api/calls/{id}?",
)
RANGES = (
    "bytes=0-10", "bytes=-5", "bytes=5-", "bytes=10-5", "bytes=0-0,2-3", "bytes=999999999-",
    "bytes=abc", "items=0-1", "bytes=-0", "bytes=0-99999999999999999999", "bytes=",
    "bytes=0-1,0-1,0-1", "bytes= 1-2", "bytes=1-2,", "bytes=-99999999999999999999",
)
HTTP_DATES = (
    "Mon, 24 Nov 2025 16:20:34 GMT", "Fri, 31 Dec 9999 23:59:59 GMT",
    "Mon, 01 Jan 0001 00:00:00 GMT", "garbage", "", "Thu, 01 Jan 1970 00:00:00 GMT",
)
BUILT_CURSOR_TIMES = (
    "2025-11-24 16:20:34.000", "0000-01-01 00:00:00.000", "9999-12-31 23:59:59.999",
    "2025-02-30 00:00:00.000", "2025-11-24 16:20:34", "2025-11-24 16:20:34.0000",
)
# fmt: on
PARAMS = ("system", "talkgroup", "since", "until", "state", "limit", "cursor")
READ_HEADERS: dict[str, st.SearchStrategy[tuple[str, str]]] = {
    "range": st.tuples(st.just("Range"), st.sampled_from(RANGES)),
    "inm": st.tuples(
        st.just("If-None-Match"), st.sampled_from(['"x"', "*", 'W/"x"', "", "garbage"])
    ),
    "ims": st.tuples(st.just("If-Modified-Since"), st.sampled_from(HTTP_DATES)),
    "if-range": st.tuples(st.just("If-Range"), st.sampled_from(['"x"', *HTTP_DATES[:2]])),
    "auth": st.tuples(
        st.just("Authorization"), st.sampled_from(["Bearer tr-key", "Bearer ", "Basic eDp5"])
    ),
    "accept": st.tuples(st.just("Accept"), st.sampled_from(["*/*", "text/html", ""])),
}


@dataclass(frozen=True)
class ReadCase:
    method: str
    path: str  # with the id in place
    query: tuple[str, ...]  # `name=value` pieces, each already encoded
    headers: tuple[tuple[str, str], ...]

    def __repr__(self) -> str:
        query = tuple(short(q) for q in self.query)
        return f"ReadCase({self.method!r}, {short(self.path)}, {query}, {self.headers!r})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    @property
    def target(self) -> str:
        return self.path + ("?" + "&".join(self.query) if self.query else "")

    def args(self) -> dict[str, str]:
        """The first value of each parameter, as quart reads the query string."""
        first: dict[str, str] = {}
        query = "&".join(self.query)
        for name, value in parse_qsl(query, keep_blank_values=True, errors="replace"):
            first.setdefault(name, value)
        return first


def encoded(text: str, how: str) -> str:
    if how == "plus":
        return quote_plus(text)
    if how == "latin1":  # percent-escapes that are not UTF-8
        return quote(text.encode("latin-1", "replace"), safe="")
    if how == "raw" and all(0x21 <= ord(c) <= 0x7E and c not in "#&" for c in text):
        return text
    return quote(text, safe="")


@st.composite
def cursors(draw: st.DrawFn, real: Sequence[str]) -> str:
    """Cursors this server returned, bent ones, ones built to look right, and any text."""
    kind = draw(st.sampled_from(["real", "bent", "built", "text"]))
    if kind in ("real", "bent"):
        cursor = draw(st.sampled_from(real))
        if kind == "real":
            return cursor
        how = draw(st.sampled_from(["cut", "char", "pad", "plus", "upper"]))
        if how == "cut":
            return cursor[: draw(st.integers(0, len(cursor)))]
        if how == "char":
            i = draw(st.integers(0, len(cursor) - 1))
            return cursor[:i] + draw(st.characters()) + cursor[i + 1 :]
        if how == "pad":
            return cursor + draw(st.sampled_from(["=", "==", "A", "\n", "%3D"]))
        if how == "plus":
            return cursor.replace("-", "+").replace("_", "/")
        return cursor.upper()
    if kind == "built":
        start = draw(st.one_of(times, st.sampled_from(BUILT_CURSOR_TIMES)))
        sep = draw(st.sampled_from(["|", "||", "", "|\x00"]))
        raw = f"{start}{sep}{draw(numbers)}".encode("utf-8", "surrogatepass")
        return base64.urlsafe_b64encode(raw).decode()
    return draw(st.one_of(st.text(max_size=40), long_values.map(lambda v: v[:300])))


def param_values(name: str, real_cursors: Sequence[str]) -> st.SearchStrategy[str]:
    states = ["pending", "done", "failed", "DONE", "", "done "]
    by_name: dict[str, st.SearchStrategy[str]] = {
        "system": st.one_of(st.sampled_from(["11", "metro", "99", "METRO", "", "county"]), texts),
        "talkgroup": st.one_of(st.sampled_from(["9131", "9000", "9001"]), numbers),
        "since": st.one_of(times, numbers),
        "until": st.one_of(times, numbers),
        "state": st.one_of(st.sampled_from(states), texts),
        "limit": st.one_of(st.sampled_from(["1", "2", "500", "501", "0", "050", "1000"]), numbers),
        "cursor": cursors(real_cursors),
    }
    return by_name.get(name, st.one_of(numbers, texts, times))


@st.composite
def read_cases(draw: st.DrawFn, ids: Sequence[int], real_cursors: Sequence[str]) -> ReadCase:
    ident = draw(
        st.one_of(st.sampled_from([str(i) for i in ids]), numbers.map(lambda n: quote(n, safe="")))
    )
    path = draw(st.sampled_from(READ_PATHS)).replace("{id}", ident)
    query: list[str] = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.one_of(st.sampled_from([*PARAMS, "key", "id"]), st.text(max_size=8)))
        value = draw(param_values(name, real_cursors))
        how = draw(sometimes("plus", st.sampled_from(["pct", "latin1", "raw"])))
        query.append(f"{encoded(name, how)}={encoded(value, how)}")
    odd = ["", "=", "&", "a=b=c", "%", "%zz", "%%", ";", "limit", "=5"]
    query += draw(st.lists(st.sampled_from(odd), max_size=1))
    headers = [("Host", "127.0.0.1")]
    extras = draw(st.lists(st.sampled_from(sorted(READ_HEADERS)), max_size=3, unique=True))
    headers += [draw(READ_HEADERS[name]) for name in extras]
    others = st.sampled_from(["HEAD", "POST", "PUT", "DELETE", "OPTIONS", "get"])
    method = draw(sometimes("GET", others, one_in=10))
    return ReadCase(method, path, tuple(query), tuple(headers))


def check_read(
    case: ReadCase, answer: Answer, invariants: Invariants, rows: dict[int, dict[str, Any]]
) -> None:
    """6: JSON where the README says so, the security headers, a 400 naming its parameter,
    filters and limit respected, audio byte for byte."""
    note(f"answer: {answer!r}")
    assert answer.problem is None, f"no answer: {answer.problem}"
    invariants.check_status(answer)
    status = answer.status
    assert status is not None
    for name, value in SECURITY_HEADERS.items():
        assert answer.headers.get(name) == value, f"{name} missing: {answer.headers}"
    path = re.sub("/{2,}", "/", unquote(case.path.partition("?")[0]))
    head = case.method == "HEAD"
    audio = re.fullmatch(r"/api/calls/[^/]+/audio", path) is not None
    playable = audio and case.method in ("GET", "HEAD") and status in (200, 206, 304)
    # OPTIONS is the framework's own 200 with an Allow header and no body: nothing to parse.
    options = case.method == "OPTIONS" and status == 200 and answer.body == b""
    json_route = path.startswith(("/api/calls", "/api/journal"))
    if json_route and not playable and not options and status != 307:
        assert answer.headers.get("content-type") == "application/json", f"not JSON: {answer!r}"
        data = None if head else strict_json(answer.body)
        if status == 400 and data is not None:
            error = data.get("error", "")
            sent = {k for k, v in case.args().items() if v != ""} | {"id"}
            named = error.split(":", 1)[0]
            assert named in sent, f"a 400 naming no parameter sent ({sorted(sent)}): {error!r}"
        if status == 200 and data is not None and path == "/api/calls" and case.method == "GET":
            check_listing(case, data)
    if playable and status in (200, 206) and not head:
        ident = int(path.split("/")[3])
        kind = answer.headers.get("content-type", "").split(";")[0]
        assert kind in STORED_TYPES, f"audio served as {kind!r}"
        stored = invariants.vault.audio_path(rows[ident]["key"]).read_bytes()
        if status == 200:
            assert answer.body == stored, "the audio served is not the cached file"
        else:
            assert answer.body in stored, "the range served is no part of the cached file"


def check_listing(case: ReadCase, data: dict[str, Any]) -> None:
    args = case.args()
    calls = data["calls"]
    assert len(calls) <= int(args.get("limit") or 50), f"more calls than the limit: {len(calls)}"
    if args.get("state"):
        assert all(c["state"] == args["state"] for c in calls), "the state filter leaked"
    if args.get("talkgroup"):
        tg = int(args["talkgroup"])
        assert all(c["talkgroup"] == tg for c in calls), "the talkgroup filter leaked"
    if args.get("system"):
        system = args["system"]
        assert all(system in (c["system"], c["system_label"]) for c in calls), "system leaked"
    starts = [(c["start_time"], c["id"]) for c in calls]
    assert starts == sorted(starts, reverse=True), "not newest first"


async def seed_calls(vault: Vault) -> None:
    """A few real calls by every route, for the reads to find."""
    for n in range(8):
        audio = [M4A, M4A_2, WAV][n % 3] + bytes([n])
        start = 1764001234 + 3600 * n
        if n % 4 == 3:
            path, parts = "/metro/upload", openmhz(audio, talkgroup=str(9000 + n))
        elif n % 4 == 2:
            meta = json.dumps({**TR_META, "start_time": start, "talkgroup": 9000 + n})
            path, parts = (
                "/api/trunk-recorder-call-upload",
                trunk_recorder_meta_upload(audio, meta=meta),
            )
        else:
            path = "/api/call-upload"
            parts = rdio_trunk_recorder(audio, talkgroup=str(9000 + n), date_time=str(start))
        response = await vault.post(path, parts)
        assert response.status_code == 200, response.text


@pytest.mark.soak
async def test_fuzz_read_routes(make_vault: VaultFactory, tmp_path: Path) -> None:
    vault = await make_vault(**VAULT_SETTINGS)
    await seed_calls(vault)
    ids = [c["id"] for c in vault.calls()]
    real_cursors = []
    for limit in (1, 2, 3):
        page = (await vault.client.get(vault.url + "/api/calls", params={"limit": limit})).json()
        real_cursors.append(page["next_cursor"])
    await vault.client.aclose()  # the fuzz speaks raw HTTP; no keep-alive connection lingers
    roots = Roots.of(vault, tmp_path)
    with error_log() as log:
        invariants = Invariants(vault, roots, log)
        port = invariants.port
        rows = invariants.rows()

        def example(case: ReadCase) -> None:
            invariants.begin()
            head = request_head(case.method, case.target, [*case.headers, ("Connection", "close")])
            answer = on_loop(lambda: exchange(port, [head], head=case.method == "HEAD"))
            invariants.count(answer)
            check_read(case, answer, invariants, rows)
            assert invariants.rows() == rows, "a read changed the journal"
            invariants.check_cache(rows, answered=True)
            invariants.check_files()
            invariants.check_alive()

        @fuzz(200)
        @given(case=read_cases(ids, real_cursors))
        def read(case: ReadCase) -> None:
            invariants.guard(example, case)

        try:
            await run_property(read)
        finally:
            print(f"\nreads: answers {dict(sorted(invariants.tally.items()))}")


def test_the_fuzz_encoder_writes_what_the_replicas_write() -> None:
    """The fuzz starts from the real clients' bytes: its encoder, unstyled, is wire.multipart."""
    replicas = [
        rdio_trunk_recorder(M4A),
        sdrtrunk(M4A_2),
        openmhz(WAV),
        trunk_recorder_meta_upload(WAV),
        sdrtrunk_test(),
    ]
    for parts in replicas:
        assert encode_parts(parts, BOUNDARY) == multipart(parts)[0]
