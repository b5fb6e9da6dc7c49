"""The storage contract: every backend (directory, moto, SeaweedFS) keeps the same promises.

moto is fast but checks almost nothing; SeaweedFS checks what S3 checks (Content-MD5,
x-amz-checksum-sha256, signatures, presigned expiry), so integrity and signing are proven there.
"""

from __future__ import annotations

import base64
import hashlib
import random
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trio
from pydantic import SecretStr

from tests.s3_fixtures import Backend, MotoS3, S3Bucket
from tr_vault.config import Settings
from tr_vault.errors import (
    CallStorageError,
    ConfigError,
    ObjectNotFound,
    StorageError,
    StoragePermanent,
    StorageUnavailable,
    VerificationError,
)
from tr_vault.storage.base import ObjectStore, PutResult
from tr_vault.storage.local import FileStore
from tr_vault.storage.s3 import S3Store

TIMEOUT = 30
KEY = "audio/metro/2025-11-24/9131-1764001234_851012500.0-call_1.m4a"
CONTENT_TYPE = "audio/mp4"


@dataclass(frozen=True)
class Audio:
    path: Path
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def make_audio(tmp_path: Path, size: int = 50_000, *, seed: int = 1, name: str = "a.m4a") -> Audio:
    data = random.Random(seed).randbytes(size)
    path = tmp_path / name
    path.write_bytes(data)
    return Audio(path, data)


async def put(
    store: ObjectStore,
    key: str,
    audio: Audio,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    content_type: str = CONTENT_TYPE,
) -> PutResult:
    return await store.put_file(
        key,
        audio.path,
        size=audio.size,
        md5_hex=md5 or audio.md5,
        sha256_hex=sha256 or audio.sha256,
        content_type=content_type,
    )


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- the contract, on every backend -----------------------------------------------------------


async def test_check_passes(store_backend: Backend) -> None:
    with trio.fail_after(TIMEOUT):
        await store_backend.make().check()


async def test_put_then_head_reports_size_sha256_and_md5_etag(
    store_backend: Backend, tmp_path: Path
) -> None:
    store = store_backend.make()
    audio = make_audio(tmp_path)
    with trio.fail_after(TIMEOUT):
        result = await put(store, KEY, audio)
        info = await store.head(KEY)
    assert result.etag == audio.md5
    assert info.key == KEY
    assert info.size == audio.size
    assert info.sha256 == audio.sha256
    assert info.etag == audio.md5  # single PUT, no SSE: the ETag is the MD5 of the bytes
    assert info.content_type == CONTENT_TYPE


async def test_get_returns_the_exact_bytes_of_a_multi_chunk_file(
    store_backend: Backend, tmp_path: Path
) -> None:
    store = store_backend.make()
    audio = make_audio(tmp_path, size=1_300_000, seed=2)  # several 512 KiB reads
    with trio.fail_after(TIMEOUT):
        await put(store, KEY, audio)
        assert await store.get(KEY) == audio.data
    assert store_backend.raw_read(KEY) == audio.data


async def test_empty_file_round_trips(store_backend: Backend, tmp_path: Path) -> None:
    store = store_backend.make()
    audio = make_audio(tmp_path, size=0)
    with trio.fail_after(TIMEOUT):
        await put(store, KEY, audio)
        info = await store.head(KEY)
        assert await store.get(KEY) == b""
    assert (info.size, info.sha256) == (0, audio.sha256)


async def test_put_again_replaces_the_object(store_backend: Backend, tmp_path: Path) -> None:
    store = store_backend.make()
    first = make_audio(tmp_path, seed=3, name="1.m4a")
    second = make_audio(tmp_path, size=60_000, seed=4, name="2.m4a")
    with trio.fail_after(TIMEOUT):
        await put(store, KEY, first)
        await put(store, KEY, first)  # a retried PUT of the same bytes is harmless
        await put(store, KEY, second)
        info = await store.head(KEY)
        assert await store.get(KEY) == second.data
    assert (info.size, info.sha256) == (second.size, second.sha256)
    assert store_backend.raw_keys() == [KEY]


async def test_concurrent_puts_share_one_store(store_backend: Backend, tmp_path: Path) -> None:
    store = store_backend.make()
    audios = [make_audio(tmp_path, size=20_000 + i, seed=i, name=f"{i}.m4a") for i in range(16)]
    keys = [f"audio/metro/2025-11-24/{i}.m4a" for i in range(16)]
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for key, audio in zip(keys, audios, strict=True):
                nursery.start_soon(put, store, key, audio)
        infos = [await store.head(key) for key in keys]
    assert [(i.size, i.sha256) for i in infos] == [(a.size, a.sha256) for a in audios]
    assert store_backend.raw_keys() == sorted(keys)


