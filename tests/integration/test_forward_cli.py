"""`tr-vault forward status | backfill | retry` and `tr-vault import --forward`, as processes.

The data dir is prepared by an in-process vault (stopped before the commands run) and a few
direct journal writes; the destinations point at a closed port, since nothing is sent here.
"""

from __future__ import annotations

import json
import re
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from tests.conftest import Vault, VaultFactory
from tests.helpers import query
from tests.wire import TR_META, fixture_bytes, rdio_trunk_recorder

M4A = fixture_bytes("call-9131-1764001234.m4a")
BASE = 1764001234
TOML = """
[[destinations]]
name = "rdio"
kind = "rdio-scanner"
url = "http://127.0.0.1:9"
api_key = "k"
talkgroups = ["91*"]

[[destinations]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:9/hook"
"""


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


async def cli(data_dir: Path, forward_file: Path | None, *args: str) -> Run:
    env = {"PATH": "/usr/bin:/bin", "TR_VAULT_DATA_DIR": str(data_dir)}
    if forward_file is not None:
        env["TR_VAULT_FORWARD_FILE"] = str(forward_file)
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-m", "tr_vault", *args],
            env=env,
            cwd=data_dir.parent,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return Run(done.returncode, done.stdout.decode(), done.stderr.decode())


def deliveries(db: Path, destination: str) -> list[dict[str, object]]:
    return query(
        db,
        "SELECT call_id, state, attempts FROM deliveries WHERE destination = ? ORDER BY call_id",
        destination,
    )


async def prepared(tmp_path: Path, make_vault: VaultFactory) -> tuple[Vault, list[int], Path]:
    """Four stored calls, none queued: talkgroups 9131, 9131 (received in 2020), 2201, 9132."""
    vault = await make_vault()
    for n, talkgroup in enumerate(("9131", "9131", "2201", "9132")):
        parts = rdio_trunk_recorder(
            M4A + bytes([n]),
            talkgroup=talkgroup,
            date_time=str(BASE + 60 * n),
            audio_name=f"{talkgroup}-{BASE + 60 * n}.m4a",
        )
        response = await vault.post("/api/call-upload", parts)
        assert response.status_code == 200, response.text
    await vault.stop()
    ids = [int(c["id"]) for c in vault.calls()]
    assert len(ids) == 4
    conn = sqlite3.connect(vault.settings.db_path)
    with conn:
        conn.execute(
            "UPDATE calls SET received_at = '2020-01-01 00:00:00.000' WHERE id = ?", (ids[1],)
        )
    conn.close()
    assert query(vault.settings.db_path, "SELECT * FROM deliveries") == []
    toml = tmp_path / "forward.toml"
    toml.write_text(TOML)
    return vault, ids, toml


async def test_backfill_respects_filters_and_is_idempotent(
    tmp_path: Path, make_vault: VaultFactory
) -> None:
    vault, ids, toml = await prepared(tmp_path, make_vault)
    data, db = vault.settings.data_dir, vault.settings.db_path

    run = await cli(
        data, toml, "forward", "backfill", "--destination", "rdio", "--since", "2024-01-01"
    )
    assert (run.code, run.out) == (0, "queued 2 call(s) for rdio\n"), run
    # Talkgroup 2201 is not rdio's; the 2020 call is before --since.
    assert deliveries(db, "rdio") == [
        {"call_id": ids[0], "state": "pending", "attempts": 0},
        {"call_id": ids[3], "state": "pending", "attempts": 0},
    ]
    assert deliveries(db, "hook") == []
    again = await cli(data, toml, "forward", "backfill", "--destination", "rdio", "--since", "7d")
    assert (again.code, again.out) == (0, "queued 0 call(s) for rdio\n"), again
    every = await cli(data, toml, "forward", "backfill", "--destination", "rdio")
    assert (every.code, every.out) == (0, "queued 1 call(s) for rdio\n"), every
    assert [d["call_id"] for d in deliveries(db, "rdio")] == [ids[0], ids[1], ids[3]]
    hook = await cli(data, toml, "forward", "backfill", "--destination", "hook")
    assert (hook.code, hook.out) == (0, "queued 4 call(s) for hook\n"), hook
    hook_again = await cli(data, toml, "forward", "backfill", "--destination", "hook")
    assert hook_again.out == "queued 0 call(s) for hook\n", hook_again
    assert len(deliveries(db, "hook")) == 4

    status = await cli(data, toml, "forward", "status")
    assert status.code == 0, status
    lines = status.out.splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(
        r"hook: UNKNOWN  pending 4, done 0, failed 0, skipped 0; lag \d+ s", lines[0]
    ), lines
    assert re.fullmatch(
        r"rdio: UNKNOWN  pending 3, done 0, failed 0, skipped 0; lag \d+ s", lines[1]
    ), lines
    as_json = json.loads((await cli(data, toml, "forward", "status", "--json")).out)
    assert {r["name"]: r["deliveries"]["pending"] for r in as_json} == {"hook": 4, "rdio": 3}

    unknown = await cli(data, toml, "forward", "backfill", "--destination", "nope")
    assert unknown.code == 2, unknown
    assert "no destination 'nope'" in unknown.err and "rdio, hook" in unknown.err, unknown
    bad_since = await cli(
        data, toml, "forward", "backfill", "--destination", "rdio", "--since", "soon"
    )
    assert bad_since.code == 2 and "'soon'" in bad_since.err, bad_since


