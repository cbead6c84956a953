-- Views for auditors (docs/sql.md, "Audit views"): plain SELECTs over the tables, so a
-- read-only role (deploy/clickhouse/readonly_role.sql) can use them. Lineage is followed
-- node to node with recursive CTEs (ClickHouse 24.4+ with the analyzer; chDB has it).
-- Row-level questions need the row maps resolved op by op (Lineage.TraceRows); these views
-- answer at node granularity: which tables of rows, hence which sources, reached a model.

-- (node, source) for every node and every source it was built from, itself included.
CREATE VIEW IF NOT EXISTS audit_node_sources AS
WITH RECURSIVE reach AS
(
    SELECT node_id, node_id AS ancestor_id FROM lineage_nodes FINAL
    UNION ALL
    SELECT reach.node_id AS node_id, e.input_node_id AS ancestor_id
    FROM reach INNER JOIN lineage_edges AS e ON e.output_node_id = reach.ancestor_id
)
SELECT DISTINCT reach.node_id AS node_id, n.source_id AS source_id,
       reach.ancestor_id AS source_node_id
FROM reach INNER JOIN lineage_nodes AS n FINAL ON n.node_id = reach.ancestor_id
WHERE n.source_id != '';

-- Training nodes of each recorded model version: nodes with gradients recorded at that
-- version or at any version on its parent chain (gradient_kind tells training steps from
-- featurisation gradients recomputed for attribution).
CREATE VIEW IF NOT EXISTS audit_model_training AS
WITH RECURSIVE chain AS
(
    SELECT model_id, version, version AS ancestor_version FROM model_versions FINAL
    UNION ALL
    SELECT chain.model_id AS model_id, chain.version AS version,
           m.parent_version AS ancestor_version
    FROM chain INNER JOIN model_versions AS m FINAL
        ON m.model_id = chain.model_id AND m.version = chain.ancestor_version
    WHERE m.parent_version != ''
)
SELECT chain.model_id AS model_id, chain.version AS model_version,
       g.node_id AS training_node_id, g.kind AS gradient_kind,
       uniqExact(g.row) AS training_rows, min(g.step) AS first_step, max(g.step) AS last_step,
       groupUniqArray(chain.ancestor_version) AS via_versions
FROM chain INNER JOIN gradients AS g FINAL
    ON g.model_id = chain.model_id AND g.model_version = chain.ancestor_version
GROUP BY model_id, model_version, training_node_id, gradient_kind;

-- Prediction -> the model version that made it -> its training nodes -> their sources.
CREATE VIEW IF NOT EXISTS audit_prediction_sources AS
SELECT DISTINCT p.prediction_id AS prediction_id, p.model_id AS model_id,
       p.model_version AS model_version, p.recorded_at AS predicted_at,
       t.training_node_id AS training_node_id, s.source_id AS source_id, src.uri AS uri,
       src.content_sha256 AS content_sha256, src.origin AS origin, src.licence AS licence
FROM predictions AS p FINAL
INNER JOIN audit_model_training AS t
    ON t.model_id = p.model_id AND t.model_version = p.model_version
INNER JOIN audit_node_sources AS s ON s.node_id = t.training_node_id
LEFT JOIN sources AS src FINAL ON src.source_id = s.source_id;

-- Source -> every model version whose training nodes were built from it.
CREATE VIEW IF NOT EXISTS audit_source_models AS
SELECT s.source_id AS source_id, src.uri AS uri, t.model_id AS model_id,
       t.model_version AS model_version, t.training_node_id AS training_node_id,
       t.gradient_kind AS gradient_kind, t.training_rows AS training_rows
FROM audit_node_sources AS s
INNER JOIN audit_model_training AS t ON t.training_node_id = s.node_id
LEFT JOIN sources AS src FINAL ON src.source_id = s.source_id;

-- Erasures: each forget request with its outcome(s); outcome 'PENDING' until the trainer
-- applied it, and the tombstones of the training rows it removed.
CREATE VIEW IF NOT EXISTS audit_erasures AS
SELECT r.request_id AS request_id, r.run_id AS run_id, r.model_id AS model_id,
       r.source_ids AS source_ids, r.reason AS reason, r.requested_by AS requested_by,
       r.requested_at AS requested_at, r.affected_rows AS affected_rows,
       r.affected_via AS affected_via,
       if(a.request_id = '', 'PENDING', a.status) AS outcome, a.error AS error,
       a.method AS method, a.previous_version AS previous_version,
       a.new_version AS new_version, a.rows_forgotten AS rows_forgotten,
       a.forget_loss_before AS forget_loss_before, a.forget_loss_after AS forget_loss_after,
       a.membership_auc AS membership_auc, a.retrained AS retrained, a.gap_closed AS gap_closed,
       a.applied_at AS applied_at, f.tombstones AS tombstones
FROM forget_requests AS r FINAL
LEFT JOIN unlearning_applied AS a FINAL ON a.request_id = r.request_id
LEFT JOIN
(
    SELECT request_id, count() AS tombstones FROM forgotten_rows FINAL GROUP BY request_id
) AS f ON f.request_id = r.request_id;

-- Log coverage per producer: events, seq range, missing and doubled seqs, time span.
-- Counting is all SQL can do; the hash chain is checked by `headwater audit verify`.
CREATE VIEW IF NOT EXISTS audit_log_coverage AS
SELECT run_id, producer_id, count() AS events, min(seq) AS first_seq, max(seq) AS last_seq,
       max(seq) - min(seq) + 1 - uniqExact(seq) AS missing_seqs,
       count() - uniqExact(seq) AS duplicate_seqs,
       min(emitted_at) AS first_emitted_at, max(emitted_at) AS last_emitted_at,
       min(ingested_at) AS first_ingested_at, max(ingested_at) AS last_ingested_at
FROM events FINAL
GROUP BY run_id, producer_id