async def test_delete_then_head_is_not_found(store_backend: Backend, tmp_path: Path) -> None:
    store = store_backend.make()
    with trio.fail_after(TIMEOUT):
        await put(store, KEY, make_audio(tmp_path))
        await store.delete(KEY)
        with pytest.raises(ObjectNotFound):
            await store.head(KEY)
        await store.delete(KEY)  # deleting a missing key is not an error
    assert store_backend.raw_keys() == []


async def test_missing_key_is_object_not_found(store_backend: Backend) -> None:
    store = store_backend.make()
    with trio.fail_after(TIMEOUT):
        with pytest.raises(ObjectNotFound) as head_exc:
            await store.head("audio/none/2025-01-01/missing.m4a")
        with pytest.raises(ObjectNotFound):
            await store.get("audio/none/2025-01-01/missing.m4a")
    assert not head_exc.value.transient
    assert "audio/none/2025-01-01/missing.m4a" in str(head_exc.value)


@pytest.mark.parametrize(
    ("prefix", "full_key"),
    [
        ("", KEY),
        ("vault", f"vault/{KEY}"),
        ("vault/", f"vault/{KEY}"),
        ("/site-a/vault/", f"site-a/vault/{KEY}"),
    ],
    ids=["no-prefix", "prefix", "trailing-slash", "nested-with-slashes"],
)
async def test_prefix_places_the_object_under_it_without_double_slash(
    store_backend: Backend, tmp_path: Path, prefix: str, full_key: str
) -> None:
    store = store_backend.make(prefix=prefix)
    audio = make_audio(tmp_path)
    with trio.fail_after(TIMEOUT):
        await put(store, KEY, audio)
        info = await store.head(KEY)  # keys stay relative to the prefix
    assert info.key == KEY
    assert store_backend.raw_keys() == [full_key]
    assert "//" not in full_key
    assert store_backend.raw_read(full_key) == audio.data
    if prefix.strip("/"):
        with trio.fail_after(TIMEOUT), pytest.raises(ObjectNotFound):
            await store_backend.make().head(KEY)  # not at the bucket's root


async def test_keys_with_spaces_and_reserved_characters(
    store_backend: Backend, tmp_path: Path
) -> None:
    """Keys are URL-quoted the same way for signing and sending."""
    store = store_backend.make(prefix="pre fix")
    key = "audio/Metro P25 (east)/2025-11-24/call+1=2&x;y,z!~'*@é.m4a"
    audio = make_audio(tmp_path)
    with trio.fail_after(TIMEOUT):
        await put(store, key, audio)
        info = await store.head(key)
        assert await store.get(key) == audio.data
        await store.delete(key)
        with pytest.raises(ObjectNotFound):
            await store.head(key)
    assert info.sha256 == audio.sha256


@pytest.mark.parametrize("key", ["", "/audio/x", "audio//x", "audio/../x", "audio/./x"])
async def test_unsafe_keys_are_refused(store_backend: Backend, key: str) -> None:
    with trio.fail_after(TIMEOUT), pytest.raises(StoragePermanent):
        await store_backend.make().head(key)


async def test_presigned_get_serves_exact_bytes_with_the_asked_type(
    store_backend: Backend, tmp_path: Path
) -> None:
    store = store_backend.make(prefix="vault")
    audio = make_audio(tmp_path)
    with trio.fail_after(TIMEOUT):
        await put(store, KEY, audio)
    url = store.presign_get(
        KEY, expires_in=300, content_type="audio/x-m4a", filename="9131 call.m4a"
    )
    if not store_backend.is_s3:
        assert url.startswith("file://")
        assert Path(urlsplit(url).path).read_bytes() == audio.data
        return
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert "X-Amz-Signature" in query
    assert query["response-content-type"] == ["audio/x-m4a"]
    async with httpx.AsyncClient(trust_env=False) as client:
        with trio.fail_after(TIMEOUT):
            response = await client.get(url)
            ranged = await client.get(url, headers={"Range": "bytes=100-1099"})
    assert response.status_code == 200
    assert response.content == audio.data
    assert response.headers["content-type"] == "audio/x-m4a"
    assert response.headers["content-disposition"] == 'inline; filename="9131 call.m4a"'
    assert ranged.status_code == 206
    assert ranged.content == audio.data[100:1100]


# -- integrity: a store that checks refuses corrupted bytes ------------------------------------


