"""Row maps by kind of op, shared by the NumPy and the torch rules: broadcasting operands,
reductions, `x[key]`, matrix products, C-order reshapes and disjoint row blocks. Each
returns segments (see segments.py) or raises NotUnderstood."""

from __future__ import annotations

import functools
import json
import math
from typing import Any, Protocol

import numpy as np

from headwater.producers.tracking.segments import (
    BROADCAST,
    MAX_FANIN_SEGMENTS,
    REDUCTION,
    Seg,
    Segments,
    all_rows,
    broadcast,
    fanin_segments,
    identity,
    n_rows,
    range_segment,
    rows_segments,
)


class Inputs(Protocol):
    """A call of either framework: where a (tracked) argument sits among the op's inputs."""

    def input_of(self, arg: Any) -> int | None: ...


class NotUnderstood(Exception):
    """The row mapping of this call is not known: record it as depending on all rows."""



def not_understood(n_inputs: int, n_out: int, op_name: str) -> Segments:
    reason = f"op not understood: {op_name}"
    return [all_rows(i, n_out, reason) for i in range(n_inputs)] if n_out else []


def json_axis(axis: Any) -> str:
    if axis is None or isinstance(axis, (int, np.integer)):
        return f'{{"axis": {"null" if axis is None else int(axis)}}}'
    return json.dumps({"axis": [int(a) for a in axis]})


def covers_rows(axis: Any, ndim: int) -> bool:
    """Whether reducing over `axis` reduces over axis 0 (rows)."""
    if axis is None or ndim == 0:
        return True
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    return any(int(a) % ndim == 0 for a in axes)


def reduction_segments(i: int, x: Any, axis: Any, n_out: int) -> tuple[Segments, bool]:
    if n_out == 0:
        return [], True
    if np.ndim(x) == 0:
        return [broadcast(i, 0, n_out)], True
    if covers_rows(axis, np.ndim(x)):
        return [all_rows(i, n_out, REDUCTION)], True
    return [identity(i, n_out)], True


@functools.lru_cache(maxsize=4096)
def operand_segment(i: int, shape: tuple[int, ...], out_shape: tuple[int, ...]
                     ) -> Seg | None:
    """How a broadcast operand of this shape maps onto the output's rows."""
    n_out = out_shape[0] if out_shape else 1
    if n_out == 0:
        return None
    if len(shape) == len(out_shape):
        if not shape or shape[0] == n_out:
            return identity(i, n_out)
        return broadcast(i, 0, n_out)  # a 1-row operand against many rows
    if not shape:
        return broadcast(i, 0, n_out)
    return all_rows(i, n_out, BROADCAST)  # its axis 0 is not the output's rows


def elementwise_segments(index: dict[int, int], tracked: list[tuple[int, Any]],
                          out_shape: tuple[int, ...]) -> Segments:
    segments: Segments = []
    seen: set[int] = set()
    for _, a in tracked:
        i = index.get(id(a))
        if i is None or i in seen:
            continue
        seen.add(i)
        seg = operand_segment(i, a.shape, out_shape)
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
        raise NotUnderstood
    if isinstance(k, (int, np.integer)):
        return _INT, int(k)
    a = np.asarray(k)
    if a.dtype == bool:
        if a.ndim == 0:
            raise NotUnderstood
        return _MASK, a
    if a.dtype.kind in "iu" or a.size == 0:
        a = a.astype(np.int64, copy=False)
        return (_INT, int(a)) if a.ndim == 0 else (_INTS, a)
    raise NotUnderstood


