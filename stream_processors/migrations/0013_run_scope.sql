-- Runs kept apart (docs/attribution.md, "Runs"): two runs may share a model id, version
-- names ("v1", ...), prediction ids and source files. Rows of such tables must not
-- collapse across runs, and sketches and tombstones must say whose they are.
-- run_key repeats run_id in the sorting key (ClickHouse can only append a column to a
-- sorting key in the ALTER that adds it); rows stored before this migration have '' and
-- keep their old collapsing; `headwater replay` rebuilds them with their runs.
ALTER TABLE predictions ADD COLUMN IF NOT EXISTS run_key String, MODIFY ORDER BY (prediction_id, model_version, run_key);
ALTER TABLE model_versions ADD COLUMN IF NOT EXISTS run_key String, MODIFY ORDER BY (model_id, version, run_key);
-- the run of a curvature part's rows (a part sums one run's rows); '' before this migration
ALTER TABLE curvature_parts ADD COLUMN IF NOT EXISTS run_id String DEFAULT '';
-- the run of the forget request that removed the row (its tombstones hide only that run's rows)
ALTER TABLE forgotten_rows ADD COLUMN IF NOT EXISTS run_id String DEFAULT ''
