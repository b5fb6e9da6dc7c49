"""S3 (and S3-compatible) object storage over `httpx.AsyncClient`, signed by botocore.

httpx is Trio-native and cancellable; botocore only signs (SigV4 headers for requests, SigV4
query strings for presigned GETs) and parses listings (its own rest-xml parser and S3 service
model), so no request ever blocks the event loop and no signing, crypto or listing XML is
written here. Every failure leaves this module as a `StorageError`: no httpx exception escapes,
and messages say what was done to which key, never secrets or signatures.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import botocore.loaders
import botocore.model
import botocore.parsers
import httpx
import trio
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.exceptions import (
    BotoCoreError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.handlers import decode_list_object_v2

from tr_vault.errors import (
    ConfigError,
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StoragePermanent,
    StorageUnavailable,
    VerificationError,
)
from tr_vault.storage.base import (
    LIST_PAGE,
    Key,
    ListedObject,
    ObjectInfo,
    ObjectRef,
    ObjectStore,
    PutResult,
)

if TYPE_CHECKING:
    from tr_vault.config import Settings

CHUNK_SIZE = 512 * 1024  # bytes read from the file per thread hop while streaming a PUT
CHECK_TIMEOUT = 5.0  # HeadBucket at start-up: an unreachable store must not stall it
_CHECK_LIMITS = httpx.Timeout(CHECK_TIMEOUT)
MAX_PRESIGN_EXPIRY = 7 * 24 * 3600  # SigV4's limit for X-Amz-Expires
META_PREFIX = "x-amz-meta-"
META_SHA256 = f"{META_PREFIX}sha256"
# Storage classes a GET reads at once (a presigned URL plays); GLACIER and DEEP_ARCHIVE need a
# restore first, so they are refused at configuration time.
PLAYABLE_STORAGE_CLASSES = frozenset(
    {
        "STANDARD",
        "STANDARD_IA",
        "ONEZONE_IA",
        "INTELLIGENT_TIERING",
        "GLACIER_IR",
        "REDUCED_REDUNDANCY",
        "EXPRESS_ONEZONE",
    }
)
UNPLAYABLE_STORAGE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
SSE_MODES = frozenset({"AES256", "aws:kms"})
# Endpoints (host suffixes) known to honour `If-None-Match: *` on PUT; `auto` uses a HEAD
# before the PUT on every other endpoint (README "Providers").
CONDITIONAL_PUT_HOSTS = (".amazonaws.com", ".r2.cloudflarestorage.com")

# Error codes about the store, whatever the call: the same request would fail for any call.
# 401, 403, 3xx, 429 and 5xx answers are about the store whatever their code.
STORE_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
        "RequestTimeoutException",
        "Throttling",
        "RequestLimitExceeded",
        "NoSuchBucket",
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "RequestTimeTooSkewed",
        "AuthorizationHeaderMalformed",
        "AuthorizationQueryParametersError",
        "InvalidBucketName",
        "InvalidRegion",
        "PermanentRedirect",
        "TemporaryRedirect",
        "Redirect",
        "NotSignedUp",
        "NotImplemented",
        "InvalidSecurity",
        "NoCredentials",
    }
)
# The bytes were damaged on the way or the cached file no longer matches its digests:
# about this call, and sending again can help.
MISMATCH_CODES = frozenset(
    {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "IncompleteBody"}
)
# What an operator should do about a store-wide refusal, by code.
HINTS = {
    "NoSuchBucket": "create the bucket or fix S3_BUCKET / S3_ENDPOINT",
    "AccessDenied": "grant this key s3:PutObject and s3:GetObject on the bucket and prefix",
    "AllAccessDisabled": "the bucket's owner has disabled access to it",
    "InvalidAccessKeyId": "check S3_ACCESS_KEY (the store does not know this key)",
    "SignatureDoesNotMatch": "check S3_SECRET_KEY (and S3_REGION)",
    "ExpiredToken": "the temporary credentials expired: refresh them or check the role",
    "InvalidToken": "the session token is not valid: refresh the credentials",
    "TokenRefreshRequired": "the temporary credentials need a refresh",
    "RequestTimeTooSkewed": "this machine's clock is off: sync it (NTP); uploads resume then",
    "AuthorizationHeaderMalformed": "check S3_REGION",
    "PermanentRedirect": "the bucket is in another region or endpoint: check S3_REGION",
    "TemporaryRedirect": "the bucket is being set up in another region: check S3_REGION",
    "NoCredentials": "set S3_ACCESS_KEY and S3_SECRET_KEY",
}


class _ShortFile(Exception):
    """The local file ended before `size` bytes: raised inside httpx's body iteration."""


