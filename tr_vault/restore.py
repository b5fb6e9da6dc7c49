"""`tr-vault restore --from-replica`: the journal back from its Litestream replica.

For a lost disk, or a site moving to a new machine. Litestream rebuilds the journal as of its
last sync (seconds before the loss) into a file next to the journal's path; tr_vault opens it
(migrations apply) and squares it with this machine, whose audio cache is probably empty:

- a row marked cached whose file is not here gets `cached = 0` and an `uncached` event, so a
  `done` call plays from S3 (a 307 to a presigned URL) and the pruner leaves it alone;
- a `pending` or `failed` row whose audio is not here was never uploaded and now cannot be:
  state `lost`, with a `lost` event saying why;
- the replica's `store_health` row goes back to `unknown`: its state was another machine's.

Only then is the file renamed to the journal's path, so an interrupted restore leaves no
half-made journal there. An existing journal is never overwritten.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from tr_vault.cache import AudioCache
from tr_vault.durable import fsync_path
from tr_vault.errors import ConfigError, ReplicaError
from tr_vault.journal import Journal, add_event, set_store_health, transaction
from tr_vault.lock import hold_data_dir
from tr_vault.replica import (
    CONFIG_NAME,
    HEALTH_NAME,
    ReplicaTarget,
    find_litestream,
    litestream_config,
    litestream_env,
    write_config,
)
from tr_vault.timefmt import WallClock, system_clock, to_db

if TYPE_CHECKING:
    from tr_vault.config import Settings

RESTORING_SUFFIX = ".restoring"  # the journal being restored, until it is squared and renamed
NO_BACKUP = "no matching backup files"  # what `litestream restore` says for an empty path
OUTPUT_LINES = 8  # lines of Litestream's output quoted when it fails


@dataclass(frozen=True)
class RestoreReport:
    """What came back: calls per state, and what was squared with this machine."""

    site: str
    source: str  # s3://bucket/path/
    db_path: Path
    states: dict[str, int]
    uncached: int  # rows whose cached file was not here
    lost: int  # pending or failed rows without their audio, now `lost`

    @property
    def calls(self) -> int:
        return sum(self.states.values())


def journal_files(db: Path) -> list[Path]:
    """The journal and its SQLite sidecars."""
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


async def restore_from_replica(
    settings: Settings,
    *,
    site: str | None = None,
    clock: WallClock = system_clock,
    environ: Mapping[str, str] | None = None,
) -> RestoreReport:
    """Restore the journal of `site` (default: this node's) to `settings.db_path`.

    Raises `ConfigError` (no S3, no litestream, a journal already there, a server running)
    or `ReplicaError` (no replica for that site, or Litestream failed).
    """
    if not settings.s3_bucket:
        raise ConfigError(
            "S3_BUCKET is not set: the journal's replica lives in the bucket. Give this machine"
            " the S3 settings of the site whose journal is restored"
        )
    binary = find_litestream(settings.litestream_bin)
    site = settings.site_name if site is None else site
    target = ReplicaTarget.from_settings(settings, site)
    db = settings.db_path.absolute()
    with hold_data_dir(settings.data_dir):  # no server may start on it meanwhile
        existing = [path for path in journal_files(db) if path.exists()]
        if existing:
            raise ConfigError(
                f"a journal already exists at {existing[0]}: restore never overwrites one."
                " Move it away (with its -wal and -shm files) and run restore again"
            )
        db.parent.mkdir(parents=True, exist_ok=True)
        restoring = db.with_name(db.name + RESTORING_SUFFIX)
        for leftover in journal_files(restoring):  # from an interrupted restore
            leftover.unlink(missing_ok=True)
        await _litestream_restore(binary, settings, target, db, restoring, environ)
        states, uncached, lost = await _square(restoring, settings, target, clock)
        await trio.to_thread.run_sync(_move_into_place, restoring, db)
    return RestoreReport(site, target.url, db, states, uncached, lost)


async def _litestream_restore(
    binary: Path,
    settings: Settings,
    target: ReplicaTarget,
    db: Path,
    out: Path,
    environ: Mapping[str, str] | None,
) -> None:
    """`litestream restore` of the replica at `target` into `out`."""
    config = litestream_config(db, target)
    del config["logging"]  # plain text: its message is quoted to the operator
    with tempfile.TemporaryDirectory(prefix="tr-vault-restore-") as directory:
        config_path = Path(directory) / CONFIG_NAME
        write_config(config_path, config)
        command = [binary, "restore", "-no-expand-env", "-config", config_path, "-o", out, db]
        result = await trio.run_process(
            [str(part) for part in command],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            env=litestream_env(settings, os.environ if environ is None else environ),
            check=False,
        )
    output = result.stdout.decode(errors="replace").strip()
    if result.returncode == 0 and out.is_file():
        return
    if NO_BACKUP in output.lower():
        raise ReplicaError(
            f"no journal replica of site {target.path.rsplit('/', 1)[-1]!r} at {target.url}:"
            " nothing was restored. Check the site (--site; this node is"
            f" {settings.site_name!r}, TR_VAULT_SITE), S3_BUCKET and S3_PREFIX, and that"
            " TR_VAULT_JOURNAL_REPLICA=true was set where that journal was written"
        )
    quoted = "\n".join(output.splitlines()[-OUTPUT_LINES:]) or "(no output)"
    raise ReplicaError(
        f"litestream restore from {target.url} failed (exit {result.returncode}):\n{quoted}"
    )


async def _square(
    path: Path, settings: Settings, target: ReplicaTarget, clock: WallClock
) -> tuple[dict[str, int], int, int]:
    """Open the restored journal (migrations apply), square it with this machine's cache, and
    leave it as one file (no -wal), ready to be renamed."""
    journal = await Journal.open(path, clock=clock, site=settings.site_name)
    try:
        cache = AudioCache(settings.audio_dir)
        now = clock()
        uncached, lost = await journal.call(square_with_cache, cache, to_db(now), target.url)
        await journal.call(
            set_store_health,
            HEALTH_NAME,
            "unknown",
            now,
            None,
            f"journal restored from {target.url} at {to_db(now)}; not replicated from this"
            " machine yet",
            None,
        )
        states = await journal.call(count_states)
        await journal.call(_as_one_file)
    finally:
        await journal.close()
    return states, uncached, lost


def square_with_cache(
    conn: sqlite3.Connection, cache: AudioCache, at: str, source: str
) -> tuple[int, int]:
    """Rows whose audio is not in `cache`: cached ones get `cached = 0` (event `uncached`);
    pending and failed ones become `lost` (event `lost`). Returns (uncached, lost).

    One event per row: a restore is rare, and "why is call N not cached" must have an answer
    in its history (measured: ~1.6 s for 100,000 rows on a 2-core machine).
    """
    rows = conn.execute(
        "SELECT id, key, state, cached FROM calls"
        " WHERE cached = 1 OR state IN ('pending', 'failed')"
    ).fetchall()
    missing = [row for row in rows if not _in_cache(cache, row["key"])]
    uncached = [row["id"] for row in missing if row["cached"]]
    lost = [(row["id"], row["state"]) for row in missing if row["state"] in ("pending", "failed")]
    with transaction(conn):
        for call_id in uncached:
            conn.execute("UPDATE calls SET cached = 0 WHERE id = ?", (call_id,))
            add_event(
                conn,
                call_id,
                at,
                "uncached",
                f"journal restored from {source}: the cached file is not on this machine; a done"
                " call plays from S3",
            )
        for call_id, state in lost:
            why = (
                f"journal restored from {source}: the audio is not on this machine and was never"
                f" uploaded (the call was {state}), so it cannot be uploaded"
            )
            conn.execute(
                "UPDATE calls SET state = 'lost', last_error = ?, next_attempt_at = NULL,"
                " claimed_by = NULL, claimed_at = NULL, claim_expires_at = NULL WHERE id = ?",
                (why, call_id),
            )
            add_event(conn, call_id, at, "lost", why)
    return len(uncached), len(lost)


def _in_cache(cache: AudioCache, key: str) -> bool:
    try:
        return cache.path(key).is_file()
    except ValueError:  # a key that is no safe path was never a file of ours
        return False


def count_states(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT state, count(*) FROM calls GROUP BY state ORDER BY state")
    return {state: n for state, n in rows}


def _as_one_file(conn: sqlite3.Connection) -> None:
    """Fold the WAL into the file and drop it, so a rename moves the whole journal. (Litestream
    watches no such file; the next open turns WAL mode back on.)"""
    mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
    if str(mode).lower() != "delete":
        raise ReplicaError(f"the restored journal stayed in {mode} mode; nothing was moved")


def _move_into_place(restoring: Path, db: Path) -> None:
    if any(path.exists() for path in journal_files(restoring)[1:]):
        raise ReplicaError(f"{restoring} still has a -wal or -shm file; nothing was moved")
    fsync_path(restoring)
    restoring.replace(db)
    fsync_path(db.parent)
