"""The data-governance section (Art. 10(2),(3)), read from the rebuild of verified events:
the sources behind the model's training nodes with every preparation op in order and the
pipeline graph; computed from lineage, rows per source and split, a leakage check, and the
declarations that are missing.

Leakage: a training row leaks when it depends, through an aggregate op (an op that made
each output row from every row of an input: a mean, a std, an op not understood), on
source rows that also directly feed a test or prediction row. Fitting a normalisation on
all rows before the train/test split does exactly this; fitting it on the training rows
only does not (the test rows then depend on training rows, which is allowed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import timedelta

import numpy as np

from headwater.query_service.compliance.bias import columns_of, differences
from headwater.query_service.compliance.config import BIAS_FIELDS, ComplianceConfig, missing
from headwater.query_service.compliance.evidence import Rebuild
from headwater.query_service.compliance.facts import (
    EPOCH,
    event_refs,
    iso,
    json_or_text,
)
from headwater.query_service.compliance.model import (
    BiasExamination,
    Column,
    DataGovernance,
    DistributionDifference,
    EventRef,
    LeakageCheck,
    LeakageFinding,
    Pipeline,
    PipelineEdge,
    PipelineNode,
    PreparationStep,
    Source,
    SplitShare,
    SplitStatistics,
    TimeRange,
)
from headwater.query_service.compliance.source_stats import read_verified, source_statistics
from headwater.query_service.lineage.graph import LineageGraph
from headwater.query_service.tables import (
    LineageNode,
    LineageOp,
    SourceRecord,
    select,
    select_ops,
)
from headwater.stream_processors.lineage_resolve import Trace, trace_each
from headwater.stream_processors.store import Store

MAX_ROWS = 200_000  # rows traced per check; above it the check is skipped, saying so


def _traces(graph: LineageGraph, keys: dict[str, np.ndarray]) -> Iterable[Trace]:
    for node, rows in keys.items():
        yield from trace_each(node, rows, graph.op_of, expand=False)


def _direct(traces: Iterable[Trace]) -> dict[str, set[int]]:
    """Source node -> source rows reached row-wise."""
    out: dict[str, set[int]] = defaultdict(set)
    for t in traces:
        for node, rows in t.direct.items():
            out[node].update(int(r) for r in rows)
    return out


def split_statistics(graph: LineageGraph, splits: dict[str, dict[str, np.ndarray]],
                     sources: dict[str, str], described: list[Source]
                     ) -> tuple[SplitStatistics, list[DistributionDifference], dict[str, str]]:
    """Per split ("training", "test/prediction"): the source rows it draws on directly, by
    source; per described source, counts from its file (source_stats); the differences
    between sources and between splits (bias.py), and why a source's file was not read.
    `sources`: source node -> source id."""
    out = []
    rows_of: dict[str, dict[str, set[int]]] = defaultdict(dict)  # source id -> split -> rows
    for split, keys in splits.items():
        direct = _direct(_traces(graph, keys))
        total = sum(len(r) for r in direct.values())
        for node, rows in direct.items():
            rows_of[sources.get(node, node)][split] = rows
        out.append(SplitShare(split=split, rows=int(sum(len(r) for r in keys.values())),
                              source_rows={sources.get(n, n): len(r)
                                           for n, r in sorted(direct.items())},
                              share={sources.get(n, n): len(r) / total
                                     for n, r in sorted(direct.items())} if total else {}))
    read = {s.source_id: read_verified(s.uri, s.format, s.content_sha256) for s in described}
    tables = {sid: columns_of(t) for sid, t in read.items() if not isinstance(t, str)}
    drawn = {split: {sid: np.asarray(sorted(rows_of[sid].get(split, ())), dtype=np.int64)
                     for sid in tables} for split in splits}
    statistics = SplitStatistics(
        splits=out,
        sources=[source_statistics(s.source_id, read[s.source_id],
                                   rows_of.get(s.source_id, {}), s.personal_columns)
                 for s in described],
        absent=["distributions of columns with many distinct values (only counts leave the "
                "store; bias_examination compares them by unitless figures)"])
    unread = {sid: why for sid, why in read.items() if isinstance(why, str)}
    return statistics, differences(tables, drawn), unread


def bias_examination(found: list[DistributionDifference], unread: dict[str, str],
                     described: int, config: ComplianceConfig) -> BiasExamination:
    """The computed differences with the operator's declared examination and measures."""
    gaps = missing(config, BIAS_FIELDS)
    read = described - len(unread)
    detail = (f"computed from {read} of {described} source file(s) read after their SHA-256 "
              "matched the registered one" + "".join(f"; {sid} not read: {why}"
                                                     for sid, why in sorted(unread.items())))
    return BiasExamination(
        status="computed" if read else "not computed", detail=detail, differences=found,
        flagged=sum(d.flagged for d in found),
        declared_examination=None if "bias_examination" in gaps else config.bias_examination,
        declared_measures=None if "bias_measures" in gaps else config.bias_measures,
        missing=gaps)


