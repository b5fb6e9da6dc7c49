"""The streaming multipart encoder writes what libcurl writes, with a length known up front."""

from __future__ import annotations

from collections.abc import AsyncIterator

from tests.wire import Part, multipart
from tr_vault.forward.multipart import FilePart, Form, TextPart, curl_boundary


async def test_body_is_libcurls_and_length_is_exact() -> None:
    audio = bytes(range(256)) * 300

    async def chunks() -> AsyncIterator[bytes]:
        for at in range(0, len(audio), 1000):
            yield audio[at : at + 1000]

    form = Form(
        [
            FilePart("audio", "a.m4a", "application/octet-stream", len(audio), chunks),
            TextPart("audioName", "a.m4a"),
            TextPart(
                "meta", '{"é": 1}', filename="call_meta.json", content_type="application/json"
            ),
            TextPart("empty", ""),
        ]
    )
    body = b"".join([chunk async for chunk in form.body()])
    want, content_type = multipart(
        [
            Part("audio", audio, filename="a.m4a", content_type="application/octet-stream"),
            Part("audioName", "a.m4a"),
            Part("meta", '{"é": 1}', filename="call_meta.json", content_type="application/json"),
            Part("empty", ""),
        ],
        boundary=form.boundary,
    )
    assert body == want
    assert form.content_length == len(body)
    assert form.headers == {"Content-Type": content_type, "Content-Length": str(len(body))}
    assert b"".join([chunk async for chunk in form.body()]) == body  # iterable again


def test_boundary_has_curls_shape() -> None:
    boundary = curl_boundary()
    assert boundary.startswith("-" * 24) and len(boundary) == 40
    assert boundary != curl_boundary()
