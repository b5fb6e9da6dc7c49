-- tr_vault journal, version 5: the bucket is the archive.
--
-- * `lost`: a `done` call whose object `tr-vault verify` found missing or changed while no local
--   copy was left to upload again. Never silently kept `done`: an event says what was found.
-- * `site`: the site (TR_VAULT_SITE, else the host name) that received the call. Each node
--   uploads, prunes and verifies only its own rows, and NULL (rows from before 0005) is this node.
-- * `rebuilt`: set on rows `tr-vault rebuild --from-bucket` made: `metadata` when the object
--   described itself, `key` when only its key, size and ETag were there to go on.
-- * `checked_at`: the last time `verify` found the object intact (the light verify samples the
--   least recently checked first).
--
-- A CHECK constraint cannot change with ALTER TABLE, so `calls` is rebuilt keeping every id, as
-- in 0003 (see there for why the foreign keys are deferred).

PRAGMA defer_foreign_keys = ON;

CREATE TEMP TABLE calls_copy AS SELECT * FROM main.calls;

DROP TABLE main.calls;

CREATE TABLE main.calls (
    id              INTEGER PRIMARY KEY,
    protocol        TEXT    NOT NULL,            -- rdio | rdio-tr | openmhz
    system          TEXT    NOT NULL,            -- rdio: numeric system id; OpenMHz: short name
    system_label    TEXT,                        -- the system's short name when known
    talkgroup       INTEGER NOT NULL,
    talkgroup_label TEXT,
    talkgroup_tag   TEXT,
    talkgroup_group TEXT,
    source          INTEGER,                     -- first unit id heard, when known
    frequency       INTEGER,                     -- Hz
    start_time      TEXT    NOT NULL,            -- call start, UTC
    stop_time       TEXT,
    duration        REAL,                        -- seconds
    emergency       INTEGER NOT NULL DEFAULT 0,
    audio_name      TEXT    NOT NULL,            -- the file name the recorder sent
    metadata        TEXT    NOT NULL,            -- every received field, as JSON
    key             TEXT    NOT NULL UNIQUE,     -- {system}/{YYYY-MM-DD}/{file} under the audio dir and the bucket prefix
    content_type    TEXT    NOT NULL,
    size            INTEGER NOT NULL,
    sha256          TEXT    NOT NULL,
    md5             TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'done', 'failed', 'lost')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,                        -- when a pending row is due
    claimed_by      TEXT,                        -- upload worker run holding the row
    claimed_at      TEXT,
    last_error      TEXT,
    received_at     TEXT    NOT NULL,
    uploaded_at     TEXT,
    etag            TEXT,
    verified_at     TEXT,
    cached          INTEGER NOT NULL DEFAULT 1,  -- 1 while the local file exists
    pruned_at       TEXT,
    claim_expires_at TEXT,                       -- 0002: the worker's lease on the row ends then
    -- A row stored before 0003 that is the same call as that earlier row (see 0003). NULL
    -- for every call stored since.
    duplicate_of    INTEGER REFERENCES calls (id),
    bucket          TEXT,                        -- 0004: where the verified object went
    object_key      TEXT,
    site            TEXT,                        -- 0005: the site that received the call (NULL: this node, before 0005)
    rebuilt         TEXT CHECK (rebuilt IN ('metadata', 'key')),  -- 0005: a row rebuilt from the bucket, from what
    checked_at      TEXT                         -- 0005: the last time `verify` found the object intact
);
CREATE INDEX calls_duplicate_of ON calls (duplicate_of) WHERE duplicate_of IS NOT NULL;

INSERT INTO main.calls (
    id, protocol, system, system_label, talkgroup, talkgroup_label, talkgroup_tag,
    talkgroup_group, source, frequency, start_time, stop_time, duration, emergency,
    audio_name, metadata, key, content_type, size, sha256, md5, state, attempts,
    next_attempt_at, claimed_by, claimed_at, last_error, received_at, uploaded_at, etag,
    verified_at, cached, pruned_at, claim_expires_at, duplicate_of, bucket, object_key)
SELECT
    id, protocol, system, system_label, talkgroup, talkgroup_label, talkgroup_tag,
    talkgroup_group, source, frequency, start_time, stop_time, duration, emergency,
    audio_name, metadata, key, content_type, size, sha256, md5, state, attempts,
    next_attempt_at, claimed_by, claimed_at, last_error, received_at, uploaded_at, etag,
    verified_at, cached, pruned_at, claim_expires_at, duplicate_of, bucket, object_key
FROM calls_copy ORDER BY id;

DROP TABLE temp.calls_copy;

CREATE UNIQUE INDEX calls_identity ON calls (sha256, talkgroup, substr(start_time, 1, 19))
    WHERE duplicate_of IS NULL;

-- The indexes of 0001 and 0002, as they were.
CREATE INDEX calls_due ON calls (state, next_attempt_at);
-- size rides along so the cache's total (sum(size) WHERE cached = 1) is read from the index.
CREATE INDEX calls_prunable ON calls (cached, state, uploaded_at, size);
-- counts and bytes per state (summary, metrics) without reading the table.
CREATE INDEX calls_state_size ON calls (state, size);
CREATE INDEX calls_system_start ON calls (system, start_time);
CREATE INDEX calls_talkgroup_start ON calls (talkgroup, start_time);
CREATE INDEX calls_received ON calls (received_at);
CREATE INDEX calls_claimed ON calls (claim_expires_at) WHERE claimed_by IS NOT NULL;
CREATE INDEX calls_site_state ON calls (site, state);
