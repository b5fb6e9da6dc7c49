"""Read-only views of the journal for the CLI (the server may be running meanwhile)."""

from __future__ import annotations

import json
import sqlite3

import click

from tr_vault.config import Settings
from tr_vault.journal import connect, retry, status_summary
from tr_vault.timefmt import system_clock


def _open(settings: Settings, *, readonly: bool) -> sqlite3.Connection:
    path = settings.db_path
    if not path.exists():
        raise click.ClickException(f"no journal at {path} (TR_VAULT_DB / TR_VAULT_DATA_DIR)")
    return connect(path, readonly=readonly)


def retry_calls(settings: Settings, call_ids: list[int] | None) -> list[int]:
    conn = _open(settings, readonly=False)
    try:
        return retry(conn, system_clock(), call_ids)
    finally:
        conn.close()


def print_status(settings: Settings, *, as_json: bool) -> None:
    path = settings.db_path
    conn = _open(settings, readonly=True)
    try:
        summary = status_summary(conn, system_clock())
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
    click.echo(
        f"last error: call {err['id']} at {err['at']}: {err['error']}"
        if err
        else "last error: none"
    )
    click.echo(
        f"last hour: {summary['upload_errors_last_hour']} upload errors,"
        f" {summary['failed_last_hour']} calls failed"
    )
