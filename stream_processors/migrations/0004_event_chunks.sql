-- Pieces of events too large for one Kafka message, held until every piece arrived.
CREATE TABLE IF NOT EXISTS event_chunks
(
    event_id    String,
    idx         UInt32,
    count       UInt32,
    sha256      String,
    data        String CODEC(ZSTD(3)),
    received_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (event_id, idx)
