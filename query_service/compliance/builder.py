"""Builds the evidence report of one model version: the derived tables of the runs it draws
on are rebuilt from the verified event bytes (compliance/evidence.py) and every section is
read from that rebuild, each fact naming its event; the live tables are compared with the
rebuild, and the log's chains verified. Only names, hashes and counts leave the store."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from headwater import __version__
from headwater.errors import ReportError
from headwater.query_service.attribution.engine import AttributionEngine, AttributionError
from headwater.query_service.compliance.checkpoints import check_checkpoint
from headwater.query_service.compliance.config import (
    DEPLOYMENT_FIELDS,
    SYSTEM_FIELDS,
    ComplianceConfig,
    missing,
)
from headwater.query_service.compliance.erasure import state as erasure_state
from headwater.query_service.compliance.erasure import targets as erasure_targets
from headwater.query_service.compliance.evidence import Rebuild, compare_derived, verified_rebuild
from headwater.query_service.compliance.governance import leakage_check, split_statistics
from headwater.query_service.compliance.log_reader import verify_stored_log
from headwater.query_service.compliance.model import (
    SCHEMA_VERSION,
    AttributionSample,
    AttributionSamples,
    ChainProblem,
    Column,
    DataGovernance,
    Deployment,
    DerivedTableCheck,
    Disposition,
    Erasure,
    ErasureOutcome,
    ErasureTarget,
    EventRef,
    ExcludedEvent,
    LeakageCheck,
    ModelVersion,
    Pipeline,
    PipelineEdge,
    PipelineNode,
    PreparationStep,
    ProducerChain,
    RecordKeeping,
    ReportBody,
    RowContribution,
    SectionStatus,
    Source,
    SourceContribution,
    SourceRowRef,
    SourceShare,
    SplitStatistics,
    SystemIdentification,
    TimeRange,
    TrainingTimeline,
    Verification,
    VersionContribution,
)
from headwater.query_service.compliance.producer_keys import signature_states
from headwater.query_service.lineage.graph import LineageGraph
from headwater.query_service.tables import (
    VERIFICATION,
    ForgetRequestRecord,
    LineageNode,
    LineageOp,
    ModelVersionRecord,
    SourceRecord,
    UnlearningAppliedRecord,
    select,
    select_ops,
)
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2


def iso(ts: Any) -> str:
    """A stored timestamp as ISO 8601 UTC ('' when unset)."""
    if not ts:
        return ""
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=timezone.utc)
        return ts.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return str(ts)


def finite(value: Any) -> float | None:
    """NaN and infinity are not JSON: report them as not measured."""
    v = float(value)
    return v if math.isfinite(v) else None


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return text


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def event_refs(rebuild: Rebuild, table: str, key: str, where: str, params: dict[str, Any],
               order: str = "") -> dict[str, EventRef]:
    """key column value -> the verified event its row of `table` (in the rebuild) came from."""
    sql = f"SELECT {key}, event_id FROM {table} FINAL WHERE {where}"
    rows = rebuild.store.query(sql + (f" ORDER BY {order}" if order else ""), params)
    return {str(k): _ref(rebuild, e) for k, e in rows}


def _ref(rebuild: Rebuild, event_id: str) -> EventRef:
    _, digest, producer = rebuild.ref(event_id)
    return EventRef(event_id=event_id, hash=digest, recorded_by=producer)


# -- model version lineage ------------------------------------------------------------------

def _numbers(value: Any) -> dict[str, float]:
    """A recorded {name: number} mapping (anything else: none recorded)."""
    if not isinstance(value, dict):
        return {}
    return {str(k): float(v) for k, v in value.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def _texts(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def version_chain(rows: list[ModelVersionRecord], version: str, model_id: str,
                  refs: dict[str, EventRef]) -> list[ModelVersion]:
    """The versions from the root to `version` (pure; rows from model_versions). An empty
    `version` is the latest recorded one; a parent never recorded ends the chain."""
    if not rows:
        raise ReportError(f"model {model_id!r} has no recorded versions")
    by_version = {r.version: r for r in rows}
    if not version:
        version = max(rows, key=lambda r: (r.recorded_at, r.step)).version
    if version not in by_version:
        raise ReportError(f"model {model_id!r} has no version {version!r} (recorded: "
                          f"{', '.join(sorted(by_version))})")
    chain: list[ModelVersion] = []
    seen: set[str] = set()
    current = version
    while current in by_version and current not in seen:
        seen.add(current)
        r = by_version[current]
        config_value = _json_or_text(r.config_json)
        config = config_value if isinstance(config_value, dict) else {}
        status, detail = check_checkpoint(r.checkpoint_uri, r.parameter_hash)
        chain.append(ModelVersion(
            version=r.version, parent_version=r.parent_version, step=int(r.step),
            checkpoint_status=status, checkpoint_detail=detail,
            metrics=_numbers(config.get("metrics")), environment=_texts(config.get("environment")),
            parameter_hash=r.parameter_hash, parameter_count=int(r.parameter_count),
            framework=r.framework,
            config=config_value if isinstance(config_value, dict) else {"raw": config_value},
            checkpoint_uri=r.checkpoint_uri, run_id=r.run_id, recorded_at=iso(r.recorded_at),
            evidence=refs[r.version]))
        current = r.parent_version
    return chain[::-1]


# -- lineage from the sources to the training nodes -----------------------------------------

def _walk_pipeline(store: Store, training: list[str]
                   ) -> tuple[dict[str, LineageNode], dict[str, LineageOp]]:
    """Nodes and ops (by output node) of every ancestor of the training nodes, one pair of
    queries per depth level."""
    nodes: dict[str, LineageNode] = {}
    ops: dict[str, LineageOp] = {}
    frontier = sorted(set(training))
    asked: set[str] = set()
    while frontier:
        asked.update(frontier)
        for node in select(store, LineageNode, "lineage_nodes", "node_id IN {ids:Array(String)}",
                           {"ids": frontier}):
            nodes[node.node_id] = node
        found = select_ops(store, "output_node_id IN {ids:Array(String)}", {"ids": frontier})
        nxt: set[str] = set()
        for op in found:
            ops[op.output_node_id] = op
            nxt.update(i for i in op.input_node_ids if i not in nodes and i not in ops)
        frontier = sorted(nxt - asked)
    return nodes, ops


def topological_ops(ops: dict[str, LineageOp]) -> list[LineageOp]:
    """Ops ordered so every op comes after the ops that made its inputs (ties: recorded
    time, then id)."""
    order: list[LineageOp] = []
    done: set[str] = set()
    pending = sorted(ops.values(), key=lambda o: (o.recorded_us, o.op_id))
    while pending:
        ready = [o for o in pending if all(i not in ops or i in done for i in o.input_node_ids)]
        if not ready:  # a cycle cannot be recorded, but never loop forever
            ready = pending[:1]
        for o in ready:
            order.append(o)
            done.add(o.output_node_id)
        pending = [o for o in pending if o.output_node_id not in done]
    return order


def _step(o: LineageOp, refs: dict[str, EventRef]) -> PreparationStep:
    return PreparationStep(
        op_id=o.op_id, op_name=o.op_name, params=_json_or_text(o.params_json),
        input_node_ids=list(o.input_node_ids), output_node_id=o.output_node_id,
        output_rows=o.output_rows, understood=o.understood, granularity=o.granularity,
        code_version=o.code_version,
        recorded_at=iso(_EPOCH + timedelta(microseconds=o.recorded_us)),
        evidence=refs[o.op_id])


def _descendants(start: set[str], ordered: list[LineageOp]) -> set[str]:
    """Output nodes reachable from `start` (ops in topological order)."""
    reached = set(start)
    for o in ordered:
        if any(i in reached for i in o.input_node_ids):
            reached.add(o.output_node_id)
    return reached


def data_governance(rebuild: Rebuild, model_id: str, versions: list[str]) -> DataGovernance:
    store = rebuild.store
    notes: list[str] = []
    used = store.query(
        "SELECT node_id, min(recorded_at), max(recorded_at) FROM gradients "
        "WHERE model_id = {m:String} AND model_version IN {v:Array(String)} "
        "GROUP BY node_id ORDER BY node_id", {"m": model_id, "v": versions})
    training = [r[0] for r in used]
    if not training:
        notes.append(f"no gradients were captured for model {model_id} at versions "
                     f"{', '.join(versions)}: the training nodes, and so the sources, are "
                     "unknown")
    nodes, ops = _walk_pipeline(store, training) if training else ({}, {})
    unknown = [n for n in training if n not in nodes]
    if unknown:
        notes.append(f"{len(unknown)} training node(s) have no recorded lineage, e.g. "
                     f"{unknown[0]}")
    ordered = topological_ops(ops)
    source_nodes: dict[str, set[str]] = defaultdict(set)
    for n in nodes.values():
        if n.kind == "source":
            source_nodes[n.source_id or n.node_id].add(n.node_id)
    source_rows = select(store, SourceRecord, "sources", "source_id IN {ids:Array(String)}",
                         {"ids": sorted(source_nodes)}, order="uri, source_id")
    described = {r.source_id for r in source_rows}
    for sid in sorted(set(source_nodes) - described):
        notes.append(f"source node {sid} was never registered (no SourceRegistered event)")
    used_at = {r[0]: (r[1], r[2]) for r in used}
    op_refs = event_refs(rebuild, "lineage_ops", "op_id", "op_id IN {ids:Array(String)}",
                         {"ids": [o.op_id for o in ordered]})
    source_refs = event_refs(rebuild, "sources", "source_id", "source_id IN {ids:Array(String)}",
                             {"ids": sorted(source_nodes)})
    sources = []
    for src in source_rows:
        reached = _descendants(source_nodes[src.source_id], ordered)
        steps = [_step(o, op_refs) for o in ordered if o.output_node_id in reached]
        fed = sorted(n for n in training if n in reached)
        times = [used_at[n] for n in fed]
        columns = [Column(name=str(c.get("name", "")), dtype=str(c.get("dtype", "")),
                          personal=bool(c.get("personal", False)))
                   for c in (_json_or_text(src.schema_json) or []) if isinstance(c, dict)]
        sources.append(Source(
            source_id=src.source_id, uri=src.uri, format=src.format, origin=src.origin,
            licence=src.licence, content_sha256=src.content_sha256,
            row_count=int(src.row_count), size_bytes=int(src.size_bytes),
            labels=dict(src.labels or {}), columns=columns,
            personal_columns=[c.name for c in columns if c.personal],
            time_range=TimeRange(registered_at=iso(src.registered_at),
                                 first_used_at=iso(min(t[0] for t in times)) if times else None,
                                 last_used_at=iso(max(t[1] for t in times)) if times else None),
            training_nodes=len(fed), preparation=steps, evidence=source_refs[src.source_id]))
    training_set = set(training)
    pipeline = Pipeline(
        nodes=[PipelineNode(node_id=n.node_id, kind="source" if n.kind == "source" else "op",
                            source_id=n.source_id, rows=n.rows,
                            training=n.node_id in training_set)
               for n in sorted(nodes.values(), key=lambda n: n.node_id)],
        edges=[PipelineEdge(op_id=o.op_id, op_name=o.op_name, input_node_id=i,
                            output_node_id=o.output_node_id)
               for o in ordered for i in o.input_node_ids])
    training_keys, test_keys = _split_keys(store, model_id, versions)
    graph = LineageGraph(store)
    source_of = {n.node_id: n.source_id or n.node_id for n in nodes.values()
                 if n.kind == "source"}
    try:
        splits = split_statistics(graph, {"training": training_keys,
                                          "test/prediction": test_keys}, source_of)
        leakage = leakage_check(graph, training_keys, test_keys)
    except (KeyError, ValueError) as exc:  # lineage that cannot be traced: say so
        splits = SplitStatistics(splits=[], absent=[f"lineage could not be traced: {exc}"])
        leakage = LeakageCheck(status="skipped", detail=f"lineage could not be traced: {exc}",
                               training_rows=0, test_rows=0, findings=[])
    return DataGovernance(training_nodes=training, sources=sources, pipeline=pipeline,
                          notes=notes, split_statistics=splits, leakage=leakage,
                          declarations_missing=_declarations_missing(sources, ordered))


def _split_keys(store: Store, model_id: str, versions: list[str]
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(training rows by node, test/prediction input rows by node) of the model."""
    training = {node: np.asarray(sorted(rows), dtype=np.int64) for node, rows in store.query(
        "SELECT node_id, groupUniqArray(row) FROM gradients WHERE model_id = {m:String} "
        "AND model_version IN {v:Array(String)} GROUP BY node_id",
        {"m": model_id, "v": versions})}
    test: dict[str, set[int]] = defaultdict(set)
    for nodes_, rows in store.query("SELECT input_node_ids, input_rows FROM predictions FINAL "
                                    "WHERE model_id = {m:String}", {"m": model_id}):
        for node, row in zip(nodes_, rows, strict=True):
            test[node].add(int(row))
    return training, {n: np.asarray(sorted(r), dtype=np.int64) for n, r in test.items()}


