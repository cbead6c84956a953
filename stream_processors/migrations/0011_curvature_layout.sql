-- A curvature part is stored as its dense k x k matrix ('dense'), or as the n weights and
-- n x k gradient rows it sums ('rows') when those are smaller: a part of a small batch
-- costs no more than the events in it.
ALTER TABLE curvature_parts ADD COLUMN IF NOT EXISTS layout LowCardinality(String) DEFAULT 'dense';
