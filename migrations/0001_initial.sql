-- tr_vault journal, version 1.
-- All times are UTC text in SQLite's own format ('YYYY-MM-DD HH:MM:SS.SSS'), so
-- `received_at >= datetime('now', '-1 hour')` works as written.

CREATE TABLE calls (
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
    UNIQUE (system, sha256)
);

CREATE INDEX calls_due ON calls (state, next_attempt_at);
-- size rides along so the cache's total (sum(size) WHERE cached = 1) is read from the index.
CREATE INDEX calls_prunable ON calls (cached, state, uploaded_at, size);
-- counts and bytes per state (summary, metrics) without reading the table.
CREATE INDEX calls_state_size ON calls (state, size);
CREATE INDEX calls_system_start ON calls (system, start_time);
CREATE INDEX calls_talkgroup_start ON calls (talkgroup, start_time);
CREATE INDEX calls_received ON calls (received_at);

CREATE TABLE events (
    id      INTEGER PRIMARY KEY,
    call_id INTEGER NOT NULL REFERENCES calls (id),
    at      TEXT    NOT NULL,
    kind    TEXT    NOT NULL,   -- received, duplicate, upload_ok, upload_error, verified, failed, requeued, pruned, missing_in_s3, ...
    detail  TEXT
);

CREATE INDEX events_call ON events (call_id, id);
CREATE INDEX events_kind_at ON events (kind, at);

-- Append-only: the audit trail cannot be edited through SQL by mistake.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events is append-only');
END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events is append-only');
END;
