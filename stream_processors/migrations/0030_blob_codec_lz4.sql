-- Gradient and event bytes compressed with LZ4 (ClickHouse's default) instead of ZSTD(1):
-- float gradients barely compress (ZSTD(1) kept ~9 % fewer bytes), and compressing them
-- was a quarter of a trainer batch's insert CPU (issue 18; docs/design-decisions.md,
-- "Ingest: the blob codec"). Existing parts keep their codec until they are merged.
ALTER TABLE gradients MODIFY COLUMN gradient String CODEC(LZ4);
ALTER TABLE events MODIFY COLUMN raw String CODEC(LZ4);
