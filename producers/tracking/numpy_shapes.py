"""Row-map rules of NumPy's shape, indexing, joining and splitting functions:
transpose/moveaxis, reshape/ravel, squeeze, expand_dims, atleast_*d, flip, roll, repeat,
take, concatenate/vstack/hstack/column_stack/stack, split. Registered with
`registry.rule("numpy", names)`; see registry.py."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from headwater.producers.tracking.array import Call, Spec
from headwater.producers.tracking.maps import (
    NotUnderstood,
    covers_rows,
    json_axis,
    reshape_segments,
    stacked_segments,
)
from headwater.producers.tracking.moves import flat_roll_segments, id_segments, row_ids
from headwater.producers.tracking.numpy_ops import one_input
from headwater.producers.tracking.registry import rule
from headwater.producers.tracking.segments import (
    ROWS_MOVED,
    Segments,
    all_rows,
    broadcast,
    fanin_segments,
    identity,
    n_rows,
    range_segment,
    rows_segments,
)


def _axis_after(func: Any, ndim: int, *args: Any, **kwargs: Any) -> int:
    """Where input axis 0 ends up after a pure axis permutation (probed on a 0-byte view)."""
    probe = np.lib.stride_tricks.as_strided(np.zeros(1), shape=tuple(range(2, ndim + 2)),
                                            strides=(0,) * ndim)
    return list(np.shape(func(probe, *args, **kwargs))).index(2)


@rule("numpy", "transpose swapaxes moveaxis rollaxis permute_dims matrix_transpose",
      note="rows moved off axis 0 stay element-level until used: round trips are identity")
def _permute_axes(call: Call, outs: list[Any]) -> Spec:
    x = call.parg(0, "a")
    if np.ndim(x) == 0:
        return one_input(call, outs[0], lambda i, n: [identity(i, n)])
    rest = call.pargs[1:]
    moved = _axis_after(call.func, np.ndim(x), *rest, **call.pkwargs) != 0
    if moved:
        return one_input(call, outs[0], lambda i, n: [all_rows(i, n, ROWS_MOVED)])
    return one_input(call, outs[0], lambda i, n: [identity(i, n)])


@rule("numpy", "reshape ravel", note="an output row joining more than 64 input rows: not "
      "understood")
def _reshape(call: Call, outs: list[Any]) -> Spec:
    x = call.parg(0, "a")
    order = call.arg(2, "order", "C") if call.func is np.reshape else call.arg(1, "order", "C")
    in_shape, out_shape = np.shape(x), np.shape(outs[0])
    params = json.dumps({"shape": list(out_shape)})
    if order not in ("C", "A", "K") or (order != "C" and not x.flags.c_contiguous):
        # F order (or A/K of a non-C array): elements taken column by column
        i = call.input_of(call.arg(0, "a"))
        if i is None or not outs[0].size:
            return [], True, params
        ids = call.func(row_ids(i, in_shape), *call.pargs[1:], **call.pkwargs)
        return id_segments(np.asarray(ids), [i], [n_rows(in_shape)]), True, params
    return one_input(call, outs[0], lambda i, n: reshape_segments(i, in_shape, out_shape),
                      params)



@rule("numpy", "squeeze")
def _squeeze(call: Call, outs: list[Any]) -> Spec:
    x = call.parg(0, "a")
    shape = np.shape(x)
    if not shape:
        return one_input(call, outs[0], lambda i, n: [broadcast(i, 0, n)])
    axis = call.arg(1, "axis")
    row_axis_gone = shape[0] == 1 and (axis is None or covers_rows(axis, len(shape)))
    if row_axis_gone:
        return one_input(call, outs[0], lambda i, n: [broadcast(i, 0, n)])
    return one_input(call, outs[0], lambda i, n: [identity(i, n)])


@rule("numpy", "expand_dims")
def _expand_dims(call: Call, outs: list[Any]) -> Spec:
    axis = call.arg(1, "axis")
    out_nd = np.ndim(outs[0])
    if covers_rows(axis, out_nd):
        return one_input(call, outs[0], lambda i, n: [all_rows(i, n, "new leading axis")])
    return one_input(call, outs[0], lambda i, n: [identity(i, n)])


@rule("numpy", "atleast_1d atleast_2d atleast_3d")
def _atleast(call: Call, outs: list[Any]) -> Spec:
    if len(call.args) != 1:
        raise NotUnderstood
    nd = np.ndim(call.parg(0, "a"))
    if nd == 0:
        return one_input(call, outs[0], lambda i, n: [broadcast(i, 0, n)])
    if nd == 1 and call.func is not np.atleast_1d:
        return one_input(call, outs[0], lambda i, n: [all_rows(i, n, "new leading axis")])
    return one_input(call, outs[0], lambda i, n: [identity(i, n)])


@rule("numpy", "flip flipud")
def _flip(call: Call, outs: list[Any]) -> Spec:
    axis = 0 if call.func is np.flipud else call.arg(1, "axis")
    if covers_rows(axis, np.ndim(call.parg(0, "m"))):
        return one_input(call, outs[0], lambda i, n: [range_segment(i, n - 1, -1, n)],
                          json_axis(axis))
    return one_input(call, outs[0], lambda i, n: [identity(i, n)], json_axis(axis))


@rule("numpy", "fliplr")
def _fliplr(call: Call, outs: list[Any]) -> Spec:
    return one_input(call, outs[0], lambda i, n: [identity(i, n)])


@rule("numpy", "roll")
def _roll(call: Call, outs: list[Any]) -> Spec:
    shift, axis = call.arg(1, "shift"), call.arg(2, "axis")
    nd = np.ndim(call.parg(0, "a"))
    if nd == 0:
        return one_input(call, outs[0], lambda i, n: [identity(i, n)])
    if axis is None and nd > 1:  # the flattened elements move
        flat = int(np.sum(shift))
        return one_input(call, outs[0], lambda i, n: flat_roll_segments(
            i, np.shape(call.parg(0, "a")), flat), json.dumps({"shift": flat, "axis": None}))
    axes = (0,) if axis is None else (axis if isinstance(axis, (tuple, list)) else (axis,))
    shifts = np.broadcast_to(np.asarray(shift), (len(axes),))
    total = sum(int(s) for a, s in zip(axes, shifts, strict=True) if int(a) % nd == 0)
    params = json.dumps({"shift": total, "axis": 0})

    def segments(i: int, n: int) -> Segments:
        s = total % n
        if s == 0:
            return [identity(i, n)]  # out row r <- (r - s) mod n
        return [range_segment(i, n - s, 1, s), range_segment(i, 0, 1, n - s, out_start=s)]
    return one_input(call, outs[0], segments, params)


@rule("numpy", "repeat")
def _repeat(call: Call, outs: list[Any]) -> Spec:
    repeats, axis = call.parg(1, "repeats"), call.arg(2, "axis")
    shape = np.shape(call.parg(0, "a"))
    if axis is not None and not covers_rows(axis, len(shape)):
        return one_input(call, outs[0], lambda i, n: [identity(i, n)], json_axis(axis))
    if axis is None:  # flattened first: element e belongs to row e // k
        size = math.prod(shape)
        k = size // n_rows(shape) if size else 1
        base = np.arange(size, dtype=np.int64) // k
    else:
        base = np.arange(shape[0], dtype=np.int64)
    rows = np.repeat(base, repeats)
    return one_input(call, outs[0], lambda i, n: rows_segments(i, rows), json_axis(axis))


@rule("numpy", "take")
def _take(call: Call, outs: list[Any]) -> Spec:
    x = call.parg(0, "a")
    idx = np.asarray(call.parg(1, "indices"))
    axis = call.arg(2, "axis")
    mode = call.arg(4, "mode", "raise")
    shape = np.shape(x)
    call.params = json_axis(axis)
    j = call.input_of(call.arg(1, "indices"))
    if j is not None and j != call.input_of(call.arg(0, "a")):
        call.selectors.add(j)
    if idx.dtype.kind not in "iu" and idx.size:
        raise NotUnderstood
    if axis is not None and not covers_rows(axis, len(shape)):
        return one_input(call, outs[0], lambda i, n: [identity(i, n)], call.params)
    size = math.prod(shape) if axis is None else shape[0]
    idx = idx.astype(np.int64)
    if mode == "wrap":
        idx = idx % size
    elif mode == "clip":
        idx = np.clip(idx, 0, size - 1)
    else:
        idx = np.where(idx < 0, idx + size, idx)
    if axis is None:
        idx = idx // (size // n_rows(shape)) if shape else idx * 0
    if idx.ndim == 0:
        return one_input(call, outs[0], lambda i, n: [broadcast(i, int(idx), n)], call.params)
    if idx.ndim == 1:
        return one_input(call, outs[0], lambda i, n: rows_segments(i, idx), call.params)
    i = call.input_of(call.args[0]) if call.args else None
    if i is None:
        return [], True, call.params
    segments, ok = fanin_segments(i, idx, "op not understood: numpy.take")
    if not ok:
        raise NotUnderstood
    return segments, True, call.params


def _pieces(call: Call) -> tuple[list[Any], list[Any]]:
    """(arrays as passed, as plain) of concatenate-like functions' first argument."""
    passed = call.arg(0, "arrays")
    plain = call.parg(0, "arrays")
    if isinstance(passed, np.ndarray):  # an array iterates over its rows
        return list(passed), list(plain)
    return list(passed), list(plain)





