"""The `tr-vault` command: thin wrappers that parse flags and call the library."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from tr_vault.config import Settings, load_settings
from tr_vault.errors import TrVaultError

if TYPE_CHECKING:
    from tr_vault.forward.base import Destination


def _settings() -> Settings:
    try:
        return load_settings()
    except TrVaultError as exc:
        click.echo(f"tr-vault: {exc}", err=True)
        sys.exit(2)


def _setup_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr: key=value text, or JSON lines (`TR_VAULT_LOG_FORMAT=json`)."""
    from tr_vault.logformat import configure

    configure(level, log_format)


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
    _setup_logging(settings.log_level, settings.log_format)
    try:
        run(settings)
    except TrVaultError as exc:
        click.echo(f"tr-vault: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass
    except BaseExceptionGroup as group:
        # A start-up refusal raised inside a nursery (the replica's) arrives wrapped: it is
        # still one line for the operator, not a traceback. Anything else stays as it is.
        refusals, rest = group.split(TrVaultError)
        if refusals is None or rest is not None:
            raise
        for refusal in _leaves(refusals):
            click.echo(f"tr-vault: {refusal}", err=True)
        sys.exit(1)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


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
@click.option(
    "--from-bucket", is_flag=True, help="Rebuild from the objects in S3_BUCKET (the one source)."
)
@click.option("--site", help="Rebuild this site's calls (default: this node's, TR_VAULT_SITE).")
@click.option(
    "--all-sites",
    is_flag=True,
    help="Every site's calls into the catalog, not the journal (read-only over the bucket).",
)
@click.option("--catalog", help="The catalog for --all-sites (default: DATA_DIR/catalog.db).")
@click.option("--parallel", type=click.IntRange(1, 256), default=16, show_default=True)
@click.option("--rate", type=click.FloatRange(min=0.1), help="At most N HEAD requests a second.")
@click.option("--page-size", type=click.IntRange(1, 1000), default=1000, hidden=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def rebuild(
    from_bucket: bool,
    site: str | None,
    all_sites: bool,
    catalog: str | None,
    parallel: int,
    rate: float | None,
    page_size: int,
    as_json: bool,
) -> None:
    """Rebuild journal rows from the bucket, when no journal replica is left.

    Lists S3_PREFIX/audio/, HEADs every object no row knows and writes a `done`, uncached row
    from its metadata (or, for an object without tr_vault's metadata, from its key, size and
    ETag only: rebuilt = 'key'). Running it again adds nothing. The server must be stopped
    (the data directory's lock is taken); --all-sites writes the catalog instead and can run
    beside it. Exits 0 when nothing failed, 1 otherwise, 2 for bad settings.
    """
    import json
    from functools import partial

    import trio

    from tr_vault.progress import Tally, print_summary
    from tr_vault.rebuild import Finding, Outcome, RebuildRequest, rebuild_from_settings

    if not from_bucket:
        raise click.UsageError("say where from: --from-bucket (the only source so far)")
    if all_sites and site:
        raise click.UsageError("give --site or --all-sites, not both")
    if catalog and not all_sites:
        raise click.UsageError("--catalog goes with --all-sites")
    settings = _settings()
    request = RebuildRequest(
        site=site,
        all_sites=all_sites,
        catalog=catalog,
        parallel=parallel,
        rate=rate,
        page_size=page_size,
    )
    tally = Tally("rebuild", None)

    def on_result(finding: Finding) -> None:
        tally.advance(finding.outcome.value)

    try:
        with tally.shown(enabled=not as_json):
            target, report = trio.run(
                partial(
                    rebuild_from_settings,
                    settings,
                    request,
                    on_listed=tally.set_total,
                    on_result=on_result,
                )
            )
    except TrVaultError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo(
            "rebuild interrupted: the rows written so far stay; run it again to go on (objects"
            " a row knows cost no HEAD)",
            err=True,
        )
        sys.exit(130)
    if as_json:
        click.echo(
            json.dumps(
                {"target": {"kind": target.kind, "path": target.path, "site": target.scope.site}}
                | report.as_dict(),
                indent=2,
                ensure_ascii=False,
            )
        )
        sys.exit(0 if report.clean else 1)
    shown = 20
    for title, found, total in (
        ("error", report.errors, report.counts[Outcome.ERROR.value]),
        ("key-only", report.key_only, report.counts[Outcome.KEY.value]),
        ("not a call", report.not_a_call, report.counts[Outcome.NOT_A_CALL.value]),
    ):
        for f in found[:shown]:
            click.echo(f"{title:<10} {f.object_key}" + (f": {f.detail}" if f.detail else ""))
        if total > shown:
            click.echo(f"{title:<10} ... and {total - shown} more (--json lists {len(found)})")
    if report.counts[Outcome.KEY.value]:
        click.echo(
            "key-only objects carry no tr_vault metadata: their rows hold what the key, size and"
            " ETag tell (SELECT id, object_key FROM calls WHERE rebuilt = 'key')"
        )
    sites = ", ".join(f"{k or '(none)'}={v}" for k, v in sorted(report.sites.items()))
    rows: dict[str, object] = {
        "into": f"{target.kind} {target.path}",
        "site": target.scope.site or "(every site)",
        "listed": report.listed,
        "rebuilt from metadata": report.counts[Outcome.METADATA.value],
        "rebuilt from key only": report.counts[Outcome.KEY.value],
        "already known": report.counts[Outcome.KNOWN.value],
        "skipped (other sites)": report.counts[Outcome.OTHER_SITE.value],
        "skipped (not a call)": report.counts[Outcome.NOT_A_CALL.value],
        "errors": report.counts[Outcome.ERROR.value],
        "sites seen": sites or "-",
        "S3 requests": f"{report.requests} ({report.list_pages} LIST, {report.heads} HEAD)",
        "seconds": f"{report.seconds:.1f}",
        "objects/s": f"{report.listed / report.seconds:.0f}" if report.seconds else "-",
    }
    print_summary("rebuild --from-bucket", rows)
    if report.counts[Outcome.OTHER_SITE.value] and not (
        report.counts[Outcome.METADATA.value] or report.counts[Outcome.KEY.value]
    ):
        click.echo(
            "nothing of this site in the bucket: the objects name the sites above; was this"
            " node called otherwise (--site NAME, or TR_VAULT_SITE)?",
            err=True,
        )
    sys.exit(0 if report.clean else 1)


@main.command()
@click.option(
    "--from-replica",
    is_flag=True,
    help="From the journal's Litestream replica in the bucket ({prefix}/journal/{site}/).",
)
@click.option(
    "--site",
    help="Restore this site's journal (default: this node's, TR_VAULT_SITE or the host name),"
    " e.g. to move that site to this machine.",
)
def restore(from_replica: bool, site: str | None) -> None:
    """Bring a lost journal back from its replica (TR_VAULT_JOURNAL_REPLICA), before `serve`.

    Refuses when a journal exists at TR_VAULT_DB (move it away first). Calls whose audio is not
    in this machine's cache then play from S3; pending or failed calls without their audio
    cannot be uploaded any more and become `lost`. Exits 1 when there is no replica.
    """
    from functools import partial

    import trio

    from tr_vault.objectmeta import safe_site
    from tr_vault.report import print_restore
    from tr_vault.restore import restore_from_replica

    if not from_replica:
        raise click.UsageError("say where from: --from-replica (the journal's replica)")
    settings = _settings()
    _setup_logging(settings.log_level, settings.log_format)
    try:
        report = trio.run(
            partial(restore_from_replica, settings, site=safe_site(site) if site else None)
        )
    except TrVaultError as exc:
        click.echo(f"tr-vault: {exc}", err=True)
        sys.exit(1)
    print_restore(report, this_site=settings.site_name)


@main.command("import")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--link",
    is_flag=True,
    help="Hard-link each recording into the cache instead of copying it (copies across"
    " filesystems, and says so).",
)
@click.option(
    "--move",
    is_flag=True,
    help="Link (or copy) each call in, then remove its files from DIRECTORY: the recording,"
    " the other encodings beside it (the .wav next to the .m4a) and its call JSON.",
)
@click.option(
    "--system",
    help="File every call under this system short name (default: the call JSON's short_name,"
    " else the directory above YYYY/M/D).",
)
@click.option("--batch", type=click.IntRange(1, 5000), default=200, hidden=True)
@click.option(
    "--forward",
    is_flag=True,
    help="Queue each imported call for the destinations of TR_VAULT_FORWARD_FILE whose filters"
    " want it, as an upload would be.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def import_command(
    directory: str,
    link: bool,
    move: bool,
    system: str | None,
    batch: int,
    forward: bool,
    as_json: bool,
) -> None:
    """Import a trunk-recorder capture tree: each call JSON and its audio, as if uploaded.

    Walks DIRECTORY (captureDir, or any part of it: {shortName}/{YYYY}/{M}/{D}/...), takes one
    audio file per call (the .m4a before the .wav), journals it under the same key and by the
    same identity rules as an upload, and leaves it `pending` for the upload workers (`done` in
    local-only mode). Calls already in the vault are counted as duplicates: running it again
    adds nothing. Safe while the server runs, whose workers pick the calls up within seconds.
    Exits 0 when nothing was skipped, 1 when some files were (the rest is imported), 2 for
    usage errors.
    """
    import json
    from functools import partial
    from pathlib import Path

    import trio

    from tr_vault.importer import ImportRequest, Mode, check_root, import_tree
    from tr_vault.intake.fields import safe_name
    from tr_vault.progress import Tally, print_summary

    if link and move:
        raise click.UsageError("give --link or --move, not both")
    settings = _settings()
    try:
        root = Path(directory).absolute()
        check_root(root, settings)
        if system is not None:
            system = safe_name(system, "system short name")
    except (ValueError, TrVaultError) as exc:
        raise click.UsageError(str(exc)) from None
    mode = Mode.MOVE if move else Mode.LINK if link else Mode.COPY
    destinations: tuple[Destination, ...] = ()
    if forward:
        from tr_vault.forward.config import load_destinations

        try:
            destinations = tuple(load_destinations(settings.forward_file))
        except TrVaultError as exc:
            raise click.UsageError(str(exc)) from None
        if not destinations:
            raise click.UsageError("--forward: TR_VAULT_FORWARD_FILE names no destinations")
    request = ImportRequest(root, mode=mode, system=system, batch=batch, forward=destinations)
    tally = Tally("import", None)

    def on_progress(outcome: str, nbytes: int, items: int) -> None:
        tally.advance(outcome, nbytes=nbytes, items=items)

    try:
        with tally.shown(enabled=not as_json):
            report = trio.run(
                partial(
                    import_tree,
                    settings,
                    request,
                    on_total=tally.set_total,
                    on_progress=on_progress,
                )
            )
    except TrVaultError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo(
            "import interrupted: the calls committed so far stay; run it again to go on (they"
            " count as duplicates)",
            err=True,
        )
        sys.exit(130)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
        sys.exit(0 if report.clean else 1)
    shown: dict[str, int] = {}
    for item in report.skipped_files:
        shown[item.reason] = shown.get(item.reason, 0) + 1
        if shown[item.reason] <= 20:
            click.echo(f"skipped  {item.reason.value:<17} {item.path}: {item.detail}")
    for reason, total in sorted(report.skipped.items()):
        if total > 20:
            click.echo(f"skipped  {reason:<17} ... and {total - 20} more (--json lists them)")
    for how, n in sorted(report.link_fallbacks.items()):
        click.echo(f"{n} recording(s) {how}")
    rows: dict[str, object] = {
        "into": f"{settings.db_path} (new rows {report.state})",
        "mode": report.mode,
        "imported": report.imported,
        "duplicates": report.duplicates,
        "skipped": sum(report.skipped.values()),
    }
    rows.update({f"  {k}": v for k, v in sorted(report.skipped.items())})
    rows["imported MB"] = f"{report.bytes_imported / 1e6:.1f}"
    rows["read MB"] = f"{report.bytes_read / 1e6:.1f}"
    if mode is not Mode.COPY:
        rows["linked / copied"] = f"{report.linked} / {report.copied}"
    if mode is Mode.MOVE:
        rows["removed from the tree"] = report.sources_removed
    fate = "removed" if mode is Mode.MOVE else "left"
    rows[f"other encodings {fate} (the .wav)"] = report.alternates
    rows["transmission WAVs ignored"] = report.transmissions_ignored
    rows["seconds"] = f"{report.seconds:.1f}"
    rows["calls/s"] = f"{report.calls_per_second:.0f}"
    mb_s = report.bytes_read / report.seconds / 1e6 if report.seconds else 0.0
    rows["MB/s"] = f"{mb_s:.1f}"
    print_summary("import", rows)
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


@main.group()
def forward() -> None:
    """The relay: destinations of TR_VAULT_FORWARD_FILE and their deliveries."""


from tr_vault.forward import cli as _forward_cli  # noqa: E402  (registers the subcommands)

_forward_cli.register(forward, _settings)


if __name__ == "__main__":
    main()
