"""The EU AI Act evidence report as pydantic models; its JSON Schema is published.

Every fact drawn from the store names the event it was re-derived from (`evidence`: event
id and hash); `sections` says, per section, whether it was verified against the hash-chained
log, declared by the operator, or failed verification (and why).

`python -m headwater.query_service.compliance.model > docs/schema/compliance-report.schema.json`
regenerates the committed schema (a test fails when the file is stale).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "2.0"
SCHEMA_ID = "https://headwater.dev/schema/compliance-report.schema.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventRef(_Strict):
    """The stored event a fact was re-derived from, when the report was built: its bytes
    hashed to `hash`, and it is the event first accepted under its id."""

    event_id: str
    hash: str = Field(description="hex SHA-256 of the event (the chain hash)")
    recorded_by: str = Field(description="the producer whose chain holds the event (see "
                                         "record_keeping for whether its key signed it)")


class SectionStatus(_Strict):
    """How far one section of the report is proven."""

    section: str
    status: Literal["verified", "failed", "declared", "computed"] = Field(
        description="verified: re-derived from verified event bytes, derived tables equal "
                    "to them; failed: verification found problems (see detail); declared: "
                    "stated by the operator's config, not checkable here; computed: "
                    "calculated from verified facts")
    detail: str


class Contact(_Strict):
    """A person or function responsible for human oversight (Art. 14, 26(2))."""

    name: str
    role: str = ""
    email: str = ""


class SystemIdentification(_Strict):
    """What the AI system is and what it is for; null fields are listed in `missing`."""

    system_name: str | None
    intended_purpose: str | None
    model_id: str
    model_version: str
    missing: list[str] = Field(description="fields not configured: never invented")


class Deployment(_Strict):
    """Provider and deployer fields (Art. 26) from the compliance config; null = missing."""

    provider: str | None
    deployer: str | None
    human_oversight_contacts: list[Contact] | None
    monitoring: str | None
    input_data_relevance: str | None = Field(
        description="deployer's statement that input data is relevant and representative "
                    "for the intended purpose (Art. 26(4))")
    missing: list[str] = Field(description="fields not configured: never invented")


class ModelVersion(_Strict):
    """One recorded model version; the lineage list runs from the root to the reported one."""

    version: str
    parent_version: str
    step: int
    parameter_hash: str
    parameter_count: int
    framework: str
    config: dict[str, Any] = Field(description="config_json as recorded")
    checkpoint_uri: str
    checkpoint_status: Literal["verified", "mismatch", "unreachable", "none recorded",
                               "not checked"] = Field(
        description="the artefact at checkpoint_uri hashed and compared with parameter_hash "
                    "when reachable from where the report was built")
    checkpoint_detail: str
    run_id: str
    recorded_at: str
    metrics: dict[str, float] = Field(
        description="test/validation metrics the trainer recorded with this version "
                    "(config `metrics`); empty: none recorded")
    environment: dict[str, str] = Field(
        description="software and environment versions the trainer recorded with this "
                    "version (config `environment`); empty: none recorded")
    evidence: EventRef


class Column(_Strict):
    """A source column: name, type and whether it holds personal data (never its values)."""

    name: str
    dtype: str
    personal: bool


class PreparationStep(_Strict):
    """One recorded data-preparation op (Art. 10(2)(c)), in the order it was applied."""

    op_id: str
    op_name: str
    params: Any = Field(description="params_json as recorded (structural parameters)")
    input_node_ids: list[str]
    output_node_id: str
    output_rows: int
    understood: bool = Field(description="false: the row mapping is unknown (all rows)")
    granularity: str
    code_version: str
    recorded_at: str
    evidence: EventRef


class TimeRange(_Strict):
    """When the source was registered and when training first and last used it."""

    registered_at: str
    first_used_at: str | None
    last_used_at: str | None


class Source(_Strict):
    """A data source that fed the model's training rows (Art. 10(2)(b): origin)."""

    source_id: str
    uri: str
    format: str
    origin: str
    licence: str
    content_sha256: str
    row_count: int
    size_bytes: int
    labels: dict[str, str]
    columns: list[Column]
    personal_columns: list[str] = Field(description="names only: values are never exported")
    time_range: TimeRange
    training_nodes: int = Field(description="training nodes built from this source")
    preparation: list[PreparationStep]
    evidence: EventRef


