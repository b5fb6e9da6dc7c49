"""Read-only views of the journal for the CLI (the server may be running meanwhile)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict
from typing import Any

import click

from tr_vault.config import Settings
from tr_vault.journal import call_events, connect, failed_calls, get_call, retry, status_summary
from tr_vault.restore import RestoreReport
from tr_vault.services.pruner import PruneReport
from tr_vault.timefmt import system_clock


def _open(settings: Settings, *, readonly: bool) -> sqlite3.Connection:
    path = settings.db_path
    if not path.exists():
        raise click.ClickException(f"no journal at {path} (TR_VAULT_DB / TR_VAULT_DATA_DIR)")
    return connect(path, readonly=readonly)


def _forward(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """The relay's destinations, or none on a journal from before forwarding (migration 0007)."""
    from tr_vault.forward.queue import forward_summary

    try:
        return forward_summary(conn, system_clock())
    except sqlite3.OperationalError:
        return []


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
        summary["forward"] = _forward(conn)
    finally:
        conn.close()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"journal: {path}")
    store = summary.get("store")
    if store is not None:
        line = f"   store: {store['name']} {store['state'].upper()} since {store['since']}"
        if store["state"] != "up" and store["last_error"]:
            line += f": {store['last_error']}"
        click.echo(line + f" (last probe {store['checked_at'] or 'never'})")
    replica = summary.get("replica")
    if replica is not None:
        line = f" replica: litestream {replica['state'].upper()} since {replica['since']}"
        if replica["state"] != "up" and replica["last_error"]:
            line += f": {replica['last_error']}"
        line += f" (last sync {replica['checked_at'] or 'never'})"
        if not settings.journal_replica:
            line += "; TR_VAULT_JOURNAL_REPLICA is off now"
        click.echo(line)
    for state, v in summary["states"].items():
        click.echo(f"{state:>8}: {v['calls']} calls, {v['bytes']} bytes")
    if summary["forward"]:
        from tr_vault.forward.cli import format_destination

        for row in summary["forward"]:
            click.echo(f" forward: {format_destination(row)}")
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


def print_call(settings: Settings, call_id: int, *, as_json: bool) -> None:
    conn = _open(settings, readonly=True)
    try:
        row = get_call(conn, call_id)
        if row is None:
            raise click.ClickException(f"no call {call_id}")
        events = call_events(conn, call_id)
    finally:
        conn.close()
    if as_json:
        data = {"call": asdict(row), "events": [asdict(e) for e in events]}
        click.echo(json.dumps(data, indent=2))
        return
    for name, value in asdict(row).items():
        if value is not None and name != "metadata":
            click.echo(f"{name:>16}: {value}")
    click.echo("events:")
    for e in events:
        click.echo(f"  {e.at}  {e.kind:<14} {e.detail or ''}")


def print_failed(settings: Settings, *, as_json: bool, state: str = "failed") -> None:
    conn = _open(settings, readonly=True)
    try:
        rows = failed_calls(conn, state=state)
    finally:
        conn.close()
    if as_json:
        click.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    if not rows:
        click.echo(f"no {state} calls")
    for r in rows:
        click.echo(f"{r.id}\t{r.key}\tattempts={r.attempts}\t{r.last_error}")


def print_prune(report: PruneReport) -> None:
    verb = "would" if report.dry_run else "did"
    size = "uncapped" if report.cached_bytes is None else f"{report.cached_bytes} bytes"
    click.echo(f"cache: {size}; {report.heads} HEAD requests")
    for d in report.decisions:
        click.echo(f"{d.action:>8}  call {d.candidate.id}  {d.candidate.key}  ({d.why})")
    click.echo(
        f"{verb} delete {report.count('delete')} files ({report.freed_bytes} bytes),"
        f" keep {report.count('keep')}, re-upload {report.count('reupload')}"
        + ("" if report.finished else "; the pass hit its deadline")
    )


def print_restore(report: RestoreReport, *, this_site: str) -> None:
    click.echo(
        f"restored the journal of site {report.site!r} from {report.source} into"
        f" {report.db_path}: {report.calls} calls"
    )
    for state, n in report.states.items():
        click.echo(f"{state:>8}: {n} calls")
    click.echo(
        f"uncached: {report.uncached} calls had no file in this machine's cache (a done call"
        " plays from S3)"
    )
    if report.lost:
        click.echo(
            f"    lost: {report.lost} pending or failed calls had no audio here and were never"
            " uploaded: now `lost` (tr-vault audit --lost)"
        )
    if report.site != this_site:
        click.echo(
            f"note: this node is site {this_site!r}: set TR_VAULT_SITE={report.site} to carry on"
            f" as that site (upload and prune its calls, replicate to its journal/{report.site}/)"
        )
    click.echo("next: tr-vault serve")
