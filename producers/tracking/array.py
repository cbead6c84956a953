"""Tracked NumPy arrays: every op records an `OpRecorded` with its row mapping.

    tracker = Tracker(publisher.publish)            # or Tracker(events.append) in tests
    x = tracker.array(values, source=registered)    # a TrackedArray; axis 0 = rows
    y = (x - x.mean(0)) / x.std(0)                  # 4 ops, 4 OpRecorded events
    train, test = tracker.split(y, test_size=0.2, seed=0)
    for batch in tracker.batches(train, 32, seed=0):
        keys = row_keys(batch)                      # RowKeys for GradientBatch

A `TrackedArray` is an `np.ndarray` subclass carrying a lineage node id and its tracker.
NumPy hands every ufunc call to `__array_ufunc__` and every public function to
`__array_function__`; both run the op on plain arrays, wrap the result as a new node and
emit one event whose row map says, for each output row (index on axis 0), which input rows
it depends on (see RowMap in events.proto; a 0-d array counts as one row).

What counts as an input: tracked arrays only. Python scalars and plain (untracked)
`np.ndarray` operands are constants of the op, not lineage-relevant data: if their rows
matter, track them. Index arrays of `x[idx]` / `x[mask]` and the condition of `np.where`
are inputs too when tracked, but a gather's index array only *selects* rows, so it is
listed in `input_node_ids` (the graph edge exists) without row segments; `np.where`'s
condition decides each element, so it maps like any elementwise operand.

Understood ops (row maps exact): elementwise ufuncs with broadcasting (an operand with
the output's rows maps by identity, a 1-row operand by broadcast — RowRange step 0 — and
an operand with fewer dimensions, whose axis 0 is not the output's rows, by all rows);
ufunc reductions and np.sum/mean/std/var/min/max/argmax/median/quantile/average/... over
axis 0 or None (all rows) or other axes (identity); matmul/dot/inner (rows of the left
operand, all rows of the right); `__getitem__` with slices (any step), ints, integer
arrays, boolean masks, Ellipsis/None and tuples whose later entries index columns;
concatenate/vstack/hstack/column_stack/stack; split/array_split/vsplit/hsplit; take;
reshape/ravel/flatten (C order); transpose/.T/swapaxes/moveaxis; flip; roll; repeat;
squeeze; expand_dims; atleast_1d/2d/3d; broadcast_to; sort/argsort; diff; where; clip;
round; copy; `astype`. Anything else is recorded honestly: `understood=False` and every
output row depending on all rows of every tracked input, reason "op not understood:
<name>" — the output stays tracked. Over-approximations (cumulative sums over rows, a
reshape joining more than MAX_FANIN_SEGMENTS rows into one) are recorded the same way.

Granularity: "every_op" records every op as above. "batch" records only dataset-level
ops of the tracker — `split`, `shuffle`, `batches` — as BATCH_LEVEL events; NumPy ops are
not recorded (they only carry which recorded nodes their result came from), and when such
a result reaches a dataset op one `headwater.unrecorded_ops` event (understood=False)
says it depends on all rows of those nodes. So batch rows resolve exactly when batches
are cut from sources or splits, and conservatively otherwise. "off": `array` returns
plain arrays, nothing is recorded, no per-op cost.

Results are arrays: a reduction to a scalar, or `x[i]` on a 1-D array, gives a 0-d
TrackedArray (so `x - x.sum()` keeps its lineage); `float()`, `int()`, `bool()` and
indexing with it work, hashing does not. Results that are not arrays (`np.allclose`,
`np.shape`) and data-independent ones (`np.zeros_like`) are returned untracked.

In place: ufuncs with `out=` (`x += 1`), `x[i] = v`, `x.sort()`, `x.partition()` and
`np.copyto(x, ...)` record an op and re-bind `x` to its new node (other views sharing x's
memory keep their old node).

Not seen by the wrappers (documented limits): NumPy code that copies or reorders data
without the array protocols — `rng.permutation(x)` and `rng.choice(x)` return plain
arrays, and `rng.shuffle(x)` reorders x's rows in place unseen, so x's row map is then
wrong. Use `tracker.shuffle(x, seed)` or `x[rng.permutation(len(x))]` instead.
`np.asarray(x)` / `x.view(np.ndarray)` leave tracking on purpose; pickling gives a plain
array (node ids are process-local). Arrays that NumPy makes from a tracked array outside
the protocols (`x.view()`, `copy.deepcopy(x)`) are recorded lazily, when a recorded op
first uses them, as depending on all rows of their parent (`headwater.unrecorded_ops`,
understood=False).

Cost: one event per op is built from cached, pre-encoded protobuf pieces (segments are
built with NumPy; no per-row Python loops), so the fixed cost is a few microseconds per
op; gathers are the only row maps whose size grows with the rows (zstd-compressed deltas).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import json
import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from headwater.producers import rowmap
from headwater.v1 import events_pb2

Emit = Callable[[events_pb2.OpRecorded], object]
Seg = tuple[int, bytes]  # (input index, RowSegment encoded as RowMap field 2)
Segments = list[Seg]

GRANULARITIES = ("every_op", "batch", "off")
_EVERY_OP = events_pb2.OpRecorded.EVERY_OP
_BATCH_LEVEL = events_pb2.OpRecorded.BATCH_LEVEL

MAX_FANIN_SEGMENTS = 64  # output rows built from more input rows each: all rows instead

BROADCAST = "broadcast across output rows"
REDUCTION = "reduction over rows"
ROWS_MOVED = "rows moved to another axis"


# ---------------------------------------------------------------------------------------
# Protobuf wire encoding. Building an OpRecorded field by field through the protobuf API
# costs ~15 us in CPython; encoding the few fields here (segments cached by value) and
# parsing once costs a few. tests/test_tracking.py checks the bytes against the API.

_SMALL = [bytes((v,)) for v in range(128)]


def _varint(v: int) -> bytes:
    if 0 <= v < 128:
        return _SMALL[v]
    v = int(v)
    if v < 0:
        v += 1 << 64  # int64 two's complement, ten bytes
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _fv(field: int, v: int) -> bytes:
    """A varint field (omitted when 0, as proto3 does)."""
    return _SMALL[field << 3] + _varint(v) if v else b""


def _fb(field: int, data: bytes) -> bytes:
    """A length-delimited field."""
    return _SMALL[(field << 3) | 2] + _varint(len(data)) + data


def _fs(field: int, text: str) -> bytes:
    return _fb(field, text.encode()) if text else b""


@functools.lru_cache(maxsize=8192)
def _range(i: int, start: int, step: int, n: int, out_start: int = 0) -> Seg:
    """Output rows out_start + k <- start + k * step, k < n."""
    rng = _fv(1, start) + _fv(2, step)
    return i, _fb(2, _fv(1, i) + _fv(2, out_start) + _fv(3, n) + _fb(4, rng))


def _identity(i: int, n: int, out_start: int = 0) -> Seg:
    return _range(i, 0, 1, n, out_start)


def _broadcast(i: int, row: int, n: int, out_start: int = 0) -> Seg:
    return _range(i, row, 0, n, out_start)


@functools.lru_cache(maxsize=8192)
def _all(i: int, n: int, reason: str, out_start: int = 0) -> Seg:
    """Every covered output row <- every input row."""
    return i, _fb(2, _fv(1, i) + _fv(2, out_start) + _fv(3, n) + _fb(6, _fs(1, reason)))


def _gather(i: int, rows: np.ndarray, out_start: int = 0) -> Seg:
    gather = rowmap.encode_gather(rows).SerializeToString()
    return i, _fb(2, _fv(1, i) + _fv(2, out_start) + _fv(3, len(rows)) + _fb(5, gather))


_UNDERSTOOD = _fv(9, 1)


@functools.lru_cache(maxsize=65536)
def _str_field(field: int, text: str) -> bytes:
    """A string field, cached: op names, params and input node ids repeat."""
    return _fs(field, text)


@functools.lru_cache(maxsize=4096)
def _head_fields(op_name: str, params: str) -> bytes:
    return _fs(2, op_name) + _fs(3, params)


@functools.lru_cache(maxsize=4096)
def _shape_field(shape: tuple[int, ...]) -> bytes:
    return _fb(6, b"".join([_varint(d) for d in shape])) if shape else b""


def decode_segments(segments: Segments) -> list[events_pb2.RowSegment]:
    """The segments as protobuf messages (for inspection and tests)."""
    return list(events_pb2.RowMap.FromString(b"".join(s for _, s in segments)).segments)


def rows_segments(i: int, rows: Any, out_start: int = 0) -> Segments:
    """Segments for `out_start + k <- rows[k]`: `rowmap.plan`'s pieces, hand-encoded."""
    rows = np.asarray(rows, dtype=np.int64).ravel()
    return [
        _range(i, int(rows[at]), step, length, out_start + at) if is_range
        else _gather(i, rows[at:at + length], out_start + at)
        for is_range, at, length, step in rowmap.plan(rows)
    ]


