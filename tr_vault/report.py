"""Read-only views of the journal for the CLI (the server may be running meanwhile)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import click

from tr_vault.config import Settings
from tr_vault.journal import connect


def status_summary(conn: sqlite3.Connection) -> dict[str, Any]:
    states = {
        row["state"]: {"calls": row["n"], "bytes": row["bytes"]}
        for row in conn.execute(
            "SELECT state, count(*) AS n, coalesce(sum(size), 0) AS bytes FROM calls GROUP BY state"
        )
    }
    for state in ("pending", "done", "failed"):
        states.setdefault(state, {"calls": 0, "bytes": 0})
    oldest = conn.execute(
        "SELECT id, received_at FROM calls WHERE state = 'pending' ORDER BY received_at, id LIMIT 1"
    ).fetchone()
    last_error = conn.execute(
        "SELECT id, last_error, received_at FROM calls WHERE last_error IS NOT NULL"
        " ORDER BY coalesce(claimed_at, received_at) DESC, id DESC LIMIT 1"
    ).fetchone()
    cached = conn.execute(
        "SELECT count(*), coalesce(sum(size), 0) FROM calls WHERE cached = 1"
    ).fetchone()
    return {
        "states": states,
        "oldest_pending": dict(oldest) if oldest else None,
        "last_error": dict(last_error) if last_error else None,
        "cached": {"calls": cached[0], "bytes": cached[1]},
    }


def print_status(settings: Settings, *, as_json: bool) -> None:
    path = settings.db_path
    if not path.exists():
        raise click.ClickException(f"no journal at {path} (TR_VAULT_DB / TR_VAULT_DATA_DIR)")
    conn = connect(path, readonly=True)
    try:
        summary = status_summary(conn)
    finally:
        conn.close()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"journal: {path}")
    for state, v in summary["states"].items():
        click.echo(f"{state:>8}: {v['calls']} calls, {v['bytes']} bytes")
    cached = summary["cached"]
    click.echo(f"  cached: {cached['calls']} calls, {cached['bytes']} bytes")
    oldest = summary["oldest_pending"]
    click.echo(
        f"oldest pending: call {oldest['id']} received {oldest['received_at']}" if oldest
        else "oldest pending: none"
    )  # fmt: skip
    err = summary["last_error"]
    click.echo(f"last error: call {err['id']}: {err['last_error']}" if err else "last error: none")