def _declarations_missing(sources: list[Source], ops: list[LineageOp]) -> list[str]:
    """Required declarations not made. Personal data: the SDK records a per-column flag
    that is false both when declared non-personal and when never declared, so a source
    with no personal column is listed as undeclared. Code version: per op."""
    out = [f"source {s.uri or s.source_id}: no column declared personal; whether it holds "
           "personal data is not declared" for s in sources if not s.personal_columns]
    unversioned = [o for o in ops if not o.code_version]
    if unversioned:
        out.append(f"{len(unversioned)} of {len(ops)} preparation op(s) recorded no "
                   f"code_version, e.g. {unversioned[0].op_name} ({unversioned[0].op_id})")
    return out


# -- record keeping -------------------------------------------------------------------------

def record_keeping(store: Store, rebuild: Rebuild, recompute_hashes: bool) -> RecordKeeping:
    """verify_stored_log for each run the report draws on, and its derived tables against
    their rebuild from the verified events."""
    runs = rebuild.runs
    producers: list[ProducerChain] = []
    problems: list[ChainProblem] = []
    notes: list[ChainProblem] = []
    events = 0
    retention = None
    for run in runs:
        log = verify_stored_log(store, run, recompute_hashes)
        events += log.events
        retention = getattr(log, "retention_days", None)
        producers += [ProducerChain(producer_id=p.producer_id, run_id=p.run_id,
                                    events=p.events, first_seq=p.first_seq,
                                    last_seq=p.last_seq,
                                    first_emitted_at=iso(p.first_emitted_at) or None,
                                    last_emitted_at=iso(p.last_emitted_at) or None,
                                    head_hash=bytes(getattr(p, "head_hash", b"")).hex(),
                                    key_id=None, signed_seq=0)
                      for p in log.producers]
        problems += [ChainProblem(producer_id=p.producer_id, kind=p.kind, seq=p.seq,
                                  detail=p.detail) for p in log.problems]
        notes += [ChainProblem(producer_id=p.producer_id, kind=p.kind, seq=p.seq,
                               detail=p.detail) for p in getattr(log, "notes", [])]
    signed = signature_states(store, [p.producer_id for p in producers])
    producers = [p.model_copy(update={
        "key_id": signed["producers"][p.producer_id]["key_id"],
        "signed_seq": signed["producers"][p.producer_id]["attested_seq"]}) for p in producers]
    problems += [ChainProblem(producer_id=pid, kind="signed_head", seq=seq, detail=f)
                 for pid, seq, f in signed["failed"]]
    derived = [DerivedTableCheck(table=t.table, equal=t.equal, rows_stored=t.incremental.rows,
                                 rows_from_events=t.replayed.rows, detail=t.detail)
               for t in compare_derived(store, rebuild)]
    excluded = [ExcludedEvent(event_id=e, reason=why) for e, why in
                sorted(rebuild.excluded.items())]
    excluded += [ExcludedEvent(event_id="", reason=f"verified bytes no processor accepts: {r}")
                 for r in rebuild.rejected]
    ok = not problems and not excluded and all(t.equal for t in derived)
    return RecordKeeping(runs=runs, hashes_recomputed=recompute_hashes, ok=ok,
                         events=events, producers=producers, problems=problems, notes=notes,
                         retention_days=retention, derived_tables=derived,
                         excluded_events=excluded)


