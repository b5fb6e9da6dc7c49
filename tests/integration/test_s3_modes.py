"""Every call reaches the bucket, verified, in each mode; through outages and faults.

S3 here is moto's server on 127.0.0.1 (and a fault-injecting proxy of ours in front of it):
our S3 client is exercised over real HTTP, never mocked.
"""

from __future__ import annotations

import hashlib
import sys

import pytest
import trio

from tests.conftest import VaultFactory, s3_settings, wait_until
from tests.faultproxy import open_fault_proxy
from tests.s3_fixtures import MotoS3
from tests.wire import fixture_bytes, openmhz, rdio_trunk_recorder
from tr_vault.app import serve
from tr_vault.config import Settings
from tr_vault.errors import ConfigError

M4A = fixture_bytes("call-9131-1764001234.m4a")
M4A_2 = fixture_bytes("call-2201-1764001301.m4a")
KEY = "metro/2025-11-24/9131-1764001234_851012500.0-call_123.m4a"


def states(vault: object) -> list[str]:
    return [c["state"] for c in vault.calls()]  # type: ignore[attr-defined]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_tiered_async_upload_lands_verified(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    vault = await make_vault(**s3_settings(moto_s3, s3_prefix="/site1/"))
    response = await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))
    assert response.status_code == 200
    assert response.text == "Call imported successfully.\n"
    await wait_until(lambda: states(vault) == ["done"])
    [call] = vault.calls()
    assert moto_s3.keys() == [f"site1/audio/{KEY}"]
    head = moto_s3.client().head_object(Bucket=moto_s3.bucket, Key=f"site1/audio/{KEY}")
    assert head["ContentType"] == "audio/mp4"
    assert head["Metadata"]["sha256"] == sha(M4A)
    assert sha(moto_s3.read(f"site1/audio/{KEY}")) == sha(M4A)
    assert call["etag"] == hashlib.md5(M4A).hexdigest()
    assert call["attempts"] == 1
    assert call["uploaded_at"] and call["verified_at"]
    assert call["cached"] == 1
    assert vault.audio_path(call["key"]).read_bytes() == M4A
    kinds = [e["kind"] for e in vault.events(call["id"])]
    assert kinds == ["received", "upload_ok", "verified"]


async def test_tiered_sync_answers_after_the_verified_upload(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    vault = await make_vault(**s3_settings(moto_s3, s3_upload_mode="sync"))
    response = await vault.post("/metro/upload", openmhz(M4A))
    assert response.status_code == 200
    [call] = vault.calls()  # no waiting: it is done before the answer
    assert call["state"] == "done"
    assert sha(moto_s3.read(f"audio/{call['key']}")) == sha(M4A)


async def test_s3_only_keeps_nothing_local(make_vault: VaultFactory, moto_s3: MotoS3) -> None:
    vault = await make_vault(**s3_settings(moto_s3, s3_local_cache=False))
    response = await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))
    assert response.status_code == 200
    [call] = vault.calls()
    assert call["state"] == "done"
    assert call["cached"] == 0
    assert not vault.audio_path(call["key"]).exists()
    assert vault.incoming() == []
    assert sha(moto_s3.read(f"audio/{call['key']}")) == sha(M4A)
    assert [e["kind"] for e in vault.events(call["id"])][-1] == "uncached"


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_s3_down_at_start_and_during_intake_then_drains(
    make_vault: VaultFactory, moto_s3: MotoS3, mode: str
) -> None:
    moto_s3.stop()
    vault = await make_vault(**s3_settings(moto_s3, s3_upload_mode=mode))
    assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
    assert (await vault.post("/metro/upload", openmhz(M4A_2))).status_code == 200
    await wait_until(lambda: all(c["attempts"] >= 2 for c in vault.calls()))
    assert states(vault) == ["pending", "pending"]
    assert all(c["last_error"] for c in vault.calls())
    moto_s3.start()
    await wait_until(lambda: states(vault) == ["done", "done"])
    for call in vault.calls():
        assert moto_s3.read(f"audio/{call['key']}") == vault.audio_path(call["key"]).read_bytes()


