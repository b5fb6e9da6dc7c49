-- tr_vault journal, version 9: counts and bytes per system, state and cache, kept as rows change.
--
-- `status_summary` (`/api/journal/summary`, `tr-vault status` / `audit`) showed the calls and
-- bytes per state and the cached calls and bytes by counting `calls`: on a 1M-row journal
-- 90 ms unscoped and 1.3 s for a reader scoped to one system (docs/benchmarks.md section 10).
-- No index makes an aggregate over every row cheap; `call_counts` holds the aggregate itself,
-- one row per (system, state, cached), and the summary reads a handful of rows.
--
-- Triggers on `calls`, not the Python that writes, keep it right: so every writer counts, the
-- server, `tr-vault import` in another process, `rebuild`, `restore`, `verify` and an
-- operator's own `UPDATE` or `DELETE` in `sqlite3`. Each change is an UPSERT (+1 on the new
-- values, -1 on the old), so a row missing from `call_counts` can never make a change lost.
-- A row whose calls reach 0 stays, at 0 (the summary lists every state anyway). One change is
-- not seen: a row that `INSERT OR REPLACE` / `UPDATE OR REPLACE` deletes to make room fires no
-- DELETE trigger unless `PRAGMA recursive_triggers` is on (nothing in tr_vault does either).
-- Counting again is always safe, in one transaction: DELETE FROM call_counts, then the
-- INSERT ... SELECT below.
--
-- `calls_pending_system` answers the summary's oldest pending call of a reader's systems from
-- the pending rows alone (the other indexes would read every row of the system).
--
-- A FUTURE REBUILD OF `calls` (CREATE the new table, copy, DROP, RENAME, as 0003 and 0005 did)
-- DROPS THESE TRIGGERS AND THE INDEX WITH THE OLD TABLE: such a migration must create the
-- three triggers and `calls_pending_system` again, and count `call_counts` again from `calls`
-- once the rows are copied (the triggers are gone while they are).

CREATE TABLE call_counts (
    system  TEXT    NOT NULL,
    state   TEXT    NOT NULL,
    cached  INTEGER NOT NULL,
    calls   INTEGER NOT NULL,   -- how many rows of `calls` have these three values
    bytes   INTEGER NOT NULL,   -- and the sum of their `size`
    PRIMARY KEY (system, state, cached)
) WITHOUT ROWID;

INSERT INTO call_counts (system, state, cached, calls, bytes)
SELECT system, state, cached, count(*), coalesce(sum(size), 0)
FROM calls GROUP BY system, state, cached;

CREATE TRIGGER call_counts_insert AFTER INSERT ON calls
BEGIN
    INSERT INTO call_counts (system, state, cached, calls, bytes)
    VALUES (new.system, new.state, new.cached, 1, new.size)
    ON CONFLICT (system, state, cached)
    DO UPDATE SET calls = calls + 1, bytes = bytes + excluded.bytes;
END;

CREATE TRIGGER call_counts_delete AFTER DELETE ON calls
BEGIN
    INSERT INTO call_counts (system, state, cached, calls, bytes)
    VALUES (old.system, old.state, old.cached, -1, -old.size)
    ON CONFLICT (system, state, cached)
    DO UPDATE SET calls = calls - 1, bytes = bytes + excluded.bytes;
END;

-- Only when one of the four changes: a claim, an attempt or a verification writes none of them.
CREATE TRIGGER call_counts_update AFTER UPDATE OF system, state, cached, size ON calls
WHEN old.system IS NOT new.system OR old.state IS NOT new.state
     OR old.cached IS NOT new.cached OR old.size IS NOT new.size
BEGIN
    INSERT INTO call_counts (system, state, cached, calls, bytes)
    VALUES (old.system, old.state, old.cached, -1, -old.size)
    ON CONFLICT (system, state, cached)
    DO UPDATE SET calls = calls - 1, bytes = bytes + excluded.bytes;
    INSERT INTO call_counts (system, state, cached, calls, bytes)
    VALUES (new.system, new.state, new.cached, 1, new.size)
    ON CONFLICT (system, state, cached)
    DO UPDATE SET calls = calls + 1, bytes = bytes + excluded.bytes;
END;

CREATE INDEX calls_pending_system ON calls (system, id) WHERE state = 'pending';
