"""`tr-vault forward status | backfill | retry`: thin commands over the relay's queue."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from tr_vault.config import Settings
    from tr_vault.forward.base import Destination


def _open(settings: Settings) -> sqlite3.Connection:
    from tr_vault.journal import connect, migrate

    if not settings.db_path.exists():
        raise click.ClickException(
            f"no journal at {settings.db_path} (TR_VAULT_DB / TR_VAULT_DATA_DIR)"
        )
    conn = connect(settings.db_path)
    migrate(conn)  # a journal last served before forwarding existed gets its tables
    return conn


def _destinations(settings: Settings) -> list[Destination]:
    from tr_vault.errors import TrVaultError
    from tr_vault.forward.config import load_destinations

    try:
        found = load_destinations(settings.forward_file)
    except TrVaultError as exc:
        raise click.UsageError(str(exc)) from None  # exit 2, as `import --forward`
    if not found:
        raise click.UsageError("TR_VAULT_FORWARD_FILE is not set or names no destinations")
    return found


def _one(settings: Settings, name: str) -> Destination:
    found = _destinations(settings)
    for d in found:
        if d.name == name:
            return d
    names = ", ".join(d.name for d in found)
    raise click.UsageError(f"no destination {name!r} in {settings.forward_file} (there: {names})")


def parse_since(text: str, now: float) -> float:
    """`--since`: an ISO date or time (UTC unless it says), or a duration ago (`7d`, `12h`)."""
    from tr_vault.durations import parse_duration

    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: use a date (2025-11-24), a time or a duration (7d)"
        ) from None
    if when.tzinfo is None:
        from datetime import UTC

        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def register(group: click.Group, settings_of: Callable[[], Settings]) -> None:
    """Add the `forward` subcommands to `group` (`settings_of` reads the settings)."""

    @group.command("status")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
    def status(as_json: bool) -> None:
        """Each destination: its state, deliveries by state, lag and last error."""
        from tr_vault.forward.queue import forward_summary
        from tr_vault.timefmt import system_clock

        settings = settings_of()
        conn = _open(settings)
        try:
            rows = forward_summary(conn, system_clock())
        finally:
            conn.close()
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            click.echo("no destinations (TR_VAULT_FORWARD_FILE)")
        for row in rows:
            click.echo(format_destination(row))

    @group.command("backfill")
    @click.option("--destination", "name", required=True, help="The destination's name.")
    @click.option(
        "--since", help="Only calls received since: a date, a time or a duration ago (7d)."
    )
    def backfill(name: str, since: str | None) -> None:
        """Queue the calls already stored for DESTINATION (its filters apply; a re-run adds
        nothing). A running server sends them within seconds, oldest first."""
        from tr_vault.forward.queue import backfill as run_backfill
        from tr_vault.timefmt import system_clock

        settings = settings_of()
        destination = _one(settings, name)
        now = system_clock()
        start = parse_since(since, now) if since else None
        conn = _open(settings)
        try:
            added = run_backfill(conn, destination, start, now)
        finally:
            conn.close()
        click.echo(f"queued {added} call(s) for {name}")

    @group.command("retry")
    @click.option("--destination", "name", required=True, help="The destination's name.")
    @click.option("--failed", is_flag=True, help="Also re-queue its failed and skipped deliveries.")
    def retry(name: str, failed: bool) -> None:
        """Make DESTINATION's pending deliveries due now and re-probe it if misconfigured;
        with --failed, its failed and skipped deliveries start again with fresh attempts."""
        from tr_vault.forward.queue import retry_deliveries
        from tr_vault.timefmt import system_clock

        settings = settings_of()
        _one(settings, name)
        conn = _open(settings)
        try:
            moved = retry_deliveries(conn, name, system_clock(), failed=failed)
        finally:
            conn.close()
        click.echo(f"re-queued {moved} delivery(ies) for {name}")


def format_destination(row: dict[str, Any]) -> str:
    """One line per destination, for `forward status` and `tr-vault status`."""
    d = row["deliveries"]
    line = (
        f"{row['name']}: {row['state'].upper()}  pending {d['pending']}, done {d['done']},"
        f" failed {d['failed']}, skipped {d['skipped']}; lag {row['lag_seconds']:.0f} s"
    )
    if row["state"] in ("down", "misconfigured") and row["last_error"]:
        line += f"; {row['last_error']}"
    return line
