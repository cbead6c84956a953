"""The brute-force lineage oracle shared by the tracking tests: a Recorder resolving rows
through captured OpRecorded events, and the reference that carries row ids as data.

The reference carries, for every array or tensor, an object array whose elements are the
(source, row) sets of their row (every element of row r holds row r's set). An op is
applied a second time to it with NumPy's equivalent, combining by union (`union`); a
result row's set is the union of its elements (`row_sets`). That is the row-level meaning
of a row map computed by brute force, op by op."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from headwater.producers.tracking import Tracker
from headwater.stream_processors.lineage_resolve import OpView, trace
from headwater.v1 import events_pb2

Key = tuple[str, int]


class Recorder:
    """A tracker whose events land in a list, and resolution over them. `source` tracks
    NumPy arrays; a subclass may track other values (torch tensors)."""

    def __init__(self, granularity: str = "every_op") -> None:
        self.events: list[events_pb2.OpRecorded] = []
        self.tracker = Tracker(self.events.append, granularity=granularity, code_version="t1")
        self.sources: dict[str, int] = {}

    def source(self, values: Any, node_id: str) -> Any:
        arr = self.tracker.array(values, node_id=node_id)
        self.sources[node_id] = len(values)
        return arr

    def op_of(self) -> Callable[[str], OpView | None]:
        rows = dict(self.sources)
        ops: dict[str, events_pb2.OpRecorded] = {}
        for op in self.events:
            rows[op.output_node_id] = op.row_map.output_rows
            ops[op.output_node_id] = op

        def op_of(node: str) -> OpView | None:
            op = ops.get(node)
            if op is None:
                return None
            return OpView(op.op_id, op.op_name, tuple(op.input_node_ids),
                          tuple(rows[n] for n in op.input_node_ids), tuple(op.row_map.segments))
        return op_of

    def resolve(self, arr: Any, rows: Iterable[int] | None = None) -> list[set[Key]]:
        """For each row of arr, the (source node, source row) set it resolves to."""
        node = arr.node_id  # first: a pending array records its op now
        op_of = self.op_of()
        out = []
        for r in range(n_rows(arr)) if rows is None else rows:
            found = trace(node, np.array([r]), op_of).rows
            out.append({(n, int(x)) for n, xs in found.items() for x in xs})
        return out

    def last(self) -> events_pb2.OpRecorded:
        return self.events[-1]


def n_rows(a: Any) -> int:
    """Rows of an array or tensor (a 0-d one has one row)."""
    return a.shape[0] if len(a.shape) else 1


union = np.frompyfunc(lambda a, b: a | b, 2, 1)


def expand(sets: list[frozenset[Key]], shape: tuple[int, ...]) -> np.ndarray:
    """Row ids as elements: every element of row r holds row r's lineage set."""
    ref = np.empty(shape, dtype=object)
    for idx in np.ndindex(*shape):
        ref[idx] = sets[idx[0] if shape else 0]
    return ref


def obj(value: Any) -> np.ndarray:
    """An object-array result (numpy returns a bare element for 0-d results)."""
    if isinstance(value, np.ndarray):
        return value
    ref = np.empty((), dtype=object)
    ref[()] = value
    return ref


def reduce_ref(ref: np.ndarray, axis: Any, keepdims: bool = False) -> np.ndarray:
    if axis is None:
        total = union.reduce(ref.ravel()) if ref.size else frozenset()
        out = obj(total)
        return out.reshape((1,) * ref.ndim) if keepdims else out
    return obj(union.reduce(ref, axis=axis, keepdims=keepdims))


def along(ref: np.ndarray, axis: int) -> np.ndarray:
    """Every element depends on all elements along `axis` (softmax, sort)."""
    return np.broadcast_to(reduce_ref(ref, axis, keepdims=True), ref.shape).copy()


def row_sets(ref: np.ndarray) -> list[frozenset[Key]]:
    """Back to rows: a row depends on the union of what its elements hold."""
    if ref.ndim == 0:
        return [frozenset(ref[()])]
    return [frozenset().union(*ref[r:r + 1].ravel()) for r in range(ref.shape[0])]
