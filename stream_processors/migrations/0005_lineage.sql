-- Lineage graph built from SourceRegistered and OpRecorded events.
-- A node is a table of rows: a source (node_id = SourceRegistered.node_id, or its
-- source_id when empty) or the output of an op. Keyed by id: replays collapse.
CREATE TABLE IF NOT EXISTS lineage_nodes
(
    node_id     String,
    kind        LowCardinality(String),
    source_id   String,
    op_id       String,
    rows        UInt64,
    shape       Array(UInt64),
    columns     Array(String),
    run_id      String,
    event_id    String,
    recorded_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY node_id;

-- One row per op: its inputs, and its row map (a serialized headwater.v1.RowMap).
CREATE TABLE IF NOT EXISTS lineage_ops
(
    op_id          String,
    op_name        String,
    params_json    String,
    input_node_ids Array(String),
    output_node_id String,
    output_rows    UInt64,
    understood     Bool,
    granularity    LowCardinality(String),
    code_version   String,
    segments       UInt32,
    row_map        String CODEC(ZSTD(1)),
    run_id         String,
    producer_id    String,
    event_id       String,
    recorded_at    DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (output_node_id, op_id);

-- Auditors' view: which ops (and op names) produced each node, input by input.
CREATE VIEW IF NOT EXISTS lineage_edges AS
SELECT op_id, op_name, input_node_id, output_node_id, understood, run_id, recorded_at
FROM lineage_ops FINAL
ARRAY JOIN input_node_ids AS input_node_id
