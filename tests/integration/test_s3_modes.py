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
from tr_vault.config import Settings

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


async def summary_store(vault: object) -> dict[str, object]:
    response = await vault.client.get(vault.url + "/api/journal/summary")  # type: ignore[attr-defined]
    assert response.status_code == 200
    store: dict[str, object] = response.json()["store"]
    return store


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_s3_down_at_start_and_during_intake_then_drains(
    make_vault: VaultFactory, moto_s3: MotoS3, mode: str
) -> None:
    moto_s3.stop()
    vault = await make_vault(**s3_settings(moto_s3, s3_upload_mode=mode))
    assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
    assert (await vault.post("/metro/upload", openmhz(M4A_2))).status_code == 200
    store = await summary_store(vault)
    assert store["state"] == "down" and "ConnectError" in str(store["last_error"])
    # An outage is the store's state: the calls wait with every attempt unspent.
    with trio.move_on_after(2):  # several probe intervals (0.5 s here)
        await wait_until(lambda: any(c["attempts"] for c in vault.calls()))
    assert [(c["state"], c["attempts"], c["last_error"]) for c in vault.calls()] == [
        ("pending", 0, None)
    ] * 2
    moto_s3.start()
    await wait_until(lambda: states(vault) == ["done", "done"])
    assert [c["attempts"] for c in vault.calls()] == [1, 1]
    assert (await summary_store(vault))["state"] == "up"
    for call in vault.calls():
        assert moto_s3.read(f"audio/{call['key']}") == vault.audio_path(call["key"]).read_bytes()