# -- erasure log ----------------------------------------------------------------------------

_RETRAIN_ONLY = {"retrain_forget_loss", "gap_closed", "distance_to_retrained",
                 "retrain_membership_auc", "retrain_test_accuracy"}


def _verification(values: dict[str, Any]) -> Verification:
    retrained = bool(values["retrained"])
    return Verification(**{
        k: retrained if k == "retrained" else
        (None if k in _RETRAIN_ONLY and not retrained else finite(values[k]))
        for k in VERIFICATION})


def _source_row_counts(text: str) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for item in _json_or_text(text) or []:
        if isinstance(item, dict):
            counts[str(item.get("source_id", ""))] += len(item.get("rows") or [])
    return dict(counts)


def _dispositions(store: Store, f: ForgetRequestRecord, done: list[ErasureOutcome],
                  chain: list[ModelVersion]) -> list[Disposition]:
    """What became of the rows reached, their gradients and events, and older versions."""
    via = {k: int(v) for k, v in dict(f.affected_via).items()}
    forgotten = sum(o.rows_forgotten for o in done if o.status in ("APPLIED",
                                                                   "ALREADY_APPLIED"))
    direct = via.get("row", 0) + via.get("join", 0)
    aggregate = via.get("aggregation", 0)
    tomb = ("(node_id, row) IN (SELECT node_id, row FROM forgotten_rows FINAL "
            "WHERE request_id = {r:String})")
    grads, events = store.query(
        f"SELECT count(), uniqExact(event_id) FROM gradients FINAL WHERE {tomb}",
        {"r": f.request_id})[0]
    trained = {r[0] for r in store.query(
        f"SELECT DISTINCT model_version FROM gradients FINAL WHERE kind = 'TRAINING_STEP' "
        f"AND {tomb}", {"r": f.request_id})}
    old = [v for v in chain if v.version in trained]
    out = [Disposition(
        item="training_rows", count=direct,
        status="removed" if forgotten >= direct else f"retained ({direct - forgotten} not "
                                                     "removed by the trainer)",
        detail=f"{forgotten} training row(s) removed by the trainer and excluded from all "
               "later training and attribution")]
    if aggregate:
        out.append(Disposition(
            item="aggregate_dependencies", count=aggregate,
            status="retained: not recomputed",
            detail="rows that depend on the forgotten rows only through an aggregate op "
                   "(e.g. a normalisation's mean and std fitted with them); the aggregate "
                   "was not recomputed without them, so the model's inputs still carry "
                   "statistics of the forgotten rows. Recomputing it needs the trainer to "
                   "refit the op and retrain; nothing recorded says it did"))
    out.append(Disposition(
        item="gradient_rows", count=int(grads), status="tombstoned",
        detail="projected per-sample gradients of the forgotten rows stay stored; a "
               "tombstone (forgotten_rows) excludes them from attribution"))
    out.append(Disposition(
        item="raw_events", count=int(events), status="retained: append-only log",
        detail="the events carrying those gradients (and the source's registration) stay in "
               "the hash-chained log; crypto-shredding of payloads is not implemented"))
    out.append(Disposition(
        item="model_versions", count=len(old), status="superseded" if done else "in use",
        detail="versions trained with the forgotten rows; they stay in the lineage",
        versions=[f"{v.version}: checkpoint {v.checkpoint_uri or 'none recorded'}"
                  for v in old]))
    return out


