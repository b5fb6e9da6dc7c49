"""Settings: defaults, env, `.env`, Go-style durations, and start-up refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tr_vault.auth import ApiKeys
from tr_vault.config import StorageMode, UploadMode, load_settings
from tr_vault.durations import parse_duration
from tr_vault.errors import ConfigError


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    s = load_settings()
    assert s.data_dir == Path("data")
    assert s.db_path == Path("data/vault.db")
    assert s.listen == "127.0.0.1:8080"
    assert s.max_upload_mb == 64
    assert s.upload_workers == 4
    assert s.upload_max_attempts == 10
    assert s.upload_backoff_max == 300
    assert s.upload_timeout == 60
    assert s.reconcile_interval == 300
    assert s.prune_interval == 3600
    assert s.s3_region == "us-east-1"
    assert s.s3_presign_expiry == 3600
    assert s.s3_cache_retention == 720 * 3600
    assert s.s3_cache_max_gb == 0
    assert s.s3_upload_mode is UploadMode.ASYNC
    assert s.storage_mode is StorageMode.LOCAL
    assert not s.keys


def test_env_and_seed_s3_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TR_VAULT_DATA_DIR", "/srv/vault")
    monkeypatch.setenv("TR_VAULT_MAX_UPLOAD_MB", "8")
    monkeypatch.setenv("TR_VAULT_UPLOAD_BACKOFF_MAX", "1h30m")
    monkeypatch.setenv("S3_BUCKET", "calls")
    monkeypatch.setenv("S3_ENDPOINT", "http://127.0.0.1:9000/")
    monkeypatch.setenv("S3_CACHE_RETENTION", "48h")
    monkeypatch.setenv("S3_SECRET_KEY", "shh")
    s = load_settings()
    assert s.db_path == Path("/srv/vault/vault.db")
    assert s.max_upload_bytes == 8 * 1024 * 1024
    assert s.upload_backoff_max == 5400
    assert s.s3_bucket == "calls"
    assert s.s3_endpoint == "http://127.0.0.1:9000"
    assert s.s3_cache_retention == 48 * 3600
    assert s.storage_mode is StorageMode.TIERED
    assert "shh" not in repr(s)


def test_dotenv_file_and_env_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    Path(".env").write_text(
        "TR_VAULT_LISTEN=127.0.0.1:9999\nTR_VAULT_MAX_UPLOAD_MB=5\nSOMETHING_ELSE=1\n"
        "S3_BUCKET=b\nS3_LOCAL_CACHE=false\n"
    )
    monkeypatch.setenv("TR_VAULT_MAX_UPLOAD_MB", "7")
    s = load_settings()
    assert s.listen == "127.0.0.1:9999"
    assert s.max_upload_mb == 7
    assert s.storage_mode is StorageMode.S3_ONLY


def test_bad_duration_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TR_VAULT_UPLOAD_TIMEOUT", "5 minutes")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value).startswith("TR_VAULT_UPLOAD_TIMEOUT: '5 minutes' is not a duration")
    monkeypatch.delenv("TR_VAULT_UPLOAD_TIMEOUT")
    monkeypatch.setenv("S3_PRESIGN_EXPIRY", "1y")
    with pytest.raises(ConfigError, match="^S3_PRESIGN_EXPIRY: "):
        load_settings()


def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TR_VAULT_MAX_UPLOAD_MB", "-1")
    with pytest.raises(ConfigError, match="^TR_VAULT_MAX_UPLOAD_MB: "):
        load_settings()
    monkeypatch.delenv("TR_VAULT_MAX_UPLOAD_MB")
    monkeypatch.setenv("TR_VAULT_LISTEN", "8080")
    with pytest.raises(ConfigError, match="^TR_VAULT_LISTEN: .*host:port"):
        load_settings()
    monkeypatch.setenv("TR_VAULT_LISTEN", "127.0.0.1:8080")
    monkeypatch.setenv("S3_ENDPOINT", "minio:9000")
    with pytest.raises(ConfigError, match="^S3_ENDPOINT: must start with http"):
        load_settings()


def test_anonymous_on_a_public_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TR_VAULT_LISTEN", "0.0.0.0:8080")
    with pytest.raises(ConfigError, match="TR_VAULT_API_KEYS.*TR_VAULT_ALLOW_ANONYMOUS"):
        load_settings()
    monkeypatch.setenv("TR_VAULT_ALLOW_ANONYMOUS", "true")
    assert load_settings().allow_anonymous
    monkeypatch.delenv("TR_VAULT_ALLOW_ANONYMOUS")
    monkeypatch.setenv("TR_VAULT_API_KEYS", "k1")
    assert load_settings().keys
    monkeypatch.setenv("TR_VAULT_LISTEN", "[::1]:8080")
    monkeypatch.delenv("TR_VAULT_API_KEYS")
    assert load_settings().host_port == ("::1", 8080)


def test_bad_setting_stops_the_command_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "TR_VAULT_UPLOAD_WORKERS": "many"}
    done = subprocess.run(
        [sys.executable, "-m", "tr_vault", "serve"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("tr-vault: TR_VAULT_UPLOAD_WORKERS: ")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("300", 300), ("90s", 90), ("30m", 1800), ("720h", 2592000), ("1h30m", 5400),
     ("250ms", 0.25), ("1.5h", 5400), ("0", 0), (" 2d ", 172800)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "5 m", "1h-5m", "-5s", "5x", "m5"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_api_keys() -> None:
    keys = ApiKeys.parse("all-key, limited:11|Metro ,")
    assert keys.check("all-key", "42")
    assert keys.check("limited", "11")
    assert keys.check("limited", "metro")  # both forms of one system, case-insensitive
    assert not keys.check("limited", "99")  # the one identifier decides: no label widens it
    assert not keys.check("limited", "county")
    assert not keys.check("nope", "11")
    assert not keys.check(None, "11")
    assert keys.known("limited")
    assert ApiKeys.parse("").check(None, "11")  # no keys: anonymous
    with pytest.raises(ValueError):
        ApiKeys.parse("k:")
    with pytest.raises(ValueError):
        ApiKeys.parse(":11")
