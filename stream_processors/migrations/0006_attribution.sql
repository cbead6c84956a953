-- Attribution: model versions, per-sample projected gradients, recorded predictions and
-- the online curvature sketch. Gradient vectors are kept as the exact little-endian bytes
-- the trainer sent (float16/float32, `dtype` says which), ZSTD-compressed.

CREATE TABLE IF NOT EXISTS model_versions
(
    model_id        String,
    version         String,
    parent_version  String,
    parameter_hash  String,
    step            UInt64,
    config_json     String,
    framework       LowCardinality(String),
    parameter_count UInt64,
    checkpoint_uri  String,
    run_id          String,
    event_id        String,
    recorded_at     DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (model_id, version);

-- One row per (GradientBatch event, row): a training row's gradient at one step
-- (kind TRAINING_STEP) or re-computed at a fixed model version (kind FEATURISATION).
CREATE TABLE IF NOT EXISTS gradients
(
    model_id         String,
    model_version    String,
    kind             LowCardinality(String),
    node_id          String,
    row              UInt64,
    step             UInt64,
    learning_rate    Float64,
    loss             Float32,
    loss_weight      Float32,
    curvature_weight Float32,
    target           Float64,
    output_function  LowCardinality(String),
    projection_id    String,
    dim              UInt32,
    dtype            LowCardinality(String),
    gradient         String CODEC(ZSTD(1)),
    run_id           String,
    event_id         String,
    idx              UInt32,
    recorded_at      DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (model_id, model_version, kind, event_id, idx);

CREATE TABLE IF NOT EXISTS predictions
(
    prediction_id   String,
    model_id        String,
    model_version   String,
    output          Array(Float64),
    predicted_label Int64,
    projection_id   String,
    dim             UInt32,
    dtype           LowCardinality(String),
    test_gradients  String CODEC(ZSTD(1)),
    gradient_labels Array(String),
    input_node_ids  Array(String),
    input_rows      Array(UInt64),
    run_id          String,
    event_id        String,
    recorded_at     DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (prediction_id, model_version);

-- Online curvature sketch, one part per (processed batch, model version, kind): the sum
-- of w * phi phi^T over the part's rows as k x k float64 bytes. The sketch of a version
-- is the sum of its parts. `event_ids` lists the events a part counted; the processor
-- skips events already listed, so a replayed batch is never counted twice.
CREATE TABLE IF NOT EXISTS curvature_parts
(
    model_id      String,
    model_version String,
    kind          LowCardinality(String),
    projection_id String,
    dim           UInt32,
    rows          UInt64,
    min_step      UInt64,
    max_step      UInt64,
    matrix        String CODEC(ZSTD(1)),
    event_ids     Array(String),
    part_id       String,
    created_at    DateTime64(6, 'UTC')
)
ENGINE = MergeTree
ORDER BY (model_id, model_version, kind, part_id);
