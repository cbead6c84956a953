"""Resolving training rows to source rows through recorded row maps (pure).

The graph is given as a lookup `op_of(node_id) -> OpView | None` (None: a source node, or
unknown). Resolution walks the ops backwards, mapping row sets through each segment, until
it reaches nodes that no op produced — the sources.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from headwater.producers.rowmap import segment_inputs
from headwater.v1 import events_pb2

MAX_DEPTH = 1_000_000  # ops on one path (a cycle guard: an in-place shuffle of n rows is
# ~2.5 n row writes deep)


@dataclass(frozen=True)
class OpView:
    """What resolution needs of one OpRecorded."""

    op_id: str
    op_name: str
    input_node_ids: tuple[str, ...]
    input_rows: tuple[int, ...]  # row count of each input (for all_rows segments)
    segments: tuple[events_pb2.RowSegment, ...]


@dataclass(frozen=True)
class Aggregate:
    """"Depends on all `node_rows` rows of `node_id` via `op_name`": one op that made each
    of its output rows from every row of an input (a mean, a std, an op not understood),
    summarised as a reference instead of a list of rows. `sources` counts the source rows
    that whole input resolves to (source node -> rows)."""

    op_id: str
    op_name: str
    node_id: str
    node_rows: int
    reason: str
    sources: tuple[tuple[str, int], ...]


@dataclass
class Trace:
    """Source rows (by node) reached from some rows, and the ops passed on the way."""

    rows: dict[str, np.ndarray] = field(default_factory=dict)  # source node -> rows
    op_ids: list[str] = field(default_factory=list)  # oldest first
    op_names: list[str] = field(default_factory=list)  # of op_ids
    # The rows reached through row-wise segments only (not through an aggregate such as a
    # mean over all rows): "the" source rows of a training row. Filled by `trace_each`.
    direct: dict[str, np.ndarray] = field(default_factory=dict)
    # The aggregates passed on the way (filled by `trace_each`); with expand=False they
    # stand for their rows, which `rows` then leaves out.
    aggregates: list[Aggregate] = field(default_factory=list)


def map_rows(op: OpView, out_rows: np.ndarray) -> dict[str, np.ndarray]:
    """Input rows (per input node) that `out_rows` of the op's output depend on."""
    found: dict[str, list[np.ndarray]] = {}
    for seg in op.segments:
        lo, hi = seg.out_start, seg.out_start + seg.length
        covered = out_rows[(out_rows >= lo) & (out_rows < hi)]
        if covered.size == 0:
            continue
        node = op.input_node_ids[seg.input]
        found.setdefault(node, []).append(
            segment_inputs(seg, covered, op.input_rows[seg.input]))
    return {n: np.unique(np.concatenate(parts)) for n, parts in found.items()}


def trace(node_id: str, rows: np.ndarray, op_of: Callable[[str], OpView | None],
          max_depth: int = MAX_DEPTH) -> Trace:
    """Every source row that `rows` of `node_id` came from, and the ops in between."""
    result = Trace()
    frontier: dict[str, np.ndarray] = {node_id: np.unique(np.asarray(rows, dtype=np.int64))}
    ops: list[str] = []
    names: dict[str, str] = {}
    for _ in range(max_depth + 1):  # max_depth ops, then the level of source nodes
        next_frontier: dict[str, list[np.ndarray]] = {}
        for node, node_rows in frontier.items():
            op = op_of(node)
            if op is None:
                prev = result.rows.get(node)
                result.rows[node] = node_rows if prev is None else np.union1d(prev, node_rows)
                continue
            ops.append(op.op_id)
            names[op.op_id] = op.op_name
            for parent, parent_rows in map_rows(op, node_rows).items():
                next_frontier.setdefault(parent, []).append(parent_rows)
        frontier = {n: np.unique(np.concatenate(p)) for n, p in next_frontier.items()}
        if not frontier:
            break
    else:
        raise ValueError(f"lineage of {node_id} is deeper than {max_depth} ops (a cycle?)")
    reached = set(ops)
    result.op_ids = [o for o in oldest_first(node_id, op_of) if o in reached]
    result.op_names = [names[o] for o in result.op_ids]
    return result