def leakage_check(graph: LineageGraph, training: dict[str, np.ndarray],
                  test: dict[str, np.ndarray]) -> LeakageCheck:
    """Training rows that depend through an aggregate on source rows that directly feed
    test or prediction rows (see the module docstring)."""
    n_train = int(sum(len(r) for r in training.values()))
    n_test = int(sum(len(r) for r in test.values()))
    if not n_test:
        return LeakageCheck(status="skipped", detail="no test or prediction rows with "
                            "lineage are recorded: nothing to compare with", training_rows=n_train,
                            test_rows=0, findings=[])
    if n_train + n_test > MAX_ROWS:
        return LeakageCheck(status="skipped", detail=f"more than {MAX_ROWS:,} rows to trace",
                            training_rows=n_train, test_rows=n_test, findings=[])
    test_direct = _direct(_traces(graph, test))
    per_op: dict[tuple[str, str, str], int] = defaultdict(int)
    for t in _traces(graph, training):
        for agg in t.aggregates:
            per_op[(agg.op_id, agg.op_name, agg.node_id)] += 1
    findings = []
    for (op_id, op_name, node), rows in sorted(per_op.items()):
        aggregated = _direct(trace_each(node, np.arange(graph.node(node).rows), graph.op_of,
                                        expand=False))
        shared = sum(len(aggregated.get(src, set()) & test_rows)
                     for src, test_rows in test_direct.items())
        if shared:
            findings.append(LeakageFinding(
                op_id=op_id, op_name=op_name, aggregated_node_id=node, training_rows=rows,
                shared_source_rows=shared,
                detail=f"{rows} training row(s) depend through {op_name} on all rows of "
                       f"{node}, {shared} of whose source rows also directly feed test or "
                       "prediction rows: statistics of the test data reach training"))
    return LeakageCheck(
        status="failed" if findings else "passed",
        detail=(f"{len(findings)} aggregate op(s) carry test rows into training" if findings
                else f"no training row depends through an aggregate on a test or prediction "
                     f"row's source rows ({len(per_op)} aggregate op(s) checked)"),
        training_rows=n_train, test_rows=n_test, findings=findings)


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
        op_id=o.op_id, op_name=o.op_name, params=json_or_text(o.params_json),
        input_node_ids=list(o.input_node_ids), output_node_id=o.output_node_id,
        output_rows=o.output_rows, understood=o.understood, granularity=o.granularity,
        code_version=o.code_version,
        recorded_at=iso(EPOCH + timedelta(microseconds=o.recorded_us)),
        evidence=refs[o.op_id])


def _descendants(start: set[str], ordered: list[LineageOp]) -> set[str]:
    """Output nodes reachable from `start` (ops in topological order)."""
    reached = set(start)
    for o in ordered:
        if any(i in reached for i in o.input_node_ids):
            reached.add(o.output_node_id)
    return reached


def data_governance(rebuild: Rebuild, model_id: str, versions: list[str],
                    config: ComplianceConfig | None = None) -> DataGovernance:
    config = config or ComplianceConfig()
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
                   for c in (json_or_text(src.schema_json) or []) if isinstance(c, dict)]
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
        splits, found, unread = split_statistics(
            graph, {"training": training_keys, "test/prediction": test_keys}, source_of,
            sources)
        leakage = leakage_check(graph, training_keys, test_keys)
        bias = bias_examination(found, unread, len(sources), config)
    except (KeyError, ValueError) as exc:  # lineage that cannot be traced: say so
        splits = SplitStatistics(splits=[], absent=[f"lineage could not be traced: {exc}"])
        leakage = LeakageCheck(status="skipped", detail=f"lineage could not be traced: {exc}",
                               training_rows=0, test_rows=0, findings=[])
        bias = bias_examination([], {"(all)": f"lineage could not be traced: {exc}"}, 0,
                                config)
    return DataGovernance(training_nodes=training, sources=sources, pipeline=pipeline,
                          notes=notes, split_statistics=splits, leakage=leakage,
                          bias_examination=bias,
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
