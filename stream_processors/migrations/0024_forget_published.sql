-- Forget requests a query service has published to the event log, written before the
-- event is sent: every replica (and a restarted one) sharing this store answers Status
-- "pending" and deduplicates a repeat until `process` has stored the request itself in
-- forget_requests. state: 'publishing' (row written, event being sent) or 'published'
-- (the broker acknowledged it) or 'failed' (the send raised); the newest row of a request
-- is its state, and a 'publishing' one older than the publish timeout counts as never
-- sent. response: the ForgetResponse the first caller got (protobuf bytes, hex).
CREATE TABLE IF NOT EXISTS forget_published
(
    request_id String,
    run_id     String,
    model_id   String,
    state      LowCardinality(String),
    response   String,
    updated_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (request_id, state)
