"""The fault proxy (tests/faultproxy.py) in front of moto's server: each fault as a client sees it."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any
from xml.etree import ElementTree

import boto3
import httpx
import pytest
import trio
from botocore.config import Config
from moto.server import ThreadedMotoServer

from tests.faultproxy import NO_RESPONSE, FaultProxy, open_fault_proxy

BUCKET = "faultproxy"
KEY_PATH = f"/{BUCKET}/calls/1.mp3"
TIMEOUT = 15  # seconds, per test: generous on a loaded 2-core CI machine
# moto does not verify signatures, but it treats a request without Authorization as anonymous
# and refuses to read private objects (403): any well-formed SigV4 header will do.
AUTH = {
    "Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, "
    "SignedHeaders=host, Signature=0"
}


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[tuple[str, int]]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield server.get_host_and_port()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3_client(moto_endpoint: tuple[str, int]) -> Any:
    host, port = moto_endpoint
    return boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(request_checksum_calculation="when_required"),
    )


@pytest.fixture
def upstream(moto_endpoint: tuple[str, int], s3_client: Any) -> tuple[str, int]:
    """moto, emptied, with one bucket."""
    host, port = moto_endpoint
    httpx.post(f"http://{host}:{port}/moto-api/reset", timeout=10).raise_for_status()
    s3_client.create_bucket(Bucket=BUCKET)
    return moto_endpoint


@pytest.fixture
async def proxy(upstream: tuple[str, int]) -> AsyncIterator[FaultProxy]:
    async with open_fault_proxy(*upstream) as proxy:
        yield proxy


@pytest.fixture
async def client(proxy: FaultProxy) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=proxy.url, headers=AUTH, timeout=5, trust_env=False
    ) as client:
        yield client


def md5_etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def error_code(response: httpx.Response) -> str | None:
    return ElementTree.fromstring(response.content).findtext("Code")


def client_port(response: httpx.Response) -> int:
    """The local port of the connection a response came on (same port: connection reused)."""
    port: int = response.extensions["network_stream"].get_extra_info("client_addr")[1]
    return port


async def test_passes_requests_through_and_keeps_the_connection(
    proxy: FaultProxy, client: httpx.AsyncClient
) -> None:
    body = os.urandom(300_000)

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100_000):
            yield body[start : start + 100_000]

    with trio.fail_after(TIMEOUT):
        put = await client.put(KEY_PATH, content=body)
        got = await client.get(KEY_PATH)
        head = await client.head(KEY_PATH)
        put_chunked = await client.put(KEY_PATH + ".chunked", content=chunked())
        got_chunked = await client.get(KEY_PATH + ".chunked")

    assert put.status_code == 200
    assert put.headers["etag"] == md5_etag(body)
    assert got.content == body
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(body))
    assert head.content == b""
    assert put_chunked.status_code == 200
    assert got_chunked.content == body
    assert len({client_port(r) for r in (put, got, head, put_chunked, got_chunked)}) == 1
    assert proxy.seen == [
        ("PUT", KEY_PATH, 200),
        ("GET", KEY_PATH, 200),
        ("HEAD", KEY_PATH, 200),
        ("PUT", KEY_PATH + ".chunked", 200),
        ("GET", KEY_PATH + ".chunked", 200),
    ]


async def test_fail_next_answers_exactly_that_many_requests_with_s3_errors(
    proxy: FaultProxy, client: httpx.AsyncClient, s3_client: Any
) -> None:
    body = os.urandom(100_000)
    proxy.fail_next(2, status=503)

    with trio.fail_after(TIMEOUT):
        first = await client.put(f"/{BUCKET}/a", content=body)
        second = await client.put(f"/{BUCKET}/b", content=body)
        third = await client.put(f"/{BUCKET}/c", content=body)

    for response in (first, second):
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/xml"
        assert error_code(response) == "SlowDown"
    assert third.status_code == 200
    assert len({client_port(r) for r in (first, second, third)}) == 1  # body drained, reused
    listed = s3_client.list_objects_v2(Bucket=BUCKET)
    assert [o["Key"] for o in listed["Contents"]] == ["c"]  # failed requests never forwarded
    assert proxy.seen == [
        ("PUT", f"/{BUCKET}/a", 503),
        ("PUT", f"/{BUCKET}/b", 503),
        ("PUT", f"/{BUCKET}/c", 200),
    ]


async def test_faults_apply_only_to_their_methods_in_order(
    proxy: FaultProxy, client: httpx.AsyncClient
) -> None:
    proxy.fail_next(status=500, code="InternalError", message="Try again.", methods={"PUT"})
    proxy.fail_next(methods={"HEAD"})

    with trio.fail_after(TIMEOUT):
        missing = await client.get(KEY_PATH)
        failed_put = await client.put(KEY_PATH, content=b"audio")
        failed_head = await client.head(KEY_PATH)
        put = await client.put(KEY_PATH, content=b"audio")
        head = await client.head(KEY_PATH)

    assert missing.status_code == 404
    assert error_code(missing) == "NoSuchKey"  # moto's own answer: the GET was forwarded
    assert failed_put.status_code == 500
    assert error_code(failed_put) == "InternalError"
    assert "<Message>Try again.</Message>" in failed_put.text
    assert failed_head.status_code == 503
    assert failed_head.content == b""  # a HEAD answer has no body, even an error
    assert (put.status_code, head.status_code) == (200, 200)
    assert proxy.faults_pending == 0


async def test_reset_faults_drops_the_queue(proxy: FaultProxy, client: httpx.AsyncClient) -> None:
    proxy.fail_next(3)
    proxy.reset_next()
    proxy.reset_faults()

    with trio.fail_after(TIMEOUT):
        response = await client.put(KEY_PATH, content=b"audio")

    assert response.status_code == 200
    assert proxy.faults_pending == 0


@pytest.mark.parametrize("size", [100, 2_000_000], ids=["shorter-than-limit", "mid-body"])
async def test_reset_next_cuts_the_connection(
    proxy: FaultProxy, client: httpx.AsyncClient, size: int
) -> None:
    proxy.reset_next(after_body_bytes=1024)

    with trio.fail_after(TIMEOUT):
        with pytest.raises((httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)):
            await client.put(KEY_PATH, content=os.urandom(size))
        after = await client.get(KEY_PATH)

    assert after.status_code == 404  # nothing was stored
    assert proxy.seen == [("PUT", KEY_PATH, NO_RESPONSE), ("GET", KEY_PATH, 404)]


async def test_delay_next_holds_the_response_back(
    proxy: FaultProxy, client: httpx.AsyncClient
) -> None:
    body = os.urandom(10_000)
    with trio.fail_after(TIMEOUT):
        assert (await client.put(KEY_PATH, content=body)).status_code == 200

        proxy.delay_next(seconds=0.3, methods={"GET"})
        start = trio.current_time()
        delayed = await client.get(KEY_PATH)
        assert trio.current_time() - start >= 0.3
        assert delayed.content == body

        proxy.delay_next(seconds=3600)
        with pytest.raises(httpx.ReadTimeout):
            await client.get(KEY_PATH, timeout=0.2)

        after = await client.get(KEY_PATH)
        assert after.content == body


async def test_corrupt_next_flips_one_byte_of_the_body(
    proxy: FaultProxy, client: httpx.AsyncClient
) -> None:
    body = os.urandom(50_001)
    proxy.corrupt_next()

    with trio.fail_after(TIMEOUT):
        missing = await client.get(KEY_PATH)  # not a PUT: passes the fault by
        put = await client.put(KEY_PATH, content=body)
        stored = (await client.get(KEY_PATH)).content

    assert missing.status_code == 404
    assert put.status_code == 200
    assert put.headers["etag"] != md5_etag(body)
    assert put.headers["etag"] == md5_etag(stored)
    assert len(stored) == len(body)
    assert [i for i in range(len(body)) if body[i] != stored[i]] == [len(body) // 2]


async def test_set_down_refuses_connections_until_it_is_up_again(
    proxy: FaultProxy, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(TIMEOUT):
        before = await client.get(KEY_PATH)  # leaves a keep-alive connection in the pool
        proxy.set_down(True)
        for method in ("GET", "PUT"):
            start = trio.current_time()
            with pytest.raises(httpx.ConnectError):
                await client.request(method, KEY_PATH, content=b"audio")
            assert trio.current_time() - start < 1  # refused, not timed out
        proxy.set_down(False)
        after = await client.put(KEY_PATH, content=b"audio")

    assert before.status_code == 404
    assert after.status_code == 200
    assert proxy.seen == [("GET", KEY_PATH, 404), ("PUT", KEY_PATH, 200)]


async def test_answers_502_when_the_upstream_refuses_or_hangs_up() -> None:
    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.aclose()

    # A bound socket that does not listen: connecting to its port is refused.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        refused_port = unused.getsockname()[1]
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    partial(trio.serve_tcp, hang_up, 0, host="127.0.0.1")
                )
                hang_up_port = listeners[0].socket.getsockname()[1]
                for port in (refused_port, hang_up_port):
                    async with (
                        open_fault_proxy("127.0.0.1", port) as proxy,
                        httpx.AsyncClient(base_url=proxy.url, trust_env=False) as client,
                    ):
                        first = await client.put(KEY_PATH, content=os.urandom(100_000))
                        second = await client.get(KEY_PATH)
                        assert client_port(first) == client_port(second)  # still reusable
                    assert (first.status_code, second.status_code) == (502, 502)
                    assert error_code(first) == "BadGateway"
                nursery.cancel_scope.cancel()


async def test_closes_every_connection_when_it_stops(upstream: tuple[str, int]) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_fault_proxy(*upstream) as proxy:
            idle = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            # One answered request: the connection is being served, now idle in keep-alive.
            await idle.send_all(f"HEAD {KEY_PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += await idle.receive_some()
            assert head.startswith(b"HTTP/1.1 404 ")
        async with idle:
            assert await idle.receive_some() == b""
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", proxy.port)