def _version_note(done: list[ErasureOutcome], chain: list[ModelVersion]) -> tuple[str | None,
                                                                                  str]:
    applied = [o for o in done if o.status in ("APPLIED", "ALREADY_APPLIED")]
    if not applied:
        return None, "no verification figures recorded"
    at = applied[-1].new_version
    names = [v.version for v in chain]
    reported = names[-1]
    if at == reported:
        return at, "measured at the reported version"
    if at in names:
        later = len(names) - 1 - names.index(at)
        return at, (f"measured at {at}; the report covers {reported}, {later} version(s) "
                    "later, trained without the forgotten rows but not re-verified")
    return at, f"measured at {at}, which is not on the reported version's lineage"


def erasure_log(rebuild: Rebuild, model_id: str, chain: list[ModelVersion]) -> list[Erasure]:
    store = rebuild.store
    order = "applied_at, event_id"
    outcome_rows = select(store, UnlearningAppliedRecord, "unlearning_applied",
                          "model_id = {m:String}", {"m": model_id}, order=order)
    outcome_refs = [_ref(rebuild, e) for (e,) in store.query(
        f"SELECT event_id FROM unlearning_applied FINAL WHERE model_id = {{m:String}} "
        f"ORDER BY {order}", {"m": model_id})]
    request_refs = event_refs(rebuild, "forget_requests", "request_id", "model_id = {m:String}",
                              {"m": model_id})
    outcomes: dict[str, list[ErasureOutcome]] = defaultdict(list)
    for a, ref in zip(outcome_rows, outcome_refs, strict=True):
        outcomes[a.request_id].append(ErasureOutcome(
            status=a.status, error=a.error, method=a.method, method_reason=a.method_reason,
            estimated_replay_steps=int(a.estimated_replay_steps),
            estimated_replay_seconds=finite(a.estimated_replay_seconds) or 0.0,
            steps_replayed=int(a.steps_replayed), newton_steps=int(a.newton_steps),
            fine_tune_steps=int(a.fine_tune_steps),
            previous_version=a.previous_version, new_version=a.new_version,
            rows_forgotten=int(a.rows_forgotten),
            duration_seconds=finite(a.duration_seconds) or 0.0,
            applied_at=iso(a.applied_at), verification=_verification(a.verification),
            evidence=ref))
    out = []
    for f in select(store, ForgetRequestRecord, "forget_requests", "model_id = {m:String}",
                    {"m": model_id}, order="requested_at, request_id"):
        done = outcomes.get(f.request_id, [])
        applied = [o for o in done if o.status in ("APPLIED", "ALREADY_APPLIED")]
        checks = erasure_targets(applied[-1].verification) if applied else []
        dispositions = _dispositions(store, f, done, chain)
        state, why = erasure_state([o.status for o in done], checks, dispositions)
        at, note = _version_note(done, chain)
        out.append(Erasure(
            request_id=f.request_id, run_id=f.run_id, requested_at=iso(f.requested_at),
            reason=f.reason, requested_by=f.requested_by,
            requester_authenticated=f.requested_by.startswith("token="), method=f.method,
            verify_with_retrain=bool(f.verify_with_retrain),
            target=ErasureTarget(source_ids=list(f.source_ids),
                                 source_rows=_source_row_counts(f.source_rows_json),
                                 training_keys=int(f.target_keys)),
            affected_rows=int(f.affected_rows),
            affected_via={k: int(v) for k, v in dict(f.affected_via).items()},
            state=state, state_reason=why, targets=checks, dispositions=dispositions,
            verified_at_version=at, version_note=note, outcomes=done,
            evidence=request_refs[f.request_id]))
    return out