class PipelineNode(_Strict):
    node_id: str
    kind: Literal["source", "op"]
    source_id: str
    rows: int
    training: bool = Field(description="gradients of the model were captured on this node")


class PipelineEdge(_Strict):
    op_id: str
    op_name: str
    input_node_id: str
    output_node_id: str


class Pipeline(_Strict):
    """The lineage graph from the sources to the model's training nodes."""

    nodes: list[PipelineNode]
    edges: list[PipelineEdge]


class LeakageFinding(_Strict):
    op_id: str
    op_name: str
    aggregated_node_id: str
    training_rows: int = Field(description="training rows that depend on it")
    shared_source_rows: int = Field(description="source rows of the aggregate's input that "
                                                "also directly feed test/prediction rows")
    detail: str


class LeakageCheck(_Strict):
    """Computed from lineage: does any training row depend, through an aggregate op, on
    source rows that also feed test or prediction rows?"""

    status: Literal["passed", "failed", "skipped"]
    detail: str
    training_rows: int
    test_rows: int
    findings: list[LeakageFinding]


class SplitShare(_Strict):
    split: str
    rows: int
    source_rows: dict[str, int] = Field(description="source id -> source rows it draws on "
                                                    "row-wise")
    share: dict[str, float]


class ColumnCounts(_Strict):
    column: str
    missing: int = Field(description="null or NaN values")
    value_counts: dict[str, int] | None = Field(
        description="rows per value, for a column with at most 10 distinct values (class "
                    "balance); a personal column's values are replaced by their rank "
                    "('value 1': most frequent); null for other columns (no values leave "
                    "the store)")


class SourceStatistics(_Strict):
    """Counts computed from a source's file, when reachable and still matching its hash."""

    source_id: str
    status: Literal["computed", "not computed"]
    detail: str
    by_split: dict[str, list[ColumnCounts]] = Field(
        description="'all rows', then each split: counts over the source rows it draws on")


class SplitStatistics(_Strict):
    """Per split, where its rows come from (computed from lineage), and per source and
    split, missing values and class balance (computed from the files)."""

    splits: list[SplitShare]
    sources: list[SourceStatistics] = Field(default_factory=list)
    absent: list[str] = Field(description="statistics that cannot be computed here, and why")


class DistributionDifference(_Strict):
    """How one column's distribution differs between two groups (two sources, or two
    splits); unitless figures only, never a value."""

    column: str
    between: Literal["sources", "splits"]
    groups: list[str] = Field(description="the two source ids, or the two split names")
    rows: list[int] = Field(description="non-missing values in each group")
    measure: Literal["value shares", "numeric"]
    total_variation: float | None = Field(
        None, description="value shares: ½ Σ |p − q| over the column's values")
    standardised_mean_difference: float | None = Field(
        None, description="numeric: (m₁ − m₂) / √((s₁² + s₂²)/2); null when both constant")
    ks_statistic: float | None = Field(
        None, description="numeric: two-sample Kolmogorov–Smirnov D")
    ks_critical: float | None = Field(
        None, description="numeric: D's asymptotic critical value at alpha 0.01")
    flagged: bool
    rule: str


class BiasExamination(_Strict):
    """Art. 10(2)(f),(g): differences between sources and between splits, computed from the
    verified source files; the examination and measures the operator declares."""

    status: Literal["computed", "not computed"]
    detail: str
    differences: list[DistributionDifference]
    flagged: int = Field(description="differences over their rule's threshold")
    declared_examination: str | None = Field(
        description="how the operator examined possible biases (declared; null: missing)")
    declared_measures: list[str] | None = Field(
        description="measures to detect, prevent and mitigate biases (declared; null: "
                    "missing)")
    missing: list[str] = Field(description="declarations not made")


class DataGovernance(_Strict):
    """Art. 10(2): the sources, their origin and every preparation op; per-split sources and
    a leakage check computed from lineage; declarations that are missing."""

    training_nodes: list[str]
    sources: list[Source]
    pipeline: Pipeline
    notes: list[str]
    split_statistics: SplitStatistics
    leakage: LeakageCheck
    bias_examination: BiasExamination
    declarations_missing: list[str] = Field(
        description="required declarations not made: personal-data columns per source, "
                    "code_version per op")


