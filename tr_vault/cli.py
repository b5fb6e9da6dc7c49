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


if __name__ == "__main__":
    main()