# -- attribution samples --------------------------------------------------------------------

def attribution_samples(store: Store, engine: AttributionEngine, model_id: str, version: str,
                        max_samples: int, top_sources: int,
                        top_rows: int = 5) -> AttributionSamples:
    count = int(store.query("SELECT count() FROM predictions FINAL WHERE model_id = {m:String}"
                            " AND model_version = {v:String}",
                            {"m": model_id, "v": version})[0][0])
    if max_samples <= 0:
        return AttributionSamples(status="skipped", reason="attribution samples were not "
                                  "requested (max samples 0)", predictions_recorded=count,
                                  samples=[])
    if not count:
        return AttributionSamples(status="skipped", reason=f"no predictions recorded for "
                                  f"model {model_id} at version {version}",
                                  predictions_recorded=0, samples=[])
    gradients = int(store.query("SELECT count() FROM gradients WHERE model_id = {m:String}",
                                {"m": model_id})[0][0])
    if not gradients:
        return AttributionSamples(status="skipped", reason=f"no gradients were captured for "
                                  f"model {model_id}: attribution needs them",
                                  predictions_recorded=count, samples=[])
    rows = store.query(
        "SELECT prediction_id, recorded_at, predicted_label FROM predictions FINAL "
        "WHERE model_id = {m:String} AND model_version = {v:String} "
        "ORDER BY recorded_at DESC, prediction_id LIMIT {n:UInt32}",
        {"m": model_id, "v": version, "n": max_samples})
    graph = LineageGraph(store)
    samples = []
    for pid, at, label in rows:
        top: list[SourceContribution] = []
        rows_top: list[RowContribution] = []
        error = None
        method = "influence"
        try:
            result = engine.attribute(pid, method=method)
            top = [SourceContribution(source_id=key, uri=uri, score=finite(score) or 0.0,
                                      examples=int(n))
                   for key, uri, score, n in result.groups("source", graph)[:top_sources]]
            rows_top = [RowContribution(
                node_id=ex.node_id, row=ex.row, score=finite(score) or 0.0,
                sources=[SourceRowRef(source_id=s.source_id, uri=s.uri, row=s.row)
                         for s in ex.sources]) for ex, score in result.top(top_rows)]
        except AttributionError as exc:
            error = str(exc)
        samples.append(AttributionSample(prediction_id=pid, model_version=version,
                                         recorded_at=iso(at), predicted_label=int(label),
                                         method=method, top_sources=top, top_rows=rows_top,
                                         error=error))
    return AttributionSamples(status="computed", reason=None, predictions_recorded=count,
                              samples=samples)