@pytest.mark.parametrize("store_target", ["file", "seaweedfs"], indirect=True)
async def test_wrong_md5_is_refused_as_bad_digest_and_leaves_nothing(
    store_backend: Backend, tmp_path: Path
) -> None:
    store = store_backend.make()
    audio = make_audio(tmp_path)
    wrong_md5 = hashlib.md5(b"something else").hexdigest()
    with trio.fail_after(TIMEOUT):
        with pytest.raises(VerificationError) as exc_info:
            await put(store, KEY, audio, md5=wrong_md5)
        with pytest.raises(ObjectNotFound):
            await store.head(KEY)
    assert exc_info.value.code == "BadDigest"
    assert exc_info.value.transient  # corruption on the way: sending again helps
    assert isinstance(exc_info.value, CallStorageError)  # about this call, not the store
    assert KEY in str(exc_info.value)
    assert store_backend.raw_keys() == []


async def test_sha256_checksum_header_is_accepted_and_checked(
    seaweed_s3: S3Bucket, tmp_path: Path
) -> None:
    audio = make_audio(tmp_path)
    async with seaweed_s3.store(checksum_sha256=True) as store:
        with trio.fail_after(TIMEOUT):
            await put(store, KEY, audio)
            assert (await store.head(KEY)).sha256 == audio.sha256
            wrong = hashlib.sha256(b"something else").hexdigest()
            with pytest.raises(StorageError) as exc_info:
                await put(store, "audio/x/2025-01-01/b.m4a", audio, sha256=wrong)
            with pytest.raises(ObjectNotFound):
                await store.head("audio/x/2025-01-01/b.m4a")
    assert exc_info.value.code == "BadDigest"
    assert exc_info.value.status == 400
    assert isinstance(exc_info.value, VerificationError)


# -- what goes on the wire --------------------------------------------------------------------


