"""Row-map rules of NumPy functions that only move values: tile, delete, insert, append,
pad (copying modes), compress, take_along_axis, resize, triu/tril, sliding_window_view;
their maps come from running the call on row ids (moves.py), so they are exact whatever
the arguments. Registered with `registry.rule("numpy", names)`; see registry.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from headwater.producers.tracking.array import Call, Spec, TrackedArray
from headwater.producers.tracking.maps import NotUnderstood
from headwater.producers.tracking.moves import id_segments, probe, tile_segments, window_segments
from headwater.producers.tracking.registry import rule
from headwater.producers.tracking.segments import n_rows

# pad modes whose values are copies of input elements (or constants)
_COPYING_PADS = {"constant", "edge", "wrap", "reflect", "symmetric", "empty"}


def _swap(passed: Any, plain: Any, ids_of: Callable[[int, tuple[int, ...]], np.ndarray],
          call: Call) -> Any:
    """`plain` with each tracked data array (as passed) replaced by its ids."""
    if isinstance(passed, TrackedArray):
        i = call.input_of(passed)
        return plain if i is None else ids_of(i, np.shape(plain))
    if isinstance(passed, (list, tuple)) and not isinstance(plain, np.ndarray):
        return type(plain)(_swap(a, b, ids_of, call) for a, b in zip(passed, plain,
                                                                     strict=True))
    return plain


def probed(call: Call, outs: list[Any], data: tuple[tuple[int, str], ...],
           made_up: bool = True, params: str = "{}") -> Spec:
    """The call's map by probing: `data` are the (position, keyword) of the arguments
    whose values move; every other tracked argument only selects (indices, masks)."""
    data_ids = {id(call.arg(pos, name)) for pos, name in data}
    for a in call.tracked:
        if id(a) not in data_ids and call.input_of(a) is not None:
            call.selectors.add(call.input_of(a))  # type: ignore[arg-type]

    def run(ids_of: Callable[[int, tuple[int, ...]], np.ndarray]) -> Any:
        args = list(call.pargs)
        kwargs = dict(call.pkwargs)
        for pos, name in data:
            if pos < len(args):
                args[pos] = _swap(call.args[pos], args[pos], ids_of, call)
            elif name in kwargs:
                kwargs[name] = _swap(call.kwargs[name], kwargs[name], ids_of, call)
        return call.func(*args, **kwargs)

    ids = probe(run, made_up)
    if ids.shape != np.shape(outs[0]):
        raise NotUnderstood
    inputs = sorted({i for pos, name in data
                     for i in [call.input_of(call.arg(pos, name))] if i is not None})
    rows = [n_rows(np.shape(_plain_of(call, i))) for i in inputs]
    return id_segments(ids, inputs, rows), True, params


def _plain_of(call: Call, i: int) -> Any:
    for a in call.tracked:
        if call.input_of(a) == i:
            return a
    raise NotUnderstood


@rule("numpy", "tile")
def _tile(call: Call, outs: list[Any]) -> Spec:
    reps = call.parg(1, "reps")
    reps = [int(r) for r in np.atleast_1d(reps)]
    i = call.input_of(call.arg(0, "A"))
    n_out = n_rows(np.shape(outs[0]))
    if i is None:
        return [], True, "{}"
    return (tile_segments(i, np.shape(call.parg(0, "A")), reps, n_out), True,
            json.dumps({"reps": reps}))


@rule("numpy", "delete")
def _delete(call: Call, outs: list[Any]) -> Spec:
    return probed(call, outs, ((0, "arr"),), made_up=False)


@rule("numpy", "insert")
def _insert(call: Call, outs: list[Any]) -> Spec:
    return probed(call, outs, ((0, "arr"), (2, "values")))


@rule("numpy", "append")
def _append(call: Call, outs: list[Any]) -> Spec:
    return probed(call, outs, ((0, "arr"), (1, "values")))


@rule("numpy", "pad", note="computed modes (mean, median, linear_ramp, a function): not "
      "understood")
def _pad(call: Call, outs: list[Any]) -> Spec | None:
    mode = call.arg(2, "mode", "constant")
    if not isinstance(mode, str) or mode not in _COPYING_PADS:
        return None  # computed pads (mean, linear_ramp, a function): not understood
    return probed(call, outs, ((0, "array"),), params=json.dumps({"mode": mode}))


@rule("numpy", "compress")
def _compress(call: Call, outs: list[Any]) -> Spec:
    return probed(call, outs, ((1, "a"),), made_up=False)


@rule("numpy", "take_along_axis")
def _take_along_axis(call: Call, outs: list[Any]) -> Spec:
    return probed(call, outs, ((0, "arr"),), made_up=False)


@rule("numpy", "resize")
def _resize(call: Call, outs: list[Any]) -> Spec:
    return probed(call, outs, ((0, "a"),))  # a 0-size input gives zeros


@rule("numpy", "triu tril")
def _triangle(call: Call, outs: list[Any]) -> Spec:
    return probed(call, outs, ((0, "m"),))


@rule("numpy", "sliding_window_view", spaces="stride_tricks")
def _sliding_window_view(call: Call, outs: list[Any]) -> Spec:
    x = call.parg(0, "x")
    window = call.arg(1, "window_shape")
    axis = call.arg(2, "axis")
    i = call.input_of(call.arg(0, "x"))
    if i is None:
        return [], True, "{}"
    n_out = n_rows(np.shape(outs[0]))
    if axis is None or np.ndim(axis) or np.ndim(window):
        return probed(call, outs, ((0, "x"),), made_up=False)
    if int(axis) % np.ndim(x) == 0:  # windows over rows: window w holds rows w .. w+size-1
        return window_segments(i, n_out, int(window), 1), True, json.dumps(
            {"window": int(window), "axis": 0})
    return probed(call, outs, ((0, "x"),), made_up=False)
