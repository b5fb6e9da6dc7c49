"""Multipart parsing CPU per request: werkzeug's decoder (the intake until issue 15) against
`multipart`'s PushMultipartParser (tr_vault/intake/form.py now), on trunk-recorder's body.

The body is `tests/wire.py`'s replica of the rdio plugin's 16 parts with AUDIO bytes of audio,
cut as hypercorn hands it to the app: its trio worker reads the socket 64 KiB at a time
(hypercorn/trio/tcp_server.py, MAX_RECV = 2**16) and h11 passes each read on as one body
chunk, the first one short by the request head. Both paths do the intake's work on every
event (fields decoded and kept, first one wins) and pass the audio to a sink that only counts
it, so the figures are the parser's; SHA-256 + MD5 of the audio, which both pay, is printed
beside them. CPU is this process's (`time.process_time`), best of REPEAT runs of N requests.

Example: .venv/bin/python bench/multipart_parse.py --requests 2000 --repeat 5
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchlib import ensure_repo_on_path, print_table

ensure_repo_on_path()

from werkzeug.sansio.multipart import (  # noqa: E402
    Data,
    Epilogue,
    Field,
    File,
    MultipartDecoder,
    NeedData,
)

from tests.wire import multipart, rdio_trunk_recorder  # noqa: E402
from tr_vault.intake import form as vault_form  # noqa: E402

HEAD = 190  # bytes of curl's request head before the body, in the first 64 KiB read
MAX_RECV = 2**16


class Sink:
    """Stands in for TempAudio: counts what it is given."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)

    def close(self) -> None:
        pass

    def discard(self) -> None:
        pass


class SinkCache:
    def new_temp(self) -> Sink:
        return Sink()


def chunks_of(body: bytes, size: int) -> list[bytes]:
    """The body as hypercorn's reads cut it: the first read also carried the head."""
    first = max(1, size - HEAD)
    return [body[:first]] + [body[i : i + size] for i in range(first, len(body), size)]


def werkzeug_path(boundary: bytes, chunks: list[bytes]) -> dict[str, str]:
    """form.py before issue 15: the decoder fed 64 KiB slices, drained after each."""
    decoder = MultipartDecoder(boundary, max_parts=200)
    fields: dict[str, str] = {}
    sink = Sink()
    name: str | None = None
    data = bytearray()
    audio = False
    for chunk in [*chunks, None]:
        if chunk is None:
            decoder.receive_data(None)
        else:
            for start in range(0, len(chunk), 64 * 1024):
                decoder.receive_data(chunk[start : start + 64 * 1024])
        while True:
            event = decoder.next_event()
            if isinstance(event, NeedData | Epilogue):
                break
            if isinstance(event, File) and event.name == "audio":
                audio = True
            elif isinstance(event, Field | File):
                name = event.name
                data.clear()
            elif isinstance(event, Data) and audio:
                sink.write(event.data)
                audio = event.more_data
            elif isinstance(event, Data):
                data += event.data
                if not event.more_data and name is not None:
                    fields.setdefault(name, data.decode("utf-8", errors="replace"))
                    name = None
    return fields


def vault_path(boundary: bytes, chunks: list[bytes]) -> dict[str, str]:
    """form.py now: its parser and part reader, each chunk fed as it came."""
    parser = vault_form._Parser(
        boundary,
        max_header_size=vault_form.MAX_HEADER_LINE,
        max_header_count=vault_form.MAX_PART_HEADERS,
        max_segment_count=vault_form.MAX_PARTS,
    )
    form = vault_form.UploadForm()
    cache: Any = SinkCache()
    reader = vault_form._PartReader(form, cache, "audio", None)
    for chunk in chunks:
        reader.feed(parser, chunk)
    parser.close()
    return form.fields


def hashes(audio: bytes) -> None:
    hashlib.sha256(audio).digest()
    hashlib.md5(audio, usedforsecurity=False).digest()


def cpu_us(run: Callable[[], object], requests: int, repeat: int) -> tuple[float, float]:
    """Best and median CPU µs per request over `repeat` runs."""
    runs = []
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(requests):
            run()
        runs.append((time.process_time() - start) / requests * 1e6)
    return min(runs), statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is reported")
    parser.add_argument("--audio", type=int, default=44_000, help="audio bytes per call")
    parser.add_argument(
        "--chunk", type=int, action="append", help=f"body chunk size (default {MAX_RECV})"
    )
    args = parser.parse_args()
    audio = random.Random(15).randbytes(args.audio)
    body, content_type = multipart(rdio_trunk_recorder(audio))
    boundary = content_type.split("boundary=")[1].encode()
    print(f"body {len(body)} bytes, 16 parts, audio {len(audio)} bytes")
    rows = []
    for size in args.chunk or [MAX_RECV]:
        chunks = chunks_of(body, size)
        assert werkzeug_path(boundary, chunks) == vault_path(boundary, chunks)
        old = cpu_us(lambda c=chunks: werkzeug_path(boundary, c), args.requests, args.repeat)
        new = cpu_us(lambda c=chunks: vault_path(boundary, c), args.requests, args.repeat)
        rows.append(
            [
                f"{size} ({len(chunks)} chunks)",
                f"{old[0]:.0f} ({old[1]:.0f})",
                f"{new[0]:.0f} ({new[1]:.0f})",
                f"{old[0] / new[0]:.1f}x",
            ]
        )
    digest = cpu_us(lambda: hashes(audio), args.requests, args.repeat)
    print_table(
        [
            "body chunk bytes",
            "werkzeug MultipartDecoder µs/req best (median)",
            "multipart PushMultipartParser µs/req best (median)",
            "speed-up",
        ],
        rows,
    )
    print(f"\nSHA-256 + MD5 of the audio (both paths): {digest[0]:.0f} µs/req")


if __name__ == "__main__":
    main()