class Recorder(httpx.AsyncBaseTransport):
    """A real transport that keeps each request and the sizes of the body chunks it sent."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[httpx.Request] = []
        self.chunks: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body, chunks = request.stream, self.chunks

        class Counted(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                assert isinstance(body, httpx.AsyncByteStream)
                async for chunk in body:
                    chunks.append(len(chunk))
                    yield chunk

        request.stream = Counted()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_put_streams_with_content_length_md5_and_signed_sha256(
    seaweed_s3: S3Bucket, tmp_path: Path
) -> None:
    audio = make_audio(tmp_path, size=1_300_000)
    recorder = Recorder()
    async with seaweed_s3.store(transport=recorder, checksum_sha256=True) as store:
        with trio.fail_after(TIMEOUT):
            await put(store, KEY, audio)
    (request,) = recorder.requests
    headers = request.headers
    assert request.method == "PUT"
    assert request.url.path == f"/{seaweed_s3.bucket}/{KEY}"
    assert headers["content-length"] == str(audio.size)
    assert "transfer-encoding" not in headers  # real S3 refuses chunked uploads
    assert headers["content-md5"] == base64.b64encode(bytes.fromhex(audio.md5)).decode()
    assert headers["x-amz-content-sha256"] == audio.sha256  # the payload is signed
    assert (
        headers["x-amz-checksum-sha256"] == base64.b64encode(bytes.fromhex(audio.sha256)).decode()
    )
    assert headers["x-amz-meta-sha256"] == audio.sha256
    assert headers["content-type"] == CONTENT_TYPE
    auth = headers["authorization"]
    assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={seaweed_s3.access_key}/")
    signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    for name in ("content-length", "content-md5", "host", "x-amz-content-sha256", "x-amz-date"):
        assert name in signed
    assert "x-amz-meta-sha256" in signed and "x-amz-checksum-sha256" in signed
    assert seaweed_s3.secret_key not in str(headers)
    # Streamed in bounded chunks, never the whole file at once.
    assert sum(recorder.chunks) == audio.size
    assert len(recorder.chunks) >= 2 and max(recorder.chunks) <= 1024 * 1024


async def test_a_file_shorter_than_its_size_is_refused(moto_s3: MotoS3, tmp_path: Path) -> None:
    audio = make_audio(tmp_path)
    async with moto_s3.store() as store:
        with trio.fail_after(TIMEOUT):
            with pytest.raises(StoragePermanent, match="ended after 50000 of 50001 bytes"):
                await store.put_file(
                    KEY,
                    audio.path,
                    size=audio.size + 1,
                    md5_hex=audio.md5,
                    sha256_hex=audio.sha256,
                    content_type=CONTENT_TYPE,
                )
            with pytest.raises(FileNotFoundError):
                await put(store, KEY, Audio(tmp_path / "gone.m4a", audio.data))
            with pytest.raises(ObjectNotFound):
                await store.head(KEY)


def xml_error(code: str, message: str = "details") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message><RequestId>1</RequestId></Error>"
    ).encode()


FAULTS = [
    # status, body, headers, expected class, expected code
    (
        503,
        xml_error("SlowDown", "Please reduce your request rate."),
        {},
        StorageUnavailable,
        "SlowDown",
    ),
    (500, xml_error("InternalError"), {}, StorageUnavailable, "InternalError"),
    (502, b"<html><body>Bad Gateway</body></html>", {}, StorageUnavailable, None),
    (429, b"", {}, StorageUnavailable, None),
    (400, xml_error("RequestTimeout"), {}, StorageUnavailable, "RequestTimeout"),
    # about this call's bytes: charged to the call, sending again can help
    (400, xml_error("BadDigest"), {}, VerificationError, "BadDigest"),
    (
        400,
        xml_error("XAmzContentSHA256Mismatch"),
        {},
        VerificationError,
        "XAmzContentSHA256Mismatch",
    ),
    # about the store: credentials, bucket, clock, region; never charged to a call
    (403, xml_error("AccessDenied", "Access Denied"), {}, StorageUnavailable, "AccessDenied"),
    (403, xml_error("InvalidAccessKeyId"), {}, StorageUnavailable, "InvalidAccessKeyId"),
    (403, xml_error("SignatureDoesNotMatch"), {}, StorageUnavailable, "SignatureDoesNotMatch"),
    (400, xml_error("ExpiredToken"), {}, StorageUnavailable, "ExpiredToken"),
    (403, xml_error("RequestTimeTooSkewed"), {}, StorageUnavailable, "RequestTimeTooSkewed"),
    (404, xml_error("NoSuchBucket"), {}, StorageUnavailable, "NoSuchBucket"),
    (307, xml_error("TemporaryRedirect"), {}, StorageUnavailable, "TemporaryRedirect"),
    (307, b"", {"location": "https://elsewhere.example/b"}, StorageUnavailable, None),
    (
        301,
        xml_error("PermanentRedirect"),
        {"x-amz-bucket-region": "eu-central-1"},
        StorageUnavailable,
        "PermanentRedirect",
    ),
    # about this call's request, for good
    (400, xml_error("InvalidArgument"), {}, StoragePermanent, "InvalidArgument"),
    (400, xml_error("EntityTooLarge"), {}, StoragePermanent, "EntityTooLarge"),
    (400, b"not xml at all <", {}, StoragePermanent, None),
]


@pytest.mark.parametrize(("status", "body", "headers", "expected", "code"), FAULTS)
async def test_error_answers_are_classified(
    tmp_path: Path,
    status: int,
    body: bytes,
    headers: dict[str, str],
    expected: type[StorageError],
    code: str | None,
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers=headers)

    transport = httpx.MockTransport(answer)
    store = S3Store(
        bucket="b",
        endpoint="http://s3.test",
        access_key="k",
        secret_key="sekrit",
        transport=transport,
    )
    async with store:
        with trio.fail_after(TIMEOUT), pytest.raises(expected) as exc_info:
            await put(store, KEY, make_audio(tmp_path))
    error = exc_info.value
    assert type(error) is expected
    assert (error.code, error.status) == (code, status)
    assert str(error).startswith(f"put {KEY}: HTTP {status}")
    if code:
        assert f" {code}: " in str(error)
    if "x-amz-bucket-region" in headers:
        assert "eu-central-1" in str(error) and "S3_REGION" in str(error)
    assert "sekrit" not in str(error)


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("slow connect"),
        httpx.ReadTimeout("slow read"),
        httpx.WriteTimeout("slow write"),
        httpx.ReadError("reset by peer"),
        httpx.RemoteProtocolError("peer closed connection"),
        httpx.PoolTimeout("pool"),
    ],
)
async def test_transport_failures_are_unavailable(tmp_path: Path, exc: httpx.HTTPError) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    store = S3Store(
        bucket="b",
        endpoint="http://s3.test",
        access_key="k",
        secret_key="s",
        transport=httpx.MockTransport(fail),
    )
    audio = make_audio(tmp_path)
    async with store:
        with trio.fail_after(TIMEOUT):
            for call in (
                put(store, KEY, audio),
                store.head(KEY),
                store.get(KEY),
                store.delete(KEY),
                store.check(),
            ):
                with pytest.raises(StorageUnavailable) as exc_info:
                    await call
                assert isinstance(exc_info.value.__cause__, httpx.HTTPError)


async def test_head_404_is_not_found_but_a_missing_bucket_on_get_is_the_store() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD":
            return httpx.Response(404)
        return httpx.Response(404, content=xml_error("NoSuchBucket"))

    store = S3Store(
        bucket="b",
        endpoint="http://s3.test",
        access_key="k",
        secret_key="s",
        transport=httpx.MockTransport(answer),
    )
    async with store:
        with trio.fail_after(TIMEOUT):
            with pytest.raises(ObjectNotFound, match=f"head {KEY}: HTTP 404 Not Found"):
                await store.head(KEY)
            with pytest.raises(StorageUnavailable, match="NoSuchBucket"):
                await store.get(KEY)
            with pytest.raises(StorageUnavailable, match="NoSuchBucket"):
                await store.delete(KEY)


# -- signing ----------------------------------------------------------------------------------


async def test_wrong_secret_is_signature_does_not_match(
    seaweed_s3: S3Bucket, tmp_path: Path
) -> None:
    secret = "not-the-secret-0123456789"
    async with seaweed_s3.store(secret_key=secret) as store:
        with trio.fail_after(TIMEOUT):
            with pytest.raises(StorageUnavailable) as put_exc:
                await put(store, KEY, make_audio(tmp_path))
            with pytest.raises(StorageUnavailable) as head_exc:
                await store.head(KEY)
            with pytest.raises(StorageUnavailable) as check_exc:
                await store.check()
    assert put_exc.value.code == "SignatureDoesNotMatch"
    assert put_exc.value.status == 403
    assert "check S3_SECRET_KEY" in str(put_exc.value)
    assert str(put_exc.value).startswith(f"put {KEY}: HTTP 403 SignatureDoesNotMatch")
    assert head_exc.value.status == 403
    assert check_exc.value.code == "SignatureDoesNotMatch"
    assert "bad credentials" in str(check_exc.value)
    for exc in (put_exc.value, head_exc.value, check_exc.value):
        assert secret not in str(exc)


async def test_moto_with_auth_on_checks_sigv4(moto_s3: MotoS3, tmp_path: Path) -> None:
    audio = make_audio(tmp_path)
    with moto_s3.iam_user() as (access_key, secret_key):
        right = moto_s3.store(access_key=access_key, secret_key=secret_key)
        wrong = moto_s3.store(access_key=access_key, secret_key=secret_key + "x")
        async with right, wrong:
            with trio.fail_after(TIMEOUT):
                with pytest.raises(StorageUnavailable) as exc_info:
                    await put(wrong, KEY, audio)
                await right.check()
                await put(right, KEY, audio)
                assert (await right.head(KEY)).sha256 == audio.sha256
                assert await right.get(KEY) == audio.data
    assert exc_info.value.code == "SignatureDoesNotMatch"
    assert exc_info.value.status == 403
    # Auth is off again: any key works, as the other tests expect.
    async with moto_s3.store(access_key="anyone", secret_key="anything") as store:
        with trio.fail_after(TIMEOUT):
            assert (await store.head(KEY)).size == audio.size


async def test_expired_presigned_url_is_refused(seaweed_s3: S3Bucket, tmp_path: Path) -> None:
    audio = make_audio(tmp_path)
    async with seaweed_s3.store() as store, httpx.AsyncClient(trust_env=False) as client:
        with trio.fail_after(TIMEOUT):
            await put(store, KEY, audio)
        short = store.presign_get(KEY, expires_in=1)
        lasting = store.presign_get(KEY, expires_in=3600)
        with trio.fail_after(10):
            while (response := await client.get(short)).status_code == 200:
                await trio.sleep(0.2)
            assert (await client.get(lasting)).status_code == 200
    assert response.status_code == 403
    assert b"expired" in response.content.lower()


async def test_presign_endpoint_is_the_signed_host(seaweed_s3: S3Bucket) -> None:
    async with seaweed_s3.store(presign_endpoint="https://media.example.org/s3/") as store:
        url = store.presign_get(KEY, expires_in=60)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("https", "media.example.org")
    assert parts.path == f"/s3/{seaweed_s3.bucket}/{KEY}"
    assert "X-Amz-Signature=" in parts.query
    assert seaweed_s3.secret_key not in url


async def test_non_ascii_filename_in_presigned_disposition(
    seaweed_s3: S3Bucket, tmp_path: Path
) -> None:
    audio = make_audio(tmp_path)
    async with seaweed_s3.store() as store, httpx.AsyncClient(trust_env=False) as client:
        with trio.fail_after(TIMEOUT):
            await put(store, KEY, audio)
            url = store.presign_get(KEY, expires_in=60, filename='Zürich "north".m4a')
            response = await client.get(url)
    assert response.status_code == 200
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('inline; filename="Z_rich _north_.m4a"')
    assert "filename*=UTF-8''Z%C3%BCrich%20%22north%22.m4a" in disposition


# -- start-up check -----------------------------------------------------------------------------


async def test_check_on_a_missing_bucket_says_so(seaweed_s3: S3Bucket) -> None:
    async with seaweed_s3.store(bucket="no-such-bucket-tr-vault") as store:
        with trio.fail_after(TIMEOUT), pytest.raises(StorageUnavailable) as exc_info:
            await store.check()
    assert exc_info.value.code == "NoSuchBucket"
    assert "bucket no-such-bucket-tr-vault does not exist" in str(exc_info.value)


async def test_put_to_a_missing_bucket_is_the_store(seaweed_s3: S3Bucket, tmp_path: Path) -> None:
    async with seaweed_s3.store(bucket="no-such-bucket-tr-vault") as store:
        with trio.fail_after(TIMEOUT), pytest.raises(StorageUnavailable) as exc_info:
            await put(store, KEY, make_audio(tmp_path))
    assert exc_info.value.code == "NoSuchBucket"
    assert "create the bucket" in str(exc_info.value)


async def test_check_on_an_unreachable_endpoint_is_unavailable_at_once() -> None:
    store = S3Store(
        bucket="b", endpoint=f"http://127.0.0.1:{closed_port()}", access_key="k", secret_key="s"
    )
    async with store:
        started = time.monotonic()
        with trio.fail_after(TIMEOUT), pytest.raises(StorageUnavailable) as exc_info:
            await store.check()
    assert time.monotonic() - started < 2
    assert exc_info.value.transient
    assert "check bucket b" in str(exc_info.value)


async def test_moto_down_then_back(moto_s3: MotoS3, tmp_path: Path) -> None:
    """The fixture's switch: a store keeps working across an outage, without a restart."""
    audio = make_audio(tmp_path)
    async with moto_s3.store() as store:
        with trio.fail_after(TIMEOUT):
            await put(store, KEY, audio)
            moto_s3.stop()
            with pytest.raises(StorageUnavailable):
                await store.head(KEY)  # the pooled connection is gone
            with pytest.raises(StorageUnavailable):
                await store.check()  # and new ones are refused
            moto_s3.start()
            assert (await store.head(KEY)).sha256 == audio.sha256


