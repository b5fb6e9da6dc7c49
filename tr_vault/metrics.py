"""Prometheus metrics, every name prefixed `tr_vault_`, in a registry owned by the app.

Counters and the latency histogram are updated where things happen; the gauges of journal
state (pending, failed, cached bytes) are read from the journal at scrape time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from tr_vault.replica import ReplicaStatus
    from tr_vault.services.store_health import StoreStatus

UPLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls_received = Counter(
            "tr_vault_calls_received",
            "Uploads received, by protocol and result (stored, duplicate, refused status).",
            ["protocol", "result"],
            registry=r,
        )
        self.upload_attempts = Counter(
            "tr_vault_upload_attempts",
            "Uploads to S3 attempted, by result.",
            ["result"],
            registry=r,
        )
        self.upload_failures = Counter(
            "tr_vault_upload_failures",
            "Calls whose upload was given up (state failed).",
            registry=r,
        )
        self.upload_seconds = Histogram(
            "tr_vault_upload_duration_seconds",
            "Time of a successful upload: PUT and verifying HEAD.",
            buckets=UPLOAD_BUCKETS,
            registry=r,
        )
        self.prune_deletions = Counter(
            "tr_vault_prune_deletions", "Cached files the pruner deleted.", registry=r
        )
        self.prune_deleted_bytes = Counter(
            "tr_vault_prune_deleted_bytes", "Bytes the pruner freed.", registry=r
        )
        self.prune_skips = Counter(
            "tr_vault_prune_skips", "Prune candidates kept, by reason.", ["reason"], registry=r
        )
        self.head_errors = Counter(
            "tr_vault_head_errors", "HEAD requests that failed (not a clear 404).", registry=r
        )
        self.calls_pending = Gauge("tr_vault_calls_pending", "Calls waiting for S3.", registry=r)
        self.calls_failed = Gauge("tr_vault_calls_failed", "Calls whose upload failed.", registry=r)
        self.calls_lost = Gauge(
            "tr_vault_calls_lost",
            "Calls whose object verify found missing or changed with no local copy left.",
            registry=r,
        )
        self.verify_results = Counter(
            "tr_vault_verify_results",
            "Objects checked by the scheduled verify, by outcome (ok, missing, changed,"
            " unchecked).",
            ["outcome"],
            registry=r,
        )
        self.verify_last_run = Gauge(
            "tr_vault_verify_last_run_timestamp_seconds",
            "When the scheduled verify last finished a pass, Unix time.",
            registry=r,
        )
        self.cached_bytes = Gauge("tr_vault_cached_bytes", "Bytes in the local cache.", registry=r)
        self.store_up = Gauge(
            "tr_vault_store_up",
            "1 while the object store answers the probe, 0 while it is down (uploads paused).",
            registry=r,
        )
        self.store_since = Gauge(
            "tr_vault_store_state_since_timestamp_seconds",
            "When the store's state (up or down) last changed, Unix time.",
            registry=r,
        )
        self.replica_up = Gauge(
            "tr_vault_replica_up",
            "1 while Litestream runs and syncs the journal to the bucket, else 0"
            " (only with TR_VAULT_JOURNAL_REPLICA).",
            registry=r,
        )
        self.replica_restarts = Counter(
            "tr_vault_replica_restarts",
            "Times the journal's Litestream child was restarted after it died.",
            registry=r,
        )
        self.forward_attempts = Counter(
            "tr_vault_forward_attempts",
            "Deliveries to forwarding destinations attempted, by destination and outcome.",
            ["destination", "outcome"],
            registry=r,
        )
        self.forward_deliveries = Gauge(
            "tr_vault_forward_deliveries",
            "Deliveries by destination and state (pending, done, failed, skipped).",
            ["destination", "state"],
            registry=r,
        )
        self.forward_lag = Gauge(
            "tr_vault_forward_lag_seconds",
            "Age of the destination's oldest pending delivery (0 when none waits).",
            ["destination"],
            registry=r,
        )
        self.forward_up = Gauge(
            "tr_vault_forward_up",
            "1 while the destination takes calls, 0 while it is down or misconfigured.",
            ["destination"],
            registry=r,
        )
        self.replica_last_sync = Gauge(
            "tr_vault_replica_last_sync_timestamp_seconds",
            "When Litestream last heard back from the bucket successfully, Unix time.",
            registry=r,
        )

    def set_forward(self, destinations: list[dict[str, Any]]) -> None:
        """The forwarding gauges from the journal's `forward` summary."""
        for d in destinations:
            for state, n in d["deliveries"].items():
                self.forward_deliveries.labels(d["name"], state).set(n)
            self.forward_lag.labels(d["name"]).set(d["lag_seconds"])
            self.forward_up.labels(d["name"]).set(1 if d["state"] in ("up", "unknown") else 0)

    def render(
        self,
        *,
        pending: int,
        failed: int,
        cached_bytes: int,
        lost: int = 0,
        store: StoreStatus | None = None,
        replica: ReplicaStatus | None = None,
    ) -> bytes:
        self.calls_pending.set(pending)
        self.calls_failed.set(failed)
        self.calls_lost.set(lost)
        self.cached_bytes.set(cached_bytes)
        if store is not None:
            self.store_up.set(1 if store.state.value == "up" else 0)
            self.store_since.set(store.since)
        if replica is not None:
            self.replica_up.set(1 if replica.state.value == "up" else 0)
            if replica.last_sync_at is not None:
                self.replica_last_sync.set(replica.last_sync_at)
        return generate_latest(self.registry)