def _fanin_segments(i: int, table: np.ndarray, reason: str) -> tuple[Segments, bool]:
    """Output row r <- every input row in table[r, :] (one segment set per column)."""
    n_out = table.shape[0]
    if n_out == 0:
        return [], True
    cols = table.reshape(n_out, -1)
    if cols.shape[1] > MAX_FANIN_SEGMENTS:
        return [_all(i, n_out, reason)], False
    segments: Segments = []
    for j in range(cols.shape[1]):
        segments.extend(rows_segments(i, cols[:, j]))
    return segments, True


def _rows(shape: tuple[int, ...]) -> int:
    """Row count of an array of this shape (a 0-d array is one row)."""
    return shape[0] if shape else 1


# ---------------------------------------------------------------------------------------
# The array type


class TrackedArray(np.ndarray):
    """An ndarray whose rows (axis 0) are a lineage node; see the module docstring."""

    _hw_node: str | None = None
    _hw_tracker: Tracker | None = None
    _hw_roots: tuple[str, ...] = ()  # recorded nodes this array came from, when _hw_node
    _hw_why: str = ""                # is None (an unrecorded derivation) and why

    def __array_finalize__(self, obj: Any) -> None:
        # Only views/copies NumPy makes from a tracked array outside the wrappers get here
        # with a tracked parent; the wrappers wrap plain arrays.
        if isinstance(obj, TrackedArray) and obj._hw_tracker is not None:
            self._hw_tracker = obj._hw_tracker
            self._hw_node = None
            self._hw_roots = (obj._hw_node,) if obj._hw_node is not None else obj._hw_roots
            self._hw_why = obj._hw_why or "ndarray method or view not intercepted"

    # -- identity ------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """The lineage node holding this array's rows (recorded now if it was deferred)."""
        node = _node(self)
        if node is None:
            raise ValueError("this TrackedArray is not tracked by any Tracker")
        return node

    @property
    def tracker(self) -> Tracker | None:
        return self._hw_tracker

    def __repr__(self) -> str:
        node = self._hw_node or (f"<derived from {', '.join(self._hw_roots)}>"
                                 if self._hw_roots else None)
        return f"TrackedArray({np.asarray(self)!r}, node_id={node!r})"

    def __str__(self) -> str:
        return str(np.asarray(self))

    def __reduce__(self) -> Any:  # pickles as a plain array: node ids are process-local
        return np.asarray(self).__reduce__()

    # -- NumPy protocols -----------------------------------------------------------------

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        tracker: Tracker | None = None
        plain = list(inputs)
        tracked: list[tuple[int, TrackedArray]] = []  # (position, array)
        for pos, x in enumerate(inputs):
            if isinstance(x, TrackedArray):
                plain[pos] = x.view(np.ndarray)
                t = x._hw_tracker
                if t is not None:
                    tracker = tracker or t
                    tracked.append((pos, x))
        if method == "__call__" and not kwargs and ufunc.nout == 1 and ufunc is not np.matmul:
            # the hot path: an elementwise op
            result = ufunc(*plain)
            if tracker is None or tracker._off:
                return result
            if tracker._batch:
                return tracker._derive(result, [a for _, a in tracked], "", ())
            shape = result.shape if type(result) is np.ndarray else ()
            nodes: list[str] = []
            segments: Segments = []
            for _, a in tracked:
                node = a._hw_node or _node_required(a)
                if node not in nodes:
                    seg = _operand_segment(len(nodes), a.shape, shape)
                    nodes.append(node)
                    if seg is not None:
                        segments.append(seg)
            return tracker._record(result, _UFUNC_NAMES.get(ufunc) or f"numpy.{ufunc.__name__}",
                                   "{}", nodes, segments, True)
        out = kwargs.get("out")
        out_tracked: tuple[Any, ...] = ()
        if out is not None:
            out_tracked = out
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, TrackedArray) else o
                                  for o in out)
            for o in out:
                if isinstance(o, TrackedArray) and o._hw_tracker is not None:
                    tracker = tracker or o._hw_tracker
        result = getattr(ufunc, method)(*plain, **kwargs)
        if tracker is None or tracker._off:
            return result
        if out is not None:
            if not all(isinstance(o, TrackedArray) for o in out_tracked):
                return result  # written into an untracked array: leaves tracking
            if "where" in kwargs:  # elements not written keep the old values
                for o in out_tracked:
                    tracked.append((len(plain), o))
                    plain.append(o.view(np.ndarray))
        name = ufunc.__name__
        op_name = f"numpy.{name}" if method == "__call__" else f"numpy.{name}.{method}"
        if tracker._batch:
            return tracker._derive(result, [a for _, a in tracked], op_name, out_tracked)
        nodes, index = _input_nodes([a for _, a in tracked])
        first = result[0] if isinstance(result, tuple) else result
        shape = np.shape(first)
        n_out = _rows(shape)
        understood = True
        params = "{}"
        if method == "__call__":
            if name == "matmul":
                segments = _product_segments(
                    "matmul", index.get(id(inputs[0])), np.shape(plain[0]),
                    index.get(id(inputs[1])), np.shape(plain[1]), shape)
            else:
                segments = _elementwise_segments(index, tracked, shape)
        elif method in ("reduce", "accumulate"):
            axis = kwargs.get("axis", 0)
            params = _json_axis(axis)
            i = index.get(id(inputs[0])) if tracked and tracked[0][0] == 0 else None
            if i is None:
                segments = []
            elif method == "reduce" or not _covers_rows(axis, np.ndim(plain[0])):
                segments, understood = _reduction_segments(i, plain[0], axis, n_out)
            else:  # a prefix over rows: recorded as all rows
                segments = _not_understood(1, n_out, f"{op_name} over rows (cumulative)")
                understood = False
        else:
            segments, understood = _not_understood(len(nodes), n_out, op_name), False
        return tracker._emit_result(result, op_name, params, nodes, segments, understood,
                                    out_tracked)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        if not all(issubclass(t, np.ndarray) for t in types):
            return NotImplemented
        if func in _FAST_REDUCTIONS and args and type(args[0]) is TrackedArray:
            fast = _fast_reduction(func, args[0], args[1:], kwargs)
            if fast is not _MISSING:
                return fast
        found: list[TrackedArray] = []
        pargs, pkwargs = _strip(args, found), _strip(kwargs, found)
        tracker = found[0]._hw_tracker if found else None
        if tracker is None or tracker._off or func in _UNTRACKED:
            return func(*pargs, **pkwargs)
        call = _Call(tracker, func, args, kwargs, pargs, pkwargs, found)
        result = func(*pargs, **pkwargs)
        if func is np.copyto:
            _record_copyto(call)
            return result
        if tracker._batch:
            return tracker._derive(result, call.tracked, call.op_name, ())
        handler = _FUNCTIONS.get(func)
        outs = _array_outputs(result)
        if not outs:
            return result  # not an array (a bool, a shape): leaves tracking
        if handler is None:
            spec: Any = None
        else:
            try:
                spec = handler(call, outs)
            except _NotUnderstood:
                spec = None
        if spec is None:
            spec = [(_not_understood(len(call.nodes), _rows(np.shape(o)), call.op_name), False,
                     call.params) for o in outs]
        elif isinstance(spec, tuple):
            spec = [spec] * len(outs)
        wrapped = [tracker._record(o, call.op_name, params, call.nodes,
                                   *call.complete(segs, ok, _rows(np.shape(o))))
                   for o, (segs, ok, params) in zip(outs, spec, strict=True)]
        if isinstance(result, tuple):  # named tuples too (np.linalg results)
            return type(result)(*wrapped) if hasattr(result, "_fields") else tuple(wrapped)
        return wrapped if isinstance(result, list) else wrapped[0]

    # -- indexing ------------------------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        tracker = self._hw_tracker
        if tracker is None or tracker._off:
            return np.ndarray.__getitem__(self.view(np.ndarray), _strip(key))
        selectors: list[TrackedArray] = []
        pkey = _strip(key, selectors)
        result = self.view(np.ndarray)[pkey]
        if tracker._batch:
            return tracker._derive(result, [self, *selectors], "ndarray.__getitem__", ())
        nodes, index = _input_nodes([self, *selectors])
        n_out = _rows(np.shape(result))
        try:
            segments, params = _getitem_segments(pkey, self.shape, n_out)
            understood = True
        except _NotUnderstood:
            segments = [_all(0, n_out, "op not understood: ndarray.__getitem__ with this key")]
            params, understood = '{"key": "not understood"}', False
        return tracker._record(result, "ndarray.__getitem__", params, nodes, segments,
                               understood)

    def __setitem__(self, key: Any, value: Any) -> None:
        tracker = self._hw_tracker
        selectors: list[TrackedArray] = []
        pkey = _strip(key, selectors)
        plain_value = value.view(np.ndarray) if isinstance(value, TrackedArray) else value
        self.view(np.ndarray)[pkey] = plain_value
        if tracker is None or tracker._off:
            return
        sources = [self]
        if isinstance(value, TrackedArray) and value._hw_tracker is not None:
            sources.append(value)
        if tracker._batch:
            tracker._derive(np.ndarray.view(self, np.ndarray), sources + selectors,
                            "ndarray.__setitem__", (self,))
            return
        nodes, _ = _input_nodes(sources + selectors)
        n = _rows(self.shape)
        segments = [_identity(0, n)] if n else []
        understood = len(sources) == 1
        if not understood and n:  # which rows the value went to: all of them, conservatively
            segments.append(_all(1, n, "op not understood: ndarray.__setitem__ of tracked "
                                       "values (all rows)"))
        tracker._emit_result(self.view(np.ndarray), "ndarray.__setitem__", "{}", nodes,
                             segments, understood, (self,))

    # -- ndarray methods routed through the recorded NumPy functions ----------------------

    def copy(self, order: Any = "C") -> Any:  # type: ignore[override]
        return np.copy(self, order=order)

    def flatten(self, order: Any = "C") -> Any:  # type: ignore[override]
        return np.copy(np.ravel(self, order=order)) if order == "C" else np.ravel(self, order)

    def reshape(self, *shape: Any, order: Any = "C", **k: Any) -> Any:  # type: ignore[override]
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return np.reshape(self, shape, order=order, **k)

    def transpose(self, *axes: Any) -> Any:  # type: ignore[override]
        order: Any = axes
        if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list))):
            order = axes[0]
        return np.transpose(self, order or None)

    @property
    def T(self) -> Any:  # type: ignore[override]
        return np.transpose(self)

    def sort(self, axis: Any = -1, kind: Any = None, order: Any = None,  # type: ignore[override]
             **kwargs: Any) -> None:
        self.view(np.ndarray).sort(axis, kind, order, **kwargs)
        self._in_place("ndarray.sort", axis)

    def partition(self, kth: Any, axis: Any = -1, kind: Any = "introselect",  # type: ignore[override]
                  order: Any = None) -> None:
        self.view(np.ndarray).partition(kth, axis, kind, order)
        self._in_place("ndarray.partition", axis)

    def _in_place(self, op_name: str, axis: Any) -> None:
        """Record an in-place reordering along `axis`: rows mix when it is axis 0."""
        tracker = self._hw_tracker
        if tracker is None or tracker._off:
            return
        if tracker._batch:
            tracker._derive(self.view(np.ndarray), [self], op_name, (self,))
            return
        n = _rows(self.shape)
        node = _node_required(self)
        mixed = _covers_rows(axis, self.ndim)
        segments = [_all(0, n, "sorted along rows") if mixed else _identity(0, n)] if n else []
        tracker._emit_result(self.view(np.ndarray), op_name, _json_axis(axis), [node],
                             segments, True, (self,))

    def astype(self, dtype: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        result = self.view(np.ndarray).astype(dtype, *args, **kwargs)
        tracker = self._hw_tracker
        if tracker is None or tracker._off:
            return result
        if tracker._batch:
            return tracker._derive(result, [self], "ndarray.astype", ())
        n = _rows(self.shape)
        return tracker._record(result, "ndarray.astype", json.dumps({"dtype": str(dtype)}),
                               [_node_required(self)], [_identity(0, n)] if n else [], True)


def _routed(func: Callable[..., Any]) -> Callable[..., Any]:
    if func in _FAST_REDUCTIONS:
        def method(self: TrackedArray, *args: Any, **kwargs: Any) -> Any:
            result = _fast_reduction(func, self, args, kwargs)
            return func(self, *args, **kwargs) if result is _MISSING else result
    else:
        def method(self: TrackedArray, *args: Any, **kwargs: Any) -> Any:
            return func(self, *args, **kwargs)
    method.__name__ = method.__qualname__ = func.__name__
    method.__doc__ = f"`np.{func.__name__}(self, ...)`: recorded as one op."
    return method


_MISSING = object()
_FAST_REDUCTIONS = {f: f"numpy.{f.__name__}" for f in (
    np.sum, np.mean, np.std, np.var, np.min, np.max, np.amin, np.amax, np.prod, np.any,
    np.all, np.argmin, np.argmax, np.nansum, np.nanmean, np.nanstd, np.nanvar, np.nanmin,
    np.nanmax)}


def _fast_reduction(func: Any, x: TrackedArray, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
    """`x.mean(axis)` / `np.mean(x, axis)` recorded without the generic function path;
    _MISSING when the call needs it (an `out`, tracked arguments, more positionals)."""
    tracker = x._hw_tracker
    if (tracker is None or tracker._off or tracker._batch or len(args) > 1
            or "out" in kwargs or any(isinstance(v, TrackedArray) for v in kwargs.values())
            or (args and not (args[0] is None or isinstance(args[0], (int, tuple))))):
        return _MISSING
    result = func(x.view(np.ndarray), *args, **kwargs)
    axis = args[0] if args else kwargs.get("axis")
    node = x._hw_node or _node_required(x)
    segments, understood = _reduction_segments(0, x.view(np.ndarray), axis,
                                               _rows(np.shape(result)))
    return tracker._record(result, _FAST_REDUCTIONS[func], _json_axis(axis), [node], segments,
                           understood)


# ndarray methods that NumPy implements with several ufunc calls (x.std(): seven), or
# outside the protocols: routed through the NumPy function, recorded as one op.
for _name in ("sum", "mean", "std", "var", "min", "max", "prod", "any", "all", "argmin",
              "argmax", "cumsum", "cumprod", "clip", "round", "dot", "take", "repeat",
              "squeeze", "swapaxes", "argsort", "ravel"):
    setattr(TrackedArray, _name, _routed(getattr(np, _name)))


# ---------------------------------------------------------------------------------------
# Tracker


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
        self._tails = {(ok, g): _fs(8, value) + (_UNDERSTOOD if ok else b"") + _fv(11, g)
                       for ok in (False, True) for g in (_EVERY_OP, _BATCH_LEVEL)}

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
        return _node_required(arr)

    # -- recording -------------------------------------------------------------------------

    def _op(self, op_name: str, params: str, inputs: Sequence[str], output_node: str,
            shape: tuple[int, ...], segments: Segments, understood: bool,
            granularity: int = _EVERY_OP, k: int | None = None) -> None:
        if k is None:
            k = next(self._ids)
        op_id = b"%s-op%d" % (self._prefix_bytes, k)
        row_map = _fv(1, shape[0] if shape else 1) + (
            segments[0][1] if len(segments) == 1 else b"".join([s for _, s in segments]))
        data = b"".join([
            _fb(1, op_id), _head_fields(op_name, params), *[_str_field(4, n) for n in inputs],
            _fs(5, output_node), _shape_field(shape), _fb(7, row_map),
            self._tails[understood, granularity]])
        self.emit(events_pb2.OpRecorded.FromString(data))
        self.ops_recorded += 1

    def _record(self, result: Any, op_name: str, params: str, inputs: Sequence[str],
                segments: Segments, understood: bool,
                granularity: int = _EVERY_OP) -> TrackedArray:
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
                o._hw_node, o._hw_roots = node, ()
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
            return out_tracked[0] if len(out_tracked) == 1 else tuple(out_tracked)
        if isinstance(result, (tuple, list)):
            parts = [self._wrap(r, None, tuple(roots), why) if _is_array(r) else r
                     for r in result]
            return tuple(parts) if isinstance(result, tuple) else parts
        if not _is_array(result):
            return result
        return self._wrap(result, None, tuple(roots), why)

    def _collapse(self, arr: TrackedArray) -> str:
        """Record a deferred derivation: every row depends on all rows of its roots."""
        node = self.new_node_id()
        n = _rows(arr.shape)
        roots = arr._hw_roots
        reason = f"op not understood: {arr._hw_why}"
        self._op("headwater.unrecorded_ops", json.dumps({"why": arr._hw_why}), roots, node,
                 arr.shape, [_all(i, n, reason) for i in range(len(roots))] if n else [],
                 False, _BATCH_LEVEL if self._batch else _EVERY_OP)
        arr._hw_node, arr._hw_roots = node, ()
        return node

    # -- dataset-level ops (recorded at every_op and batch granularity) --------------------

    def _dataset_op(self, x: Any, rows: np.ndarray, op_name: str, params: dict[str, Any]) -> Any:
        if self._off or not isinstance(x, TrackedArray):
            return np.asarray(x)[rows]
        result = x.view(np.ndarray)[rows]
        return self._record(result, op_name, json.dumps(params), [_node_required(x)],
                            rows_segments(0, rows), True, _BATCH_LEVEL)

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
    return events_pb2.RowKeys(node_ids=[_node_required(batch)], rows=range(_rows(batch.shape)))


# ---------------------------------------------------------------------------------------
# Helpers shared by the protocols


class _NotUnderstood(Exception):
    """The row mapping of this call is not known: record it as depending on all rows."""


def _is_array(x: Any) -> bool:
    return isinstance(x, (np.ndarray, np.generic))


def _node(arr: TrackedArray) -> str | None:
    node = arr._hw_node
    if node is not None:
        return node
    if arr._hw_roots and arr._hw_tracker is not None:
        return arr._hw_tracker._collapse(arr)
    return None


def _node_required(arr: TrackedArray) -> str:
    node = _node(arr)
    if node is None:
        raise ValueError("array is not tracked")
    return node


def _input_nodes(arrays: Sequence[Any]) -> tuple[list[str], dict[int, int]]:
    """Distinct input node ids, and id(array) -> index into them."""
    nodes: list[str] = []
    index: dict[int, int] = {}
    where: dict[str, int] = {}
    for a in arrays:
        node = _node(a)
        if node is None:
            continue
        i = where.get(node)
        if i is None:
            i = where[node] = len(nodes)
            nodes.append(node)
        index[id(a)] = i
    return nodes, index


_CONTAINERS = (tuple, list, dict)


def _strip(obj: Any, found: list[TrackedArray] | None = None) -> Any:
    """obj with TrackedArrays replaced by plain views (inside tuples, lists and dicts)."""
    kind = type(obj)
    if kind is TrackedArray or isinstance(obj, TrackedArray):
        if found is not None and obj._hw_tracker is not None:
            found.append(obj)
        return obj.view(np.ndarray)
    if kind is tuple or kind is list:
        out = []
        for o in obj:
            if type(o) is TrackedArray:
                if found is not None and o._hw_tracker is not None:
                    found.append(o)
                out.append(o.view(np.ndarray))
            elif isinstance(o, _CONTAINERS) or isinstance(o, TrackedArray):
                out.append(_strip(o, found))
            else:
                out.append(o)
        return tuple(out) if kind is tuple else out
    if isinstance(obj, _CONTAINERS):  # dicts, and tuple/list subclasses
        if isinstance(obj, dict):
            return {k: _strip(v, found) for k, v in obj.items()} if obj else obj
        stripped = [_strip(o, found) for o in obj]
        return type(obj)(stripped) if isinstance(obj, list) else tuple(stripped)
    return obj


def _find_tracker(args: Any, kwargs: Any) -> Tracker | None:
    found: list[TrackedArray] = []
    _strip(args, found)
    _strip(kwargs, found)
    return found[0]._hw_tracker if found else None


def _array_outputs(result: Any) -> list[Any]:
    if isinstance(result, (tuple, list)):
        return list(result) if result and all(_is_array(r) for r in result) else []
    return [result] if _is_array(result) else []


_UFUNC_NAMES = {u: f"numpy.{u.__name__}" for u in vars(np).values() if isinstance(u, np.ufunc)}


def _not_understood(n_inputs: int, n_out: int, op_name: str) -> Segments:
    reason = f"op not understood: {op_name}"
    return [_all(i, n_out, reason) for i in range(n_inputs)] if n_out else []


def _json_axis(axis: Any) -> str:
    if axis is None or isinstance(axis, (int, np.integer)):
        return f'{{"axis": {"null" if axis is None else int(axis)}}}'
    return json.dumps({"axis": [int(a) for a in axis]})


def _covers_rows(axis: Any, ndim: int) -> bool:
    """Whether reducing over `axis` reduces over axis 0 (rows)."""
    if axis is None or ndim == 0:
        return True
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    return any(int(a) % ndim == 0 for a in axes)


def _reduction_segments(i: int, x: Any, axis: Any, n_out: int) -> tuple[Segments, bool]:
    if n_out == 0:
        return [], True
    if np.ndim(x) == 0:
        return [_broadcast(i, 0, n_out)], True
    if _covers_rows(axis, np.ndim(x)):
        return [_all(i, n_out, REDUCTION)], True
    return [_identity(i, n_out)], True


@functools.lru_cache(maxsize=4096)
def _operand_segment(i: int, shape: tuple[int, ...], out_shape: tuple[int, ...]
                     ) -> Seg | None:
    """How a broadcast operand of this shape maps onto the output's rows."""
    n_out = out_shape[0] if out_shape else 1
    if n_out == 0:
        return None
    if len(shape) == len(out_shape):
        if not shape or shape[0] == n_out:
            return _identity(i, n_out)
        return _broadcast(i, 0, n_out)  # a 1-row operand against many rows
    if not shape:
        return _broadcast(i, 0, n_out)
    return _all(i, n_out, BROADCAST)  # its axis 0 is not the output's rows


def _elementwise_segments(index: dict[int, int], tracked: list[tuple[int, TrackedArray]],
                          out_shape: tuple[int, ...]) -> Segments:
    segments: Segments = []
    seen: set[int] = set()
    for _, a in tracked:
        i = index.get(id(a))
        if i is None or i in seen:
            continue
        seen.add(i)
        seg = _operand_segment(i, a.shape, out_shape)
        if seg is not None:
            segments.append(seg)
    return segments


# ---------------------------------------------------------------------------------------
# __getitem__ row maps


_NEW, _ELLIPSIS, _SLICE, _INT, _INTS, _MASK = range(6)


def _classify(k: Any) -> tuple[int, Any]:
    if k is None:
        return _NEW, None
    if k is Ellipsis:
        return _ELLIPSIS, None
    if isinstance(k, slice):
        return _SLICE, k
    if isinstance(k, (bool, np.bool_)):
        raise _NotUnderstood
    if isinstance(k, (int, np.integer)):
        return _INT, int(k)
    a = np.asarray(k)
    if a.dtype == bool:
        if a.ndim == 0:
            raise _NotUnderstood
        return _MASK, a
    if a.dtype.kind in "iu" or a.size == 0:
        a = a.astype(np.int64, copy=False)
        return (_INT, int(a)) if a.ndim == 0 else (_INTS, a)
    raise _NotUnderstood


def _getitem_segments(key: Any, shape: tuple[int, ...], n_out: int) -> tuple[Segments, str]:
    """Row map of x[key] for x of `shape` (raises _NotUnderstood)."""
    if n_out == 0:
        return [], "{}"
    if not shape:  # a 0-d array has one row
        return [_broadcast(0, 0, n_out)], "{}"
    n = shape[0]
    entries = [_classify(k) for k in (key if isinstance(key, tuple) else (key,))]
    if not entries:
        return [_identity(0, n_out)], '{"key": "all"}'
    kinds = [kind for kind, _ in entries]
    has_arrays = _INTS in kinds or _MASK in kinds
    advanced = [p for p, kind in enumerate(kinds) if kind in (_INTS, _MASK)
                or (has_arrays and kind == _INT)]
    adv_front = bool(advanced) and (advanced[0] == 0 or
                                    advanced != list(range(advanced[0], advanced[-1] + 1)))
    if kinds[0] == _ELLIPSIS:
        rest = entries[1:]
        consumed = sum(1 for kind, _ in rest if kind in (_INT, _SLICE, _INTS)) + sum(
            v.ndim for kind, v in rest if kind == _MASK)
        if consumed < len(shape):  # axis 0 is inside the Ellipsis
            if adv_front:
                raise _NotUnderstood  # advanced indices moved in front of the rows
            return [_identity(0, n_out)], '{"key": "ellipsis"}'
        return _getitem_segments(tuple(_value(kind, v) for kind, v in rest), shape, n_out)
    kind, v = entries[0]
    if kind == _NEW:
        if adv_front:
            raise _NotUnderstood
        following = [e for e in entries if e[0] != _NEW]
        if following and following[0][0] == _ELLIPSIS:
            rest = following[1:]
            consumed = sum(1 for k, _ in rest if k in (_INT, _SLICE, _INTS)) + sum(
                v.ndim for k, v in rest if k == _MASK)
            following = [] if consumed < len(shape) else rest
        if not following or following[0] == (_SLICE, slice(None)):
            return [_all(0, n_out, "new leading axis")], '{"key": "new axis"}'
        if following[0][0] == _INT:
            return [_broadcast(0, _norm(following[0][1], n), n_out)], '{"key": "new axis"}'
        raise _NotUnderstood
    if kind == _INT:
        return [_broadcast(0, _norm(v, n), n_out)], '{"key": "int"}'
    if kind == _SLICE:
        if adv_front:
            raise _NotUnderstood
        r = range(*v.indices(n))
        return ([_range(0, r.start, r.step, len(r))] if len(r) else [],
                json.dumps({"key": "slice", "start": r.start, "stop": r.stop, "step": r.step}))
    # an advanced index first: output axis 0 is axis 0 of the broadcast advanced indices
    arrays: list[np.ndarray] = []
    for kind, v in entries:
        if kind == _MASK:
            arrays.extend(np.nonzero(v))
        elif kind == _INTS:
            arrays.append(v)
        elif kind == _INT:
            arrays.append(np.asarray(v))
    bshape = np.broadcast_shapes(*(a.shape for a in arrays))
    first = arrays[0]
    first = np.where(first < 0, first + n, first) if first.size and first.min() < 0 else first
    key_kind = "mask" if kinds[0] == _MASK else "indices"
    if not bshape:
        return [_broadcast(0, int(first), n_out)], json.dumps({"key": key_kind})
    table = np.broadcast_to(first, bshape)
    if table.ndim == 1:
        return rows_segments(0, table), json.dumps({"key": key_kind})
    segments, ok = _fanin_segments(0, table, "op not understood: index array too wide")
    if not ok:
        raise _NotUnderstood
    return segments, json.dumps({"key": key_kind})


def _value(kind: int, v: Any) -> Any:
    return {_NEW: None, _ELLIPSIS: Ellipsis}.get(kind, v)


def _norm(i: int, n: int) -> int:
    return i + n if i < 0 else i


# ---------------------------------------------------------------------------------------
# __array_function__ handlers


class _Call:
    """One NumPy function call on tracked arrays: plain arguments and the inputs."""

    def __init__(self, tracker: Tracker, func: Any, args: Any, kwargs: Any, pargs: Any,
                 pkwargs: Any, tracked: list[TrackedArray]):
        if not args and kwargs:  # all by keyword: bind so handlers can read positions
            try:
                sig = inspect.signature(func)
                bound, pbound = sig.bind(**kwargs), sig.bind(**pkwargs)
                args, kwargs = bound.args, bound.kwargs
                pargs, pkwargs = pbound.args, pbound.kwargs
            except (TypeError, ValueError):
                pass
        self.tracker = tracker
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.pargs = pargs
        self.pkwargs = pkwargs
        self.tracked = tracked
        module = getattr(func, "__module__", None) or "numpy"
        if module.startswith(("numpy._", "numpy.core", "numpy.lib")):
            module = "numpy"
        self.op_name = f"{module}.{getattr(func, '__name__', type(func).__name__)}"
        self.params = "{}"
        self.selectors: set[int] = set()  # inputs that select rows, not give values
        self._nodes: list[str] | None = None
        self._index: dict[int, int] = {}

    def complete(self, segments: Segments, understood: bool,
                 n_out: int) -> tuple[Segments, bool]:
        """Never drop an input silently: a tracked input with rows that no segment maps
        (and that only selects rows) is recorded as all rows, understood=False."""
        mapped = {s[0] for s in segments} | self.selectors
        for a in self.tracked:
            i = self.input_of(a)
            if i is not None and i not in mapped and _rows(a.shape) and n_out:
                segments = [*segments, _all(i, n_out, f"op not understood: {self.op_name} "
                                                      "(input not mapped)")]
                understood = False
                mapped.add(i)
        return segments, understood

    def _resolve(self) -> None:
        if self._nodes is None:
            self._nodes, self._index = _input_nodes(self.tracked)

    @property
    def nodes(self) -> list[str]:
        self._resolve()
        assert self._nodes is not None
        return self._nodes

    def input_of(self, arg: Any) -> int | None:
        """Index of a (tracked) argument in the op's inputs; None when untracked."""
        self._resolve()
        return self._index.get(id(arg)) if isinstance(arg, TrackedArray) else None

    def arg(self, pos: int, name: str, default: Any = None) -> Any:
        """An argument as passed (tracked arrays kept)."""
        if len(self.args) > pos:
            return self.args[pos]
        return self.kwargs.get(name, default)

    def parg(self, pos: int, name: str, default: Any = None) -> Any:
        """An argument as given to NumPy (plain arrays)."""
        if len(self.pargs) > pos:
            return self.pargs[pos]
        return self.pkwargs.get(name, default)


Spec = tuple[Segments, bool, str]
_FUNCTIONS: dict[Any, Callable[[_Call, list[Any]], Spec | list[Spec] | None]] = {}


def _implements(*funcs: Any) -> Callable[[Any], Any]:
    def register(handler: Any) -> Any:
        for f in funcs:
            if f is not None:
                _FUNCTIONS[f] = handler
        return handler
    return register


def _np(name: str) -> Any:
    return getattr(np, name, None)


def _one_input(call: _Call, out: Any, seg_fn: Callable[[int, int], Segments],
               params: str = "{}", understood: bool = True) -> Spec:
    i = call.input_of(call.args[0]) if call.args else None
    n_out = _rows(np.shape(out))
    if i is None or n_out == 0:
        return [], understood, params
    return seg_fn(i, n_out), understood, params


_REDUCTIONS = ["sum", "prod", "mean", "std", "var", "min", "max", "amin", "amax", "any",
               "all", "argmin", "argmax", "median", "ptp", "nansum", "nanprod", "nanmean",
               "nanstd", "nanvar", "nanmin", "nanmax", "nanargmin", "nanargmax", "nanmedian",
               "count_nonzero"]


@_implements(*(_np(f) for f in _REDUCTIONS))
def _reduction(call: _Call, outs: list[Any]) -> Spec:
    axis = call.arg(1, "axis")
    x = call.parg(0, "a")
    n_out = _rows(np.shape(outs[0]))
    i = call.input_of(call.arg(0, "a"))
    if i is None:
        return [], True, _json_axis(axis)
    segments, ok = _reduction_segments(i, x, axis, n_out)
    return segments, ok, _json_axis(axis)


@_implements(np.average)
def _average(call: _Call, outs: list[Any]) -> Spec:
    segments, ok, params = _reduction(call, outs)
    w = call.arg(3, "weights")
    j = call.input_of(w)
    n_out = _rows(np.shape(outs[0]))
    if j is not None and n_out:
        x = call.parg(0, "a")
        axis = call.arg(1, "axis")
        if _covers_rows(axis, np.ndim(x)) or np.shape(w) != np.shape(x):
            segments.append(_all(j, n_out, "weights"))
        else:
            segments.append(_identity(j, n_out))
    return segments, ok, params


@_implements(np.percentile, np.quantile, np.nanpercentile, np.nanquantile)
def _quantile(call: _Call, outs: list[Any]) -> Spec:
    axis = call.arg(2, "axis")
    i = call.input_of(call.arg(0, "a"))
    n_out = _rows(np.shape(outs[0]))
    if i is None or n_out == 0:
        return [], True, _json_axis(axis)
    if np.ndim(call.parg(1, "q")) > 0:  # output axis 0 is q: each row holds every row
        return [_all(i, n_out, REDUCTION)], True, _json_axis(axis)
    segments, ok = _reduction_segments(i, call.parg(0, "a"), axis, n_out)
    return segments, ok, _json_axis(axis)


@_implements(np.cumsum, np.cumprod, np.nancumsum, np.nancumprod)
def _cumulative(call: _Call, outs: list[Any]) -> Spec:
    axis = call.arg(1, "axis")
    if _covers_rows(axis, np.ndim(call.parg(0, "a"))):
        raise _NotUnderstood  # a prefix over rows: recorded as all rows
    return _one_input(call, outs[0], lambda i, n: [_identity(i, n)], _json_axis(axis))


@_implements(np.sort, np.argsort)
def _sort(call: _Call, outs: list[Any]) -> Spec:
    axis = call.arg(1, "axis", -1)
    if _covers_rows(axis, np.ndim(call.parg(0, "a"))):
        return _one_input(call, outs[0], lambda i, n: [_all(i, n, "sorted along rows")],
                          _json_axis(axis))
    return _one_input(call, outs[0], lambda i, n: [_identity(i, n)], _json_axis(axis))


@_implements(np.diff)
def _diff(call: _Call, outs: list[Any]) -> Spec:
    order = int(call.arg(1, "n", 1))
    axis = call.arg(2, "axis", -1)
    x = call.parg(0, "a")
    if call.kwargs.get("prepend") is not None or call.kwargs.get("append") is not None:
        raise _NotUnderstood
    if np.ndim(x) and int(axis) % np.ndim(x) == 0:  # row r <- rows r .. r + n
        return _one_input(call, outs[0], lambda i, n: [_range(i, j, 1, n)
                                                       for j in range(order + 1)],
                          json.dumps({"n": order, "axis": int(axis)}))
    return _one_input(call, outs[0], lambda i, n: [_identity(i, n)], _json_axis(axis))


@_implements(np.copy, _np("asanyarray"), np.ascontiguousarray, np.asfortranarray,
             np.nan_to_num, np.real, np.imag, np.conj, np.around, np.round,
             _np("round_"), np.fix, np.isnan, np.isfinite, np.isinf, np.iscomplex,
             np.isreal, np.sinc, np.i0, np.angle, np.real_if_close)
def _same_shape(call: _Call, outs: list[Any]) -> Spec:
    shape = np.shape(call.parg(0, "a"))
    n_out = _rows(np.shape(outs[0]))
    if _rows(shape) != n_out or len(shape) != np.ndim(outs[0]):
        raise _NotUnderstood
    return _one_input(call, outs[0], lambda i, n: [_identity(i, n)])


@_implements(np.where, np.clip, np.broadcast_to, np.isclose)
def _elementwise_function(call: _Call, outs: list[Any]) -> Spec | None:
    if call.func is np.where and len(call.args) + len(call.kwargs) == 1:
        return None  # np.where(cond): indices, not understood
    out_shape = np.shape(outs[0])
    segments: Segments = []
    seen: set[int] = set()
    for a in call.tracked:
        i = call.input_of(a)
        if i is None or i in seen:
            continue
        seen.add(i)
        seg = _operand_segment(i, a.shape, out_shape)
        if seg is not None:
            segments.append(seg)
    return segments, True, "{}"


@_implements(np.dot, np.matmul, np.inner, np.vdot)
def _dot(call: _Call, outs: list[Any]) -> Spec:
    a, b = call.arg(0, "a"), call.arg(1, "b")
    return _product_segments(call.func.__name__, call.input_of(a), np.shape(call.parg(0, "a")),
                             call.input_of(b), np.shape(call.parg(1, "b")),
                             np.shape(outs[0])), True, "{}"


def _record_copyto(call: _Call) -> None:
    """np.copyto(dst, src, where=...): dst now holds src's values (and, where `where` is
    given, its own old ones); dst is re-bound to a new node."""
    dst = call.arg(0, "dst")
    if not isinstance(dst, TrackedArray) or dst._hw_tracker is None:
        return  # copied into an untracked array: leaves tracking
    tracker = call.tracker
    if tracker._batch:
        tracker._derive(dst.view(np.ndarray), call.tracked, "numpy.copyto", (dst,))
        return
    where = call.arg(3, "where", True)
    operands = [call.arg(1, "src")] + ([dst, where] if where is not True else [])
    nodes: list[str] = []
    segments: Segments = []
    for arr in operands:
        if not isinstance(arr, TrackedArray) or arr._hw_tracker is None:
            continue
        node = _node_required(arr)
        if node in nodes:
            continue
        seg = _operand_segment(len(nodes), arr.shape, dst.shape)
        nodes.append(node)
        if seg is not None:
            segments.append(seg)
    tracker._emit_result(dst.view(np.ndarray), "numpy.copyto", "{}", nodes, segments, True,
                         (dst,))


def _product_segments(kind: str, i: int | None, a_shape: tuple[int, ...], j: int | None,
                      b_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Segments:
    """Row maps of products: kind is matmul, dot, inner or vdot."""
    n_out = _rows(out_shape)
    if n_out == 0:
        return []
    a_nd, b_nd = len(a_shape), len(b_shape)
    if kind == "vdot":
        a_map, b_map = "all", "all"
    elif a_nd == 0 or b_nd == 0 or (kind == "matmul" and min(a_nd, b_nd) >= 2
                                      and max(a_nd, b_nd) >= 3):
        # a scalar product, or stacked matrices: axis 0 broadcasts like an elementwise op
        segments: Segments = []
        for idx, shape in ((i, a_shape), (j, b_shape)):
            seg = _operand_segment(idx, shape, out_shape) if idx is not None else None
            if seg is not None and idx not in {s[0] for s in segments}:
                segments.append(seg)
        return segments
    elif a_nd >= 2:  # rows of a, each against all of b
        a_map, b_map = "identity", "all"
    elif b_nd >= (2 if kind == "inner" else 3):  # a vector against each row of b
        a_map, b_map = "all", "identity"
    else:
        a_map, b_map = "all", "all"
    maps: dict[int, str] = {}
    for idx, how in ((i, a_map), (j, b_map)):
        if idx is not None:
            maps[idx] = "all" if maps.get(idx, how) != how else how
    return [_identity(idx, n_out) if how == "identity" else _all(idx, n_out, "matrix product")
            for idx, how in maps.items()]


def _axis_after(func: Any, ndim: int, *args: Any, **kwargs: Any) -> int:
    """Where input axis 0 ends up after a pure axis permutation (probed on a 0-byte view)."""
    probe = np.lib.stride_tricks.as_strided(np.zeros(1), shape=tuple(range(2, ndim + 2)),
                                            strides=(0,) * ndim)
    return list(np.shape(func(probe, *args, **kwargs))).index(2)


@_implements(np.transpose, np.swapaxes, np.moveaxis, np.rollaxis, _np("permute_dims"),
             _np("matrix_transpose"))
def _permute_axes(call: _Call, outs: list[Any]) -> Spec:
    x = call.parg(0, "a")
    if np.ndim(x) == 0:
        return _one_input(call, outs[0], lambda i, n: [_identity(i, n)])
    rest = call.pargs[1:]
    moved = _axis_after(call.func, np.ndim(x), *rest, **call.pkwargs) != 0
    if moved:
        return _one_input(call, outs[0], lambda i, n: [_all(i, n, ROWS_MOVED)])
    return _one_input(call, outs[0], lambda i, n: [_identity(i, n)])


@_implements(np.reshape, np.ravel)
def _reshape(call: _Call, outs: list[Any]) -> Spec:
    x = call.parg(0, "a")
    order = call.arg(2, "order", "C") if call.func is np.reshape else call.arg(1, "order", "C")
    in_shape, out_shape = np.shape(x), np.shape(outs[0])
    if order not in ("C", "A", "K") or (order != "C" and not x.flags.c_contiguous):
        raise _NotUnderstood
    return _one_input(call, outs[0], lambda i, n: _reshape_segments(i, in_shape, out_shape),
                      json.dumps({"shape": list(out_shape)}))


def _reshape_segments(i: int, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Segments:
    """C-order reshape: output row r holds flat elements [r*m, (r+1)*m); input row s holds
    [s*k, (s+1)*k)."""
    n_in, n_out = _rows(in_shape), _rows(out_shape)
    size = math.prod(in_shape)
    if size == 0 or n_out == 0:
        return []
    k, m = size // n_in, size // n_out
    if m == k:
        return [_identity(i, n_out)]
    if m % k == 0:  # each output row joins q whole input rows
        q = m // k
        if n_out == 1:
            return [_all(i, 1, "all rows in one")]
        if q > MAX_FANIN_SEGMENTS:
            raise _NotUnderstood
        return [_range(i, j, q, n_out) for j in range(q)]
    if k % m == 0:  # each input row splits into q output rows
        if n_in == 1:
            return [_broadcast(i, 0, n_out)]
        return rows_segments(i, np.arange(n_out, dtype=np.int64) // (k // m))
    r = np.arange(n_out, dtype=np.int64)
    lo, hi = r * m // k, ((r + 1) * m - 1) // k
    span = int((hi - lo).max()) + 1
    if span > MAX_FANIN_SEGMENTS:
        raise _NotUnderstood
    segments: Segments = []
    for j in range(span):
        segments.extend(rows_segments(i, np.minimum(lo + j, hi)))
    return segments


@_implements(np.squeeze)
def _squeeze(call: _Call, outs: list[Any]) -> Spec:
    x = call.parg(0, "a")
    shape = np.shape(x)
    if not shape:
        return _one_input(call, outs[0], lambda i, n: [_broadcast(i, 0, n)])
    axis = call.arg(1, "axis")
    row_axis_gone = shape[0] == 1 and (axis is None or _covers_rows(axis, len(shape)))
    if row_axis_gone:
        return _one_input(call, outs[0], lambda i, n: [_broadcast(i, 0, n)])
    return _one_input(call, outs[0], lambda i, n: [_identity(i, n)])


@_implements(np.expand_dims)
def _expand_dims(call: _Call, outs: list[Any]) -> Spec:
    axis = call.arg(1, "axis")
    out_nd = np.ndim(outs[0])
    if _covers_rows(axis, out_nd):
        return _one_input(call, outs[0], lambda i, n: [_all(i, n, "new leading axis")])
    return _one_input(call, outs[0], lambda i, n: [_identity(i, n)])


@_implements(np.atleast_1d, np.atleast_2d, np.atleast_3d)
def _atleast(call: _Call, outs: list[Any]) -> Spec:
    if len(call.args) != 1:
        raise _NotUnderstood
    nd = np.ndim(call.parg(0, "a"))
    if nd == 0:
        return _one_input(call, outs[0], lambda i, n: [_broadcast(i, 0, n)])
    if nd == 1 and call.func is not np.atleast_1d:
        return _one_input(call, outs[0], lambda i, n: [_all(i, n, "new leading axis")])
    return _one_input(call, outs[0], lambda i, n: [_identity(i, n)])


@_implements(np.flip, np.flipud)
def _flip(call: _Call, outs: list[Any]) -> Spec:
    axis = 0 if call.func is np.flipud else call.arg(1, "axis")
    if _covers_rows(axis, np.ndim(call.parg(0, "m"))):
        return _one_input(call, outs[0], lambda i, n: [_range(i, n - 1, -1, n)],
                          _json_axis(axis))
    return _one_input(call, outs[0], lambda i, n: [_identity(i, n)], _json_axis(axis))


@_implements(np.fliplr)
def _fliplr(call: _Call, outs: list[Any]) -> Spec:
    return _one_input(call, outs[0], lambda i, n: [_identity(i, n)])


@_implements(np.roll)
def _roll(call: _Call, outs: list[Any]) -> Spec:
    shift, axis = call.arg(1, "shift"), call.arg(2, "axis")
    nd = np.ndim(call.parg(0, "a"))
    if nd == 0:
        return _one_input(call, outs[0], lambda i, n: [_identity(i, n)])
    if axis is None and nd > 1:
        raise _NotUnderstood
    axes = (0,) if axis is None else (axis if isinstance(axis, (tuple, list)) else (axis,))
    shifts = np.broadcast_to(np.asarray(shift), (len(axes),))
    total = sum(int(s) for a, s in zip(axes, shifts, strict=True) if int(a) % nd == 0)
    params = json.dumps({"shift": total, "axis": 0})

    def segments(i: int, n: int) -> Segments:
        s = total % n
        if s == 0:
            return [_identity(i, n)]  # out row r <- (r - s) mod n
        return [_range(i, n - s, 1, s), _range(i, 0, 1, n - s, out_start=s)]
    return _one_input(call, outs[0], segments, params)


@_implements(np.repeat)
def _repeat(call: _Call, outs: list[Any]) -> Spec:
    repeats, axis = call.parg(1, "repeats"), call.arg(2, "axis")
    shape = np.shape(call.parg(0, "a"))
    if axis is not None and not _covers_rows(axis, len(shape)):
        return _one_input(call, outs[0], lambda i, n: [_identity(i, n)], _json_axis(axis))
    if axis is None:  # flattened first: element e belongs to row e // k
        size = math.prod(shape)
        k = size // _rows(shape) if size else 1
        base = np.arange(size, dtype=np.int64) // k
    else:
        base = np.arange(shape[0], dtype=np.int64)
    rows = np.repeat(base, repeats)
    return _one_input(call, outs[0], lambda i, n: rows_segments(i, rows), _json_axis(axis))


@_implements(np.take)
def _take(call: _Call, outs: list[Any]) -> Spec:
    x = call.parg(0, "a")
    idx = np.asarray(call.parg(1, "indices"))
    axis = call.arg(2, "axis")
    mode = call.arg(4, "mode", "raise")
    shape = np.shape(x)
    call.params = _json_axis(axis)
    j = call.input_of(call.arg(1, "indices"))
    if j is not None and j != call.input_of(call.arg(0, "a")):
        call.selectors.add(j)
    if idx.dtype.kind not in "iu" and idx.size:
        raise _NotUnderstood
    if axis is not None and not _covers_rows(axis, len(shape)):
        return _one_input(call, outs[0], lambda i, n: [_identity(i, n)], call.params)
    size = math.prod(shape) if axis is None else shape[0]
    idx = idx.astype(np.int64)
    if mode == "wrap":
        idx = idx % size
    elif mode == "clip":
        idx = np.clip(idx, 0, size - 1)
    else:
        idx = np.where(idx < 0, idx + size, idx)
    if axis is None:
        idx = idx // (size // _rows(shape)) if shape else idx * 0
    if idx.ndim == 0:
        return _one_input(call, outs[0], lambda i, n: [_broadcast(i, int(idx), n)], call.params)
    if idx.ndim == 1:
        return _one_input(call, outs[0], lambda i, n: rows_segments(i, idx), call.params)
    i = call.input_of(call.args[0]) if call.args else None
    if i is None:
        return [], True, call.params
    segments, ok = _fanin_segments(i, idx, "op not understood: numpy.take")
    if not ok:
        raise _NotUnderstood
    return segments, True, call.params


def _pieces(call: _Call) -> tuple[list[Any], list[Any]]:
    """(arrays as passed, as plain) of concatenate-like functions' first argument."""
    passed = call.arg(0, "arrays")
    plain = call.parg(0, "arrays")
    if isinstance(passed, np.ndarray):  # an array iterates over its rows
        return list(passed), list(plain)
    return list(passed), list(plain)


def _stacked(call: _Call, pieces: list[tuple[Any, int, bool]], n_out: int) -> Segments:
    """Disjoint row blocks: (passed piece, rows, keeps its rows) in output order."""
    segments: Segments = []
    offset = 0
    for piece, rows, keeps in pieces:
        i = call.input_of(piece)
        if i is not None and rows:
            segments.append(_range(i, 0, 1, rows, offset) if keeps
                            else _all(i, rows, "stacked as one row", offset))
        offset += rows
    if offset != n_out:
        raise _NotUnderstood
    return segments


def _side_by_side(call: _Call, passed: list[Any], n_out: int, promote_1d: bool) -> Segments:
    segments: Segments = []
    seen: set[int] = set()
    for piece in passed:
        i = call.input_of(piece)
        if i is None or i in seen or n_out == 0:
            continue
        seen.add(i)
        nd = np.ndim(piece)
        if nd == 0:
            segments.append(_broadcast(i, 0, n_out))
        elif np.shape(piece)[0] == n_out or (promote_1d and nd == 1):
            segments.append(_identity(i, n_out))
        else:
            raise _NotUnderstood
    return segments


@_implements(np.concatenate, _np("concat"))
def _concatenate(call: _Call, outs: list[Any]) -> Spec:
    passed, plain = _pieces(call)
    axis = call.arg(1, "axis", 0)
    n_out = _rows(np.shape(outs[0]))
    params = _json_axis(axis)
    if axis is None:  # flattened: output row e <- row of piece element
        segments: Segments = []
        offset = 0
        for piece, p in zip(passed, plain, strict=True):
            size = int(np.size(p))
            i = call.input_of(piece)
            if i is not None and size:
                k = size // _rows(np.shape(p))
                segments.extend(rows_segments(i, np.arange(size, dtype=np.int64) // k, offset))
            offset += size
        return segments, True, params
    nd = np.ndim(plain[0])
    if int(axis) % nd == 0:
        return _stacked(call, [(a, np.shape(p)[0], True) for a, p in zip(
            passed, plain, strict=True)], n_out), True, params
    return _side_by_side(call, passed, n_out, False), True, params


@_implements(np.vstack, _np("row_stack"))
def _vstack(call: _Call, outs: list[Any]) -> Spec:
    passed, plain = _pieces(call)
    n_out = _rows(np.shape(outs[0]))
    # a >= 2-D piece keeps its rows; a 1-D piece becomes one row holding all its rows
    # (elements); a 0-d piece one row
    fixed = [(a, np.shape(p)[0] if np.ndim(p) >= 2 else 1, np.ndim(p) != 1)
             for a, p in zip(passed, plain, strict=True)]
    return _stacked(call, fixed, n_out), True, '{"axis": 0}'


@_implements(np.hstack)
def _hstack(call: _Call, outs: list[Any]) -> Spec:
    passed, plain = _pieces(call)
    n_out = _rows(np.shape(outs[0]))
    if all(np.ndim(p) == 1 for p in plain):  # 1-D pieces: concatenated along rows
        return _stacked(call, [(a, len(p), True) for a, p in zip(
            passed, plain, strict=True)], n_out), True, '{"axis": 0}'
    if any(np.ndim(p) < 2 for p in plain):
        raise _NotUnderstood
    return _side_by_side(call, passed, n_out, False), True, '{"axis": 1}'


@_implements(np.column_stack)
def _column_stack(call: _Call, outs: list[Any]) -> Spec:
    passed, plain = _pieces(call)
    n_out = _rows(np.shape(outs[0]))
    return _side_by_side(call, passed, n_out, True), True, '{"axis": 1}'


@_implements(np.stack)
def _stack(call: _Call, outs: list[Any]) -> Spec:
    passed, plain = _pieces(call)
    axis = int(call.arg(1, "axis", 0))
    out_nd = np.ndim(outs[0])
    n_out = _rows(np.shape(outs[0]))
    if axis % out_nd == 0:  # piece p becomes output row p
        return _stacked(call, [(a, 1, np.ndim(p) == 0) for a, p in zip(
            passed, plain, strict=True)], n_out), True, _json_axis(axis)
    return _side_by_side(call, passed, n_out, False), True, _json_axis(axis)


@_implements(np.split, np.array_split, np.vsplit, np.hsplit)
def _split(call: _Call, outs: list[Any]) -> list[Spec]:
    x = call.parg(0, "ary")
    shape = np.shape(x)
    if call.func is np.vsplit:
        axis = 0
    elif call.func is np.hsplit:
        axis = 1 if len(shape) > 1 else 0
    else:
        axis = int(call.arg(2, "axis", 0))
    i = call.input_of(call.arg(0, "ary"))
    specs: list[Spec] = []
    if not _covers_rows(axis, len(shape)):
        for part, out in enumerate(outs):
            n = _rows(np.shape(out))
            specs.append(([_identity(i, n)] if i is not None and n else [], True,
                          json.dumps({"axis": axis, "part": part})))
        return specs
    offset = 0
    for part, out in enumerate(outs):
        n = np.shape(out)[0]
        specs.append(([_range(i, offset, 1, n)] if i is not None and n else [], True,
                      json.dumps({"axis": 0, "part": part, "start": offset})))
        offset += n
    return specs


# Functions whose result does not depend on the array's values: returned untracked.
_UNTRACKED = {np.zeros_like, np.ones_like, np.empty_like, np.full_like, np.shape, np.ndim,
              np.size, np.result_type, np.may_share_memory, np.shares_memory}