# -- construction -----------------------------------------------------------------------------


async def test_from_settings_reads_the_s3_settings(seaweed_s3: S3Bucket, tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        s3_bucket=seaweed_s3.bucket,
        s3_endpoint=seaweed_s3.url + "/",
        s3_region=seaweed_s3.region,
        s3_access_key=seaweed_s3.access_key,
        s3_secret_key=SecretStr(seaweed_s3.secret_key),
        s3_prefix="/vault/",
        s3_checksum_sha256=True,
    )
    audio = make_audio(tmp_path)
    async with S3Store.from_settings(settings) as store:
        assert seaweed_s3.secret_key not in repr(store)
        with trio.fail_after(TIMEOUT):
            await store.check()
            await put(store, KEY, audio)
    assert seaweed_s3.keys() == [f"vault/{KEY}"]


async def test_no_credentials_anywhere_is_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    async with S3Store(bucket="b", endpoint=f"http://127.0.0.1:{closed_port()}") as store:
        with trio.fail_after(TIMEOUT), pytest.raises(StorageUnavailable) as exc_info:
            await store.check()
    assert exc_info.value.code == "NoCredentials"
    assert "S3_ACCESS_KEY" in str(exc_info.value)


async def test_credentials_from_the_aws_chain(
    seaweed_s3: S3Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed_s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed_s3.secret_key)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    audio = make_audio(tmp_path)
    async with seaweed_s3.store(access_key="", secret_key="") as store:
        with trio.fail_after(TIMEOUT):
            await store.check()
            await put(store, KEY, audio)
        url = store.presign_get(KEY, expires_in=60)
    async with httpx.AsyncClient(trust_env=False) as client:
        with trio.fail_after(TIMEOUT):
            assert (await client.get(url)).content == audio.data