async def test_store_wide_faults_cost_the_call_nothing(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    async with open_fault_proxy("127.0.0.1", moto_s3.server.port) as proxy:  # type: ignore[union-attr]
        vault = await make_vault(
            **s3_settings(moto_s3, endpoint=proxy.url, upload_workers=1, upload_timeout=1.0)
        )
        await wait_until(lambda: vault.rows("SELECT state FROM store_health") == [{"state": "up"}])
        # Each fault hits the call's PUT or a probe's PUT: either way, the store's fault.
        proxy.fail_next(1, status=503, code="SlowDown", methods={"PUT"})
        proxy.fail_next(
            1,
            status=500,
            code="InternalError",
            message="We encountered an internal error.",
            methods={"PUT"},
        )
        proxy.reset_next(1, after_body_bytes=10, methods={"PUT"})
        proxy.delay_next(1, seconds=5, methods={"PUT"})
        assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
        await wait_until(lambda: states(vault) == ["done"])
        assert proxy.faults_pending == 0
        [call] = vault.calls()
        assert call["attempts"] == 1
        assert [e["kind"] for e in vault.events(call["id"])] == [
            "received", "upload_ok", "verified"
        ]  # fmt: skip
        assert sha(moto_s3.read(f"audio/{call['key']}")) == sha(M4A)
        # The outage was the store's, and it was recorded as such.
        [health] = vault.rows("SELECT state, last_error FROM store_health")
        assert health["state"] == "up" and health["last_error"]


async def test_a_403_the_probe_does_not_see_is_charged_to_the_call(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    # A bucket policy that denies this one key: the probe works, so the call pays.
    async with open_fault_proxy("127.0.0.1", moto_s3.server.port) as proxy:  # type: ignore[union-attr]
        vault = await make_vault(**s3_settings(moto_s3, endpoint=proxy.url, upload_workers=1))
        await wait_until(lambda: vault.rows("SELECT state FROM store_health") == [{"state": "up"}])
        proxy.fail_next(
            1, status=403, code="AccessDenied", message="Access Denied by policy", methods={"PUT"}
        )
        assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
        await wait_until(lambda: states(vault) == ["done"])
        [call] = vault.calls()
        assert call["attempts"] == 2
        [error] = [e["detail"] for e in vault.events(call["id"]) if e["kind"] == "upload_error"]
        assert "AccessDenied" in error and "Access Denied by policy" in error
        assert "charged to this call" in error


async def test_permanent_error_fails_with_provider_message_and_retry_requeues(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    async with open_fault_proxy("127.0.0.1", moto_s3.server.port) as proxy:  # type: ignore[union-attr]
        vault = await make_vault(**s3_settings(moto_s3, endpoint=proxy.url, upload_workers=1))
        await wait_until(lambda: vault.rows("SELECT state FROM store_health") == [{"state": "up"}])
        proxy.fail_next(
            1,
            status=400,
            code="EntityTooLarge",
            message="Your proposed upload exceeds the maximum allowed size",
            methods={"PUT"},
        )
        assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
        await wait_until(lambda: states(vault) == ["failed"])
        [call] = vault.calls()
        assert call["attempts"] == 1
        assert "EntityTooLarge" in call["last_error"]
        assert "exceeds the maximum allowed size" in call["last_error"]
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


async def tr_vault_check(env: dict[str, str]) -> tuple[int, str]:
    """Run `tr-vault check` as a user would; its exit status and output."""
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "tr_vault", "check"],
            env={"PATH": "/usr/bin:/bin", **env},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stdout.decode() + done.stderr.decode()


def check_env(vault: object, **overrides: str) -> dict[str, str]:
    s = vault.settings  # type: ignore[attr-defined]
    env = {
        "TR_VAULT_DATA_DIR": str(s.data_dir),
        "S3_BUCKET": s.s3_bucket,
        "S3_ENDPOINT": s.s3_endpoint,
        "S3_REGION": s.s3_region,
        "S3_ACCESS_KEY": s.s3_access_key,
        "S3_SECRET_KEY": s.s3_secret_key.get_secret_value(),
    }
    env.update(overrides)
    return env


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
        # A wrong secret: the server still starts and takes calls, which wait; the store is
        # down with the provider's code, and `tr-vault check` fails loudly.
        vault.settings = Settings(  # type: ignore[call-arg]
            _env_file=None, **{**vault.settings.model_dump(), "s3_secret_key": "wrong"}
        )
        await vault.start()
        assert (await vault.post("/metro/upload", openmhz(M4A_2))).status_code == 200
        store = await summary_store(vault)
        assert store["state"] == "down" and store["code"] == "SignatureDoesNotMatch"
        assert "S3_SECRET_KEY" in str(store["last_error"])
        assert [(c["state"], c["attempts"]) for c in vault.calls()] == [("done", 1), ("pending", 0)]
        status, output = await tr_vault_check(check_env(vault))
        assert status == 1, output
        assert "SignatureDoesNotMatch" in output and "FAIL" in output
        status, output = await tr_vault_check(check_env(vault, S3_SECRET_KEY=secret_key))
        # (moto's auth mode mishandles presigned URLs, so only the signed requests count here)
        assert "  ok  put" in output and "  ok  head" in output, output
    status, output = await tr_vault_check(check_env(vault))
    assert status == 0, output  # auth off again: any key works, presigned GET included
    assert "  ok  presign" in output and "S3 works" in output


async def test_missing_bucket_never_stops_start_up(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    vault = await make_vault(**s3_settings(moto_s3, s3_bucket="no-such-bucket-yet"))
    assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
    store = await summary_store(vault)
    assert store["state"] == "down" and store["code"] == "NoSuchBucket"
    status, output = await tr_vault_check(check_env(vault))
    assert status == 1 and "NoSuchBucket" in output, output
    with trio.fail_after(60):  # the operator's view, from the journal, beside the server
        shown = await trio.run_process(
            [sys.executable, "-m", "tr_vault", "status"],
            env={"PATH": "/usr/bin:/bin", "TR_VAULT_DATA_DIR": str(vault.settings.data_dir)},
            capture_stdout=True,
        )
    text = shown.stdout.decode()
    assert "store: s3 DOWN since" in text and "create the bucket" in text, text
    moto_s3.client().create_bucket(Bucket="no-such-bucket-yet")
    await wait_until(lambda: states(vault) == ["done"])
    assert vault.calls()[0]["attempts"] == 1


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


async def test_a_row_with_a_raw_non_ascii_type_from_an_older_version_still_uploads(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    # Before the fixed set of types, `audioType=audio/mpegé` was stored raw and crashed the
    # worker building the PUT's Content-Type. Such a row in an old journal must just upload.
    vault = await make_vault(**s3_settings(moto_s3))
    await vault.stop()
    key = "metro/2025-11-24/9131-1764001234.mp3"
    path = vault.audio_path(key)
    path.parent.mkdir(parents=True)
    path.write_bytes(M4A)
    conn = vault.db()
    with conn:
        conn.execute(
            "INSERT INTO calls (protocol, system, talkgroup, start_time, audio_name, metadata, key,"
            " content_type, size, sha256, md5, state, next_attempt_at, received_at) VALUES"
            " ('rdio', '11', 9131, '2025-11-24 16:20:34.000', '9131-1764001234.mp3', '{}', ?,"
            " 'audio/mpeg\u00e9', ?, ?, ?, 'pending', '2025-11-24 16:20:35.000',"
            " '2025-11-24 16:20:35.000')",
            (key, len(M4A), sha(M4A), hashlib.md5(M4A).hexdigest()),
        )
    conn.close()
    await vault.start()
    await wait_until(lambda: states(vault) == ["done"])
    head = moto_s3.client().head_object(Bucket=moto_s3.bucket, Key=f"audio/{key}")
    assert head["ContentType"] == "audio/mpeg"
    assert sha(moto_s3.read(f"audio/{key}")) == sha(M4A)
    assert (await vault.client.get(vault.url + "/healthz")).status_code == 200
