-- The event log: raw envelope + payload bytes, one row per event.
-- ReplacingMergeTree on the full key: a redelivered event collapses into one row
-- (read with FINAL); two different events claiming one seq both stay, for the verifier.
CREATE TABLE IF NOT EXISTS events
(
    event_id       String,
    schema_version UInt32,
    producer_id    String,
    run_id         String,
    seq            UInt64,
    emitted_at     DateTime64(6, 'UTC'),
    payload_type   LowCardinality(String),
    prev_hash      FixedString(32),
    hash           FixedString(32),
    raw            String CODEC(ZSTD(1)),
    size_bytes     UInt32,
    transport      LowCardinality(String),
    topic          LowCardinality(String),
    partition      Int32,
    offset         Int64,
    ingested_at    DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(emitted_at)
ORDER BY (run_id, producer_id, seq, event_id)
