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
@click.option("--lost", is_flag=True, help="List lost calls (verify found no object, no copy).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def audit(call_id: int | None, failed: bool, lost: bool, as_json: bool) -> None:
    """The journal summary; or one call's history; or the failures; or the lost calls."""
    from tr_vault.report import print_call, print_failed, print_status

    settings = _settings()
    if call_id is not None:
        print_call(settings, call_id, as_json=as_json)
    elif failed or lost:
        print_failed(settings, as_json=as_json, state="lost" if lost else "failed")
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
@click.option("--since", help="Calls received since: a date/time (UTC) or a duration ago (24h).")
@click.option("--until", help="Calls received before: a date/time (UTC) or a duration ago.")
@click.option("--system", "systems", multiple=True, help="Only this system (id or short name).")
@click.option("--sample", type=click.IntRange(min=1), help="Check a random sample of N calls.")
@click.option("--deep", is_flag=True, help="Download and re-hash the bytes, not just HEAD.")
@click.option("--parallel", type=click.IntRange(1, 256), default=16, show_default=True)
@click.option("--rate", type=click.FloatRange(min=0.1), help="At most N requests a second.")
@click.option("--site", help="Check this site's calls (default: this node's, TR_VAULT_SITE).")
@click.option(
    "--all-sites", is_flag=True, help="Check every site's calls in the catalog; change nothing."
)
@click.option("--catalog", help="The catalog for --all-sites (default: DATA_DIR/catalog.db).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def verify(
    since: str | None,
    until: str | None,
    systems: tuple[str, ...],
    sample: int | None,
    deep: bool,
    parallel: int,
    rate: float | None,
    site: str | None,
    all_sites: bool,
    catalog: str | None,
    as_json: bool,
) -> None:
    """Check that the bucket holds every `done` call, intact (HEAD: size and SHA-256).

    A missing or changed object whose audio is still cached goes back to the upload queue; one
    with no local copy is marked `lost`. Only this node's calls are changed; --site of another
    node and --all-sites only report. Exits 0 when every call checked out, 1 otherwise.
    """
    import json
    from functools import partial

    import trio

    from tr_vault.objectmeta import safe_site
    from tr_vault.progress import Tally, print_summary
    from tr_vault.timefmt import system_clock
    from tr_vault.verify import Finding, Selection, VerifyRequest, parse_when, verify_from_settings

    settings = _settings()
    if all_sites and site:
        raise click.UsageError("give --site or --all-sites, not both")
    if catalog and not all_sites:
        raise click.UsageError("--catalog goes with --all-sites")
    now = system_clock()
    try:
        selection = Selection(
            since=parse_when(since, now) if since else None,
            until=parse_when(until, now) if until else None,
            systems=systems,
            site=None if all_sites else safe_site(site) if site else settings.site_name,
            sample=sample,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if all_sites and not catalog:
        catalog = str(settings.data_dir / "catalog.db")
    request = VerifyRequest(
        selection,
        deep=deep,
        parallel=parallel,
        rate=rate,
        catalog=catalog,
        # Another node's rows are that node's to act on: report only.
        act=selection.site == settings.site_name,
    )
    tally = Tally("verify", None)

    def on_result(finding: Finding) -> None:
        tally.advance(finding.outcome.value)

    try:
        with tally.shown(enabled=not as_json):
            report = trio.run(
                partial(
                    verify_from_settings,
                    settings,
                    request,
                    on_total=tally.set_total,
                    on_result=on_result,
                )
            )
    except TrVaultError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for f in report.findings:
            click.echo(
                f"{f.outcome.value:<9} call {f.target.id} {f.target.object_key or f.target.key}:"
                f" {f.detail}" + (f" -> {f.action}" if f.action else "")
            )
        rows: dict[str, object] = {"checked": report.checked}
        rows.update({k: v for k, v in sorted(report.counts.items())})
        rows.update({f"action {k}": v for k, v in sorted(report.actions.items())})
        rows["S3 requests"] = report.requests
        rows["seconds"] = f"{report.seconds:.1f}"
        rate_done = report.checked / report.seconds if report.seconds else 0.0
        rows["calls/s"] = f"{rate_done:.0f}"
        print_summary("verify", rows)
    sys.exit(0 if report.clean else 1)


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
