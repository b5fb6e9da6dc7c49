"""The `tr-vault` command: thin wrappers that parse flags and call the library."""

from __future__ import annotations

import logging
import sys

import click

from tr_vault.config import Settings, load_settings
from tr_vault.errors import TrVaultError


def _settings() -> Settings:
    try:
        return load_settings()
    except TrVaultError as exc:
        click.echo(f"tr-vault: {exc}", err=True)
        sys.exit(2)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """tr_vault: a durable home for trunk-recorder call recordings.

    Settings come from TR_VAULT_* and S3_* environment variables and an optional .env file;
    see the README for every one and its default.
    """


@main.command()
def serve() -> None:
    """Run the server: intake, journal, upload workers and maintenance loops."""
    from tr_vault.app import run

    settings = _settings()
    _setup_logging(settings.log_level)
    try:
        run(settings)
    except TrVaultError as exc:
        click.echo(f"tr-vault: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def status(as_json: bool) -> None:
    """Counts per state, oldest pending call, last error and cached bytes, from the journal.

    Safe while the server runs: it only reads.
    """
    from tr_vault.report import print_status

    print_status(_settings(), as_json=as_json)


@main.command()
@click.option("--failed", "all_failed", is_flag=True, help="Re-queue every failed call.")
@click.option("--id", "call_ids", type=int, multiple=True, help="Re-queue this call (repeatable).")
def retry(all_failed: bool, call_ids: tuple[int, ...]) -> None:
    """Put failed calls back in the upload queue with a fresh set of attempts.

    A running server picks them up within 5 seconds.
    """
    from tr_vault.report import retry_calls

    if all_failed == bool(call_ids):
        raise click.UsageError("give either --failed or one or more --id N")
    ids = retry_calls(_settings(), None if all_failed else list(call_ids))
    click.echo(f"re-queued {len(ids)} call(s)" + (f": {', '.join(map(str, ids))}" if ids else ""))


@main.command()
@click.option("--call", "call_id", type=int, help="Print one call and its events.")
@click.option("--failed", is_flag=True, help="List failed calls with their last error.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def audit(call_id: int | None, failed: bool, as_json: bool) -> None:
    """The journal summary; or one call's history; or the failures."""
    from tr_vault.report import print_call, print_failed, print_status

    settings = _settings()
    if call_id is not None:
        print_call(settings, call_id, as_json=as_json)
    elif failed:
        print_failed(settings, as_json=as_json)
    else:
        print_status(settings, as_json=as_json)


@main.command()
def check() -> None:
    """Test the S3 settings end to end: bucket, PUT, HEAD, presigned GET.

    Exits 0 when uploads and playback will work, 1 (with the reason) when not. The server
    itself never refuses to start over S3: calls wait in the cache while the store is down.
    """
    import tempfile
    from pathlib import Path

    import trio

    from tr_vault.app import open_store
    from tr_vault.storecheck import Step, check_store, passed

    settings = _settings()
    try:
        store = open_store(settings)
    except TrVaultError as exc:
        click.echo(f"tr-vault: {exc}", err=True)
        sys.exit(2)
    if store is None:
        click.echo("local-only mode (S3_BUCKET is not set): nothing to check")
        return

    async def run() -> list[Step]:
        # The probe's local copy goes to a temp dir: the operator may not own the data dir.
        with tempfile.TemporaryDirectory(prefix="tr-vault-check-") as probe_dir:
            try:
                return await check_store(store, Path(probe_dir))
            finally:
                await store.aclose()

    click.echo(f"checking {store!r}")
    steps = trio.run(run)
    for step in steps:
        mark = "ok" if step.ok else ("FAIL" if step.required else "warn")
        click.echo(f"{mark:>4}  {step.name:<8} {step.detail}")
    if not passed(steps):
        click.echo("tr-vault check: S3 is not usable with these settings", err=True)
        sys.exit(1)
    click.echo("S3 works: uploads and playback of pruned calls will succeed")


@main.command()
@click.option("--dry-run", is_flag=True, help="HEAD and decide, but delete nothing.")
def prune(dry_run: bool) -> None:
    """Run one cache-pruner pass now and show what went (or would go) and why."""
    from functools import partial

    import trio

    from tr_vault.app import prune_once
    from tr_vault.report import print_prune

    settings = _settings()
    try:
        report = trio.run(partial(prune_once, settings, dry_run=dry_run))
    except TrVaultError as exc:
        raise click.ClickException(str(exc)) from None
    print_prune(report)


if __name__ == "__main__":
    main()
