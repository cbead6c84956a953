"""The tracked array type: NumPy's protocols (`__array_ufunc__`, `__array_function__`,
indexing) run each op on plain arrays and record it through the array's Tracker; the
row maps of NumPy functions come from the rules registered in the op registry
(numpy_ops.py, numpy_shapes.py). See the package docstring for what is recorded."""

from __future__ import annotations

import inspect
import json
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from headwater.errors import LineageLost
from headwater.producers.tracking import pending, registry
from headwater.producers.tracking.maps import (
    NotUnderstood,
    covers_rows,
    elementwise_segments,
    getitem_segments,
    json_axis,
    not_understood,
    operand_segment,
    product_segments,
    reduction_segments,
)
from headwater.producers.tracking.pending import Pending
from headwater.producers.tracking.segments import (
    Segments,
    all_rows,
    identity,
    n_rows,
)
from headwater.producers.tracking.writes import setitem_segments

if TYPE_CHECKING:
    from headwater.producers.tracking.tracker import Tracker

Spec = tuple[Segments, bool, str]  # (segments, understood, params_json) of one output
_RULES = registry.RULES["numpy"]


def UNTRACKED(call: Call, outs: list[Any]) -> None:  # noqa: N802 - a marker
    """Functions whose result does not depend on the array's values (zeros_like, shape):
    returned untracked."""