def getitem_segments(key: Any, shape: tuple[int, ...], n_out: int) -> tuple[Segments, str]:
    """Row map of x[key] for x of `shape` (raises NotUnderstood)."""
    if n_out == 0:
        return [], "{}"
    if not shape:  # a 0-d array has one row
        return [broadcast(0, 0, n_out)], "{}"
    n = shape[0]
    entries = [_classify(k) for k in (key if isinstance(key, tuple) else (key,))]
    if not entries:
        return [identity(0, n_out)], '{"key": "all"}'
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
                raise NotUnderstood  # advanced indices moved in front of the rows
            return [identity(0, n_out)], '{"key": "ellipsis"}'
        return getitem_segments(tuple(_value(kind, v) for kind, v in rest), shape, n_out)
    kind, v = entries[0]
    if kind == _NEW:
        if adv_front:
            raise NotUnderstood
        following = [e for e in entries if e[0] != _NEW]
        if following and following[0][0] == _ELLIPSIS:
            rest = following[1:]
            consumed = sum(1 for k, _ in rest if k in (_INT, _SLICE, _INTS)) + sum(
                v.ndim for k, v in rest if k == _MASK)
            following = [] if consumed < len(shape) else rest
        if not following or following[0] == (_SLICE, slice(None)):
            return [all_rows(0, n_out, "new leading axis")], '{"key": "new axis"}'
        if following[0][0] == _INT:
            return [broadcast(0, _norm(following[0][1], n), n_out)], '{"key": "new axis"}'
        raise NotUnderstood
    if kind == _INT:
        return [broadcast(0, _norm(v, n), n_out)], '{"key": "int"}'
    if kind == _SLICE:
        if adv_front:
            raise NotUnderstood
        r = range(*v.indices(n))
        return ([range_segment(0, r.start, r.step, len(r))] if len(r) else [],
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
        return [broadcast(0, int(first), n_out)], json.dumps({"key": key_kind})
    table = np.broadcast_to(first, bshape)
    if table.ndim == 1:
        return rows_segments(0, table), json.dumps({"key": key_kind})
    segments, ok = fanin_segments(0, table, "op not understood: index array too wide")
    if not ok:
        raise NotUnderstood
    return segments, json.dumps({"key": key_kind})


def _value(kind: int, v: Any) -> Any:
    return {_NEW: None, _ELLIPSIS: Ellipsis}.get(kind, v)


def _norm(i: int, n: int) -> int:
    return i + n if i < 0 else i



def product_segments(kind: str, i: int | None, a_shape: tuple[int, ...], j: int | None,
                      b_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Segments:
    """Row maps of products: kind is matmul, dot, inner or vdot."""
    n_out = n_rows(out_shape)
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
            seg = operand_segment(idx, shape, out_shape) if idx is not None else None
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
    return [identity(idx, n_out) if how == "identity" else all_rows(idx, n_out, "matrix product")
            for idx, how in maps.items()]


def reshape_segments(i: int, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Segments:
    """C-order reshape: output row r holds flat elements [r*m, (r+1)*m); input row s holds
    [s*k, (s+1)*k)."""
    n_in, n_out = n_rows(in_shape), n_rows(out_shape)
    size = math.prod(in_shape)
    if size == 0 or n_out == 0:
        return []
    k, m = size // n_in, size // n_out
    if m == k:
        return [identity(i, n_out)]
    if m % k == 0:  # each output row joins q whole input rows
        q = m // k
        if n_out == 1:
            return [all_rows(i, 1, "all rows in one")]
        if q > MAX_FANIN_SEGMENTS:
            raise NotUnderstood
        return [range_segment(i, j, q, n_out) for j in range(q)]
    if k % m == 0:  # each input row splits into q output rows
        if n_in == 1:
            return [broadcast(i, 0, n_out)]
        return rows_segments(i, np.arange(n_out, dtype=np.int64) // (k // m))
    r = np.arange(n_out, dtype=np.int64)
    lo, hi = r * m // k, ((r + 1) * m - 1) // k
    span = int((hi - lo).max()) + 1
    if span > MAX_FANIN_SEGMENTS:
        raise NotUnderstood
    segments: Segments = []
    for j in range(span):
        segments.extend(rows_segments(i, np.minimum(lo + j, hi)))
    return segments



def stacked_segments(call: Inputs, pieces: list[tuple[Any, int, bool]], n_out: int) -> Segments:
    """Disjoint row blocks (concatenate, stack, vstack, cat, ...): (passed piece, rows,
    keeps its rows) in output order; a piece that does not keep its rows is one output row
    holding all of them."""
    segments: Segments = []
    offset = 0
    for piece, rows, keeps in pieces:
        i = call.input_of(piece)
        if i is not None and rows:
            segments.append(range_segment(i, 0, 1, rows, offset) if keeps
                            else all_rows(i, rows, "stacked as one row", offset))
        offset += rows
    if offset != n_out:
        raise NotUnderstood
    return segments
