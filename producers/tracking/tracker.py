"""The Tracker: makes tracked arrays, hands out node ids, encodes and emits each
`OpRecorded`, and records the dataset-level ops (split, shuffle, batches); `row_keys`
names a tracked batch's rows for GradientBatch. Shared by NumPy and torch tracking."""

from __future__ import annotations

import itertools
import json
import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from headwater.producers.tracking.array import TrackedArray, is_array, node_required
from headwater.producers.tracking.segments import (
    UNDERSTOOD,
    Segments,
    all_rows,
    field_bytes,
    field_str,
    field_varint,
    head_fields,
    n_rows,
    rows_segments,
    shape_field,
    str_field,
)
from headwater.v1 import events_pb2

Emit = Callable[[events_pb2.OpRecorded], object]

GRANULARITIES = ("every_op", "batch", "off")
EVERY_OP = events_pb2.OpRecorded.EVERY_OP
BATCH_LEVEL = events_pb2.OpRecorded.BATCH_LEVEL


class Tracker:
    """Makes tracked arrays and records their ops through `emit` (e.g. `publisher.publish`).

    granularity: "every_op" (default), "batch" or "off" — see the module docstring.
    """

    def __init__(self, emit: Emit, granularity: str = "every_op", code_version: str = ""):
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}; "
                             f"got {granularity!r}")
        self.emit = emit
        self.granularity = granularity
        self.code_version = code_version
        self._off = granularity == "off"
        self._batch = granularity == "batch"
        self._prefix = f"hw-{uuid.uuid4().hex[:20]}"
        self._prefix_bytes = self._prefix.encode()
        self._ids = itertools.count(1)
        self.ops_recorded = 0

    def __repr__(self) -> str:
        return f"Tracker(granularity={self.granularity!r}, prefix={self._prefix!r})"

    @property
    def code_version(self) -> str:
        """Stamped on every event (e.g. a git commit or package version)."""
        return self._code_version

    @code_version.setter
    def code_version(self, value: str) -> None:
        self._code_version = value
        # fields 8 (code_version), 9 (understood) and 11 (granularity), in field order
        self._tails = {(ok, g): field_str(8, value) + (UNDERSTOOD if ok else b"")
                       + field_varint(11, g)
                       for ok in (False, True) for g in (EVERY_OP, BATCH_LEVEL)}

    def new_node_id(self) -> str:
        return f"{self._prefix}-n{next(self._ids)}"

    # -- making tracked arrays -------------------------------------------------------------

    def array(self, values: Any, node_id: str | None = None, *,
              source: events_pb2.SourceRegistered | None = None) -> Any:
        """`values` as a TrackedArray (no copy when already an ndarray) holding the rows of
        `source` (its node_id, else its source_id), of `node_id`, or of a fresh node.
        With granularity "off" the plain array is returned (after the same checks).
        Only numbers are tracked: bool, integer, float, complex, datetime64, timedelta64;
        other dtypes (object, str, bytes, structured/void) raise a TypeError naming it."""
        arr = np.asarray(values)
        if arr.dtype.kind not in "biufcmM":
            hint = {"O": "Python objects (ragged or mixed values?)", "V": "structured "
                    "records: track numeric fields, e.g. values['age']"}.get(
                        arr.dtype.kind, "text: encode it as numbers (e.g. category codes)")
            raise TypeError(f"cannot track an array of dtype {arr.dtype}: {hint}; tracked "
                            "arrays hold bool, integer, float, complex or datetime values")
        if arr.ndim == 0:
            raise ValueError("a tracked array needs at least one dimension (axis 0 = rows)")
        if source is not None:
            if node_id is not None:
                raise ValueError("give node_id or source, not both")
            node_id = source.node_id or source.source_id
            if not node_id:
                raise ValueError("source has neither node_id nor source_id")
            if source.row_count and source.row_count != arr.shape[0]:
                raise ValueError(f"source {node_id} has row_count={source.row_count} but the "
                                 f"array has {arr.shape[0]} rows")
        if self._off:
            return arr
        return self._wrap(arr, node_id or self.new_node_id())

    def _wrap(self, value: Any, node: str | None, roots: tuple[str, ...] = (),
              why: str = "") -> TrackedArray:
        arr = value if isinstance(value, np.ndarray) else np.asarray(value)
        t = arr.view(TrackedArray)
        t._hw_tracker = self
        t._hw_node = node
        if roots:
            t._hw_roots = roots
            t._hw_why = why
        return t

    def node_of(self, arr: Any) -> str:
        """The node id of a tracked array (recording a deferred derivation now)."""
        if not isinstance(arr, TrackedArray) or arr._hw_tracker is None:
            raise TypeError(f"expected a TrackedArray of this tracker; got {type(arr).__name__}")
        return node_required(arr)

    # -- recording -------------------------------------------------------------------------

    def _op(self, op_name: str, params: str, inputs: Sequence[str], output_node: str,
            shape: tuple[int, ...], segments: Segments, understood: bool,
            granularity: int = EVERY_OP, k: int | None = None) -> None:
        if k is None:
            k = next(self._ids)
        op_id = b"%s-op%d" % (self._prefix_bytes, k)
        row_map = field_varint(1, shape[0] if shape else 1) + (
            segments[0][1] if len(segments) == 1 else b"".join([s for _, s in segments]))
        data = b"".join([
            field_bytes(1, op_id), head_fields(op_name, params), *[str_field(4, n) for n in inputs],
            field_str(5, output_node), shape_field(shape), field_bytes(7, row_map),
            self._tails[understood, granularity]])
        self.emit(events_pb2.OpRecorded.FromString(data))
        self.ops_recorded += 1

    def _record(self, result: Any, op_name: str, params: str, inputs: Sequence[str],
                segments: Segments, understood: bool,
                granularity: int = EVERY_OP) -> TrackedArray:
        """Wrap `result` as a new node and emit the op that made it."""
        k = next(self._ids)
        node = f"{self._prefix}-n{k}"
        out = (result if type(result) is np.ndarray else np.asarray(result)).view(TrackedArray)
        out._hw_tracker = self
        out._hw_node = node
        self._op(op_name, params, inputs, node, out.shape, segments, understood, granularity,
                 k)
        return out

    def _emit_result(self, result: Any, op_name: str, params: str, inputs: Sequence[str],
                     segments: Segments, understood: bool, out_tracked: tuple[Any, ...]) -> Any:
        """Record a ufunc-style result: one node per output; outputs written in place
        into tracked `out` arrays re-bind those arrays to the new nodes."""
        if out_tracked:
            for o in out_tracked:
                node = self.new_node_id()
                self._op(op_name, params, inputs, node, o.shape, segments, understood)
                o._hw_node, o._hw_roots, o._hw_pending = node, (), None
            return out_tracked[0] if len(out_tracked) == 1 and not isinstance(
                result, tuple) else tuple(out_tracked)
        if isinstance(result, tuple):
            return tuple(self._record(r, op_name, params, inputs, segments, understood)
                         for r in result)
        return self._record(result, op_name, params, inputs, segments, understood)

    def _derive(self, result: Any, inputs: Sequence[Any], op_name: str,
                out_tracked: tuple[Any, ...]) -> Any:
        """Batch granularity: no event; the result remembers the recorded nodes it came
        from, recorded as one all-rows derivation if a dataset op needs its node."""
        roots: dict[str, None] = {}
        for a in inputs:
            if isinstance(a, TrackedArray) and a._hw_tracker is not None:
                if a._hw_node is not None:
                    roots[a._hw_node] = None
                else:
                    roots.update(dict.fromkeys(a._hw_roots))
        why = "ops not recorded at batch granularity"
        if out_tracked:
            for o in out_tracked:
                if isinstance(o, TrackedArray):
                    o._hw_node, o._hw_roots, o._hw_why = None, tuple(roots), why
                    o._hw_pending = None
            return out_tracked[0] if len(out_tracked) == 1 else tuple(out_tracked)
        if isinstance(result, (tuple, list)):
            parts = [self._wrap(r, None, tuple(roots), why) if is_array(r) else r
                     for r in result]
            return tuple(parts) if isinstance(result, tuple) else parts
        if not is_array(result):
            return result
        return self._wrap(result, None, tuple(roots), why)

    def _collapse(self, arr: TrackedArray) -> str:
        """Record a deferred derivation: every row depends on all rows of its roots."""
        node = self.new_node_id()
        n = n_rows(arr.shape)
        roots = arr._hw_roots
        reason = f"op not understood: {arr._hw_why}"
        self._op("headwater.unrecorded_ops", json.dumps({"why": arr._hw_why}), roots, node,
                 arr.shape, [all_rows(i, n, reason) for i in range(len(roots))] if n else [],
                 False, BATCH_LEVEL if self._batch else EVERY_OP)
        arr._hw_node, arr._hw_roots = node, ()
        return node

    # -- dataset-level ops (recorded at every_op and batch granularity) --------------------

    def _dataset_op(self, x: Any, rows: np.ndarray, op_name: str, params: dict[str, Any]) -> Any:
        if self._off or not isinstance(x, TrackedArray):
            return np.asarray(x)[rows]
        result = x.view(np.ndarray)[rows]
        return self._record(result, op_name, json.dumps(params), [node_required(x)],
                            rows_segments(0, rows), True, BATCH_LEVEL)

    def shuffle(self, x: Any, seed: int | None = 0) -> Any:
        """Rows of x in a seeded random order (one gather op)."""
        perm = np.random.default_rng(seed).permutation(len(x))
        return self._dataset_op(x, perm, "headwater.shuffle", {"seed": seed})

    def split(self, x: Any, test_size: float | int = 0.25,
              seed: int | None = 0) -> tuple[Any, Any]:
        """(train, test) rows of x after a seeded permutation: one gather op per part.
        test_size: a fraction in (0, 1) or a row count."""
        n = len(x)
        if isinstance(test_size, float) and not 0.0 < test_size < 1.0:
            raise ValueError(f"test_size must be a fraction in (0, 1) or a row count; "
                             f"got {test_size}")
        n_test = math.ceil(test_size * n) if isinstance(test_size, float) else int(test_size)
        if not 0 <= n_test <= n:
            raise ValueError(f"test_size={test_size} selects {n_test} of {n} rows")
        perm = np.random.default_rng(seed).permutation(n)
        params = {"test_size": test_size, "seed": seed}
        train = self._dataset_op(x, perm[n_test:], "headwater.split",
                                 {**params, "part": "train"})
        test = self._dataset_op(x, perm[:n_test], "headwater.split", {**params, "part": "test"})
        return train, test

    def batches(self, x: Any, batch_size: int, shuffle: bool = True, seed: int | None = 0,
                drop_last: bool = False) -> Iterator[Any]:
        """Mini-batches of x's rows (seeded shuffle when `shuffle`), one op per batch."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        n = len(x)
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        stop = n - n % batch_size if drop_last else n
        for b, start in enumerate(range(0, stop, batch_size)):
            rows = order[start:start + batch_size]
            yield self._dataset_op(x, rows, "headwater.batch",
                                   {"batch": b, "batch_size": batch_size, "shuffle": shuffle,
                                    "seed": seed})


def row_keys(batch: Any) -> events_pb2.RowKeys:
    """Training-row keys of a tracked batch: (batch node, 0..len-1)."""
    if not isinstance(batch, TrackedArray) or batch._hw_tracker is None:
        raise TypeError("row_keys needs a TrackedArray (is the tracker's granularity 'off'?)")
    return events_pb2.RowKeys(node_ids=[node_required(batch)], rows=range(n_rows(batch.shape)))