async def test_check_names_the_region_of_a_bucket_elsewhere() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, headers={"x-amz-bucket-region": "ap-south-1"})

    store = S3Store(
        bucket="calls",
        region="us-east-1",
        access_key="k",
        secret_key="s",
        transport=httpx.MockTransport(answer),
    )
    async with store:
        with trio.fail_after(TIMEOUT), pytest.raises(StorageUnavailable) as exc_info:
            await store.check()
    assert "set S3_REGION=ap-south-1" in str(exc_info.value)


@pytest.mark.parametrize("prefix", ["a//b", "a/../b", "./a"])
def test_unsafe_prefixes_are_config_errors(prefix: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        S3Store(bucket="b", prefix=prefix, access_key="k", secret_key="s")
    with pytest.raises(ConfigError):
        FileStore(tmp_path, prefix=prefix)


def test_half_a_key_pair_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="S3_ACCESS_KEY and S3_SECRET_KEY"):
        S3Store(bucket="b", access_key="k")


def test_virtual_hosted_urls_without_endpoint() -> None:
    store = S3Store(bucket="calls", region="eu-west-1", access_key="AKIDEXAMPLE", secret_key="s")
    url = store.presign_get("audio/a b.m4a", expires_in=60)
    assert url.startswith("https://calls.s3.eu-west-1.amazonaws.com/audio/a%20b.m4a?")
    assert "X-Amz-Credential=AKIDEXAMPLE%2F" in url
    assert "%2Feu-west-1%2Fs3%2Faws4_request" in url