async def test_retry_failed_requeues_with_fresh_attempts(
    tmp_path: Path, make_vault: VaultFactory
) -> None:
    vault, ids, toml = await prepared(tmp_path, make_vault)
    data, db = vault.settings.data_dir, vault.settings.db_path
    run = await cli(data, toml, "forward", "backfill", "--destination", "rdio")
    assert run.out == "queued 3 call(s) for rdio\n", run
    conn = sqlite3.connect(db)
    with conn:  # as the workers leave a call refused ten times
        conn.execute(
            "UPDATE deliveries SET state = 'failed', attempts = 10, next_attempt_at = NULL,"
            " last_answer = 'HTTP 500' WHERE destination = 'rdio' AND call_id = ?",
            (ids[1],),
        )
    conn.close()

    plain = await cli(data, toml, "forward", "retry", "--destination", "rdio")
    assert (plain.code, plain.out) == (0, "re-queued 0 delivery(ies) for rdio\n"), plain
    assert deliveries(db, "rdio")[1] == {"call_id": ids[1], "state": "failed", "attempts": 10}

    retry = await cli(data, toml, "forward", "retry", "--destination", "rdio", "--failed")
    assert (retry.code, retry.out) == (0, "re-queued 1 delivery(ies) for rdio\n"), retry
    assert [(d["state"], d["attempts"]) for d in deliveries(db, "rdio")] == [("pending", 0)] * 3
    events = query(
        db, "SELECT detail FROM events WHERE call_id = ? AND kind = 'forward_requeued'", ids[1]
    )
    assert len(events) == 1 and "retry requested by operator" in events[0]["detail"], events
    again = await cli(data, toml, "forward", "retry", "--destination", "rdio", "--failed")
    assert again.out == "re-queued 0 delivery(ies) for rdio\n", again


def write_tree(root: Path, starts: list[int], talkgroups: list[int]) -> None:
    """Calls laid out as trunk-recorder writes them: {shortName}/{YYYY}/{M}/{D}/tg-start_f."""
    for n, (start, talkgroup) in enumerate(zip(starts, talkgroups, strict=True)):
        t = time.gmtime(start)
        directory = root / "metro" / str(t.tm_year) / str(t.tm_mon) / str(t.tm_mday)
        directory.mkdir(parents=True, exist_ok=True)
        stem = f"{talkgroup}-{start}_851012500-call_{n}"
        (directory / f"{stem}.m4a").write_bytes(M4A + b"import" + bytes([n]))
        meta = dict(TR_META, talkgroup=talkgroup, start_time=start, stop_time=start + 5)
        (directory / f"{stem}.json").write_text(json.dumps(meta))


async def test_import_forward_queues_imported_calls(
    tmp_path: Path, make_vault: VaultFactory
) -> None:
    vault, ids, toml = await prepared(tmp_path, make_vault)
    data, db = vault.settings.data_dir, vault.settings.db_path
    tree = tmp_path / "capture"
    write_tree(tree, [BASE + 3600, BASE + 3660], [9140, 2201])

    run = await cli(data, toml, "import", str(tree), "--forward", "--json")
    assert run.code == 0, run
    report = json.loads(run.out)
    assert report["imported"] == 2, report
    imported = [int(c["id"]) for c in vault.calls() if int(c["id"]) not in ids]
    assert len(imported) == 2
    # Each destination whose filters want the call: rdio takes 91*, the webhook every call.
    assert deliveries(db, "rdio") == [{"call_id": imported[0], "state": "pending", "attempts": 0}]
    assert [d["call_id"] for d in deliveries(db, "hook")] == imported
    # The calls stored before are not queued by an import.
    assert {d["call_id"] for d in query(db, "SELECT call_id FROM deliveries")} == set(imported)

    # Without --forward, nothing is queued.
    plain_tree = tmp_path / "capture2"
    write_tree(plain_tree, [BASE + 7200], [9150])
    plain = await cli(data, toml, "import", str(plain_tree), "--json")
    assert plain.code == 0 and json.loads(plain.out)["imported"] == 1, plain
    assert len(query(db, "SELECT * FROM deliveries")) == 3


async def test_bad_forwarding_file_is_a_clear_error(
    tmp_path: Path, make_vault: VaultFactory
) -> None:
    vault, _, _ = await prepared(tmp_path, make_vault)
    data, db = vault.settings.data_dir, vault.settings.db_path
    bad = tmp_path / "bad.toml"
    bad.write_text('[[destinations]]\nname = "rdio"\nkind = "rdio-scaner"\nurl = "http://x"\n')
    tree = tmp_path / "capture"
    write_tree(tree, [BASE + 3600], [9140])

    commands = [
        ("import", str(tree), "--forward"),
        ("forward", "backfill", "--destination", "rdio"),
        ("forward", "retry", "--destination", "rdio", "--failed"),
    ]
    for args in commands:
        run = await cli(data, bad, *args)
        assert run.code == 2, (args, run)
        # One line naming the file, the destination and the field.
        assert f"{bad}: destination 'rdio': kind: 'rdio-scaner'" in run.err, (args, run)
        assert "Traceback" not in run.err, (args, run)
    missing = await cli(
        data, tmp_path / "absent.toml", "forward", "backfill", "--destination", "rdio"
    )
    assert missing.code == 2 and "absent.toml" in missing.err, missing
    not_toml = tmp_path / "not.toml"
    not_toml.write_text("[[destinations]\n")
    garbled = await cli(data, not_toml, "import", str(tree), "--forward")
    assert garbled.code == 2 and "not valid TOML" in garbled.err, garbled
    # Nothing was imported or queued by the refused commands.
    assert query(db, "SELECT * FROM deliveries") == []
    assert len(vault.calls()) == 4