async def test_transient_faults_are_retried_and_recorded(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    async with open_fault_proxy("127.0.0.1", moto_s3.server.port) as proxy:  # type: ignore[union-attr]
        vault = await make_vault(
            **s3_settings(moto_s3, endpoint=proxy.url, upload_workers=1, upload_timeout=1.0)
        )
        proxy.fail_next(1, status=503, code="SlowDown", methods={"PUT"})
        proxy.fail_next(
            1,
            status=500,
            code="InternalError",
            message="We encountered an internal error.",
            methods={"PUT"},
        )
        proxy.reset_next(1, after_body_bytes=2000, methods={"PUT"})
        proxy.delay_next(1, seconds=5, methods={"PUT"})
        assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
        await wait_until(lambda: states(vault) == ["done"])
        [call] = vault.calls()
        assert call["attempts"] == 5
        errors = [e["detail"] for e in vault.events(call["id"]) if e["kind"] == "upload_error"]
        assert len(errors) == 4
        assert "SlowDown" in errors[0]
        assert "InternalError" in errors[1]
        assert "TR_VAULT_UPLOAD_TIMEOUT" in errors[3]
        assert sha(moto_s3.read(f"audio/{call['key']}")) == sha(M4A)


async def test_permanent_error_fails_with_provider_message_and_retry_requeues(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    async with open_fault_proxy("127.0.0.1", moto_s3.server.port) as proxy:  # type: ignore[union-attr]
        vault = await make_vault(**s3_settings(moto_s3, endpoint=proxy.url, upload_workers=1))
        proxy.fail_next(
            1, status=403, code="AccessDenied", message="Access Denied by policy", methods={"PUT"}
        )
        assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
        await wait_until(lambda: states(vault) == ["failed"])
        [call] = vault.calls()
        assert call["attempts"] == 1
        assert "AccessDenied" in call["last_error"]
        assert "Access Denied by policy" in call["last_error"]
        env = {"PATH": "/usr/bin:/bin", "TR_VAULT_DATA_DIR": str(vault.settings.data_dir)}
        with trio.fail_after(60):
            done = await trio.run_process(
                [sys.executable, "-m", "tr_vault", "retry", "--failed"],
                env=env,
                capture_stdout=True,
            )
        assert done.stdout.decode().strip() == f"re-queued 1 call(s): {call['id']}"
        await wait_until(lambda: states(vault) == ["done"], within=60)
        assert "requeued" in [e["kind"] for e in vault.events(call["id"])]


async def test_corrupted_body_is_never_marked_done(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    async with open_fault_proxy("127.0.0.1", moto_s3.server.port) as proxy:  # type: ignore[union-attr]
        vault = await make_vault(**s3_settings(moto_s3, endpoint=proxy.url, upload_workers=1))
        proxy.corrupt_next(1, methods={"PUT"})
        assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
        await wait_until(lambda: states(vault) == ["done"])
        [call] = vault.calls()
        assert call["attempts"] == 2
        [error] = [e["detail"] for e in vault.events(call["id"]) if e["kind"] == "upload_error"]
        assert "ETag" in error and "changed in transit" in error
        assert sha(moto_s3.read(f"audio/{call['key']}")) == sha(M4A)


async def test_signing_is_right_when_moto_checks_it(
    tmp_path: object, moto_s3: MotoS3, make_vault: VaultFactory
) -> None:
    with moto_s3.iam_user() as (access_key, secret_key):
        vault = await make_vault(
            **s3_settings(moto_s3, s3_access_key=access_key, s3_secret_key=secret_key)
        )
        assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
        await wait_until(lambda: states(vault) == ["done"])
        await vault.stop()
        # A wrong secret is refused by the server: start-up stops with one clear line.
        bad = Settings(_env_file=None, **{**vault.settings.model_dump(), "s3_secret_key": "wrong"})  # type: ignore[call-arg]
        with pytest.raises(ConfigError) as err, trio.fail_after(30):
            await serve(bad)
        assert "SignatureDoesNotMatch" in str(err.value) or "403" in str(err.value)
        assert "\n" not in str(err.value)


async def test_missing_bucket_stops_start_up(
    make_vault: VaultFactory, moto_s3: MotoS3, tmp_path: object
) -> None:
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, **s3_settings(moto_s3, s3_bucket="no-such-bucket"))  # type: ignore[arg-type]
    with (
        pytest.raises(ConfigError, match="S3_BUCKET=no-such-bucket: .*does not exist"),
        trio.fail_after(30),
    ):
        await serve(settings)


async def test_graceful_shutdown_leaves_unfinished_uploads_pending(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    async with open_fault_proxy("127.0.0.1", moto_s3.server.port) as proxy:  # type: ignore[union-attr]
        vault = await make_vault(
            **s3_settings(
                moto_s3, endpoint=proxy.url, upload_workers=1, shutdown_grace=0.5, upload_timeout=30
            )
        )
        proxy.delay_next(1, seconds=3600, methods={"PUT"})
        assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
        await wait_until(lambda: any(c["claimed_by"] for c in vault.calls()))
        await vault.stop()
        [call] = vault.calls()
        assert call["state"] == "pending"
        assert call["claimed_by"] is None  # the claim was given back
        await vault.start()
        await wait_until(lambda: states(vault) == ["done"])