# SigV4 signing keys by (secret, yyyymmdd, region, service): a few a day, so a tiny cache.
_SIGNING_KEYS: dict[tuple[str, str, str, str], bytes] = {}
_SIGNING_KEYS_MAX = 16


class _PrecomputedPayloadAuth(S3SigV4Auth):
    """SigV4 for S3 that signs a payload hash computed beforehand.

    botocore hashes the body itself (impossible for a stream it never sees) and drops a
    caller-set X-Amz-Content-SHA256, so the hash travels in the request context instead.
    """

    def payload(self, request: AWSRequest) -> str:
        precomputed = request.context.get("payload_sha256")
        if isinstance(precomputed, str):
            return precomputed
        return super().payload(request)

    def signature(self, string_to_sign: str, request: AWSRequest) -> str:
        """botocore's signature, with the day's signing key derived once, not per request.

        SigV4's key depends only on the secret, the date, the region and the service, yet
        botocore runs the four-HMAC derivation for every request; the derivation and the final
        HMAC are still botocore's own `_sign`.
        """
        auth: Any = self  # the stubs do not declare botocore's `_sign` and scope attributes
        secret = str(self.credentials.secret_key)
        day = str(request.context["timestamp"][0:8])
        scope = (secret, day, str(auth._region_name), str(auth._service_name))
        k_signing: bytes | None = _SIGNING_KEYS.get(scope)
        if k_signing is None:
            k_date = auth._sign(f"AWS4{secret}".encode(), day)
            k_signing = auth._sign(
                auth._sign(auth._sign(k_date, scope[2]), scope[3]), "aws4_request"
            )
            if len(_SIGNING_KEYS) >= _SIGNING_KEYS_MAX:
                _SIGNING_KEYS.clear()  # a day, a region or a secret changed: start over
            _SIGNING_KEYS[scope] = k_signing
        return str(auth._sign(k_signing, string_to_sign, hex=True))


def _read_small(path: Path, size: int) -> bytes:
    """Up to `size` bytes from the start of the file (open, read and close in one call)."""
    with path.open("rb") as f:
        return f.read(size)


def _quote_path(path: str) -> str:
    """URI-encode a bucket/key path the way SigV4 canonicalises S3 paths (once, `/` kept)."""
    return quote(path, safe="/~")