class ProducerChain(_Strict):
    producer_id: str
    run_id: str
    events: int
    first_seq: int
    last_seq: int
    first_emitted_at: str | None
    last_emitted_at: str | None
    head_hash: str = Field(description="hex hash of the highest seq: anchors the chain")
    key_id: str | None = Field(description="the producer's registered Ed25519 key; null: "
                                           "none, its producer_id is an unsigned name")
    signed_seq: int = Field(description="highest seq whose head the producer signed with its "
                                        "key (0: none)")


class ChainProblem(_Strict):
    producer_id: str
    kind: str
    seq: int
    detail: str


class DerivedTableCheck(_Strict):
    table: str
    equal: bool
    rows_stored: int
    rows_from_events: int
    detail: str


class ExcludedEvent(_Strict):
    event_id: str
    reason: str


class RecordKeeping(_Strict):
    """Art. 12: the hash-chained event log of the runs involved, as verified now."""

    runs: list[str]
    hashes_recomputed: bool
    ok: bool
    events: int
    producers: list[ProducerChain]
    problems: list[ChainProblem]
    notes: list[ChainProblem] = Field(description="findings that do not fail the log")
    retention_days: int | None = Field(description="the event log's TTL; null: none")
    derived_tables: list[DerivedTableCheck] = Field(
        description="each derived table of each run against its rebuild from the verified "
                    "events (replay through the same processors)")
    excluded_events: list[ExcludedEvent] = Field(
        description="stored events whose bytes failed verification: no fact comes from them")


class Verification(_Strict):
    """Figures the trainer recorded when it applied an erasure (null = not measured)."""

    forget_loss_before: float | None
    forget_loss_after: float | None
    test_accuracy_before: float | None
    test_accuracy_after: float | None
    membership_auc: float | None
    parameter_distance: float | None
    retrained: bool
    retrain_forget_loss: float | None
    gap_closed: float | None
    distance_to_retrained: float | None
    retrain_membership_auc: float | None
    retrain_test_accuracy: float | None
    membership_auc_before: float | None = Field(
        description="the same membership attack on the model before unlearning")


class ErasureOutcome(_Strict):
    status: str
    error: str
    method: str
    method_reason: str = Field(description="why this method ran (auto: replay within the "
                               "budget, else approximate)")
    estimated_replay_steps: int = Field(description="a replay's logged steps, estimated "
                                        "before the choice (0: no checkpoint hook)")
    estimated_replay_seconds: float
    steps_replayed: int
    newton_steps: int
    fine_tune_steps: int
    previous_version: str
    new_version: str
    rows_forgotten: int
    duration_seconds: float
    applied_at: str
    verification: Verification
    evidence: EventRef


class ErasureTarget(_Strict):
    """What was to be forgotten, as counts (row numbers are not exported)."""

    source_ids: list[str]
    source_rows: dict[str, int] = Field(description="source id -> number of rows named")
    training_keys: int


class TargetCheck(_Strict):
    """One verification target of an erasure and whether the recorded figures meet it."""

    target: str
    rule: str
    value: float | None
    met: bool | None = Field(description="null: not measured")


class Disposition(_Strict):
    """What became of one kind of thing the erasure touched."""

    item: Literal["training_rows", "aggregate_dependencies", "gradient_rows", "raw_events",
                  "model_versions"]
    count: int
    status: str = Field(description="removed, retained (with the reason), tombstoned, "
                                    "superseded")
    detail: str
    versions: list[str] = Field(default_factory=list,
                                description="model_versions: the versions trained with the "
                                            "rows, with their checkpoint status")


