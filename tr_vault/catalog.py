"""The catalog: every site's calls in one SQLite file, for cross-site search with SQL.

Several sites sharing a bucket each keep their own journal, and each journal holds only the
calls that site received. `tr-vault rebuild --from-bucket --all-sites` reads the bucket and
writes every site's rows into a separate file with the journal's own schema (the journal
migrations create it), so the queries that work on a journal work on it too. No server ever
writes to it, and building it never touches this node's journal.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tr_vault.errors import ConfigError

if TYPE_CHECKING:
    from tr_vault.config import Settings

CATALOG_NAME = "catalog.db"


def catalog_path(settings: Settings, given: str | Path | None = None) -> Path:
    """`given`, else `{data_dir}/catalog.db`; never the journal itself (it would mix this
    node's rows, which its workers act on, with every other site's)."""
    path = Path(given) if given else settings.data_dir / CATALOG_NAME
    if path.resolve() == settings.db_path.resolve():
        raise ConfigError(
            f"the catalog {path} is this node's journal (TR_VAULT_DB): give --catalog another"
            " file; without --all-sites, rebuild writes the journal"
        )
    return path
