"""Resolving a forget target through lineage to the training rows derived from it.

A row is affected when its lineage reaches a target source row: through row-wise ops only
(via "row"), through a join that also used other source rows ("join"), or only through an
aggregate such as a normalisation mean over all rows ("aggregation"). The first two are
removed; the last is reported, since every row of a normalised dataset depends on every
source row through its statistics.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from headwater.errors import TargetError
from headwater.query_service.lineage.graph import LineageGraph, UnknownNode
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2

ALL = None  # every row of a source node



def request_id(run_id: str, model_id: str, target: events_pb2.ForgetTarget, reason: str) -> str:
    """Deterministic: the same request twice gets the same id (idempotent Forget)."""
    digest = hashlib.sha256()
    for part in (run_id, model_id, reason):
        digest.update(part.encode() + b"\0")
    digest.update(target.SerializeToString(deterministic=True))
    return "fr-" + digest.hexdigest()[:24]


def target_rows(store: Store, target: events_pb2.ForgetTarget) -> dict[str, np.ndarray | None]:
    """Source node id -> forgotten rows (ALL for a whole source). Training-row keys in the
    target stand for the source rows they were built from (row-wise), so every other row
    derived from those source rows is forgotten too."""
    ids = sorted(set(target.source_ids) | {s.source_id for s in target.source_rows})
    nodes: dict[str, str] = {}
    if ids:
        for sid, node in store.query("SELECT source_id, node_id FROM sources FINAL "
                                     "WHERE source_id IN {ids:Array(String)}", {"ids": ids}):
            nodes[sid] = node or sid
    missing = [s for s in ids if s not in nodes]
    if missing:
        raise TargetError(f"unknown source id(s): {', '.join(missing[:5])}")
    out: dict[str, np.ndarray | None] = {nodes[s]: ALL for s in target.source_ids}
    for s in target.source_rows:
        node = nodes[s.source_id]
        if node in out and out[node] is ALL:
            continue
        rows = np.asarray(s.rows, dtype=np.int64)
        prev = out.get(node)
        out[node] = rows if prev is None else np.union1d(prev, rows)
    if target.row_keys.rows:
        for _, _, trace in LineageGraph(store).trace_rows(target.row_keys):
            for node, rows in trace.direct.items():
                if node in out and out[node] is ALL:
                    continue
                prev = out.get(node)
                out[node] = rows if prev is None else np.union1d(prev, rows)
    return out


def _hits(found: dict[str, np.ndarray], target: dict[str, np.ndarray | None]) -> int:
    """How many source rows of `found` the target names."""
    n = 0
    for node, rows in found.items():
        if node in target:
            wanted = target[node]
            n += len(rows) if wanted is None else len(np.intersect1d(rows, wanted,
                                                                     assume_unique=True))
    return n


def affected(graph: LineageGraph, target: dict[str, np.ndarray | None],
             keys: events_pb2.RowKeys, direct_keys: Iterable[tuple[str, int]] = ()
             ) -> dict[str, list[tuple[str, int]]]:
    """Keys derived from the target, by how: {"row"|"join"|"aggregation": [(node, row)]}.
    `direct_keys` (a target's own training-row keys) count as "row" when present."""
    out: dict[str, list[tuple[str, int]]] = {"row": [], "join": [], "aggregation": []}
    named = set(direct_keys)
    if not keys.rows:
        return out
    for node, row, trace in graph.trace_rows(keys):
        if (node, row) in named:
            out["row"].append((node, row))
        elif _hits(trace.direct, target):
            sources = sum(len(r) for r in trace.direct.values())
            out["row" if sources == 1 else "join"].append((node, row))
        elif _hits(trace.rows, target):
            out["aggregation"].append((node, row))
    return out


def keys_of(pairs: list[tuple[str, int]]) -> events_pb2.RowKeys:
    """(node, row) pairs in columnar RowKeys form."""
    nodes = sorted({n for n, _ in pairs})
    index = {n: i for i, n in enumerate(nodes)}
    return events_pb2.RowKeys(node_ids=nodes, node_index=[index[n] for n, _ in pairs],
                              rows=[r for _, r in pairs])


def model_keys(store: Store, model_id: str, run_id: str) -> events_pb2.RowKeys:
    """Every training-row key the model has gradient rows for in run `run_id`: a forget
    resolves within one run, as another run may reuse the model id and the sources. A run
    that has not trained the model yet has none: its request is still recorded, and the
    trainer's listener keeps the rows out of the training to come."""
    pairs = [(n, int(r)) for n, r in store.query(
        "SELECT DISTINCT node_id, row FROM gradients WHERE model_id = {m:String} "
        "AND run_id = {r:String} ORDER BY node_id, row", {"m": model_id, "r": run_id})]
    return keys_of(pairs)


def node_keys(graph: LineageGraph, node_ids: Iterable[str]) -> events_pb2.RowKeys:
    """All rows of the given nodes."""
    pairs = []
    for node in node_ids:
        try:
            pairs += [(node, r) for r in range(graph.node(node).rows)]
        except UnknownNode:
            raise TargetError(f"no lineage node {node!r}") from None
    return keys_of(pairs)
