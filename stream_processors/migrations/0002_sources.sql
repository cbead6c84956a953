-- Registered data sources (from SourceRegistered); one row per source id.
CREATE TABLE IF NOT EXISTS sources
(
    source_id      String,
    uri            String,
    content_sha256 String,
    row_count      UInt64,
    schema_json    String,
    format         LowCardinality(String),
    size_bytes     UInt64,
    origin         String,
    licence        String,
    node_id        String,
    labels         Map(String, String),
    run_id         String,
    producer_id    String,
    event_id       String,
    registered_at  DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY source_id