class TrackedArray(np.ndarray):
    """An ndarray whose rows (axis 0) are a lineage node; see the module docstring."""

    _hw_node: str | None = None
    _hw_tracker: Tracker | None = None
    _hw_roots: tuple[str, ...] = ()  # recorded nodes this array came from, when _hw_node
    _hw_why: str = ""                # is None (an unrecorded derivation) and why
    _hw_alias: Any = None            # weakref to the tracked array whose memory this is
    _hw_pending: Pending | None = None  # rows on another axis: element ids (pending.py)
    _hw_scratch: Tracker | None = None  # np.empty_like of a tracked array: tracked once
                                         # tracked rows are written into it

    def __array_finalize__(self, obj: Any) -> None:
        # Only views/copies NumPy makes from a tracked array outside the wrappers get here
        # with a tracked parent; the wrappers wrap plain arrays.
        if isinstance(obj, TrackedArray) and obj._hw_tracker is not None:
            self._hw_tracker = obj._hw_tracker
            self._hw_node = None
            parent = obj._hw_node if obj._hw_pending is None else maybe_node(obj)
            self._hw_roots = (parent,) if parent is not None else obj._hw_roots
            self._hw_why = obj._hw_why or "ndarray method or view not intercepted"

    # -- identity ------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """The lineage node holding this array's rows (recorded now if it was deferred)."""
        node = maybe_node(self)
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
                node = a._hw_node
                if node is None:
                    if a._hw_pending is not None:  # rows on another axis (pending.py)
                        out = _pending_elementwise(
                            tracker, result, shape, [b for _, b in tracked],
                            _UFUNC_NAMES.get(ufunc) or f"numpy.{ufunc.__name__}")
                        if out is not None:
                            return out
                    node = node_required(a)
                if node not in nodes:
                    seg = operand_segment(len(nodes), a.shape, shape)
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
        nodes, index = input_nodes([a for _, a in tracked])
        first = result[0] if isinstance(result, tuple) else result
        shape = np.shape(first)
        n_out = n_rows(shape)
        understood = True
        params = "{}"
        if method == "__call__":
            if name == "matmul":
                segments = product_segments(
                    "matmul", index.get(id(inputs[0])), np.shape(plain[0]),
                    index.get(id(inputs[1])), np.shape(plain[1]), shape)
            else:
                segments = elementwise_segments(index, tracked, shape)
        elif method in ("reduce", "accumulate"):
            axis = kwargs.get("axis", 0)
            params = json_axis(axis)
            i = index.get(id(inputs[0])) if tracked and tracked[0][0] == 0 else None
            if i is None:
                segments = []
            elif method == "reduce" or not covers_rows(axis, np.ndim(plain[0])):
                segments, understood = reduction_segments(i, plain[0], axis, n_out)
            else:  # a prefix over rows: recorded as all rows
                segments = not_understood(1, n_out, f"{op_name} over rows (cumulative)")
                understood = False
        else:
            segments, understood = not_understood(len(nodes), n_out, op_name), False
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
        handler = _RULES.get(func)
        if tracker is None or tracker._off or handler is UNTRACKED:
            if func is np.may_share_memory and tracker is not None and not tracker._off:
                _permutation_check(args)
            result = func(*pargs, **pkwargs)
            if func is np.empty_like and tracker is not None and not tracker._off and \
                    type(result) is np.ndarray:  # a bounce buffer NumPy's shuffles fill
                scratch = result.view(TrackedArray)
                scratch._hw_scratch = tracker
                return scratch
            return result
        call = Call(tracker, func, args, kwargs, pargs, pkwargs, found)
        result = func(*pargs, **pkwargs)
        if func is np.copyto:
            record_copyto(call)
            return result
        if tracker._batch:
            return tracker._derive(result, call.tracked, call.op_name, ())
        if func in _MOVES and type(result) is np.ndarray:
            out = _pending_move(call, result)
            if out is not None:
                return out
        outs = _array_outputs(result)
        if not outs:
            return result  # not an array (a bool, a shape): leaves tracking
        if handler is None:
            spec: Any = None
        else:
            try:
                spec = handler(call, outs)
            except NotUnderstood:
                spec = None
        if spec is None:
            spec = [(not_understood(len(call.nodes), n_rows(np.shape(o)), call.op_name), False,
                     call.params) for o in outs]
        elif isinstance(spec, tuple):
            spec = [spec] * len(outs)
        wrapped = [tracker._record(o, call.op_name, params, call.nodes,
                                   *call.complete(segs, ok, n_rows(np.shape(o))))
                   for o, (segs, ok, params) in zip(outs, spec, strict=True)]
        if isinstance(result, tuple):  # named tuples too (np.linalg results)
            return type(result)(*wrapped) if hasattr(result, "_fields") else tuple(wrapped)
        if isinstance(result, list):
            return wrapped
        mark_alias(wrapped[0], call.tracked)
        return wrapped[0]

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
        if self._hw_pending is not None and not selectors and isinstance(result, np.ndarray):
            moved = pending.apply(self._hw_pending, lambda ids: ids[pkey], result.shape,
                                  "ndarray.__getitem__")
            return _pending_result(tracker, result, moved)
        nodes, index = input_nodes([self, *selectors])
        n_out = n_rows(np.shape(result))
        try:
            segments, params = getitem_segments(pkey, self.shape, n_out)
            understood = True
        except NotUnderstood:
            segments = [all_rows(0, n_out, "op not understood: ndarray.__getitem__ with this key")]
            params, understood = '{"key": "not understood"}', False
        out = tracker._record(result, "ndarray.__getitem__", params, nodes, segments,
                              understood)
        mark_alias(out, (self,))
        return out

    def __setitem__(self, key: Any, value: Any) -> None:
        tracker = self._hw_tracker or self._hw_scratch
        selectors: list[TrackedArray] = []
        pkey = _strip(key, selectors)
        plain_value = value.view(np.ndarray) if isinstance(value, TrackedArray) else value
        self.view(np.ndarray)[pkey] = plain_value
        if tracker is None or tracker._off:
            return
        tracked_value = isinstance(value, TrackedArray) and value._hw_tracker is not None
        if self._hw_tracker is None:  # a scratch buffer (np.empty_like of a tracked array)
            if not tracked_value:
                return  # constants in, still untracked
            self._hw_tracker, self._hw_scratch = tracker, None
        sources = [self] if (self._hw_node or self._hw_roots
                             or self._hw_pending is not None) else []
        if tracked_value:
            sources.append(value)
        if tracker._batch:
            tracker._derive(np.ndarray.view(self, np.ndarray), sources + selectors,
                            "ndarray.__setitem__", (self,))
            _write_through(self)
            return
        nodes, index = input_nodes(sources + selectors)
        own = index.get(id(self)) if sources and sources[0] is self else None
        val = index.get(id(value)) if tracked_value else None
        n = n_rows(self.shape)
        try:
            segments = setitem_segments(pkey, self.shape, own, val, np.shape(value))
            understood, params = True, '{"key": "rows"}'
        except NotUnderstood:  # which rows the value went to: all of them, conservatively
            segments = [identity(own, n)] if own is not None and n else []
            if val is not None and n:
                segments.append(all_rows(val, n, "op not understood: ndarray.__setitem__ of "
                                                  "tracked values with this key (all rows)"))
            understood, params = val is None, '{"key": "not understood"}'
        tracker._emit_result(self.view(np.ndarray), "ndarray.__setitem__", params, nodes,
                             segments, understood, (self,))
        _write_through(self)

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
        n = n_rows(self.shape)
        node = node_required(self)
        mixed = covers_rows(axis, self.ndim)
        segments = [all_rows(0, n, "sorted along rows") if mixed else identity(0, n)] if n else []
        tracker._emit_result(self.view(np.ndarray), op_name, json_axis(axis), [node],
                             segments, True, (self,))

    def astype(self, dtype: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        result = self.view(np.ndarray).astype(dtype, *args, **kwargs)
        tracker = self._hw_tracker
        if tracker is None or tracker._off:
            return result
        if tracker._batch:
            return tracker._derive(result, [self], "ndarray.astype", ())
        n = n_rows(self.shape)
        return tracker._record(result, "ndarray.astype", json.dumps({"dtype": str(dtype)}),
                               [node_required(self)], [identity(0, n)] if n else [], True)


def _pending_result(tracker: Tracker, result: np.ndarray, p: Pending) -> TrackedArray:
    out = result.view(TrackedArray)
    out._hw_tracker = tracker
    out._hw_pending = p
    return out


def _settle(arr: TrackedArray) -> str:
    """Record a pending stretch as one op (pending.py) and give the array its node."""
    p = arr._hw_pending
    tracker = arr._hw_tracker
    assert p is not None and tracker is not None
    name, params, segments, understood = pending.settle_segments(p, arr.shape)
    node = tracker.new_node_id()
    arr._hw_pending = None
    tracker._op(name, params, p.nodes, node, arr.shape, segments, understood)
    arr._hw_node = node
    return node


def _pending_elementwise(tracker: Tracker, result: Any, shape: tuple[int, ...],
                         operands: list[TrackedArray], op: str) -> TrackedArray | None:
    if not isinstance(result, np.ndarray):
        result = np.asarray(result)
    seen: dict[int, TrackedArray] = {id(a): a for a in operands}
    merged = pending.merge([pending.ids_of(a, node_required) for a in seen.values()],
                           shape, op)
    return None if merged is None else _pending_result(tracker, result, merged)


def _rows_axis_after(func: Any, ndim: int, args: Any, kwargs: Any) -> int:
    """Where input axis 0 ends up after an axis permutation (probed on a 0-byte view)."""
    probe = np.lib.stride_tricks.as_strided(np.zeros(1), shape=tuple(range(2, ndim + 2)),
                                            strides=(0,) * ndim)
    return list(np.shape(func(probe, *args, **kwargs))).index(2)


def _pending_move(call: Call, result: np.ndarray) -> TrackedArray | None:
    """A move on a pending array stays pending; a permutation moving rows off axis 0
    starts pending. None: record as usual."""
    if len(call.tracked) != 1 or not call.args or call.args[0] is not call.tracked[0]:
        return None
    x = call.tracked[0]
    rest, kwargs = call.pargs[1:], call.pkwargs
    starts = x._hw_pending is None
    if starts:
        if call.func not in _PERMUTES or x.ndim < 2 or result.ndim < 2:
            return None
        try:
            if _rows_axis_after(call.func, x.ndim, rest, kwargs) == 0:
                return None
        except (ValueError, TypeError):
            return None
    try:
        moved = pending.apply(pending.ids_of(x, node_required),
                              lambda ids: call.func(ids, *rest, **kwargs), result.shape,
                              call.op_name)
    except (NotUnderstood, ValueError, TypeError):
        return None
    moved.moved_only = starts
    return _pending_result(call.tracker, result, moved)


_PERMUTES = {np.transpose, np.swapaxes, np.moveaxis, np.rollaxis,
             *[getattr(np, n) for n in ("permute_dims", "matrix_transpose") if hasattr(np, n)]}
_MOVES = _PERMUTES | {np.reshape, np.ravel, np.squeeze, np.expand_dims, np.copy,
                      np.ascontiguousarray, np.asfortranarray}


def _permutation_check(args: Any) -> None:
    """`rng.permutation(x)` copies a 1-D tracked x into a plain array (np.asarray), asks
    np.may_share_memory(copy, x) and shuffles the copy: the one call the tracker sees.
    Warn: the permuted rows leave tracking (2-D x passes no hook at all; documented)."""
    if len(args) >= 2 and type(args[0]) is np.ndarray and isinstance(args[1], TrackedArray) \
            and args[0].shape == args[1].shape and args[1].ndim == 1:
        warnings.warn(LineageLost(
            "a tracked array was copied out of tracking (rng.permutation(x)?): the result "
            "has no lineage; use x[rng.permutation(len(x))] or tracker.shuffle(x, seed)"),
            stacklevel=3)


def _write_through(arr: TrackedArray) -> None:
    """A write into an alias (a view with the same memory, shape and strides, e.g.
    `np.swapaxes(x, 0, 0)`, `x[:]`, as NumPy's shuffles make) re-binds the array it
    aliases to the same node: x's rows moved too."""
    seen = 0
    ref = arr._hw_alias
    while ref is not None and seen < 64:
        base = ref()
        if base is None or base._hw_tracker is not arr._hw_tracker:
            return
        base._hw_node, base._hw_roots, base._hw_why = arr._hw_node, arr._hw_roots, arr._hw_why
        base._hw_pending = None
        ref, seen = base._hw_alias, seen + 1


def mark_alias(out: Any, inputs: Sequence[Any]) -> None:
    """Remember that `out` aliases one of `inputs` (same memory, shape and strides)."""
    if not isinstance(out, TrackedArray) or out.base is None:
        return
    for a in inputs:  # cheap checks first: this runs on every recorded view
        if (isinstance(a, TrackedArray) and a.shape == out.shape and a.strides == out.strides
                and a.dtype == out.dtype
                and a.__array_interface__["data"][0] == out.__array_interface__["data"][0]):
            out._hw_alias = weakref.ref(a)
            return


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
    if x._hw_pending is not None and axis is not None and isinstance(result, np.ndarray):
        axes = axis if isinstance(axis, tuple) else (axis,)
        keep, name = bool(kwargs.get("keepdims")), _FAST_REDUCTIONS[func]
        reduced = pending.reduce_axes(x._hw_pending, axes, keep, name)
        if reduced is not None and reduced.ids.shape[:-1] == result.shape:
            return _pending_result(tracker, result, reduced)
        # wide (a mean over the original rows): recorded now, x stays pending
        whole = pending.reduce_axes(x._hw_pending, axes, keep, name, limit=2**62)
        if whole is not None and whole.ids.shape[:-1] == result.shape:
            op, params, segments, ok = pending.settle_segments(whole, result.shape)
            return tracker._record(result, op, params, whole.nodes, segments, ok)
    node = x._hw_node or node_required(x)
    segments, understood = reduction_segments(0, x.view(np.ndarray), axis,
                                               n_rows(np.shape(result)))
    return tracker._record(result, _FAST_REDUCTIONS[func], json_axis(axis), [node], segments,
                           understood)


# ndarray methods that NumPy implements with several ufunc calls (x.std(): seven), or
# outside the protocols: routed through the NumPy function, recorded as one op.
for _name in ("sum", "mean", "std", "var", "min", "max", "prod", "any", "all", "argmin",
              "argmax", "cumsum", "cumprod", "clip", "round", "dot", "take", "repeat",
              "squeeze", "swapaxes", "argsort", "ravel"):
    setattr(TrackedArray, _name, _routed(getattr(np, _name)))


def is_array(x: Any) -> bool:
    return isinstance(x, (np.ndarray, np.generic))


def maybe_node(arr: TrackedArray) -> str | None:
    node = arr._hw_node
    if node is not None:
        return node
    if arr._hw_pending is not None and arr._hw_tracker is not None:
        return _settle(arr)
    if arr._hw_roots and arr._hw_tracker is not None:
        return arr._hw_tracker._collapse(arr)
    return None


def node_required(arr: TrackedArray) -> str:
    node = maybe_node(arr)
    if node is None:
        raise ValueError("array is not tracked")
    return node


def input_nodes(arrays: Sequence[Any]) -> tuple[list[str], dict[int, int]]:
    """Distinct input node ids, and id(array) -> index into them."""
    nodes: list[str] = []
    index: dict[int, int] = {}
    where: dict[str, int] = {}
    for a in arrays:
        node = maybe_node(a)
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


def _array_outputs(result: Any) -> list[Any]:
    if isinstance(result, (tuple, list)):
        return list(result) if result and all(is_array(r) for r in result) else []
    return [result] if is_array(result) else []


_UFUNC_NAMES = {u: f"numpy.{u.__name__}" for u in vars(np).values() if isinstance(u, np.ufunc)}



# ---------------------------------------------------------------------------------------
# One NumPy function call, as the rules of numpy_ops.py and numpy_shapes.py see it


class Call:
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
            if i is not None and i not in mapped and n_rows(a.shape) and n_out:
                segments = [*segments, all_rows(i, n_out, f"op not understood: {self.op_name} "
                                                      "(input not mapped)")]
                understood = False
                mapped.add(i)
        return segments, understood

    def _resolve(self) -> None:
        if self._nodes is None:
            self._nodes, self._index = input_nodes(self.tracked)

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



def record_copyto(call: Call) -> None:
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
        node = node_required(arr)
        if node in nodes:
            continue
        seg = operand_segment(len(nodes), arr.shape, dst.shape)
        nodes.append(node)
        if seg is not None:
            segments.append(seg)
    tracker._emit_result(dst.view(np.ndarray), "numpy.copyto", "{}", nodes, segments, True,
                         (dst,))
