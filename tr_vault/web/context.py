"""What the HTTP routes need, passed in explicitly (no globals, no `current_app` lookups)."""

from __future__ import annotations

from dataclasses import dataclass

from tr_vault.cache import AudioCache
from tr_vault.config import Settings
from tr_vault.intake.store import Intake
from tr_vault.journal import Journal
from tr_vault.metrics import Metrics
from tr_vault.replica import Replica
from tr_vault.services.store_health import StoreHealth
from tr_vault.storage.base import ObjectStore
from tr_vault.web.pending import PendingUploads


@dataclass
class WebContext:
    settings: Settings
    journal: Journal
    cache: AudioCache
    intake: Intake
    metrics: Metrics
    store: ObjectStore | None = None
    health: StoreHealth | None = None
    replica: Replica | None = None  # the journal's replica (TR_VAULT_JOURNAL_REPLICA)
    # Broadcastify metadata waiting for its audio PUT, by token (web/broadcastify.py)
    pending_uploads: PendingUploads | None = None
