-- tr_vault journal, version 6: rows are found by their object.
--
-- `tr-vault rebuild --from-bucket` asks, for every object it lists, whether a row records that
-- object already (`object_key`, set at verification since 0004), so that a second rebuild adds
-- nothing and costs no HEAD for what is known. Without an index each such question reads the
-- whole table. Rows without an object (pending, local-only, before 0004) are left out of it.

CREATE INDEX calls_object_key ON calls (object_key) WHERE object_key IS NOT NULL;
