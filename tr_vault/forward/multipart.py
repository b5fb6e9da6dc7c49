"""A multipart/form-data body written as libcurl writes it, streamed with a known length.

httpx's own multipart encoder reads file parts from synchronous file objects only; a call's
audio comes as an async iterator (from the cache or from S3) and must never be held whole. This
encoder yields the small text parts from memory and the file part chunk by chunk, and knows its
Content-Length up front, so the request goes out with an explicit length (no chunked encoding:
trunk-recorder never sends one, and some servers refuse it).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

__all__ = ["FilePart", "Form", "TextPart", "curl_boundary"]


def curl_boundary() -> str:
    """A boundary of libcurl's shape: 24 dashes and 16 random hex digits."""
    return "-" * 24 + secrets.token_hex(8)


@dataclass(frozen=True)
class TextPart:
    name: str
    value: str
    filename: str | None = None  # Broadcastify's `metadata` is text sent as a named file
    content_type: str | None = None


@dataclass(frozen=True)
class FilePart:
    """A streamed part: `size` bytes from `chunks()`, which must yield exactly that many."""

    name: str
    filename: str
    content_type: str
    size: int
    chunks: Callable[[], AsyncIterator[bytes]]


Part = TextPart | FilePart


def _head(boundary: str, part: Part) -> bytes:
    disposition = f'form-data; name="{part.name}"'
    if part.filename is not None:
        disposition += f'; filename="{part.filename}"'
    head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
    if part.content_type:
        head += f"Content-Type: {part.content_type}\r\n"
    return (head + "\r\n").encode()


class Form:
    """The parts of one request, in order; `body()` may be iterated more than once."""

    def __init__(self, parts: Sequence[Part], boundary: str | None = None) -> None:
        self.parts = tuple(parts)
        self.boundary = boundary or curl_boundary()
        self._tail = f"--{self.boundary}--\r\n".encode()

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def content_length(self) -> int:
        total = len(self._tail)
        for part in self.parts:
            size = part.size if isinstance(part, FilePart) else len(part.value.encode())
            total += len(_head(self.boundary, part)) + size + 2
        return total

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": self.content_type, "Content-Length": str(self.content_length)}

    async def body(self) -> AsyncIterator[bytes]:
        """The body: text parts joined into few writes, file parts passed through as read."""
        pending = bytearray()
        for part in self.parts:
            pending += _head(self.boundary, part)
            if isinstance(part, TextPart):
                pending += part.value.encode() + b"\r\n"
                continue
            if pending:
                yield bytes(pending)
                pending.clear()
            async for chunk in part.chunks():
                if chunk:
                    yield chunk
            pending += b"\r\n"
        pending += self._tail
        yield bytes(pending)