# -- source contributions over training time ----------------------------------------------

TIMELINE_MAX_KEYS = 200_000


def _key_sources(graph: LineageGraph, keys: list[tuple[str, int]]) -> dict[tuple[str, int],
                                                                          list[tuple[str, str]]]:
    """(node, row) -> [(source id, uri)] its row-wise ("direct") source rows come from."""
    nodes = sorted({n for n, _ in keys})
    index = {n: i for i, n in enumerate(nodes)}
    traced = graph.trace_rows(events_pb2.RowKeys(
        node_ids=nodes, node_index=[index[n] for n, _ in keys], rows=[r for _, r in keys]))
    out: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for node, row, trace in traced:
        refs = []
        for src_node in sorted(trace.direct):
            ref = graph.source(src_node)
            refs.append((ref.source_id or src_node, ref.uri))
        out[(node, row)] = refs
    return out


def tracin_by_version_source(engine: AttributionEngine, model_id: str,
                             prediction_ids: list[str]) -> dict[tuple[str, str], float]:
    """(version, source id) -> TracIn of that version's training steps toward the
    predictions, averaged over them (rows forgotten by erasures are not scored)."""
    totals: dict[tuple[str, str], float] = defaultdict(float)
    used = 0
    model = engine.model(model_id)
    for pid in prediction_ids:
        try:
            _, tests = engine.test_gradients(pid)
        except AttributionError:
            continue
        by_version = {t.version: t for t in tests}
        used += 1
        for block in model.blocks:
            if block.kind != "TRAINING_STEP":
                continue
            test = by_version.get(block.version, tests[-1])
            if test.projection_id != block.projection_id:
                continue
            per_row = (block.phi @ test.phi.astype(np.float32)) * block.q * block.lr
            per_example = np.bincount(block.example, per_row, len(model.examples))
            for i in np.flatnonzero(per_example):
                for src in {s.source_id for s in model.examples[i].sources}:
                    totals[(block.version, src)] += float(per_example[i])
    return {k: v / used for k, v in totals.items()} if used else {}


