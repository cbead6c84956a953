-- Messages that could not be accepted, kept byte for byte with the reason.
-- Keyed by position and content digest, so a redelivered poison message is kept once.
CREATE TABLE IF NOT EXISTS dead_letters
(
    received_at  DateTime64(6, 'UTC'),
    raw          String CODEC(ZSTD(3)),
    raw_sha256   String,
    error        String,
    transport    LowCardinality(String),
    topic        String,
    partition    Int32,
    offset       Int64,
    event_id     String,
    producer_id  String,
    run_id       String,
    seq          UInt64
)
ENGINE = ReplacingMergeTree
ORDER BY (transport, topic, partition, offset, raw_sha256)
