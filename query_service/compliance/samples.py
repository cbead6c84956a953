"""Computed sections of the evidence report: attribution samples (influence of the
training rows on recorded predictions) and source contributions over training time
(TracIn per version and source), over the rebuild of verified events."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from headwater.query_service.attribution.engine import AttributionEngine, AttributionError
from headwater.query_service.compliance.facts import (
    finite,
    iso,
)
from headwater.query_service.compliance.model import (
    AttributionSample,
    AttributionSamples,
    Erasure,
    ModelVersion,
    RowContribution,
    SourceContribution,
    SourceRowRef,
    SourceShare,
    TrainingTimeline,
    VersionContribution,
)
from headwater.query_service.lineage.graph import LineageGraph
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2

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