def training_timeline(store: Store, engine: AttributionEngine, model_id: str,
                      chain: list[ModelVersion], samples: AttributionSamples,
                      erasures: list[Erasure]) -> TrainingTimeline:
    """Per version of the chain: training-step rows by source and their TracIn toward the
    attribution samples; a source forgotten by an erasure shows no TracIn but the request
    it is excluded since (excluded is not zero influence)."""
    excluded = {sid: e.request_id for e in erasures if e.state != "pending"
                for sid in e.target.source_ids}
    versions = [v.version for v in chain]
    counts = store.query(
        "SELECT model_version, node_id, row, count() FROM gradients FINAL "
        "WHERE model_id = {m:String} AND kind = 'TRAINING_STEP' "
        "AND model_version IN {v:Array(String)} GROUP BY model_version, node_id, row "
        "LIMIT {n:UInt64}", {"m": model_id, "v": versions, "n": TIMELINE_MAX_KEYS + 1})
    if not counts:
        return TrainingTimeline(status="skipped", reason="no training-step gradients were "
                                f"captured for model {model_id}", versions=[], notes=[])
    if len(counts) > TIMELINE_MAX_KEYS:
        return TrainingTimeline(status="skipped", reason=f"more than {TIMELINE_MAX_KEYS:,} "
                                "(version, training row) pairs: too many to trace here",
                                versions=[], notes=[])
    notes: list[str] = []
    keys = sorted({(r[1], int(r[2])) for r in counts})
    try:
        sources = _key_sources(LineageGraph(store), keys)
    except (KeyError, ValueError) as exc:
        sources = {}
        notes.append(f"training rows could not be traced to sources: {exc}")
    per: dict[str, dict[tuple[str, str], int]] = defaultdict(lambda: defaultdict(int))
    for version, node, row, n in counts:
        for ref in sources.get((node, int(row))) or [("", "")]:
            per[version][ref] += int(n)
    if any(("", "") in v for v in per.values()):
        notes.append("some training rows have no recorded source (shown with an empty id)")
    tracin: dict[tuple[str, str], float] = {}
    sample_ids = [s.prediction_id for s in samples.samples if not s.error]
    if sample_ids:
        try:
            tracin = tracin_by_version_source(engine, model_id, sample_ids)
            notes.append("TracIn is the mean over the attribution samples; rows forgotten "
                         "by an erasure are no longer scored: a forgotten source shows the "
                         "request it is excluded since instead of a TracIn, while example "
                         "counts show what was trained on")
        except AttributionError as exc:
            notes.append(f"TracIn not computed: {exc}")
    out = []
    for v in chain:
        if v.version not in per:
            continue
        total = sum(per[v.version].values())
        out.append(VersionContribution(
            version=v.version, step=v.step, examples=total,
            sources=[SourceShare(source_id=sid, uri=uri, examples=n, share=n / total,
                                 tracin=finite(tracin.get((v.version, sid), 0.0))
                                 if tracin and sid not in excluded else None,
                                 excluded_since=excluded.get(sid))
                     for (sid, uri), n in sorted(per[v.version].items(),
                                                 key=lambda kv: kv[0][1])]))
    return TrainingTimeline(status="computed", reason=None, versions=out, notes=notes)


# -- the report -----------------------------------------------------------------------------

def _model_runs(store: Store, model_id: str) -> set[str]:
    """The runs the live tables name for the model: where to look for its events."""
    found: set[str] = set()
    for table in ("model_versions", "gradients", "forget_requests"):
        found |= {r[0] for r in store.query(
            f"SELECT DISTINCT run_id FROM {table} WHERE model_id = {{m:String}}",
            {"m": model_id})}
    return found - {""}


def _fact_runs(rebuild: Rebuild, chain: list[ModelVersion], governance: DataGovernance,
               erasures: list[Erasure]) -> set[str]:
    """The runs the report's facts come from (as rebuilt from verified events)."""
    nodes = [n.node_id for n in governance.pipeline.nodes]
    node_runs = {r[0] for r in rebuild.store.query(
        "SELECT DISTINCT run_id FROM lineage_nodes FINAL WHERE node_id IN {ids:Array(String)}",
        {"ids": nodes})} if nodes else set()
    return ({v.run_id for v in chain} | node_runs | {e.run_id for e in erasures}) - {""}


def _lineage_status(status: str, why: str, chain: list[ModelVersion]) -> SectionStatus:
    wrong = [v.version for v in chain if v.checkpoint_status == "mismatch"]
    if wrong:
        return SectionStatus(section="model_lineage", status="failed",
                             detail=f"checkpoint of {', '.join(wrong)} does not match its "
                                    "recorded parameter hash" + ("" if status == "verified"
                                                                else f"; {why}"))
    checked = sum(v.checkpoint_status == "verified" for v in chain)
    return SectionStatus(section="model_lineage", status=status,
                         detail=why + f"; {checked} of {len(chain)} checkpoint artefact(s) "
                                      "verified against their parameter hashes")


