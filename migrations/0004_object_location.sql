-- tr_vault journal, version 4: a call's row records where its object went.
--
-- `bucket` and `object_key` (the full key in the bucket, S3_PREFIX included) are set when the
-- upload is verified. Playback, the pruner's HEAD and a re-upload after `missing_in_s3` use
-- them, so a later change of S3_PREFIX or S3_BUCKET moves only new uploads. The object key may
-- differ from `key` (the cache key) by a site segment (TR_VAULT_SITE) or, after a key
-- collision in the bucket, by a `-{sha12}` name. Rows uploaded before this migration keep
-- NULL in both: they are found where they always were (`{S3_PREFIX}/audio/{key}`).

ALTER TABLE calls ADD COLUMN bucket TEXT;
ALTER TABLE calls ADD COLUMN object_key TEXT;
