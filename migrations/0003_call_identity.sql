-- tr_vault journal, version 3: a call's identity is its audio's SHA-256 together with its
-- talkgroup and its start time to the second; not the protocol, and not the form of the
-- system's name (the rdio-scanner plugin sends the numeric id `11`, the OpenMHz plugin the
-- short name `metro`, for one and the same call). Equal bytes alone are not one call: silent or
-- tone-only WAVs of one length are byte-equal across different calls.
--
-- SQLite cannot drop the table-level UNIQUE (system, sha256) of 0001 with ALTER TABLE, so
-- `calls` is rebuilt, keeping every id (events.call_id points at them). The migration runner
-- holds one transaction with foreign keys ON, and `PRAGMA foreign_keys` cannot change inside
-- a transaction. So the foreign keys are deferred instead: DROP TABLE calls then counts each
-- event as orphaned, and inserting its call again (same id) into the new table counts it back;
-- COMMIT fails, and the whole migration rolls back, unless every event has its call again.
-- `events` itself, its indexes and its append-only triggers are not touched.
--
-- Rows the old rule kept apart that are one call under the new one (the same recording sent
-- through both plugins, or equal bytes on one talkgroup and second across two systems) cannot
-- be merged here: each was acknowledged, each has its own file and maybe its own object, and
-- events cannot be deleted. The first (lowest id) keeps the identity; each later one stays as
-- it is, with `duplicate_of` naming the first, a `duplicate_of` event, and a `duplicate` event
-- on the first. The unique index covers the rows whose `duplicate_of` is NULL.

PRAGMA defer_foreign_keys = ON;

CREATE TEMP TABLE calls_copy AS SELECT * FROM main.calls;
-- Finds, for each row, the first row of its identity without a scan per row.
CREATE INDEX temp.calls_copy_identity ON calls_copy (sha256, talkgroup, substr(start_time, 1, 19), id);

-- Also drops the indexes of 0001/0002 and the UNIQUE (system, sha256) with it.
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
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
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
    -- A row stored before 0003 that is the same call as that earlier row (see above); NULL
    -- for every call stored since.
    duplicate_of    INTEGER REFERENCES calls (id)
);
-- Before the copy: with foreign keys deferred, each row inserted looks for rows that name it
-- in `duplicate_of`, and without this index that is a scan of the table per row.
CREATE INDEX calls_duplicate_of ON calls (duplicate_of) WHERE duplicate_of IS NOT NULL;

INSERT INTO main.calls (
    id, protocol, system, system_label, talkgroup, talkgroup_label, talkgroup_tag,
    talkgroup_group, source, frequency, start_time, stop_time, duration, emergency, audio_name,
    metadata, key, content_type, size, sha256, md5, state, attempts, next_attempt_at,
    claimed_by, claimed_at, last_error, received_at, uploaded_at, etag, verified_at, cached,
    pruned_at, claim_expires_at, duplicate_of)
SELECT
    c.id, c.protocol, c.system, c.system_label, c.talkgroup, c.talkgroup_label, c.talkgroup_tag,
    c.talkgroup_group, c.source, c.frequency, c.start_time, c.stop_time, c.duration, c.emergency,
    c.audio_name, c.metadata, c.key, c.content_type, c.size, c.sha256, c.md5, c.state,
    c.attempts, c.next_attempt_at, c.claimed_by, c.claimed_at, c.last_error, c.received_at,
    c.uploaded_at, c.etag, c.verified_at, c.cached, c.pruned_at, c.claim_expires_at,
    (SELECT min(f.id) FROM calls_copy AS f
     WHERE f.sha256 = c.sha256 AND f.talkgroup = c.talkgroup
       AND substr(f.start_time, 1, 19) = substr(c.start_time, 1, 19) AND f.id < c.id)
FROM calls_copy AS c
ORDER BY c.id;

DROP TABLE temp.calls_copy;

-- The identity: one row per audio + talkgroup + start second. `start_time` is always
-- 'YYYY-MM-DD HH:MM:SS.SSS', so its first 19 characters are the second.
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

-- The audit trail of what this migration found: on the later row, which call it is; on the
-- first row, a `duplicate` like the one intake writes for a resend.
INSERT INTO events (call_id, at, kind, detail)
SELECT id, strftime('%Y-%m-%d %H:%M:%f', 'now'), 'duplicate_of',
       json_object('call_id', duplicate_of, 'by', 'migration 0003',
                   'note', 'stored before calls were identified by sha256 + talkgroup +'
                           || ' start second; kept as its own row')
FROM calls WHERE duplicate_of IS NOT NULL ORDER BY id;

INSERT INTO events (call_id, at, kind, detail)
SELECT duplicate_of, strftime('%Y-%m-%d %H:%M:%f', 'now'), 'duplicate',
       json_object('protocol', protocol, 'system', system, 'audio_name', audio_name,
                   'call_id', id, 'by', 'migration 0003')
FROM calls WHERE duplicate_of IS NOT NULL ORDER BY id;
