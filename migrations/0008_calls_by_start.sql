-- tr_vault journal, version 8: the newest calls are found without sorting the table.
--
-- `/api/calls` (and the web page, which polls it every 5 s) pages by
-- `ORDER BY start_time DESC, id DESC`. Filtered by system or talkgroup it had an index
-- (`calls_system_start`, `calls_talkgroup_start`); unfiltered it scanned and sorted every row:
-- 3 s for the first page of a 1M-row journal (docs/benchmarks.md section 10), 1.3 ms with this.

CREATE INDEX calls_start ON calls (start_time, id);
