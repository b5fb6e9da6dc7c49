-- tr_vault journal, version 7: the journal is the relay's queue too.
--
-- * `deliveries`: one row per call and destination (TR_VAULT_FORWARD_FILE), created in the
--   transaction that commits the call (or by `tr-vault import --forward` / `forward backfill`).
--   `pending` rows are taken oldest call first per destination, on leases as uploads are;
--   `done` once the destination confirmed it (or already had it), `failed` when it refused
--   the call for good or its attempts are spent, `skipped` when it stayed pending longer than
--   the destination's give_up_after. Every attempt is also an event on the call.
-- * `destination_health`: each destination's state as the workers last saw it. Not rows of
--   store_health: its CHECK has no `misconfigured`, and a CHECK cannot change without a
--   rebuild of the table.

CREATE TABLE deliveries (
    id               INTEGER PRIMARY KEY,
    call_id          INTEGER NOT NULL REFERENCES calls (id),
    destination      TEXT    NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'done', 'failed', 'skipped')),
    attempts         INTEGER NOT NULL DEFAULT 0,   -- attempts charged to this call (not outages)
    next_attempt_at  TEXT,                         -- when a pending row is due
    claimed_by       TEXT,                         -- delivery worker run holding the row
    claim_expires_at TEXT,                         -- the lease ends then
    last_answer      TEXT,                         -- what the destination last said
    delivered_at     TEXT,
    created_at       TEXT    NOT NULL,
    UNIQUE (call_id, destination)
);
-- "due per destination, oldest call first", for the workers, lag and counts.
CREATE INDEX deliveries_due ON deliveries (destination, state, call_id);
CREATE INDEX deliveries_claimed ON deliveries (claim_expires_at) WHERE claimed_by IS NOT NULL;
-- The pruner's question: does this call still wait for a destination?
CREATE INDEX deliveries_pending_call ON deliveries (call_id) WHERE state = 'pending';

CREATE TABLE destination_health (
    name       TEXT PRIMARY KEY,
    state      TEXT NOT NULL CHECK (state IN ('unknown', 'up', 'down', 'misconfigured')),
    since      TEXT NOT NULL,   -- last change of state
    checked_at TEXT,            -- last attempt or probe
    last_error TEXT,            -- the last answer that made it down or misconfigured
    probe_requested_at TEXT     -- `tr-vault forward retry`: re-probe a misconfigured one now
);