class Erasure(_Strict):
    request_id: str
    run_id: str
    requested_at: str
    reason: str
    requested_by: str = Field(description="the authenticated identity that asked (token "
                                          "name and role, certificate subject)")
    requester_authenticated: bool = Field(
        description="false: the server had no token auth, nobody is named")
    method: str
    verify_with_retrain: bool
    target: ErasureTarget
    affected_rows: int
    affected_via: dict[str, int]
    state: Literal["applied", "partially_applied", "failed", "pending"] = Field(
        description="decided by the verification targets and the dispositions")
    state_reason: str
    targets: list[TargetCheck]
    dispositions: list[Disposition]
    verified_at_version: str | None = Field(
        description="the version the verification figures were measured at")
    version_note: str = Field(description="how that version relates to the reported one")
    outcomes: list[ErasureOutcome]
    evidence: EventRef


class SourceContribution(_Strict):
    source_id: str
    uri: str
    score: float = Field(description="summed influence; positive raised the output")
    examples: int


class SourceRowRef(_Strict):
    source_id: str
    uri: str
    row: int = Field(description="row number in the source file (never its values)")


class RowContribution(_Strict):
    """One training example behind a prediction: its training key, score and source rows."""

    node_id: str
    row: int
    score: float = Field(description="influence; positive raised the output")
    sources: list[SourceRowRef]


class AttributionSample(_Strict):
    prediction_id: str
    model_version: str
    recorded_at: str
    predicted_label: int
    method: str
    top_sources: list[SourceContribution]
    top_rows: list[RowContribution] = Field(
        default_factory=list, description="the examples with the largest |score| (row "
                                          "numbers only; values never leave the store)")
    error: str | None = Field(description="why this prediction could not be attributed")


class AttributionSamples(_Strict):
    status: Literal["computed", "skipped"]
    reason: str | None = Field(description="why no samples were computed")
    predictions_recorded: int
    samples: list[AttributionSample]


class SourceShare(_Strict):
    """One source's part of the training steps recorded at one model version."""

    source_id: str
    uri: str
    examples: int = Field(description="training-step gradient rows (row x step) from this "
                                      "source recorded at this version")
    share: float = Field(description="examples / all training-step rows of the version")
    tracin: float | None = Field(description="TracIn of these steps toward the attribution "
                                             "samples (mean over samples; positive raised "
                                             "the explained output); null: not computed, "
                                             "or excluded (see excluded_since)")
    excluded_since: str | None = Field(
        default=None, description="the erasure request after which this source's rows are "
                                  "excluded from scoring: its TracIn is not zero influence, "
                                  "it is not computed")


class VersionContribution(_Strict):
    version: str
    step: int
    examples: int
    sources: list[SourceShare]


class TrainingTimeline(_Strict):
    """Source contributions over training time: per model version of the lineage, which
    sources the training steps drew on and their TracIn toward the sample predictions."""

    status: Literal["computed", "skipped"]
    reason: str | None = Field(description="why no timeline was computed")
    versions: list[VersionContribution]
    notes: list[str]


class Signature(_Strict):
    algorithm: Literal["Ed25519"]
    key_id: str = Field(description="first 16 hex digits of SHA-256 of the raw public key")
    public_key_pem: str
    value: str = Field(description="base64 signature over the canonical JSON bytes")


class Integrity(_Strict):
    """The content hash covers the canonical JSON (sorted keys, no whitespace, UTF-8) of
    the report without this block; the signature signs those same bytes."""

    canonicalization: Literal["json-sorted-keys-compact-utf8"]
    content_sha256: str
    signature: Signature | None
    unsigned_reason: str | None


class ReportBody(_Strict):
    """An EU AI Act evidence report for one model version, before it is sealed."""

    schema_version: Literal["2.0"]
    generated_at: str
    generator: str
    system: SystemIdentification
    deployment: Deployment
    model_lineage: list[ModelVersion]
    data_governance: DataGovernance
    record_keeping: RecordKeeping
    erasure_log: list[Erasure]
    attribution_samples: AttributionSamples
    training_timeline: TrainingTimeline | None = Field(
        default=None, description="source contributions per model version (absent in "
                                  "reports made before it existed)")
    sections: list[SectionStatus] = Field(
        description="per section: verified, failed, declared or computed, and why")


class ComplianceReport(ReportBody):
    """An EU AI Act evidence report for one model version, sealed: `integrity` holds its
    content hash and (when keyed) its signature."""

    integrity: Integrity


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of the report (draft 2020-12)."""
    schema = ComplianceReport.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            **schema}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(schema_text(), end="")