def trace_each(node_id: str, rows: np.ndarray, op_of: Callable[[str], OpView | None],
               max_depth: int = MAX_DEPTH, expand: bool = True) -> list[Trace]:
    """Like `trace`, but one Trace per requested row, all rows resolved together.

    (origin, row) pairs are carried through one-to-one segments in bulk; a segment that
    depends on all rows of an input resolves that whole input once (cached) and is named
    in `aggregates` of every origin that reached it; with `expand` its source rows are also
    added to each such origin's `rows` (costly: rows x aggregated rows), without it `rows`
    holds the direct rows only. Source rows are grouped per origin once, at the end.
    """
    rows = np.asarray(rows, dtype=np.int64)
    origin = np.arange(len(rows), dtype=np.int64)
    whole: dict[str, Trace] = {}
    reached: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}  # source -> (origins, rows)
    # (op id, op name, aggregated input, its rows, reason) -> origins reaching it
    whole_hits: dict[tuple[str, str, str, int, str], list[np.ndarray]] = {}
    ops_hit: dict[str, list[np.ndarray]] = {}  # op id -> origins passing through it
    names: dict[str, str] = {}  # op id -> op name
    stepped: dict[tuple[str, str, str, int, str], set[tuple[str, str]]] = {}  # _aggregator
    frontier: dict[str, tuple[np.ndarray, np.ndarray]] = {node_id: (origin, rows)}
    for _ in range(max_depth + 1):  # max_depth ops, then the level of source nodes
        nxt: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for node, (orig, node_rows) in frontier.items():
            op = op_of(node)
            if op is None:
                reached.setdefault(node, []).append((orig, node_rows))
                continue
            ops_hit.setdefault(op.op_id, []).append(orig)
            names[op.op_id] = op.op_name
            for seg in op.segments:
                lo, hi = seg.out_start, seg.out_start + seg.length
                hit = (node_rows >= lo) & (node_rows < hi)
                if not hit.any():
                    continue
                parent = op.input_node_ids[seg.input]
                if seg.WhichOneof("kind") == "all_rows":
                    agg_key, via = _aggregator(op, seg, op_of)
                    stepped.setdefault(agg_key, set()).update(via)
                    agg_node, agg_rows = agg_key[2], agg_key[3]
                    if agg_node not in whole:
                        whole[agg_node] = trace(agg_node, np.arange(agg_rows), op_of, max_depth)
                    whole_hits.setdefault(agg_key, []).append(orig[hit])
                    continue
                nxt.setdefault(parent, []).append(
                    (orig[hit], segment_inputs(seg, node_rows[hit], op.input_rows[seg.input])))
        frontier = {n: (np.concatenate([p[0] for p in parts]),
                        np.concatenate([p[1] for p in parts])) for n, parts in nxt.items()}
        if not frontier:
            break
    else:
        raise ValueError(f"lineage of {node_id} is deeper than {max_depth} ops (a cycle?)")

    traces = [Trace() for _ in rows]
    _group_into(traces, reached, "direct")
    order_of = {op_id: i for i, op_id in enumerate(oldest_first(node_id, op_of))}
    for (op_id, op_name, parent, n_parent, reason), origins in sorted(
            whole_hits.items(), key=lambda kv: (order_of.get(kv[0][0], -1), kv[0][2])):
        whole_trace = whole[parent]  # aggregates: whole inputs, shared arrays
        agg = Aggregate(op_id, op_name, parent, n_parent, reason,
                        tuple(sorted((s, len(r)) for s, r in whole_trace.rows.items())))
        hit = np.unique(np.concatenate(origins))
        for o in hit.tolist():
            traces[o].aggregates.append(agg)
        for up, up_name in [*zip(whole_trace.op_ids, whole_trace.op_names, strict=True),
                            *stepped[(op_id, op_name, parent, n_parent, reason)]]:
            ops_hit.setdefault(up, []).append(hit)
            names[up] = up_name
        if expand:
            for o in hit.tolist():
                for src, src_rows in whole_trace.rows.items():
                    reached.setdefault(src, []).append((np.full(len(src_rows), o), src_rows))
    if expand:
        _group_into(traces, reached, "rows")
    else:
        for t in traces:
            t.rows = dict(t.direct)
    chain = sorted(ops_hit, key=lambda o: order_of.get(o, -1))
    # origins x ops membership; origins with the same pattern (usually all of them) share
    # one op list, built once
    passed = np.zeros((len(rows), len(chain)), dtype=bool)
    for j, op_id in enumerate(chain):
        passed[np.concatenate(ops_hit[op_id]), j] = True
    patterns, which = np.unique(np.packbits(passed, axis=1), axis=0, return_inverse=True)
    lists = [[chain[j] for j in np.flatnonzero(np.unpackbits(p)[:len(chain)])]
             for p in patterns]
    name_lists = [[names[o] for o in ops] for ops in lists]
    for t, w in zip(traces, which.ravel().tolist(), strict=True):
        t.op_ids = list(lists[w])
        t.op_names = list(name_lists[w])
    return traces