def test_file_store_is_an_object_store(tmp_path: Path) -> None:
    store: ObjectStore = FileStore(tmp_path)
    assert store.presign_get("audio/x.m4a", expires_in=1) == (tmp_path / "audio/x.m4a").as_uri()


async def test_file_store_head_ignores_a_sidecar_that_does_not_match(tmp_path: Path) -> None:
    """Bytes changed behind the store's back: HEAD must not vouch for them with the old SHA-256."""
    store = FileStore(tmp_path / "objects", prefix="vault")
    audio = make_audio(tmp_path)
    with trio.fail_after(TIMEOUT):
        await put(store, KEY, audio)
        store.path_for(KEY).write_bytes(b"truncated")
        info = await store.head(KEY)
    assert store.path_for(KEY) == tmp_path / "objects" / "vault" / KEY
    assert (info.size, info.sha256, info.etag) == (9, None, None)


# -- self-describing objects, PUTs that never replace, absolute addressing ----------------------


async def test_metadata_round_trips_through_head(store_backend: Backend, tmp_path: Path) -> None:
    from tr_vault import objectmeta

    store = store_backend.make()
    audio = make_audio(tmp_path)
    meta = {"call-id": "42", "talkgroup-label": objectmeta.encode("Zürich 🚒 Nord")}
    with trio.fail_after(TIMEOUT):
        await store.put_file(
            KEY, audio.path, size=audio.size, md5_hex=audio.md5, sha256_hex=audio.sha256,
            content_type=CONTENT_TYPE, metadata=meta, if_absent=True,
        )  # fmt: skip
        info = await store.head(KEY)
    assert info.metadata == {**meta, "sha256": audio.sha256}
    assert objectmeta.decode(info.metadata["talkgroup-label"]) == "Zürich 🚒 Nord"


@pytest.mark.parametrize("conditional", [True, False])
async def test_a_put_if_absent_never_replaces(
    store_backend: Backend, tmp_path: Path, conditional: bool
) -> None:
    """412 on `If-None-Match: *` (moto and SeaweedFS honour it), or a HEAD before the PUT."""
    from tr_vault.errors import ObjectExists

    if not store_backend.is_s3 and not conditional:
        pytest.skip("the file store has no such setting")
    extra: dict[str, Any] = {"conditional_put": conditional} if store_backend.is_s3 else {}
    store = store_backend.make(**extra)
    first, second = make_audio(tmp_path, seed=1, name="1"), make_audio(tmp_path, seed=2, name="2")

    async def put_if_absent(audio: Audio) -> None:
        await store.put_file(
            KEY, audio.path, size=audio.size, md5_hex=audio.md5, sha256_hex=audio.sha256,
            content_type=CONTENT_TYPE, metadata={}, if_absent=True,
        )  # fmt: skip

    with trio.fail_after(TIMEOUT):
        await put_if_absent(first)
        with pytest.raises(ObjectExists):
            await put_if_absent(second)
        assert (await store.head(KEY)).sha256 == first.sha256
    assert store_backend.raw_read(KEY) == first.data


async def test_an_object_ref_addresses_the_full_key_whatever_the_prefix(
    store_backend: Backend, tmp_path: Path
) -> None:
    from tr_vault.storage.base import ObjectRef

    old = store_backend.make(prefix="old")
    new = store_backend.make(prefix="new")
    audio = make_audio(tmp_path)
    ref = old.locate(KEY)
    assert ref.key == f"old/{KEY}"
    with trio.fail_after(TIMEOUT):
        await put(old, KEY, audio)
        info = await new.head(ref)
        assert (info.size, info.sha256) == (audio.size, audio.sha256)
        assert await new.get(ObjectRef(ref.bucket, ref.key)) == audio.data
        with pytest.raises(ObjectNotFound):
            await new.head(KEY)  # the relative key is under the new prefix
    if store_backend.is_s3:
        assert f"/old/{KEY}" in new.presign_get(ref, expires_in=60)


