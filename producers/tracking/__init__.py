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
reshape/ravel/flatten (C and F order); transpose/.T/swapaxes/moveaxis; flip; roll (flat
too); repeat; tile; delete; insert; append; pad (copying modes); compress;
take_along_axis; resize; triu/tril; sliding_window_view; squeeze; expand_dims;
atleast_1d/2d/3d; broadcast_to; sort/argsort; diff; where; clip; round; copy; `astype`
(maps of value moves come from running the call on row ids: moves.py). Rows moved off
axis 0 (`x.T`) stay pending — element-level, no event — through moves, elementwise ufuncs,
indexing and small reductions, and are recorded as one op (named by the ops it folds)
when a node is needed, so `x.T.T` and `(x.T - c).T` map rows to themselves (pending.py).
docs/sources.md lists every op with its precision class. Anything else is recorded
honestly: `understood=False` and every output row depending on all rows of every tracked
input, reason "op not understood: <name>" — the output stays tracked. Over-approximations
(cumulative sums over rows, a reshape joining more than MAX_FANIN_SEGMENTS rows into one)
are recorded the same way.

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

In place: ufuncs with `out=` (`x += 1`), `x[key] = v`, `x.sort()`, `x.partition()` and
`np.copyto(x, ...)` record an op and re-bind `x` to its new node. `x[key] = v` is exact
(writes.py: written rows take the value's rows); a write into an alias of x (same memory,
shape and strides: `np.swapaxes(x, 0, 0)`, `x[:]`) re-binds x too (other views keep their
old node), and `np.empty_like(x)` is a scratch buffer that becomes tracked when tracked
rows are written into it. So NumPy's in-place shuffles — `Generator.shuffle(x)`,
`np.random.shuffle(x)`, `RandomState.shuffle(x)`, which swap rows through such a buffer —
and `x[:] = x[perm]` are tracked exactly (a few events per swapped row:
`tracker.shuffle(x, seed)` or `x[perm]` record one).

Not seen by the wrappers (documented limits): NumPy code that copies data without the
array protocols — `rng.permutation(x)` and `rng.choice(x)` return plain (untracked)
arrays; for a 1-D x `rng.permutation` warns `headwater.errors.LineageLost`.
`np.asarray(x)` / `x.view(np.ndarray)` leave tracking on purpose; pickling gives a plain
array (node ids are process-local). Arrays that NumPy makes from a tracked array outside
the protocols (`x.view()`, `copy.deepcopy(x)`) are recorded lazily, when a recorded op
first uses them, as depending on all rows of their parent (`headwater.unrecorded_ops`,
understood=False).

Cost: one event per op is built from cached, pre-encoded protobuf pieces (segments are
built with NumPy; no per-row Python loops), so the fixed cost is a few microseconds per
op; gathers are the only row maps whose size grows with the rows (zstd-compressed deltas).

Layout: segments.py (row-map segments, hand-encoded), maps.py (row maps by kind of op,
shared with torch), moves.py (maps of value moves: tile, windows, flat roll, the row-id
probe), writes.py (`x[key] = v`), pending.py (rows on another axis), array.py
(TrackedArray and the NumPy protocols), tracker.py (Tracker, row_keys), registry.py (the
op registry: one rule per function, NumPy and torch, with its precision class),
numpy_ops.py, numpy_shapes.py and numpy_moves.py (the NumPy rules), torch/ (tracked torch
tensors; the only place torch is imported), frames.py and frame_rows.py (pandas
DataFrames), sources.py (registered training data).
"""

from __future__ import annotations

from headwater.producers.tracking import (  # noqa: F401 - NumPy rules
    numpy_moves,
    numpy_ops,
    numpy_shapes,
)
from headwater.producers.tracking.array import TrackedArray
from headwater.producers.tracking.segments import (
    BROADCAST,
    MAX_FANIN_SEGMENTS,
    REDUCTION,
    ROWS_MOVED,
    Seg,
    Segments,
    decode_segments,
    rows_segments,
)
from headwater.producers.tracking.tracker import GRANULARITIES, Emit, Tracker, row_keys

__all__ = [
    "BROADCAST",
    "GRANULARITIES",
    "MAX_FANIN_SEGMENTS",
    "REDUCTION",
    "ROWS_MOVED",
    "Emit",
    "Seg",
    "Segments",
    "TrackedArray",
    "Tracker",
    "decode_segments",
    "row_keys",
    "rows_segments",
]
