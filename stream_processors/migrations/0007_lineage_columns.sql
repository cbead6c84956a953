-- Column lineage of ops (OpRecorded.columns and .output_columns), for the OpenLineage
-- export's columnLineage facet. columns_json is a JSON array of
-- {"output_column", "input", "input_columns", "transformation"} objects, `input` indexing
-- input_node_ids; rows stored before this migration read as no mappings.
ALTER TABLE lineage_ops
    ADD COLUMN IF NOT EXISTS columns_json String DEFAULT '[]',
    ADD COLUMN IF NOT EXISTS output_columns Array(String)
