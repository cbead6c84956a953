-- The sink's dedupe of a redelivered batch reads only the curvature parts created since the
-- batch's oldest event: a minmax index on created_at lets ClickHouse skip the older ones.
ALTER TABLE curvature_parts ADD INDEX IF NOT EXISTS idx_created_at created_at TYPE minmax GRANULARITY 1;