# -- listing (only `rebuild --from-bucket` lists) ------------------------------------------------


async def test_list_objects_pages_through_the_keys_under_a_prefix_in_key_order(
    store_backend: Backend, tmp_path: Path
) -> None:
    store = store_backend.make(prefix="vault")
    under = [
        "audio/m/2025-11-24/2.m4a", "audio/m/2025-11-24/1.m4a", "audio/a b+c%20&x=y.m4a",
        "audio/Zürich/🚒.m4a", "audio/~tilde.m4a",
    ]  # fmt: skip
    audio = make_audio(tmp_path, size=1234)
    started = time.time()
    with trio.fail_after(TIMEOUT):
        for key in [*under, "audiox/not-under.m4a", ".tr-vault/probe"]:
            await put(store, key, audio)
        pages: list[int] = []
        listed = [o async for o in store.list_objects("audio/", max_keys=2, on_page=pages.append)]
        whole = [o.key async for o in store_backend.make().list_objects("vault/audio/m/")]
        nothing: list[int] = []
        empty = [o async for o in store.list_objects("nothing/", on_page=nothing.append)]
    assert [o.key for o in listed] == sorted(under)  # relative to the store's prefix
    assert pages == [2, 2, 1]
    assert {(o.size, o.etag) for o in listed} == {(audio.size, audio.md5)}
    for o in listed:
        assert o.last_modified is not None and abs(o.last_modified - started) < 300
        assert (await store.head(o.key)).sha256 == audio.sha256  # a listed key is addressable
    assert whole == ["vault/audio/m/2025-11-24/1.m4a", "vault/audio/m/2025-11-24/2.m4a"]
    assert (empty, nothing) == ([], [0])


async def test_a_listing_refused_names_the_permission(
    seaweed_s3: S3Bucket, seaweed_write_only: S3Bucket
) -> None:
    async with seaweed_write_only.store() as store:
        with trio.fail_after(TIMEOUT), pytest.raises(StorageUnavailable, match="s3:ListBucket"):
            [o async for o in store.list_objects("audio/")]
    async with seaweed_s3.store(bucket="no-such-bucket-here") as store:
        with trio.fail_after(TIMEOUT), pytest.raises(StorageUnavailable, match="NoSuchBucket"):
            [o async for o in store.list_objects("audio/")]


async def test_a_listing_is_parsed_by_botocore_whatever_the_order_of_its_elements() -> None:
    """A page as a store may write it (elements in any order, keys url-encoded, a truncated
    page and its continuation token), answered through a mock transport."""
    pages = [
        b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult'
        b' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><EncodingType>url</EncodingType>'
        b"<Contents><Size>3</Size><Key>p/audio/a+b%2Bc.m4a</Key><ETag>&quot;abc&quot;</ETag>"
        b"<LastModified>2025-11-24T16:20:34.000Z</LastModified></Contents>"
        b"<NextContinuationToken>t/1+=</NextContinuationToken><IsTruncated>true</IsTruncated>"
        b"</ListBucketResult>",
        b"<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>p/audio/z</Key>"
        b"<Size>0</Size></Contents></ListBucketResult>",
    ]
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=pages[len(seen) - 1])

    store = S3Store(
        bucket="b", endpoint="http://127.0.0.1:9", access_key="K", secret_key="S", prefix="p",
        transport=httpx.MockTransport(answer),
    )  # fmt: skip
    async with store:
        listed = [o async for o in store.list_objects("audio/")]
    assert [(o.key, o.size, o.etag) for o in listed] == [
        ("audio/a b+c.m4a", 3, "abc"), ("audio/z", 0, None),
    ]  # fmt: skip
    assert listed[0].last_modified == 1764001234.0 and listed[1].last_modified is None
    first, second = (parse_qs(urlsplit(str(r.url)).query) for r in seen)
    assert first == {
        "list-type": ["2"], "encoding-type": ["url"], "max-keys": ["1000"], "prefix": ["p/audio/"],
    }  # fmt: skip
    assert second["continuation-token"] == ["t/1+="]
    assert "%2B" in str(seen[1].url) and "Signature=" in seen[1].headers["authorization"]


async def test_a_truncated_listing_without_a_token_or_not_xml_is_unavailable() -> None:
    for body in (
        b"<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>",
        b"<html>a captive portal</html",
    ):
        store = S3Store(
            bucket="b", endpoint="http://127.0.0.1:9", access_key="K", secret_key="S",
            transport=httpx.MockTransport(lambda _r, body=body: httpx.Response(200, content=body)),
        )  # fmt: skip
        async with store:
            with pytest.raises(StorageUnavailable, match="list b/audio/"):
                [o async for o in store.list_objects("audio/")]
