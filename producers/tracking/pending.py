"""Rows on another axis: element-level lineage kept until the rows come back.

`x.T` puts x's rows on axis 1; at row level each row of x.T holds every row of x, so
`x.T.T` (or `(x.T - c).T`) recorded op by op would trace each row to every row. Instead, a
result whose rows moved off axis 0 is left *pending*: no event yet, but an int64 array of
element ids (moves.py's encoding; a trailing "set" axis holds the ids an element depends
on) travels with it through moves (transposes, reshapes, squeeze / expand_dims, basic
indexing), elementwise ufuncs and small reductions. The first use that needs a node
(any other op, `node_id`, `row_keys`) records one op for the whole stretch — named by
the ops it folds, `numpy.transpose+numpy.subtract+numpy.transpose` — whose row map comes
from the ids (moves.id_segments): identity when the rows came back.

Cost: the ids are as large as the array (times the set size, at most MAX_SET); only
arrays whose rows left axis 0 carry them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from headwater.producers.tracking.maps import NotUnderstood, not_understood
from headwater.producers.tracking.moves import ROW_BITS, id_segments, row_ids
from headwater.producers.tracking.segments import ROWS_MOVED, all_rows, n_rows

if TYPE_CHECKING:
    from headwater.producers.tracking.array import TrackedArray

MAX_SET = 16  # ids per element; a wider dependence is recorded (settled) at once
MAX_FOLDED = 8  # op names kept in the recorded name


@dataclass
class Pending:
    """Element ids of a pending array: ids[..., j] over the array's shape."""

    nodes: list[str]
    rows: list[int]
    ids: np.ndarray  # shape = array shape + (k,)
    ops: list[str]
    # made by one axis permutation of a recorded array, nothing since: each row holds
    # every row (recorded without looking at the ids: x.T @ x stays cheap)
    moved_only: bool = False


def ids_of(arr: TrackedArray, node_of: Callable[[TrackedArray], str]) -> Pending:
    """The array's element ids: its pending ids, or (a recorded array) its row ids."""
    p = arr._hw_pending
    if p is not None:
        return p
    node = node_of(arr)
    return Pending([node], [n_rows(arr.shape)], row_ids(0, arr.shape)[..., None], [])


def merge(parts: Sequence[Pending], out_shape: tuple[int, ...], op: str) -> Pending | None:
    """Operands broadcast together (an elementwise op): ids side by side on the set axis;
    None when an element would depend on more than MAX_SET ids."""
    nodes: list[str] = []
    rows: list[int] = []
    blocks = []
    ops: list[str] = []
    for p in parts:
        remap = []
        for node, n in zip(p.nodes, p.rows, strict=True):
            if node not in nodes:
                nodes.append(node)
                rows.append(n)
            remap.append(nodes.index(node))
        ids = p.ids
        if remap != list(range(len(remap))):
            which = ids >> ROW_BITS
            shift = np.asarray(remap, dtype=np.int64)[np.minimum(which, len(remap) - 1)] - which
            ids = np.where(ids == 0, 0, ids + (shift << ROW_BITS))
        blocks.append(np.broadcast_to(ids, (*out_shape, ids.shape[-1])))
        ops += [o for o in p.ops if o not in ops]
    k = sum(b.shape[-1] for b in blocks)
    if k > MAX_SET:
        return None
    ids = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=-1)
    return Pending(nodes, rows, ids, [*ops, op])


def apply(p: Pending, func: Callable[[np.ndarray], Any], out_shape: tuple[int, ...],
          op: str) -> Pending:
    """A move applied to the ids (one set slice at a time)."""
    k = p.ids.shape[-1]
    slices = [np.asarray(func(p.ids[..., j])) for j in range(k)]
    if any(s.shape != out_shape for s in slices):
        raise NotUnderstood
    ids = slices[0][..., None] if k == 1 else np.stack(slices, axis=-1)
    return Pending(p.nodes, p.rows, ids, [*p.ops, op])


def reduce_axes(p: Pending, axes: tuple[int, ...], keepdims: bool, op: str,
                limit: int = MAX_SET) -> Pending | None:
    """A reduction over `axes`: each output element depends on the ids along them; None
    past `limit` ids per element (the caller then records the result at once)."""
    nd = p.ids.ndim - 1
    axes = tuple(sorted({a % nd for a in axes}))
    keep = [a for a in range(nd) if a not in axes]
    moved = np.transpose(p.ids, (*keep, *axes, nd))
    shape = [p.ids.shape[a] for a in keep]
    k = int(np.prod([p.ids.shape[a] for a in axes], dtype=np.int64)) * p.ids.shape[-1]
    if k > limit:
        return None
    ids = moved.reshape(*shape, k)
    if keepdims:
        for a in axes:
            ids = np.expand_dims(ids, a)
    return Pending(p.nodes, p.rows, ids, [*p.ops, op])


def settle_segments(p: Pending, shape: tuple[int, ...]) -> tuple[str, str, Any, bool]:
    """(op name, params, segments, understood) of the op recording a pending stretch."""
    n_out = n_rows(shape)
    if p.moved_only and len(p.nodes) == 1:
        return p.ops[0], json.dumps({"folded": p.ops}), [all_rows(0, n_out, ROWS_MOVED)] \
            if n_out else [], True
    names = p.ops if len(p.ops) <= MAX_FOLDED else [*p.ops[:MAX_FOLDED - 1], "...",
                                                     p.ops[-1]]
    name = "+".join(names)
    params = json.dumps({"folded": p.ops})
    ids = p.ids.reshape(n_out, -1) if shape else p.ids.reshape(1, -1)
    try:
        return name, params, id_segments(ids, range(len(p.nodes)), p.rows), True
    except NotUnderstood:
        return name, params, not_understood(len(p.nodes), n_out, name), False
