-- Unlearning: forget requests, their outcomes, and tombstones of forgotten training rows.

CREATE TABLE IF NOT EXISTS forget_requests
(
    request_id          String,
    run_id              String,
    model_id            String,
    source_ids          Array(String),
    source_rows_json    String,
    target_keys         UInt64,
    reason              String,
    requested_by        String,
    method              LowCardinality(String),
    verify_with_retrain Bool,
    affected_rows       UInt64,
    affected_via        Map(String, UInt64),
    event_id            String,
    requested_at        DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY request_id;

CREATE TABLE IF NOT EXISTS unlearning_applied
(
    request_id             String,
    run_id                 String,
    model_id               String,
    status                 LowCardinality(String),
    error                  String,
    method                 LowCardinality(String),
    previous_version       String,
    new_version            String,
    rows_forgotten         UInt64,
    duration_seconds       Float64,
    forget_loss_before     Float64,
    forget_loss_after      Float64,
    test_accuracy_before   Float64,
    test_accuracy_after    Float64,
    membership_auc         Float64,
    parameter_distance     Float64,
    retrained              Bool,
    retrain_forget_loss    Float64,
    gap_closed             Float64,
    distance_to_retrained  Float64,
    retrain_membership_auc Float64,
    retrain_test_accuracy  Float64,
    event_id               String,
    applied_at             DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (request_id, event_id);

-- Training-row keys a forget request removed (only rows built from the target through
-- row-wise ops or joins; rows that saw it only through an aggregate are reported in the
-- request, not removed). Attribution skips these rows.
CREATE TABLE IF NOT EXISTS forgotten_rows
(
    model_id     String,
    node_id      String,
    row          UInt64,
    request_id   String,
    via          LowCardinality(String),
    forgotten_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (model_id, node_id, row, request_id);