def _sections(record: RecordKeeping, samples: AttributionSamples,
              timeline: TrainingTimeline, chain: list[ModelVersion]) -> list[SectionStatus]:
    """Per section, how far it is proven (see SectionStatus); a checkpoint artefact that
    does not match its version's parameter hash fails the model lineage."""
    failed = [f"{len(record.problems)} chain problem(s)"] if record.problems else []
    differ = sum(not t.equal for t in record.derived_tables)
    failed += [f"{differ} derived table(s) differ from the verified events"] if differ else []
    failed += [f"{len(record.excluded_events)} stored event(s) failed verification and were "
               "left out"] if record.excluded_events else []
    status = "failed" if failed else "verified"
    why = "; ".join(failed) if failed else (
        "re-derived from event bytes that hash to their chain hashes and match their first "
        "receipts" + ("" if record.hashes_recomputed else "; chain verified on the stored "
                      "columns (hashes not recomputed for the log section)"))
    computed = "failed" if failed else "computed"
    return [
        SectionStatus(section="system", status="declared",
                      detail="system name and purpose from the operator's compliance config"),
        SectionStatus(section="deployment", status="declared",
                      detail="provider/deployer facts from the operator's compliance config"),
        _lineage_status(status, why, chain),
        SectionStatus(section="data_governance", status=status, detail=why),
        SectionStatus(section="record_keeping", status=status, detail=why),
        SectionStatus(section="erasure_log", status=status, detail=why),
        SectionStatus(section="attribution_samples", status=computed if
                      samples.status == "computed" else status,
                      detail="influence computed from the verified gradient rows" if
                      samples.status == "computed" else samples.reason or why),
        SectionStatus(section="training_timeline", status=computed if
                      timeline.status == "computed" else status,
                      detail="counts and TracIn computed from the verified gradient rows" if
                      timeline.status == "computed" else timeline.reason or why),
    ]


def build_report(store: Store, model_id: str, version: str = "",
                 config: ComplianceConfig | None = None, *, max_samples: int = 5,
                 top_sources: int = 5, recompute_hashes: bool = False,
                 now: datetime | None = None) -> ReportBody:
    """The report of `model_id` at `version` (default: the latest recorded), unsealed.

    The runs the live tables name for the model are rebuilt from their verified events;
    when the rebuilt facts name further runs, those are added and the rebuild repeated."""
    if not model_id:
        raise ReportError("model id is empty")
    runs = _model_runs(store, model_id)
    if not runs:
        raise ReportError(f"model {model_id!r} has no recorded versions")
    for _ in range(3):
        with verified_rebuild(store, sorted(runs)) as rebuild:
            body = _build(store, rebuild, model_id, version, config or ComplianceConfig(),
                          max_samples, top_sources, recompute_hashes, now)
            more = _fact_runs(rebuild, body.model_lineage, body.data_governance,
                              body.erasure_log) - runs
        if not more:
            return body
        runs |= more
    raise ReportError(f"the runs behind model {model_id!r} keep growing: {sorted(runs)}")


def _build(store: Store, rebuild: Rebuild, model_id: str, version: str,
           config: ComplianceConfig, max_samples: int, top_sources: int,
           recompute_hashes: bool, now: datetime | None) -> ReportBody:
    facts = rebuild.store
    refs = event_refs(rebuild, "model_versions", "version", "model_id = {m:String}",
                      {"m": model_id})
    chain = version_chain(select(facts, ModelVersionRecord, "model_versions",
                                 "model_id = {m:String}", {"m": model_id}), version, model_id,
                          refs)
    version = chain[-1].version
    governance = data_governance(rebuild, model_id, [v.version for v in chain])
    erasures = erasure_log(rebuild, model_id, chain)
    deployment_missing = missing(config, DEPLOYMENT_FIELDS)
    engine = AttributionEngine(facts)
    samples = attribution_samples(facts, engine, model_id, version, max_samples, top_sources)
    timeline = training_timeline(facts, engine, model_id, chain, samples, erasures)
    record = record_keeping(store, rebuild, recompute_hashes)
    return ReportBody(
        schema_version=SCHEMA_VERSION,
        generated_at=iso(now or datetime.now(timezone.utc)),
        generator=f"headwater {__version__}",
        system=SystemIdentification(
            system_name=config.system_name if "system_name" not in
            missing(config, SYSTEM_FIELDS) else None,
            intended_purpose=config.intended_purpose if "intended_purpose" not in
            missing(config, SYSTEM_FIELDS) else None,
            model_id=model_id, model_version=version, missing=missing(config, SYSTEM_FIELDS)),
        deployment=Deployment(**{f: None if f in deployment_missing else getattr(config, f)
                                 for f in DEPLOYMENT_FIELDS}, missing=deployment_missing),
        model_lineage=chain,
        data_governance=governance,
        record_keeping=record,
        erasure_log=erasures,
        attribution_samples=samples,
        training_timeline=timeline,
        sections=_sections(record, samples, timeline, chain))
