"""The audit surface: the CLI's output and the README's SQL, against real journals."""

from __future__ import annotations

import json
import re
import sqlite3
import sys
from pathlib import Path

import trio

from tests.conftest import Vault, VaultFactory, s3_settings, wait_until
from tests.s3_fixtures import MotoS3
from tests.wire import fixture_bytes, openmhz, rdio_trunk_recorder

M4A = fixture_bytes("call-9131-1764001234.m4a")
M4A_2 = fixture_bytes("call-2201-1764001301.m4a")
README = Path(__file__).resolve().parents[2] / "README.md"


async def cli(vault: Vault, *args: str, **env: str) -> str:
    environment = {
        "PATH": "/usr/bin:/bin",
        "TR_VAULT_DATA_DIR": str(vault.settings.data_dir),
        **env,
    }
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "tr_vault", *args], env=environment, capture_stdout=True
        )
    return done.stdout.decode()


def sql(vault: Vault, statement: str, *params: object) -> None:
    conn = vault.db()
    conn.execute(statement, params)
    conn.commit()
    conn.close()


async def failed_and_done(vault: Vault) -> tuple[dict[str, object], dict[str, object]]:
    """Two calls: the first marked failed (as the workers would), the second done."""
    await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))
    await vault.post("/metro/upload", openmhz(M4A_2))
    first, second = vault.calls()
    sql(vault, "UPDATE calls SET state = 'failed', attempts = 10, last_error = ? WHERE id = ?",
        "put audio/x: HTTP 403 AccessDenied: Access Denied", first["id"])  # fmt: skip
    return first, second


async def test_audit_cli(vault: Vault) -> None:
    first, second = await failed_and_done(vault)

    summary = json.loads(await cli(vault, "audit", "--json"))
    assert summary["states"]["failed"] == {"calls": 1, "bytes": len(M4A)}
    assert summary["states"]["done"] == {"calls": 1, "bytes": len(M4A_2)}
    assert summary["cached"]["calls"] == 2
    text = await cli(vault, "status")
    assert "  failed: 1 calls" in text
    assert f"  cached: 2 calls, {len(M4A) + len(M4A_2)} bytes" in text

    one = await cli(vault, "audit", "--call", str(first["id"]))
    assert re.search(rf"^\s+key: {re.escape(str(first['key']))}$", one, re.M)
    assert re.search(r"^\s+state: failed$", one, re.M)
    assert "events:" in one
    assert re.search(r"received\s+\{\"protocol\": \"rdio\"\}", one)

    failed = await cli(vault, "audit", "--failed")
    assert (
        failed.strip()
        == f"{first['id']}\t{first['key']}\tattempts=10\tput audio/x: HTTP 403 AccessDenied: Access Denied"
    )

    detail = json.loads(await cli(vault, "audit", "--call", str(second["id"]), "--json"))
    assert detail["call"]["protocol"] == "openmhz"
    assert [e["kind"] for e in detail["events"]] == ["received"]


async def test_readme_queries_run_against_the_real_schema(vault: Vault) -> None:
    first, second = await failed_and_done(vault)
    sql(vault, "UPDATE calls SET cached = 0, pruned_at = '2026-11-15 10:00:00.000' WHERE id = ?",
        second["id"])  # fmt: skip
    section = README.read_text().split("### The queries operators ask most", 1)[1]
    block = section.split("```sql", 1)[1].split("```", 1)[0]
    statements: list[str] = []
    current = ""
    for line in block.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    assert len(statements) == 5
    conn = sqlite3.connect(f"file:{vault.settings.db_path}?mode=ro", uri=True)
    try:
        results = [conn.execute(s).fetchall() for s in statements]
    finally:
        conn.close()
    failed_today, per_day, cached, pruned, history = results
    assert [r[0] for r in failed_today] == [first["id"]]
    assert sorted(per_day) == [("metro", "2025-11-24", 2, len(M4A) + len(M4A_2))]
    assert cached == [(1, len(M4A), 0)]
    assert [r[0] for r in pruned] == [second["id"]]
    assert [r[1] for r in history] == ["received"]


async def test_prune_dry_run_and_real_pass_from_the_cli(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    vault = await make_vault(**s3_settings(moto_s3, s3_cache_retention=3600))
    await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))
    await wait_until(lambda: [c["state"] for c in vault.calls()] == ["done"])
    [call] = vault.calls()
    sql(vault, "UPDATE calls SET uploaded_at = '2020-01-01 00:00:00.000'")
    env = {
        "S3_BUCKET": moto_s3.bucket, "S3_ENDPOINT": moto_s3.url,
        "S3_ACCESS_KEY": moto_s3.access_key, "S3_SECRET_KEY": moto_s3.secret_key,
        "S3_CACHE_RETENTION": "1h",
    }  # fmt: skip
    dry = await cli(vault, "prune", "--dry-run", **env)
    assert f"  delete  call {call['id']}  {call['key']}  (age: verified in S3)" in dry
    assert "would delete 1 files" in dry
    assert vault.audio_path(call["key"]).exists()
    real = await cli(vault, "prune", **env)
    assert "did delete 1 files" in real
    assert not vault.audio_path(call["key"]).exists()
    assert vault.calls()[0]["cached"] == 0