def _side_by_side(call: Call, passed: list[Any], n_out: int, promote_1d: bool) -> Segments:
    segments: Segments = []
    seen: set[int] = set()
    for piece in passed:
        i = call.input_of(piece)
        if i is None or i in seen or n_out == 0:
            continue
        seen.add(i)
        nd = np.ndim(piece)
        if nd == 0:
            segments.append(broadcast(i, 0, n_out))
        elif np.shape(piece)[0] == n_out or (promote_1d and nd == 1):
            segments.append(identity(i, n_out))
        else:
            raise NotUnderstood
    return segments


@rule("numpy", "concatenate concat")
def _concatenate(call: Call, outs: list[Any]) -> Spec:
    passed, plain = _pieces(call)
    axis = call.arg(1, "axis", 0)
    n_out = n_rows(np.shape(outs[0]))
    params = json_axis(axis)
    if axis is None:  # flattened: output row e <- row of piece element
        segments: Segments = []
        offset = 0
        for piece, p in zip(passed, plain, strict=True):
            size = int(np.size(p))
            i = call.input_of(piece)
            if i is not None and size:
                k = size // n_rows(np.shape(p))
                segments.extend(rows_segments(i, np.arange(size, dtype=np.int64) // k, offset))
            offset += size
        return segments, True, params
    nd = np.ndim(plain[0])
    if int(axis) % nd == 0:
        return stacked_segments(call, [(a, np.shape(p)[0], True) for a, p in zip(
            passed, plain, strict=True)], n_out), True, params
    return _side_by_side(call, passed, n_out, False), True, params


@rule("numpy", "vstack row_stack")
def _vstack(call: Call, outs: list[Any]) -> Spec:
    passed, plain = _pieces(call)
    n_out = n_rows(np.shape(outs[0]))
    # a >= 2-D piece keeps its rows; a 1-D piece becomes one row holding all its rows
    # (elements); a 0-d piece one row
    fixed = [(a, np.shape(p)[0] if np.ndim(p) >= 2 else 1, np.ndim(p) != 1)
             for a, p in zip(passed, plain, strict=True)]
    return stacked_segments(call, fixed, n_out), True, '{"axis": 0}'


@rule("numpy", "hstack")
def _hstack(call: Call, outs: list[Any]) -> Spec:
    passed, plain = _pieces(call)
    n_out = n_rows(np.shape(outs[0]))
    if all(np.ndim(p) == 1 for p in plain):  # 1-D pieces: concatenated along rows
        return stacked_segments(call, [(a, len(p), True) for a, p in zip(
            passed, plain, strict=True)], n_out), True, '{"axis": 0}'
    if any(np.ndim(p) < 2 for p in plain):
        raise NotUnderstood
    return _side_by_side(call, passed, n_out, False), True, '{"axis": 1}'


@rule("numpy", "column_stack")
def _column_stack(call: Call, outs: list[Any]) -> Spec:
    passed, plain = _pieces(call)
    n_out = n_rows(np.shape(outs[0]))
    return _side_by_side(call, passed, n_out, True), True, '{"axis": 1}'


@rule("numpy", "stack")
def _stack(call: Call, outs: list[Any]) -> Spec:
    passed, plain = _pieces(call)
    axis = int(call.arg(1, "axis", 0))
    out_nd = np.ndim(outs[0])
    n_out = n_rows(np.shape(outs[0]))
    if axis % out_nd == 0:  # piece p becomes output row p
        return stacked_segments(call, [(a, 1, np.ndim(p) == 0) for a, p in zip(
            passed, plain, strict=True)], n_out), True, json_axis(axis)
    return _side_by_side(call, passed, n_out, False), True, json_axis(axis)


@rule("numpy", "split array_split vsplit hsplit")
def _split(call: Call, outs: list[Any]) -> list[Spec]:
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
    if not covers_rows(axis, len(shape)):
        for part, out in enumerate(outs):
            n = n_rows(np.shape(out))
            specs.append(([identity(i, n)] if i is not None and n else [], True,
                          json.dumps({"axis": axis, "part": part})))
        return specs
    offset = 0
    for part, out in enumerate(outs):
        n = np.shape(out)[0]
        specs.append(([range_segment(i, offset, 1, n)] if i is not None and n else [], True,
                      json.dumps({"axis": 0, "part": part, "start": offset})))
        offset += n
    return specs

