"""What an operator reads: one INFO line per call received and one per upload, nothing per call
at WARNING when nothing is wrong, no line per HTTP request unless asked, and with
`TR_VAULT_LOG_FORMAT=json` one JSON object per stderr line.

The server is a real `tr-vault serve` child process (its logging set up by the CLI, as in
production), uploading to moto.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

from tests.conftest import wait_until
from tests.helpers import SUCCESS, free_port, post_call, scalar, serve_process
from tests.s3_fixtures import MotoS3
from tests.wire import TR_AUDIO_NAME, fixture_bytes, rdio_trunk_recorder

M4A = fixture_bytes("call-9131-1764001234.m4a")
KEY = f"metro/2025-11-24/{TR_AUDIO_NAME}"
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} level=(?P<level>[A-Z]+) logger=(?P<logger>\S+)"
    r" (?P<message>.*)$"
)
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
RECEIVED = (
    rf"call received id=1 system=metro talkgroup=9131 bytes={len(M4A)} protocol=rdio"
    rf" key={re.escape(KEY)}"
)
UPLOADED = (
    rf"call uploaded id=1 key=audio/{re.escape(KEY)} bytes={len(M4A)} seconds=\d+\.\d\d attempt=1"
)


async def one_call_through(tmp_path: Path, moto_s3: MotoS3, **extra: str) -> tuple[str, str]:
    """Serve, receive one call, upload it, stop: the server's (stderr, stdout)."""
    port = free_port()
    data_dir = tmp_path / "data"
    env = {
        "TR_VAULT_DATA_DIR": str(data_dir),
        "TR_VAULT_LISTEN": f"127.0.0.1:{port}",
        "TR_VAULT_API_KEYS": "tr-key",
        "TR_VAULT_SHUTDOWN_GRACE": "5",
        "S3_BUCKET": moto_s3.bucket,
        "S3_ENDPOINT": moto_s3.url,
        "S3_REGION": moto_s3.region,
        "S3_ACCESS_KEY": moto_s3.access_key,
        "S3_SECRET_KEY": moto_s3.secret_key,
        "S3_CONDITIONAL_PUT": "true",
        **extra,
    }
    stderr, stdout = tmp_path / "stderr.log", tmp_path / "stdout.log"
    async with serve_process(env, cwd=tmp_path, stderr=stderr, stdout=stdout) as process:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            for _ in range(3):  # requests that are not calls: no line of their own
                assert (await client.get(f"{url}/readyz")).status_code == 200
            response = await post_call(client, url, rdio_trunk_recorder(M4A))
        assert (response.status_code, response.text) == (200, SUCCESS)
        db = data_dir / "vault.db"
        await wait_until(lambda: scalar(db, "SELECT state FROM calls") == "done")
    assert process.returncode == 0, stderr.read_text()
    return stderr.read_text(), stdout.read_text()


async def test_text_log_has_one_line_per_call_received_and_uploaded(
    tmp_path: Path, moto_s3: MotoS3
) -> None:
    text, out = await one_call_through(tmp_path, moto_s3)
    assert out == ""
    lines = text.splitlines()
    parsed = [TEXT_LINE.match(line) for line in lines]
    assert all(parsed), [line for line, m in zip(lines, parsed, strict=True) if not m]
    records = [(m["level"], m["logger"], m["message"]) for m in parsed if m]
    received = [r for r in records if r[2].startswith("call received")]
    uploaded = [r for r in records if r[2].startswith("call uploaded")]
    assert len(received) == 1 and re.fullmatch(RECEIVED, received[0][2]), received
    assert len(uploaded) == 1 and re.fullmatch(UPLOADED, uploaded[0][2]), uploaded
    assert received[0][:2] == ("INFO", "tr_vault.intake.store")
    assert uploaded[0][:2] == ("INFO", "tr_vault.services.uploader")
    assert [r for r in records if r[0] not in ("INFO", "DEBUG")] == [], text
    # Those two are all the lines about the call (no line per S3 request it took).
    assert [r for r in records if TR_AUDIO_NAME in r[2]] == received + uploaded, text
    # No access log by default: the requests themselves leave no line.
    assert not [line for line in lines if "/readyz" in line or "/api/call-upload" in line], text
    # Lines about the call name it: its id and key, nothing of the request's secrets.
    assert "tr-key" not in text


async def test_json_log_is_one_object_per_line_with_an_access_log_on_request(
    tmp_path: Path, moto_s3: MotoS3
) -> None:
    text, out = await one_call_through(
        tmp_path, moto_s3, TR_VAULT_LOG_FORMAT="json", TR_VAULT_ACCESS_LOG="true"
    )
    assert out == ""
    entries = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    assert entries
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
        assert ISO_UTC.match(entry["time"]), entry
    messages = [e["message"] for e in entries]
    assert [m for m in messages if m.startswith("call received")] == [
        m for m in messages if re.fullmatch(RECEIVED, m)
    ]
    assert len([m for m in messages if re.fullmatch(RECEIVED, m)]) == 1
    assert len([m for m in messages if re.fullmatch(UPLOADED, m)]) == 1
    assert [e for e in entries if e["level"] not in ("INFO", "DEBUG")] == [], text
    about_the_call = [
        m
        for e in entries
        if e["logger"] != "tr_vault.access" and TR_AUDIO_NAME in (m := e["message"])
    ]
    assert len(about_the_call) == 2, about_the_call
    access = [e["message"] for e in entries if e["logger"] == "tr_vault.access"]
    uploads = [m for m in access if "path=/api/call-upload " in m]
    assert len(uploads) == 1 and "method=POST" in uploads[0] and "status=200" in uploads[0]
    assert len([m for m in access if "path=/readyz " in m]) == 3
    assert "exception" not in json.dumps([e for e in entries if "call" in e["message"]])
