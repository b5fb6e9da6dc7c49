-- tr_vault journal, version 2: claims are leases, and the store's health is recorded.

-- A worker's claim on a pending row lasts until this time (the upload timeout plus a margin);
-- after it, the row may be claimed again and the old claim can no longer mark it.
ALTER TABLE calls ADD COLUMN claim_expires_at TEXT;
CREATE INDEX calls_claimed ON calls (claim_expires_at) WHERE claimed_by IS NOT NULL;

-- One row per store (today 's3'): what `tr-vault status` shows while or after the server runs.
CREATE TABLE store_health (
    name       TEXT PRIMARY KEY,
    state      TEXT NOT NULL CHECK (state IN ('unknown', 'up', 'down')),
    since      TEXT NOT NULL,   -- last change of state
    checked_at TEXT,            -- last probe
    last_error TEXT,            -- the last store-wide error, with what to do about it
    code       TEXT             -- its S3 error code, when the store sent one
);