def _aggregator(op: OpView, seg: events_pb2.RowSegment, op_of: Callable[[str], OpView | None]
                ) -> tuple[tuple[str, str, str, int, str], list[tuple[str, str]]]:
    """(op id, op name, node, its rows, reason) naming what "all rows of the input" of an
    all-rows segment stands for, and the (op id, name) of the ops followed down to it.
    All rows of a node made from all rows of its input (a mean: one op, one all-rows
    segment covering its output), or row for row from it (a copy), are all rows of that
    input: followed down, so that a row minus a broadcast mean reads "all N rows of x via
    numpy.mean", not "all 8 rows of the mean via subtract"."""
    found = (op.op_id, op.op_name, op.input_node_ids[seg.input], op.input_rows[seg.input],
             seg.all_rows.reason)
    seen: set[str] = set()
    passed: list[tuple[str, str]] = []
    while True:
        node, n = found[2], found[3]
        up = op_of(node)
        if up is None or len(up.segments) != 1 or node in seen:
            return found, passed
        seen.add(node)
        s = up.segments[0]
        kind = s.WhichOneof("kind")
        parent, n_parent = up.input_node_ids[s.input], up.input_rows[s.input]
        if s.out_start != 0 or s.length != n or n == 0:
            return found, passed  # some rows of the node come from elsewhere
        if kind == "all_rows":
            found = (up.op_id, up.op_name, parent, n_parent, s.all_rows.reason)
        elif kind == "range" and s.range.start == 0 and s.range.step == 1 and n == n_parent:
            found = (found[0], found[1], parent, n_parent, found[4])
        else:
            return found, passed
        passed.append((up.op_id, up.op_name))


def _group_into(traces: list[Trace], reached: dict[str, list[tuple[np.ndarray, np.ndarray]]],
                attr: str) -> None:
    """Sort (origin, row) pairs per source node and store each origin's unique rows."""
    for node, parts in reached.items():
        orig = np.concatenate([p[0] for p in parts])
        node_rows = np.concatenate([p[1] for p in parts])
        order = np.lexsort((node_rows, orig))
        orig, node_rows = orig[order], node_rows[order]
        keep = np.ones(len(orig), dtype=bool)
        keep[1:] = (orig[1:] != orig[:-1]) | (node_rows[1:] != node_rows[:-1])
        orig, node_rows = orig[keep], node_rows[keep]
        starts = np.flatnonzero(np.r_[True, orig[1:] != orig[:-1]]) if len(orig) else orig
        ends = np.r_[starts[1:], len(orig)].astype(np.int64)
        for o, a, b in zip(orig[starts].tolist(), starts.tolist(), ends.tolist(), strict=True):
            getattr(traces[o], attr)[node] = node_rows[a:b]  # slices: np.split is 10x slower


def oldest_first(node_id: str, op_of: Callable[[str], OpView | None]) -> list[str]:
    """Every op upstream of `node_id`, each after all ops that produced its inputs."""
    order: list[str] = []
    done: set[str] = set()
    stack: list[tuple[str, bool]] = [(node_id, False)]
    while stack:  # iterative DFS post-order: parents before children
        node, expanded = stack.pop()
        op = op_of(node)
        if op is None or op.op_id in done:
            continue
        if expanded:
            done.add(op.op_id)
            order.append(op.op_id)
            continue
        stack.append((node, True))
        stack.extend((parent, False) for parent in op.input_node_ids)
    return order
