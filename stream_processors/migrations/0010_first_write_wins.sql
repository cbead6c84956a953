-- Who sent each event or rejected message, as authenticated by the server (token name and
-- role, client certificate subject, peer); '' where no server authenticated it (Kafka).
ALTER TABLE events ADD COLUMN IF NOT EXISTS principal String DEFAULT '';
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS principal String DEFAULT '';

-- First write wins: the content hash each event_id was first accepted with. Plain MergeTree,
-- so nothing collapses: a later different event under a stored id is refused by the sink, and
-- `audit verify` reports a stored event whose hash differs from its first receipt.
CREATE TABLE IF NOT EXISTS event_receipts
(
    event_id     String,
    hash         FixedString(32),
    producer_id  String,
    run_id       String,
    seq          UInt64,
    principal    String,
    transport    LowCardinality(String),
    received_at  DateTime64(6, 'UTC')
)
ENGINE = MergeTree
ORDER BY event_id;

-- Events stored before this migration: the earliest stored copy of each id is its receipt.
INSERT INTO event_receipts (event_id, hash, producer_id, run_id, seq, principal, transport,
                            received_at)
SELECT event_id, argMin(hash, ingested_at), any(producer_id), any(run_id), any(seq), '',
       any(transport), min(ingested_at)
FROM events GROUP BY event_id;
