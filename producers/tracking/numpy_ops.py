"""Row-map rules of NumPy functions (`__array_function__`): reductions, quantiles,
cumulative ops, sorts, diff, same-shape functions, elementwise functions and products.
Shape, indexing and joining functions: numpy_shapes.py. Each rule is registered with
`registry.rule("numpy", names)`; see registry.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from headwater.producers.tracking.array import UNTRACKED, Call, Spec
from headwater.producers.tracking.maps import (
    NotUnderstood,
    covers_rows,
    json_axis,
    operand_segment,
    product_segments,
    reduction_segments,
)
from headwater.producers.tracking.registry import rule
from headwater.producers.tracking.segments import (
    REDUCTION,
    Segments,
    all_rows,
    identity,
    n_rows,
    range_segment,
)


def one_input(call: Call, out: Any, seg_fn: Callable[[int, int], Segments],
               params: str = "{}", understood: bool = True) -> Spec:
    i = call.input_of(call.args[0]) if call.args else None
    n_out = n_rows(np.shape(out))
    if i is None or n_out == 0:
        return [], understood, params
    return seg_fn(i, n_out), understood, params


_REDUCTIONS = """sum prod mean std var min max amin amax any all argmin argmax median ptp
nansum nanprod nanmean nanstd nanvar nanmin nanmax nanargmin nanargmax nanmedian
count_nonzero"""


_OVER_ROWS = "over rows (axis 0 or None); other axes: exact"


@rule("numpy", _REDUCTIONS, precision="aggregate", note=_OVER_ROWS)
def _reduction(call: Call, outs: list[Any]) -> Spec:
    axis = call.arg(1, "axis")
    x = call.parg(0, "a")
    n_out = n_rows(np.shape(outs[0]))
    i = call.input_of(call.arg(0, "a"))
    if i is None:
        return [], True, json_axis(axis)
    segments, ok = reduction_segments(i, x, axis, n_out)
    return segments, ok, json_axis(axis)


@rule("numpy", "average", precision="aggregate", note=_OVER_ROWS)
def _average(call: Call, outs: list[Any]) -> Spec:
    segments, ok, params = _reduction(call, outs)
    w = call.arg(3, "weights")
    j = call.input_of(w)
    n_out = n_rows(np.shape(outs[0]))
    if j is not None and n_out:
        x = call.parg(0, "a")
        axis = call.arg(1, "axis")
        if covers_rows(axis, np.ndim(x)) or np.shape(w) != np.shape(x):
            segments.append(all_rows(j, n_out, "weights"))
        else:
            segments.append(identity(j, n_out))
    return segments, ok, params


@rule("numpy", "percentile quantile nanpercentile nanquantile", precision="aggregate",
      note="over rows, or several q")
def _quantile(call: Call, outs: list[Any]) -> Spec:
    axis = call.arg(2, "axis")
    i = call.input_of(call.arg(0, "a"))
    n_out = n_rows(np.shape(outs[0]))
    if i is None or n_out == 0:
        return [], True, json_axis(axis)
    if np.ndim(call.parg(1, "q")) > 0:  # output axis 0 is q: each row holds every row
        return [all_rows(i, n_out, REDUCTION)], True, json_axis(axis)
    segments, ok = reduction_segments(i, call.parg(0, "a"), axis, n_out)
    return segments, ok, json_axis(axis)


@rule("numpy", "cumsum cumprod nancumsum nancumprod", precision="not understood",
      note="along rows (a prefix of rows); other axes: exact")
def _cumulative(call: Call, outs: list[Any]) -> Spec:
    axis = call.arg(1, "axis")
    if covers_rows(axis, np.ndim(call.parg(0, "a"))):
        raise NotUnderstood  # a prefix over rows: recorded as all rows
    return one_input(call, outs[0], lambda i, n: [identity(i, n)], json_axis(axis))


@rule("numpy", "sort argsort", precision="aggregate", note="along rows")
def _sort(call: Call, outs: list[Any]) -> Spec:
    axis = call.arg(1, "axis", -1)
    if covers_rows(axis, np.ndim(call.parg(0, "a"))):
        return one_input(call, outs[0], lambda i, n: [all_rows(i, n, "sorted along rows")],
                          json_axis(axis))
    return one_input(call, outs[0], lambda i, n: [identity(i, n)], json_axis(axis))


@rule("numpy", "diff")
def _diff(call: Call, outs: list[Any]) -> Spec:
    order = int(call.arg(1, "n", 1))
    axis = call.arg(2, "axis", -1)
    x = call.parg(0, "a")
    if call.kwargs.get("prepend") is not None or call.kwargs.get("append") is not None:
        raise NotUnderstood
    if np.ndim(x) and int(axis) % np.ndim(x) == 0:  # row r <- rows r .. r + n
        return one_input(call, outs[0], lambda i, n: [range_segment(i, j, 1, n)
                                                       for j in range(order + 1)],
                          json.dumps({"n": order, "axis": int(axis)}))
    return one_input(call, outs[0], lambda i, n: [identity(i, n)], json_axis(axis))


@rule("numpy", """copy asanyarray ascontiguousarray asfortranarray nan_to_num real imag
      conj around round round_ fix isnan isfinite isinf iscomplex isreal
      sinc i0 angle real_if_close""")
def _same_shape(call: Call, outs: list[Any]) -> Spec:
    shape = np.shape(call.parg(0, "a"))
    n_out = n_rows(np.shape(outs[0]))
    if n_rows(shape) != n_out or len(shape) != np.ndim(outs[0]):
        raise NotUnderstood
    return one_input(call, outs[0], lambda i, n: [identity(i, n)])


@rule("numpy", "where clip broadcast_to isclose")
def _elementwise_function(call: Call, outs: list[Any]) -> Spec | None:
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
        seg = operand_segment(i, a.shape, out_shape)
        if seg is not None:
            segments.append(seg)
    return segments, True, "{}"


@rule("numpy", "dot matmul inner vdot", precision="aggregate",
      note="all rows of the operand whose rows are summed over")
def _dot(call: Call, outs: list[Any]) -> Spec:
    a, b = call.arg(0, "a"), call.arg(1, "b")
    return product_segments(call.func.__name__, call.input_of(a), np.shape(call.parg(0, "a")),
                             call.input_of(b), np.shape(call.parg(1, "b")),
                             np.shape(outs[0])), True, "{}"



# Functions whose result does not depend on the array's values: returned untracked.
rule("numpy", """zeros_like ones_like empty_like full_like shape ndim size result_type
     may_share_memory shares_memory""")(UNTRACKED)