def _check_key(key: str) -> None:
    """Refuse keys that URL normalisation would rewrite (`.`/`..`/empty segments)."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise StoragePermanent(f"invalid object key {key!r}: empty, '.' or '..' segment")


def _content_disposition(filename: str) -> str:
    """`inline` with a quoted ASCII filename, plus RFC 5987 `filename*` when it is not ASCII."""
    name = PurePosixPath(filename).name
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in name)
    value = f'inline; filename="{fallback}"'
    if fallback != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


def _parse_error(body: bytes) -> tuple[str | None, str | None]:
    """The `Code` and `Message` of an S3 XML error body, when there is one.

    Not botocore's error parser (which parses listings here): it drops the code of an
    `<Error xmlns="...">` root and names a non-XML body (a proxy's HTML page) by its HTTP
    status, where this returns no code at all and the status decides.
    """
    if not body or not body.lstrip().startswith(b"<"):
        return None, None
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None, None
    code = message = None
    for child in root.iter():
        tag = child.tag.rsplit("}", 1)[-1]
        if tag == "Code" and code is None:
            code = (child.text or "").strip() or None
        elif tag == "Message" and message is None:
            message = (child.text or "").strip() or None
    return code, message


def _list_objects_v2_output() -> botocore.model.Shape:
    """The output shape of ListObjectsV2 in botocore's own S3 service model (~0.1 s to load)."""
    loader = botocore.loaders.Loader()
    service = botocore.model.ServiceModel(
        loader.load_service_model("s3", "service-2"), service_name="s3"
    )
    shape = service.operation_model("ListObjectsV2").output_shape
    assert shape is not None
    return shape


def _sigv4_quote(value: str) -> str:
    """A query value as SigV4 canonicalises it (botocore signs the query as it is written)."""
    return quote(value, safe="-_.~")


def _unix(value: object) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


def _unquote_etag(value: str | None) -> str | None:
    if value is None:
        return None
    return value.strip().removeprefix("W/").strip('"') or None


def endpoint_has_conditional_put(endpoint: str) -> bool:
    """Whether `S3_CONDITIONAL_PUT=auto` trusts `If-None-Match: *` on this endpoint: AWS
    (no endpoint, or an amazonaws.com one) and Cloudflare R2 do; others are unknown."""
    if not endpoint:
        return True
    host = (httpx.URL(endpoint).host or "").lower()
    return any(host.endswith(suffix) for suffix in CONDITIONAL_PUT_HOSTS)


def check_storage_class(value: str) -> str:
    """`S3_STORAGE_CLASS` upper-cased; a class a GET cannot read at once is refused."""
    name = value.strip().upper()
    if not name:
        return ""
    if name in UNPLAYABLE_STORAGE_CLASSES:
        raise ConfigError(
            f"S3_STORAGE_CLASS: {name} objects must be restored before they can be read, so "
            "calls would not play; use STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING or "
            "GLACIER_IR"
        )
    if name not in PLAYABLE_STORAGE_CLASSES:
        raise ConfigError(
            f"S3_STORAGE_CLASS: unknown class {value!r}; use one of "
            + ", ".join(sorted(PLAYABLE_STORAGE_CLASSES))
        )
    return name


def check_sse(sse: str, kms_key_id: str) -> tuple[str, str]:
    """`S3_SSE` (`AES256`, `aws:kms` or empty) and `S3_SSE_KMS_KEY_ID` (only with aws:kms)."""
    mode = sse.strip()
    if mode.lower() in ("aes256", "aws:kms"):
        mode = "AES256" if mode.lower() == "aes256" else "aws:kms"
    if mode and mode not in SSE_MODES:
        raise ConfigError(f"S3_SSE: {sse!r} is not AES256 or aws:kms")
    key_id = kms_key_id.strip()
    if key_id and mode != "aws:kms":
        raise ConfigError("S3_SSE_KMS_KEY_ID is set, but S3_SSE is not aws:kms")
    if not key_id.isascii():
        raise ConfigError("S3_SSE_KMS_KEY_ID: not an ASCII key id or ARN")
    return mode, key_id


class S3Store:
    """An S3 bucket (AWS, or any S3-compatible store via `endpoint`) under a key prefix.

    With `endpoint` set, URLs are path-style (`{endpoint}/{bucket}/{key}`), which every
    S3-compatible store understands; without it, AWS virtual-hosted style. `presign_endpoint`
    is the endpoint players reach when it differs from ours (the host is part of the signature).
    """

    def __init__(
        self,
        *,
        bucket: str,
        endpoint: str = "",
        region: str = "us-east-1",
        prefix: str = "",
        access_key: str = "",
        secret_key: str = "",
        timeout: float = 60.0,
        checksum_sha256: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
        presign_endpoint: str = "",
        conditional_put: bool | None = None,
        storage_class: str = "",
        sse: str = "",
        sse_kms_key_id: str = "",
    ) -> None:
        if not bucket:
            raise ConfigError("S3_BUCKET: a bucket name is required for S3 storage")
        if bool(access_key) != bool(secret_key):
            raise ConfigError(
                "S3_ACCESS_KEY and S3_SECRET_KEY must be set together (or both left empty to "
                "use the AWS credential chain: environment, profile, instance role)"
            )
        self.bucket = bucket
        self.region = region or "us-east-1"
        self.endpoint = endpoint.strip().rstrip("/")
        self.presign_endpoint = presign_endpoint.strip().rstrip("/")
        self.prefix = prefix.strip("/")
        if self.prefix and any(p in ("", ".", "..") for p in self.prefix.split("/")):
            raise ConfigError(f"S3_PREFIX: {prefix!r} has an empty, '.' or '..' segment")
        self.timeout = timeout
        self.checksum_sha256 = checksum_sha256
        # None: decide by the endpoint (AWS and R2 honour the condition; others get a HEAD).
        self.conditional_put = (
            conditional_put
            if conditional_put is not None
            else endpoint_has_conditional_put(self.endpoint)
        )
        self.storage_class = check_storage_class(storage_class)
        self.sse, self.sse_kms_key_id = check_sse(sse, sse_kms_key_id)
        self._static: ReadOnlyCredentials | None = None
        self._chain: Credentials | None = None
        self._frozen: ReadOnlyCredentials | None = None
        self._list_output: botocore.model.Shape | None = None  # loaded at the first listing
        if access_key:
            self._static = ReadOnlyCredentials(access_key, secret_key, None)
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            # Objects are stored as sent; a transparently decompressed GET would not match.
            headers={"Accept-Encoding": "identity", "User-Agent": "tr-vault"},
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        """The store the settings describe (`S3_*` variables)."""
        return cls(
            bucket=settings.s3_bucket,
            endpoint=settings.s3_endpoint,
            region=settings.s3_region,
            prefix=settings.s3_prefix,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value(),
            timeout=settings.upload_timeout,
            checksum_sha256=settings.s3_checksum_sha256,
            presign_endpoint=settings.s3_presign_endpoint,
            conditional_put=settings.conditional_put,
            storage_class=settings.s3_storage_class,
            sse=settings.s3_sse,
            sse_kms_key_id=settings.s3_sse_kms_key_id,
        )

    def __repr__(self) -> str:
        where = self.endpoint or f"aws:{self.region}"
        return f"S3Store(bucket={self.bucket!r}, endpoint={where!r}, prefix={self.prefix!r})"

    # -- addressing ---------------------------------------------------------------------------

    def object_key(self, key: Key) -> str:
        """The full object key in the bucket: `prefix/key`, or `key` without a prefix; an
        `ObjectRef`'s key as it is."""
        if isinstance(key, ObjectRef):
            _check_key(key.key)
            return key.key
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def locate(self, key: str) -> ObjectRef:
        """Bucket and full key of `key` today (what a verified call's row records)."""
        return ObjectRef(self.bucket, self.object_key(key))

    def _bucket_of(self, key: Key) -> str:
        if isinstance(key, ObjectRef) and key.bucket:
            return key.bucket
        return self.bucket

    def _bucket_url(self, endpoint: str, bucket: str | None = None) -> str:
        """URL of the bucket itself (trailing `/` for virtual-hosted, none for path-style)."""
        bucket = bucket or self.bucket
        if endpoint:
            return f"{endpoint}/{_quote_path(bucket)}"
        if "." in bucket:  # dotted names break virtual-hosted TLS: use path-style
            return f"https://s3.{self.region}.amazonaws.com/{_quote_path(bucket)}"
        return f"https://{bucket}.s3.{self.region}.amazonaws.com/"

    def _object_url(self, key: Key, endpoint: str | None = None) -> str:
        base = self._bucket_url(
            self.endpoint if endpoint is None else endpoint, self._bucket_of(key)
        )
        path = _quote_path(self.object_key(key))
        return f"{base}{path}" if base.endswith("/") else f"{base}/{path}"

    # -- credentials and signing --------------------------------------------------------------

    def _resolve_chain(self) -> ReadOnlyCredentials:
        """Credentials from botocore's default chain (blocking: env, profile, SSO, IMDS...)."""
        no_credentials = (
            "no S3 credentials: set S3_ACCESS_KEY and S3_SECRET_KEY, or configure the AWS "
            "credential chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, a role)"
        )
        try:
            if self._chain is None:
                import botocore.session

                self._chain = botocore.session.get_session().get_credentials()
            if self._chain is None:
                raise StorageUnavailable(no_credentials, code="NoCredentials")
            self._frozen = self._chain.get_frozen_credentials()
        except (NoCredentialsError, PartialCredentialsError, ProfileNotFound) as exc:
            raise StorageUnavailable(f"{no_credentials}: {exc}", code="NoCredentials") from exc
        except BotoCoreError as exc:  # e.g. the instance metadata service did not answer
            raise StorageUnavailable(f"refresh S3 credentials: {exc}") from exc
        return self._frozen

    async def _credentials(self) -> ReadOnlyCredentials:
        if self._static is not None:
            return self._static
        if self._frozen is not None and not isinstance(self._chain, RefreshableCredentials):
            return self._frozen
        # Chain credentials may be fetched or refreshed over the network: not on the event loop.
        return await trio.to_thread.run_sync(self._resolve_chain)

    def _sign(
        self,
        creds: ReadOnlyCredentials,
        method: str,
        url: str,
        headers: Mapping[str, str],
        payload_sha256: str | None,
    ) -> dict[str, str]:
        request = AWSRequest(method=method, url=url, headers=dict(headers))
        if payload_sha256 is not None:
            request.context["payload_sha256"] = payload_sha256
        _PrecomputedPayloadAuth(creds, "s3", self.region).add_auth(request)
        return {name: str(value) for name, value in request.headers.items()}

    # -- requests -----------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: Mapping[str, str] | None = None,
        content: AsyncIterator[bytes] | None = None,
        payload_sha256: str | None = None,
        limits: httpx.Timeout | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Sign and send one request; transport failures become `StorageUnavailable`. With
        `stream` the body is left unread: the caller must close the response."""
        creds = await self._credentials()
        signed = self._sign(creds, method, url, headers or {}, payload_sha256)
        try:
            request = self._client.build_request(
                method,
                url,
                headers=signed,
                content=content,
                timeout=limits if limits is not None else httpx.USE_CLIENT_DEFAULT,
            )
            return await self._client.send(request, stream=stream)
        except httpx.TimeoutException as exc:
            raise StorageUnavailable(f"{what}: timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise StorageUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
        except httpx.InvalidURL as exc:
            raise StorageUnavailable(f"{what}: invalid URL ({exc}); check S3_ENDPOINT") from exc

    def _error(self, what: str, response: httpx.Response, *, key: Key | None) -> StorageError:
        """The `StorageError` an unsuccessful response means: about the store, about this
        call, or (404 on a key) `ObjectNotFound`."""
        status = response.status_code
        code, message = _parse_error(response.content)
        text = f"{what}: HTTP {status}"
        if code:
            text += f" {code}"
        elif response.reason_phrase:  # HEAD answers have no body to name the error
            text += f" {response.reason_phrase}"
        if message:
            text += f": {message}"
        bucket_region = response.headers.get("x-amz-bucket-region")
        if bucket_region and bucket_region != self.region:
            text += f" (bucket {self.bucket} is in region {bucket_region}: set S3_REGION)"
        elif 300 <= status < 400:
            where = response.headers.get("location")
            text += f" (redirected{' to ' + where if where else ''}: check S3_REGION/S3_ENDPOINT)"
        elif code in HINTS:
            text += f"; {HINTS[code]}"
        if status == 404 and key is not None and code in (None, "NoSuchKey", "NotFound"):
            return ObjectNotFound(text, code=code or "NoSuchKey", status=status)
        if code in MISMATCH_CODES:
            return VerificationError(text, code=code, status=status)
        if (
            code in STORE_CODES
            or status >= 500
            or status in (401, 403, 404, 429)
            or 300 <= status < 400
        ):
            return StorageUnavailable(text, code=code, status=status)
        if 400 <= status < 500:
            return StoragePermanent(text, code=code, status=status)
        return StorageUnavailable(text, code=code, status=status)

    async def _file_chunks(self, path: Path, size: int, key: str) -> AsyncGenerator[bytes, None]:
        """Exactly `size` bytes of the file, read in chunks off the event loop.

        A file of one chunk (most calls) is opened, read and closed in one thread hop rather
        than three: each hop costs the event loop ~100 µs of CPU.
        """
        if size <= CHUNK_SIZE:
            data = await trio.to_thread.run_sync(_read_small, path, size)
            if len(data) < size:
                raise _ShortFile(f"put {key}: {path} ended after {len(data)} of {size} bytes")
            if data:
                yield data
            return
        remaining = size
        async with await trio.open_file(path, "rb") as f:
            while remaining > 0:
                chunk = await f.read(min(CHUNK_SIZE, remaining))
                if not chunk:
                    raise _ShortFile(
                        f"put {key}: {path} ended after {size - remaining} of {size} bytes"
                    )
                remaining -= len(chunk)
                yield chunk

    # -- the ObjectStore protocol -------------------------------------------------------------

    async def check(self) -> None:
        """HeadBucket with a short timeout: are the credentials and the bucket right?

        Every refusal is about the store (`StorageUnavailable`), with what to fix.
        """
        what = f"check bucket {self.bucket}"
        response = await self._request(
            "HEAD", self._bucket_url(self.endpoint), what=what, limits=_CHECK_LIMITS
        )
        if response.is_success:
            return
        status = response.status_code
        region = response.headers.get("x-amz-bucket-region")
        if region and region != self.region:
            raise StorageUnavailable(
                f"{what}: bucket {self.bucket} is in region {region}, not {self.region} "
                f"(HTTP {status}); set S3_REGION={region}",
                status=status,
            )
        if status in (400, 403):
            # HEAD answers carry no error body: ask once more with a GET to learn the code.
            code, detail = await self._diagnose(what)
            raise StorageUnavailable(
                f"{what}: bad credentials or no access to bucket {self.bucket} (HTTP {status}"
                f"{detail}); check S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION and the bucket policy",
                code=code,
                status=status,
            )
        if status == 404:
            raise StorageUnavailable(
                f"{what}: bucket {self.bucket} does not exist (HTTP 404); create it or fix "
                "S3_BUCKET / S3_ENDPOINT",
                code="NoSuchBucket",
                status=status,
            )
        raise self._error(what, response, key=None)

    async def _diagnose(self, what: str) -> tuple[str | None, str]:
        """The error code and `: Code: Message` of a zero-key ListObjectsV2 after a refused HEAD."""
        url = self._bucket_url(self.endpoint)
        url += "?list-type=2&max-keys=0" if url.endswith("/") else "/?list-type=2&max-keys=0"
        try:
            response = await self._request("GET", url, what=what, limits=_CHECK_LIMITS)
        except StorageError:
            return None, ""
        if response.is_success:
            return None, ""
        code, message = _parse_error(response.content)
        detail = ": ".join(part for part in (code, message) if part)
        return code, f" {detail}" if detail else ""

    async def put_file(
        self,
        key: Key,
        path: Path,
        *,
        size: int,
        md5_hex: str,
        sha256_hex: str,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
    ) -> PutResult:
        """Stream the file with Content-Length, Content-MD5 and our SHA-256 (signed payload).

        The store checks Content-MD5 (and `x-amz-checksum-sha256` when enabled) and refuses
        corrupted bytes with BadDigest, raised as `StorageUnavailable`: sending again helps.
        An unreadable local file raises `OSError`. `metadata` goes as `x-amz-meta-{name}`
        headers (ASCII only). Every PUT carries the SSE settings (a bucket policy may demand
        them, and the probe proves the KMS key may be used); a call object's PUT (one with
        `metadata`) also carries the storage class (the probe object, rewritten often, stays
        STANDARD, as IA and Glacier IR bill a minimum duration per object). `if_absent` sends
        `If-None-Match: *`, or HEADs first where the store does not honour it
        (`conditional_put` False): an object at the key raises `ObjectExists`.
        """
        what = f"put {self.object_key(key)}"
        url = self._object_url(key)
        digest_sha256 = bytes.fromhex(sha256_hex)
        headers = {
            "Content-Length": str(size),
            "Content-MD5": base64.b64encode(bytes.fromhex(md5_hex)).decode("ascii"),
            "Content-Type": content_type or "application/octet-stream",
        }
        for name, value in (metadata or {}).items():
            if not (name.isascii() and value.isascii()) or not name or "\n" in value:
                raise StoragePermanent(f"{what}: metadata {name!r} is not a plain ASCII item")
            headers[f"{META_PREFIX}{name.lower()}"] = value
        headers[META_SHA256] = sha256_hex.lower()
        if self.checksum_sha256:
            headers["x-amz-checksum-sha256"] = base64.b64encode(digest_sha256).decode("ascii")
        if self.sse:
            headers["x-amz-server-side-encryption"] = self.sse
            if self.sse_kms_key_id:
                headers["x-amz-server-side-encryption-aws-kms-key-id"] = self.sse_kms_key_id
        if metadata is not None and self.storage_class:
            headers["x-amz-storage-class"] = self.storage_class
        if if_absent:
            if self.conditional_put:
                headers["If-None-Match"] = "*"
            else:
                try:
                    await self.head(key)
                except ObjectNotFound:
                    pass
                else:
                    raise ObjectExists(
                        f"{what}: an object is already at this key (HEAD before PUT)",
                        code="PreconditionFailed",
                    )
        body = self._file_chunks(path, size, self.object_key(key))
        try:
            response = await self._request(
                "PUT",
                url,
                what=what,
                headers=headers,
                content=body,
                payload_sha256=sha256_hex.lower(),
            )
        except _ShortFile as exc:
            raise StoragePermanent(str(exc)) from None
        finally:
            # httpx stops reading the body when the store answers early: close the file now.
            await body.aclose()
        if if_absent and response.status_code == 412:
            raise ObjectExists(
                f"{what}: an object is already at this key (HTTP 412 on If-None-Match: *)",
                code="PreconditionFailed",
                status=412,
            )
        if if_absent and response.status_code == 409:
            # AWS: another conditional write to the key is in flight. About this call; the
            # next attempt sees the winner's object (412) or none.
            code, message = _parse_error(response.content)
            raise VerificationError(
                f"{what}: HTTP 409 {code or 'Conflict'}: {message or 'concurrent write'}",
                code=code,
                status=409,
            )
        if not response.is_success:
            raise self._error(what, response, key=None)
        return PutResult(etag=_unquote_etag(response.headers.get("etag")))

    async def head(self, key: Key) -> ObjectInfo:
        """HEAD the object: size, ETag, our SHA-256 metadata, the content type and every
        `x-amz-meta-*` item (`metadata`, names without the prefix)."""
        what = f"head {self.object_key(key)}"
        response = await self._request("HEAD", self._object_url(key), what=what)
        if not response.is_success:
            raise self._error(what, response, key=key)
        try:
            size = int(response.headers["content-length"])
        except (KeyError, ValueError):
            raise StorageUnavailable(f"{what}: answer without a valid Content-Length") from None
        metadata = {
            name.lower()[len(META_PREFIX) :]: value
            for name, value in response.headers.items()
            if name.lower().startswith(META_PREFIX)
        }
        return ObjectInfo(
            key=key if isinstance(key, str) else key.key,
            size=size,
            etag=_unquote_etag(response.headers.get("etag")),
            sha256=response.headers.get(META_SHA256),
            content_type=response.headers.get("content-type"),
            metadata=metadata,
        )

    async def get(self, key: Key) -> bytes:
        """The whole object in memory: for verification and small reads only."""
        what = f"get {self.object_key(key)}"
        response = await self._request("GET", self._object_url(key), what=what)
        if not response.is_success:
            raise self._error(what, response, key=key)
        return response.content

    @asynccontextmanager
    async def open_stream(self, key: Key) -> AsyncGenerator[AsyncIterator[bytes], None]:
        """A streamed GET: the body in chunks as it arrives, closed on exit."""
        what = f"get {self.object_key(key)}"
        response = await self._request("GET", self._object_url(key), what=what, stream=True)
        try:
            if not response.is_success:
                await response.aread()
                raise self._error(what, response, key=key)
            yield self._body(response, what)
        finally:
            await response.aclose()

    @staticmethod
    async def _body(response: httpx.Response, what: str) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in response.aiter_bytes(CHUNK_SIZE):
                yield chunk
        except httpx.HTTPError as exc:
            raise StorageUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc

    async def list_objects(
        self,
        prefix: str,
        *,
        max_keys: int = LIST_PAGE,
        on_page: Callable[[int], None] | None = None,
    ) -> AsyncIterator[ListedObject]:
        """ListObjectsV2 under `{S3_PREFIX}/{prefix}`, page by page (continuation tokens).

        `encoding-type=url` is asked for, as the AWS SDKs do (a key may hold characters XML
        1.0 cannot carry), and decoded by botocore's own handler; botocore's rest-xml parser
        reads each page against the operation's output shape. Needs s3:ListBucket.
        """
        base = f"{self.prefix}/" if self.prefix else ""
        full = base + prefix
        what = f"list {self.bucket}/{full}"
        if self._list_output is None:
            self._list_output = await trio.to_thread.run_sync(_list_objects_v2_output)
        token: str | None = None
        while True:
            params = {
                "list-type": "2",
                "encoding-type": "url",
                "max-keys": str(max(1, min(LIST_PAGE, max_keys))),
                "prefix": full,
            }
            if token is not None:
                params["continuation-token"] = token
            query = "&".join(f"{k}={_sigv4_quote(v)}" for k, v in sorted(params.items()))
            response = await self._request(
                "GET", f"{self._bucket_url(self.endpoint)}?{query}", what=what
            )
            if not response.is_success:
                error = self._error(what, response, key=None)
                if response.status_code == 403:
                    raise StorageUnavailable(
                        f"{error}; listing needs s3:ListBucket on the bucket",
                        code=error.code,
                        status=403,
                    ) from None
                raise error
            # ~50 ms of CPU for a page of 1,000 keys: off the event loop, like other blocking work
            page = await trio.to_thread.run_sync(
                self._parse_list_page, what, response, self._list_output
            )
            contents: list[dict[str, Any]] = page.get("Contents") or []
            if on_page is not None:
                on_page(len(contents))
            for entry in contents:
                key = str(entry.get("Key", ""))
                if not key.startswith(base) or key == base:
                    continue
                yield ListedObject(
                    key=key[len(base) :],
                    size=int(entry.get("Size") or 0),
                    etag=_unquote_etag(entry.get("ETag")),
                    last_modified=_unix(entry.get("LastModified")),
                )
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not token:
                raise StorageUnavailable(f"{what}: a truncated page without a continuation token")

    @staticmethod
    def _parse_list_page(
        what: str, response: httpx.Response, shape: botocore.model.Shape
    ) -> dict[str, Any]:
        parser = botocore.parsers.create_parser("rest-xml")
        try:
            page: dict[str, Any] = parser.parse(
                {
                    "status_code": response.status_code,
                    "headers": dict(response.headers),
                    "body": response.content,
                },
                shape,
            )
        except botocore.parsers.ResponseParserError as exc:
            raise StorageUnavailable(f"{what}: the answer is not a listing ({exc})") from None
        # With encoding-type=url the keys come percent-encoded; the SDKs decode them here.
        decode_list_object_v2(page, context={"encoding_type_auto_set": True})
        return page

    async def delete(self, key: Key) -> None:
        """DELETE the object; a missing key is fine, a missing bucket is not."""
        what = f"delete {self.object_key(key)}"
        response = await self._request("DELETE", self._object_url(key), what=what)
        if response.is_success:
            return
        error = self._error(what, response, key=key)
        if isinstance(error, ObjectNotFound):
            return
        raise error

    def presign_get(
        self,
        key: Key,
        *,
        expires_in: float,
        content_type: str | None = None,
        filename: str | None = None,
    ) -> str:
        """A SigV4 query-signed GET URL (offline), on `presign_endpoint` when set.

        With credentials from the AWS chain, call after a request (e.g. `check`) so they are
        resolved; otherwise they are resolved here, blocking.
        """
        creds = self._static or self._frozen
        if creds is None or (
            isinstance(self._chain, RefreshableCredentials) and self._chain.refresh_needed()
        ):
            creds = self._resolve_chain()
        endpoint = self.presign_endpoint or self.endpoint
        params: dict[str, str] = {}
        if content_type:
            params["response-content-type"] = content_type
        if filename:
            params["response-content-disposition"] = _content_disposition(filename)
        expires = max(1, min(MAX_PRESIGN_EXPIRY, int(expires_in)))
        request = AWSRequest(method="GET", url=self._object_url(key, endpoint), params=params)
        S3SigV4QueryAuth(creds, "s3", self.region, expires=expires).add_auth(request)
        return str(request.url)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def __aenter__(self) -> S3Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


if TYPE_CHECKING:
    _: type[ObjectStore] = S3Store  # mypy checks the backend against the protocol
