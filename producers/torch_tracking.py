"""Tracked torch tensors: every op records an `OpRecorded` with its row mapping.

    tracker = Tracker(publisher.publish)                  # the NumPy tracker, shared
    x = track_tensor(tracker, features, source=registered) # a TrackedTensor; dim 0 = rows
    loader = tracked_loader(tracker, TensorDataset(x, y), batch_size=32, shuffle=True, seed=0)
    for xb, yb in loader:                                 # one headwater.batch op per tensor
        loss = F.cross_entropy(model(xb), yb)             # one OpRecorded per torch op
        loss.backward()                                   # autograd works as usual
        keys = row_keys(xb)                               # RowKeys for GradientBatch

A `TrackedTensor` is a `torch.Tensor` subclass carrying a lineage node id and its
`Tracker` (producers/tracking.py: node ids, granularity, code_version and the event
encoding are shared with tracked NumPy arrays). torch hands every function and method
call that sees one to `__torch_function__`, which runs the op on plain tensors (subclass
dispatch disabled, so autograd and devices behave as without tracking), wraps tensor
results as new nodes and emits one event whose row map says, for each output row (index on
dim 0), which input rows it depends on. The row-map builders are tracking.py's.

Inputs: tracked tensors only. Model parameters, buffers and other plain tensors are
constants of the op (as untracked NumPy arrays are): a model's forward pass maps rows of
its input only. Index tensors of `x[idx]`, `index_select`, `gather`, `masked_select`, and
reference tensors (`x.to(y)`, `x.type_as(y)`, `x.expand_as(y)`, `x.view_as(y)`) are
listed in `input_node_ids` without row segments: they select or shape, not give values.

Understood ops (row maps exact): elementwise ops, Tensor operators and nn.functional
activations/dropouts with broadcasting; reductions (`sum`, `mean`, `std`, `max`, `argmax`,
`logsumexp`, `norm`, ...) over dim 0 / None (all rows) or other dims (identity); losses
(`reduction="none"`: row-aligned; mean/sum: all rows); `softmax`/`log_softmax`/
`normalize`/`sort`/`topk` along dims (along rows: all rows); `__getitem__` with slices, ints,
int tensors/lists, bool masks, None/Ellipsis; `index_select`, `gather`, `take`,
`take_along_dim`, `masked_select`, `nonzero`/`argwhere`, `where`; `cat`/`stack`/
`vstack`/`hstack`/`column_stack`/`dstack`; `split`/`chunk`/`tensor_split`/`unbind`/
`vsplit`/`hsplit`; `reshape`/`view`/`flatten`/`unflatten`/`squeeze`/`unsqueeze` (C-order,
like NumPy's); `expand`/`broadcast_to`; `permute`/`transpose`/`t`/`T`/`mT`/`movedim`
(dim 0 stays: identity; moved: all rows); `flip`, `roll`, `repeat`, `tile`,
`repeat_interleave`, `diff`; `matmul`/`mm`/`bmm`/`mv`/`dot`/`outer`/`addmm`/`cdist`/
`F.linear` (rows of the left operand, all rows of the right); batched nn ops (`conv*`,
pools, `layer_norm`/`group_norm`, `embedding`, `one_hot`, `pad`, `interpolate`,
`scaled_dot_product_attention`; `batch_norm` in training uses batch statistics: all rows);
conversions `.to()`/`.float()`/`.detach()`/`.clone()`/`.contiguous()`/`.cpu()`
(identity). Anything else is recorded honestly: `understood=False`, every output row
depending on all rows of every tracked input, reason "op not understood: <name>"; the
output stays tracked. Cumulative ops over rows are recorded the same way.

In place: `x.add_(y)`, `x += y`, `x[i] = v`, `F.relu(x, inplace=True)`, `out=` record an
op and re-bind `x` to the new node. Ops that return their input unchanged (`x.float()` on
a float tensor) return it as it is: same object, same node, no event.

Granularity (the tracker's): "every_op" as above; "batch": only dataset-level ops
(`tracked_loader` batches, `split`, `shuffle`) are recorded, torch ops only remember which
recorded nodes they came from (one `headwater.unrecorded_ops` event when a dataset op
needs such a node); "off": `track_tensor` returns plain tensors, nothing is recorded.

Not seen (documented limits, as for NumPy): code that reads a tracked tensor's memory
outside torch's function protocol (`torch.from_numpy(x.numpy())`, `x.data_ptr()`, custom
C++/CUDA kernels); writes through a view into a tracked tensor's storage (the base keeps
its node); `x.grad` is returned untracked (gradients are captured elsewhere).
"""

from __future__ import annotations

import inspect
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    TensorDataset,
    default_collate,
)

from headwater.producers import tracking
from headwater.producers.tracking import (
    BROADCAST,
    REDUCTION,
    ROWS_MOVED,
    Segments,
    TrackedArray,
    Tracker,
    _all,
    _broadcast,
    _fanin_segments,
    _getitem_segments,
    _identity,
    _json_axis,
    _not_understood,
    _NotUnderstood,
    _operand_segment,
    _product_segments,
    _range,
    _reduction_segments,
    _reshape_segments,
    _rows,
    rows_segments,
)
from headwater.v1 import events_pb2

_EVERY_OP = events_pb2.OpRecorded.EVERY_OP
_BATCH_LEVEL = events_pb2.OpRecorded.BATCH_LEVEL
_NoSubclass = torch._C.DisableTorchFunctionSubclass
Tensor = torch.Tensor
Spec = tuple[Segments, bool, str]  # (segments, understood, params_json) of one output
_DERIVED = "ops not recorded at batch granularity"


# ---------------------------------------------------------------------------------------
# The tensor type


class TrackedTensor(torch.Tensor):
    """A tensor whose rows (dim 0) are a lineage node; see the module docstring."""

    _hw_node: str | None = None
    _hw_tracker: Tracker | None = None
    _hw_roots: tuple[str, ...] = ()  # recorded nodes this tensor came from when _hw_node
    _hw_why: str = ""                # is None (batch granularity), and why

    @property
    def node_id(self) -> str:
        """The lineage node holding this tensor's rows (recorded now if it was deferred)."""
        return node_of(self)

    @property
    def tracker(self) -> Tracker | None:
        return self._hw_tracker

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]
        with _NoSubclass():
            plain = repr(self.as_subclass(Tensor))
        node = self._hw_node or (f"<derived from {', '.join(self._hw_roots)}>"
                                 if self._hw_roots else None)
        return f"TrackedTensor({plain}, node_id={node!r})"

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        for t in types:  # torch.Tensor itself is listed when plain tensors take part
            if not issubclass(cls, t):
                return NotImplemented
        return _dispatch(func, args, kwargs or {})


def _dispatch(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    rule = _RULES.get(func, _unknown)
    with _NoSubclass():
        if rule is _PASS:
            return func(*args, **kwargs)
        if rule is _SPECIAL:
            return _SPECIALS[func](func, args, kwargs)
        result = func(*args, **kwargs)
        rtype = type(result)
        if rtype is Tensor:
            fresh = sys.getrefcount(result) == 2  # held by `result` alone: re-classable
            if rule is _elementwise and (not kwargs or _plain_kwargs(kwargs)):
                return _record_elementwise(func, args, result, fresh)
            outs: list[Any] = [_Fresh(result) if fresh else result]
        elif rtype is TrackedTensor:  # an input came back: written in place, or a no-op
            return _returned_input(func, rule, args, kwargs, result)
        elif (isinstance(result, (tuple, list)) and rtype is not torch.Size
              and any(type(r) is Tensor for r in result)):
            outs = list(result)
        else:
            return result  # not a tensor (a shape, a number, None)
        return _record_call(func, rule, args, kwargs, result, outs)


def _plain_kwargs(kwargs: dict[str, Any]) -> bool:
    """No tensor among keyword arguments (F.relu(x, inplace=False); out=None)."""
    return not any(isinstance(v, Tensor) for v in kwargs.values())


class _Fresh:
    """A plain result tensor that nothing else references: wrapped by re-classing."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: Tensor):
        self.tensor = tensor


def _as_tracked(result: Tensor, fresh: bool) -> TrackedTensor:
    """The result as a TrackedTensor: re-classed in place when fresh (no alias, no extra
    autograd node: ~2 us less), else an alias made by as_subclass."""
    if fresh:
        result.__class__ = TrackedTensor
        return cast(TrackedTensor, result)
    return result.as_subclass(TrackedTensor)


def _record_elementwise(func: Any, args: tuple[Any, ...], result: Tensor, fresh: bool) -> Any:
    """The hot path: an elementwise op on positional tensors (one pass, inlined)."""
    tracker: Tracker | None = None
    shape = result.shape
    nodes: list[str] = []
    segments: Segments = []
    for a in args:
        if type(a) is not TrackedTensor or a._hw_tracker is None:
            continue
        if tracker is None:
            tracker = a._hw_tracker
            if tracker._off:
                return result
            if tracker._batch:
                return _derive(tracker, result, [b for b in args if type(b) is TrackedTensor
                                                 and b._hw_tracker is not None], fresh)
        node = a._hw_node or node_of(a)
        if node not in nodes:
            seg = _operand_segment(len(nodes), a.shape, shape)
            nodes.append(node)
            if seg is not None:
                segments.append(seg)
    if tracker is None:
        return result
    k = next(tracker._ids)
    out_node = f"{tracker._prefix}-n{k}"
    out = _as_tracked(result, fresh)
    out._hw_tracker = tracker
    out._hw_node = out_node
    tracker._op(_NAMES.get(func) or _op_name(func), "{}", nodes, out_node, shape, segments,
                True, _EVERY_OP, k)
    return out


def _record(tracker: Tracker, result: Any, op_name: str, params: str,
            inputs: Sequence[str], segments: Segments, understood: bool,
            granularity: int = _EVERY_OP) -> TrackedTensor:
    """Wrap a plain `result` (or a _Fresh one) as a new node and emit the op that made it."""
    k = next(tracker._ids)
    node = f"{tracker._prefix}-n{k}"
    out = _as_tracked(result.tensor, True) if type(result) is _Fresh else \
        result.as_subclass(TrackedTensor)
    out._hw_tracker = tracker
    out._hw_node = node
    tracker._op(op_name, params, inputs, node, out.shape, segments, understood,
                granularity, k)
    return out


def _derive(tracker: Tracker, result: Any, inputs: Sequence[TrackedTensor],
            fresh: bool = False) -> TrackedTensor:
    """Batch granularity: no event; the result remembers the recorded nodes it came from."""
    if type(result) is _Fresh:
        result, fresh = result.tensor, True
    out = _as_tracked(result, fresh)
    out._hw_tracker = tracker
    out._hw_node = None
    out._hw_roots = _roots(inputs)
    out._hw_why = _DERIVED
    return out


def _roots(inputs: Sequence[TrackedTensor]) -> tuple[str, ...]:
    roots: dict[str, None] = {}
    for a in inputs:
        if a._hw_node is not None:
            roots[a._hw_node] = None
        else:
            roots.update(dict.fromkeys(a._hw_roots))
    return tuple(roots)


def _record_call(func: Any, rule: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                 result: Any, outs: list[Any]) -> Any:
    """The general path: find the inputs, ask the op's rule for row maps, record."""
    if rule is _UNTRACKED or kwargs.get("out") is not None:
        return result  # data-independent, or written into an untracked `out`
    tracked = _find_tracked(args, kwargs)
    if not tracked:
        return result
    tracker = cast(Tracker, tracked[0]._hw_tracker)
    if tracker._off:
        return result
    wrap = [type(o) is Tensor or type(o) is _Fresh for o in outs]
    if tracker._batch:
        return _rebuild(result, [_derive(tracker, o, tracked) if w else o
                                 for o, w in zip(outs, wrap, strict=True)])
    call = _Call(func, args, kwargs, tracked)
    specs = call.specs(rule, [o.tensor if type(o) is _Fresh else o for o in outs])
    return _rebuild(result, [
        _record(tracker, o, call.name, params, call.nodes, segments, ok) if w else o
        for o, w, (segments, ok, params) in zip(outs, wrap, specs, strict=True)])


def _returned_input(func: Any, rule: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                    result: TrackedTensor) -> TrackedTensor:
    """An op returned one of its tracked inputs: re-bind it when written in place."""
    if not (func in _IN_PLACE or kwargs.get("out") is result or _inplace_flag(func, args,
                                                                             kwargs)):
        return result  # a no-op (x.float() on a float tensor): same rows, same node
    tracker = result._hw_tracker
    tracked = _find_tracked(args, kwargs)
    if tracker is None or tracker._off:
        return result
    if tracker._batch:
        result._hw_roots, result._hw_node, result._hw_why = _roots(tracked), None, _DERIVED
        return result
    call = _Call(func, args, kwargs, tracked)
    ((segments, ok, params),) = call.specs(rule, [result])
    node = tracker.new_node_id()
    tracker._op(call.name, params, call.nodes, node, result.shape, segments, ok)
    result._hw_node, result._hw_roots = node, ()
    return result


def _rebuild(result: Any, wrapped: list[Any]) -> Any:
    if isinstance(result, Tensor):
        return wrapped[0]
    if hasattr(type(result), "n_fields"):  # torch.return_types (values, indices)
        return type(result)(wrapped)
    return tuple(wrapped) if isinstance(result, tuple) else wrapped


def _find_tracked(args: Any, kwargs: dict[str, Any]) -> list[TrackedTensor]:
    """Tracked tensors among the arguments (in containers too), in argument order;
    `out=` is where results go, not an input."""
    found: list[TrackedTensor] = []
    _scan(args, found)
    for key, value in kwargs.items():
        if key != "out":
            _scan(value, found)
    return found


def _scan(obj: Any, found: list[TrackedTensor]) -> None:
    if isinstance(obj, TrackedTensor):
        if obj._hw_tracker is not None:
            found.append(obj)
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            _scan(o, found)
    elif isinstance(obj, dict):
        for o in obj.values():
            _scan(o, found)


def node_of(t: Any) -> str:
    """The node id of a tracked tensor (recording a deferred derivation now)."""
    if not isinstance(t, TrackedTensor) or t._hw_tracker is None:
        raise TypeError(f"expected a TrackedTensor with a tracker; got {type(t).__name__}")
    if t._hw_node is None:
        with _NoSubclass():
            t._hw_tracker._collapse(cast(Any, t))  # one all-rows headwater.unrecorded_ops
    return cast(str, t._hw_node)


# ---------------------------------------------------------------------------------------
# One call: its inputs and row maps


class _Call:
    """One torch call on tracked tensors: the distinct input nodes and argument access."""

    __slots__ = ("func", "args", "kwargs", "name", "nodes", "rows", "selectors", "_index")

    def __init__(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                 tracked: list[TrackedTensor]):
        self.func, self.args, self.kwargs = func, args, kwargs
        self.name = _op_name(func)
        self.nodes: list[str] = []
        self.rows: list[int] = []
        self.selectors: set[int] = set()  # inputs that select rows or shape, not values
        self._index: dict[int, int] = {}
        where: dict[str, int] = {}
        for a in tracked:
            node = node_of(a)
            i = where.get(node)
            if i is None:
                i = where[node] = len(self.nodes)
                self.nodes.append(node)
                self.rows.append(_rows(tuple(a.shape)))
            self._index[id(a)] = i

    def input_of(self, obj: Any) -> int | None:
        """Index of a (tracked) argument in the op's inputs; None when untracked."""
        return self._index.get(id(obj)) if isinstance(obj, TrackedTensor) else None

    def arg(self, pos: int, name: str, default: Any = None) -> Any:
        if len(self.args) > pos:
            return self.args[pos]
        return self.kwargs.get(name, default)

    def x(self) -> Any:
        """The first tensor argument (`input` / `self`)."""
        return self.arg(0, "input", self.kwargs.get("self"))

    def select(self, obj: Any) -> None:
        """Mark a tracked argument as selecting rows (an input without row segments)."""
        j = self.input_of(obj)
        if j is not None and j != self.input_of(self.x()):
            self.selectors.add(j)

    def specs(self, rule: Any, outs: list[Any]) -> list[Spec]:
        """The rule's spec for every output; not understood: all rows of every input.
        Never drops an input: one that no spec maps (and that selects nothing) is recorded
        as all rows, understood=False."""
        try:
            spec = None if rule is _unknown else rule(self, outs)
        except _NotUnderstood:
            spec = None
        if spec is None:
            return [(_not_understood(len(self.nodes), _rows(_shape(o)), self.name), False,
                     "{}") for o in outs]
        specs = [spec] * len(outs) if isinstance(spec, tuple) else spec
        mapped = self.selectors | {s[0] for segments, _, _ in specs for s in segments}
        missing = [i for i in range(len(self.nodes)) if i not in mapped and self.rows[i]]
        if not missing:
            return specs
        reason = f"op not understood: {self.name} (input not mapped)"
        return [(segments + [_all(i, n, reason) for i in missing], False, params)
                if (n := _rows(_shape(o))) else (segments, ok, params)
                for o, (segments, ok, params) in zip(outs, specs, strict=True)]


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(t.shape) if isinstance(t, Tensor) else ()


def _dim(call: _Call, pos: int, default: Any = None) -> Any:
    """The `dim` argument (alias `axis`); None means all dims."""
    dim = call.arg(pos, "dim", call.kwargs.get("axis", default))
    if isinstance(dim, bool) or (isinstance(dim, (tuple, list)) and not dim):
        return None  # x.std(True) is `unbiased`; dim=() reduces everything
    if isinstance(dim, str) or (isinstance(dim, (tuple, list))
                                and any(isinstance(d, str) for d in dim)):
        raise _NotUnderstood  # named dimensions
    return dim


def _one(call: _Call, outs: list[Any], seg_fn: Callable[[int, int], Segments],
         params: str = "{}") -> Spec:
    """A spec for an op on its first argument: seg_fn(input, output rows)."""
    i = call.input_of(call.x())
    n_out = _rows(_shape(outs[0]))
    if i is None or n_out == 0:
        return [], True, params
    return seg_fn(i, n_out), True, params


def _np(t: Any) -> np.ndarray:
    """A (small) index tensor as a NumPy array."""
    if isinstance(t, Tensor):
        return t.detach().cpu().numpy()
    return np.asarray(t)


# ---------------------------------------------------------------------------------------
# Rules: one per kind of op, (call, outputs) -> Spec | list[Spec] | None (not understood)


def _PASS(call: _Call, outs: list[Any]) -> None:  # noqa: N802 - a marker
    """Metadata and autograd plumbing: run and return as is, never recorded."""


def _UNTRACKED(call: _Call, outs: list[Any]) -> None:  # noqa: N802 - a marker
    """Data-independent results (zeros_like, new_ones, .grad): returned untracked."""


def _SPECIAL(call: _Call, outs: list[Any]) -> None:  # noqa: N802 - a marker
    """Handled by a function of _SPECIALS."""


def _unknown(call: _Call, outs: list[Any]) -> None:
    """Not understood: all rows of every input."""


def _elementwise(call: _Call, outs: list[Any]) -> Spec:
    """Output = broadcast of the tensor operands (NumPy's rules, via _operand_segment)."""
    out_shape = _shape(outs[0])
    segments: Segments = []
    seen: set[int] = set()
    for a in _find_tracked(call.args, call.kwargs):
        i = call.input_of(a)
        if i is None or i in seen:
            continue
        seen.add(i)
        seg = _operand_segment(i, _shape(a), out_shape)
        if seg is not None:
            segments.append(seg)
    return segments, True, "{}"


def _constant_fill(call: _Call, outs: list[Any]) -> Spec:
    """zero_/fill_/uniform_/...: the old values are gone; a tensor fill value maps
    elementwise."""
    i = call.input_of(call.x())
    if i is not None:
        call.selectors.add(i)
    return [s for s in _elementwise(call, outs)[0] if s[0] != i], True, "{}"


def _copy(call: _Call, outs: list[Any]) -> Spec:
    """dst.copy_(src): dst now holds src (broadcast)."""
    src = call.arg(1, "src")
    i, j = call.input_of(call.x()), call.input_of(src)
    if i is not None and i != j:
        call.selectors.add(i)
    seg = _operand_segment(j, _shape(src), _shape(outs[0])) if j is not None else None
    return ([seg] if seg is not None else []), True, "{}"


def _same_rows(call: _Call, outs: list[Any]) -> Spec:
    """Conversions and copies (.to, .float, .clone, .detach, .contiguous): identity.
    Other tensor arguments (x.to(y), x.type_as(y)) only give a dtype or device."""
    x = call.x()
    for a in call.args[1:]:
        call.select(a)
    for a in call.kwargs.values():
        call.select(a)
    if _shape(outs[0]) != _shape(x):
        raise _NotUnderstood
    return _one(call, outs, lambda i, n: [_identity(i, n)])


def _reduce_at(pos: int = 1, default: Any = None, pairwise: bool = False
               ) -> Callable[[_Call, list[Any]], Spec]:
    """Reductions with `dim` at position `pos`; `pairwise`: max(x, y)-style elementwise
    when the second argument is a tensor."""
    def rule(call: _Call, outs: list[Any]) -> Spec:
        if pairwise and isinstance(call.arg(1, "other"), Tensor):
            return _elementwise(call, outs)
        dim = _dim(call, pos, default)
        x = call.x()
        i = call.input_of(x)
        n_out = _rows(_shape(outs[0]))
        if i is None:
            return [], True, _json_axis(dim)
        if call.func in _QUANTILES and np.ndim(_np(call.arg(1, "q"))) > 0:
            return ([_all(i, n_out, REDUCTION)] if n_out else []), True, _json_axis(dim)
        segments, ok = _reduction_segments(i, x, dim, n_out)
        return segments, ok, _json_axis(dim)
    return rule


def _along_at(pos: int, default: Any, over_rows: str) -> Callable[[_Call, list[Any]], Spec]:
    """Ops along one dim keeping the other dims' rows (softmax, sort, cumsum, topk).
    Along rows: `over_rows` is the all-rows reason, or "" for not understood (prefix
    ops over rows, like NumPy's cumsum)."""
    def rule(call: _Call, outs: list[Any]) -> Spec:
        x = call.x()
        nd = x.ndim
        dim = call.arg(pos, "dim", default)
        if dim is None:  # legacy implicit softmax dim
            dim = 0 if nd in (0, 1, 3) else 1
        params = _json_axis(dim)
        if nd == 0:
            return _one(call, outs, lambda i, n: [_broadcast(i, 0, n)], params)
        if int(dim) % nd == 0:
            if not over_rows:
                raise _NotUnderstood
            return _one(call, outs, lambda i, n: [_all(i, n, over_rows)], params)
        if _rows(_shape(outs[0])) != _rows(_shape(x)):
            raise _NotUnderstood
        return _one(call, outs, lambda i, n: [_identity(i, n)], params)
    return rule


def _glu(call: _Call, outs: list[Any]) -> Spec:
    """glu halves `dim`: along rows, output row r <- rows r and r + n/2."""
    x = call.x()
    dim = int(call.arg(1, "dim", -1))
    if x.ndim and dim % x.ndim == 0:
        h = x.shape[0] // 2
        return _one(call, outs, lambda i, n: [_range(i, 0, 1, h), _range(i, h, 1, h)],
                    _json_axis(dim))
    return _one(call, outs, lambda i, n: [_identity(i, n)], _json_axis(dim))


def _loss(call: _Call, outs: list[Any]) -> Spec:
    """Losses: reduction "none" keeps the batch rows; "mean"/"sum" use all rows."""
    if call.kwargs.get("size_average") is not None or call.kwargs.get("reduce") is not None:
        raise _NotUnderstood  # legacy arguments
    reduction = call.kwargs.get("reduction", next(
        (a for a in call.args if isinstance(a, str) and a in ("none", "mean", "sum")),
        "mean"))
    n_out = _rows(_shape(outs[0]))
    segments: Segments = []
    seen: set[int] = set()
    for a in _find_tracked(call.args, call.kwargs):
        i = cast(int, call.input_of(a))
        if i in seen or not n_out:
            continue
        seen.add(i)
        shape = _shape(a)
        if reduction != "none":
            segments.append(_all(i, n_out, REDUCTION))
        elif not shape:
            segments.append(_broadcast(i, 0, n_out))
        elif len(_shape(outs[0])) and shape[0] == n_out:
            segments.append(_identity(i, n_out))
        else:
            segments.append(_all(i, n_out, BROADCAST))
    return segments, True, json.dumps({"reduction": reduction})


# -- indexing ---------------------------------------------------------------------------


def _np_key(key: Any, call: _Call) -> Any:
    """An index key with tensors as NumPy arrays; tracked index tensors become selectors."""
    if isinstance(key, Tensor):
        call.select(key)
        return _np(key)
    if isinstance(key, tuple):
        return tuple(_np_key(k, call) for k in key)
    if isinstance(key, list) and any(isinstance(k, (Tensor, list, tuple)) for k in key):
        return [_np_key(k, call) for k in key]
    if isinstance(key, slice) and any(isinstance(v, Tensor) for v in
                                      (key.start, key.stop, key.step)):
        return slice(*(int(v) if isinstance(v, Tensor) else v
                       for v in (key.start, key.stop, key.step)))
    return key


def _getitem(call: _Call, outs: list[Any]) -> Spec:
    x, key = call.args[0], call.args[1]
    pkey = _np_key(key, call)
    if call.input_of(x) != 0:
        return [], True, "{}"  # an untracked tensor indexed by tracked indices
    segments, params = _getitem_segments(pkey, _shape(x), _rows(_shape(outs[0])))
    return segments, True, params


def _setitem(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """x[key] = value: x keeps its rows' lineage; a tracked value is recorded as going to
    all rows (like NumPy's); x is re-bound to a new node."""
    x, key, value = args
    func(x, key, value)
    if not isinstance(x, TrackedTensor) or x._hw_tracker is None or x._hw_tracker._off:
        return
    tracker = x._hw_tracker
    tracked = _find_tracked(args, {})
    if tracker._batch:
        x._hw_roots, x._hw_node, x._hw_why = _roots(tracked), None, _DERIVED
        return
    call = _Call(func, (x, key), {}, [t for t in tracked if t is not value])
    _np_key(key, call)
    n = _rows(_shape(x))
    segments = [_identity(0, n)] if n else []
    understood = True
    if isinstance(value, TrackedTensor) and value._hw_tracker is not None:
        node = node_of(value)
        if node not in call.nodes:
            call.nodes.append(node)
        j = call.nodes.index(node)
        understood = False
        if n:
            segments.append(_all(j, n, "op not understood: torch.Tensor.__setitem__ of "
                                       "tracked values (all rows)"))
    node = tracker.new_node_id()
    tracker._op(call.name, "{}", call.nodes, node, x.shape, segments, understood)
    x._hw_node, x._hw_roots = node, ()


def _index_select(call: _Call, outs: list[Any]) -> Spec:
    x, dim, index = call.x(), int(call.arg(1, "dim")), call.arg(2, "index")
    call.select(index)
    if x.ndim == 0:
        raise _NotUnderstood
    if dim % x.ndim == 0:
        rows = _np(index).ravel()
        return _one(call, outs, lambda i, n: rows_segments(i, rows), _json_axis(dim))
    return _one(call, outs, lambda i, n: [_identity(i, n)], _json_axis(dim))


def _gather(call: _Call, outs: list[Any]) -> Spec:
    """gather / take_along_dim along `dim`: along rows, output row r <- rows index[r, ...];
    along another dim, output row r <- row r."""
    x = call.x()
    if call.func in _TAKE_ALONG:
        index, dim = call.arg(1, "indices"), call.arg(2, "dim")
    else:
        dim, index = call.arg(1, "dim"), call.arg(2, "index")
    call.select(index)
    n_in = _rows(_shape(x))
    idx = _np(index).astype(np.int64)
    idx = np.where(idx < 0, idx + (x.numel() if dim is None else n_in), idx)
    if x.ndim == 0:
        raise _NotUnderstood
    if dim is None:  # flattened: element e belongs to row e // (size / rows)
        rows = idx.ravel() // max(1, x.numel() // n_in)
        return _one(call, outs, lambda i, n: rows_segments(i, rows), _json_axis(dim))
    if int(dim) % x.ndim != 0:
        out_shape = _shape(outs[0])
        return _one(call, outs, lambda i, n: [_operand_segment(i, _shape(x), out_shape)
                                              or _identity(i, n)], _json_axis(dim))
    table = np.broadcast_to(idx, _shape(outs[0])) if idx.ndim == len(_shape(outs[0])) else idx
    i = call.input_of(x)
    if i is None or not table.size:
        return [], True, _json_axis(dim)
    segments, ok = _fanin_segments(i, table, f"op not understood: {call.name} (too wide)")
    if not ok:
        raise _NotUnderstood
    return segments, True, _json_axis(dim)


def _take(call: _Call, outs: list[Any]) -> Spec:
    """take(x, index): x flattened; element e belongs to row e // (size / rows)."""
    x, index = call.x(), call.arg(1, "index")
    call.select(index)
    size, n_in = x.numel(), _rows(_shape(x))
    idx = _np(index).astype(np.int64)
    rows = np.where(idx < 0, idx + size, idx) // max(1, size // n_in)
    if rows.ndim == 0:
        return _one(call, outs, lambda i, n: [_broadcast(i, int(rows), n)])
    if rows.ndim == 1:
        return _one(call, outs, lambda i, n: rows_segments(i, rows))
    i = call.input_of(x)
    if i is None:
        return [], True, "{}"
    segments, ok = _fanin_segments(i, rows, f"op not understood: {call.name} (too wide)")
    if not ok:
        raise _NotUnderstood
    return segments, True, "{}"


def _masked_select(call: _Call, outs: list[Any]) -> Spec:
    """Output element e comes from the e-th selected element: its row."""
    x, mask = call.x(), call.arg(1, "mask")
    call.select(mask)
    m = _np(mask).astype(bool)
    shape = np.broadcast_shapes(_shape(x), m.shape)
    coords = np.nonzero(np.broadcast_to(m, shape))
    xs = _shape(x)
    if not shape or not xs:
        rows = np.zeros(len(coords[0]) if coords else int(m.all()), dtype=np.int64)
    elif len(xs) < len(shape):
        return _one(call, outs, lambda i, n: [_all(i, n, BROADCAST)])
    else:
        rows = coords[0] if xs[0] == shape[0] else np.zeros_like(coords[0])
    return _one(call, outs, lambda i, n: rows_segments(i, rows))


def _nonzero(call: _Call, outs: list[Any]) -> Spec | list[Spec]:
    """nonzero / argwhere / where(cond): output row k <- the row of the k-th nonzero."""
    x = call.x()
    if x.ndim == 0:
        return _one(call, outs, lambda i, n: [_broadcast(i, 0, n)])
    first = outs[0]
    rows = _np(first if first.ndim == 1 else first[:, 0])
    return [_one(call, [o], lambda i, n: rows_segments(i, rows)) for o in outs]


def _where(call: _Call, outs: list[Any]) -> Spec | list[Spec]:
    if len(call.args) + len(call.kwargs) == 1:
        return _nonzero(call, outs)
    return _elementwise(call, outs)


# -- joining and splitting ----------------------------------------------------------------


def _pieces(call: _Call) -> list[Any]:
    pieces = call.arg(0, "tensors")
    return list(pieces)


def _blocks(call: _Call, pieces: list[tuple[Any, int, bool]], n_out: int) -> Segments:
    """Disjoint row blocks: (piece, rows, keeps its rows) in output order."""
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


def _side_by_side(call: _Call, pieces: list[Any], n_out: int) -> Segments:
    """Pieces joined along another dim: each keeps the output's rows (a 0-d piece or a
    1-D piece promoted to a column: see the callers)."""
    segments: Segments = []
    seen: set[int] = set()
    for piece in pieces:
        i = call.input_of(piece)
        shape = _shape(piece)
        if i is None or i in seen or n_out == 0 or shape == (0,):
            continue
        seen.add(i)
        if not shape:
            segments.append(_broadcast(i, 0, n_out))
        elif shape[0] == n_out:
            segments.append(_identity(i, n_out))
        else:
            raise _NotUnderstood
    return segments


def _cat(call: _Call, outs: list[Any]) -> Spec:
    pieces = _pieces(call)
    dim = int(call.arg(1, "dim", call.kwargs.get("axis", 0)))
    n_out = _rows(_shape(outs[0]))
    nd = outs[0].ndim
    if dim % nd == 0:  # legacy: 1-D empty pieces are skipped whatever the dim
        blocks = [(p, _shape(p)[0], True) for p in pieces if _shape(p) != (0,) or nd == 1]
        return _blocks(call, blocks, n_out), True, _json_axis(dim)
    return _side_by_side(call, pieces, n_out), True, _json_axis(dim)


def _stack(call: _Call, outs: list[Any]) -> Spec:
    pieces = _pieces(call)
    dim = int(call.arg(1, "dim", 0))
    n_out = _rows(_shape(outs[0]))
    if dim % outs[0].ndim == 0:  # piece p becomes output row p
        return _blocks(call, [(p, 1, p.ndim == 0) for p in pieces], n_out), True, \
            _json_axis(dim)
    return _side_by_side(call, pieces, n_out), True, _json_axis(dim)


def _vstack(call: _Call, outs: list[Any]) -> Spec:
    """>= 2-D pieces keep their rows; a 1-D piece is one row holding all its rows."""
    pieces = _pieces(call)
    blocks = [(p, p.shape[0] if p.ndim >= 2 else 1, p.ndim != 1) for p in pieces]
    return _blocks(call, blocks, _rows(_shape(outs[0]))), True, '{"axis": 0}'


def _hstack(call: _Call, outs: list[Any]) -> Spec:
    pieces = _pieces(call)
    n_out = _rows(_shape(outs[0]))
    if all(p.ndim <= 1 for p in pieces):  # joined along rows
        blocks = [(p, _rows(_shape(p)), True) for p in pieces]
        return _blocks(call, blocks, n_out), True, '{"axis": 0}'
    return _side_by_side(call, pieces, n_out), True, '{"axis": 1}'


def _column_stack(call: _Call, outs: list[Any]) -> Spec:
    """1-D pieces become columns: they keep the rows."""
    return _side_by_side(call, _pieces(call), _rows(_shape(outs[0]))), True, '{"axis": 1}'


def _dstack(call: _Call, outs: list[Any]) -> Spec:
    pieces = _pieces(call)
    n_out = _rows(_shape(outs[0]))
    if any(p.ndim == 1 for p in pieces):  # (n,) -> (1, n, 1): one row holding all
        if n_out != 1:
            raise _NotUnderstood
        segments = [_all(i, 1, "stacked as one row") for i in
                    dict.fromkeys(call.input_of(p) for p in pieces) if i is not None]
        return segments, True, '{"axis": 2}'
    return _side_by_side(call, pieces, n_out), True, '{"axis": 2}'


def _split(call: _Call, outs: list[Any]) -> list[Spec]:
    """split / chunk / tensor_split / vsplit / hsplit / dsplit / unbind: one spec per part."""
    x = call.x()
    nd = x.ndim
    name = call.name.rsplit(".", 1)[-1]
    if name == "vsplit":
        dim = 0
    elif name == "hsplit":
        dim = 1 if nd > 1 else 0
    elif name == "dsplit":
        dim = 2
    elif name == "unbind":
        dim = int(call.arg(1, "dim", 0))
    else:
        dim = int(call.arg(2, "dim", 0))
    i = call.input_of(x)
    sizes = [_rows(_shape(o)) for o in outs]
    if i is None or nd == 0 or dim % nd != 0:
        return [([_identity(i, n)] if i is not None and n else [], True,
                 json.dumps({"dim": dim, "part": p})) for p, n in enumerate(sizes)]
    if name == "unbind":  # part p is row p
        return [([_broadcast(i, p, n)] if n else [], True, json.dumps({"dim": 0, "part": p}))
                for p, n in enumerate(sizes)]
    sections = call.arg(1, "indices_or_sections", call.kwargs.get(
        "indices", call.kwargs.get("sections", call.kwargs.get("split_size_or_sections"))))
    n_in = x.shape[0]
    if name in ("tensor_split", "vsplit", "hsplit", "dsplit") and isinstance(
            sections, (list, tuple, Tensor)) and np.ndim(_np(sections)) == 1:
        bounds = [0, *(int(b) for b in _np(sections)), n_in]  # python slice semantics
        starts = [range(*slice(a, b).indices(n_in)).start
                  for a, b in zip(bounds, bounds[1:], strict=False)]
    else:
        starts = list(np.cumsum([0, *sizes[:-1]]))
    return [([_range(i, int(s), 1, n)] if n else [], True,
             json.dumps({"dim": 0, "part": p, "start": int(s)}))
            for p, (s, n) in enumerate(zip(starts, sizes, strict=True))]


# -- shape ops ----------------------------------------------------------------------------


def _reshape(call: _Call, outs: list[Any]) -> Spec:
    """C-order reshapes (view, flatten, squeeze, unsqueeze, ...): NumPy's row maps."""
    x = call.x()
    for a in call.args[1:]:
        call.select(a)  # view_as / reshape_as: the other tensor gives the shape
    in_shape, out_shape = _shape(x), _shape(outs[0])
    if any(isinstance(a, torch.dtype) for a in call.args[1:]) or "dtype" in call.kwargs:
        if len(in_shape) < 2 or in_shape[0] != out_shape[0]:
            raise _NotUnderstood  # a dtype view of a 1-D tensor regroups elements
        return _one(call, outs, lambda i, n: [_identity(i, n)])
    return _one(call, outs, lambda i, n: _reshape_segments(i, in_shape, out_shape),
                json.dumps({"shape": list(out_shape)}))


def _expand(call: _Call, outs: list[Any]) -> Spec | list[Spec]:
    """expand / expand_as / broadcast_to / broadcast_tensors: broadcasting."""
    if _op_name(call.func).endswith("broadcast_tensors"):
        return [_one_of(call, piece, out) for piece, out in zip(call.args, outs, strict=True)]
    for a in call.args[1:]:
        call.select(a)
    return _one_of(call, call.x(), outs[0])


def _one_of(call: _Call, piece: Any, out: Any) -> Spec:
    i = call.input_of(piece)
    seg = _operand_segment(i, _shape(piece), _shape(out)) if i is not None else None
    return ([seg] if seg is not None else []), True, "{}"


def _varargs(call: _Call, name: str) -> list[int]:
    """Dims given as varargs (x.permute(1, 0)), a sequence, or a keyword."""
    rest = call.args[1:]
    if len(rest) == 1 and isinstance(rest[0], (list, tuple, torch.Size)):
        rest = tuple(rest[0])
    if not rest:
        value = call.kwargs.get(name, ())
        rest = tuple(value) if isinstance(value, (list, tuple, torch.Size)) else (value,)
    return [int(d) for d in rest]


def _permute(call: _Call, outs: list[Any]) -> Spec:
    """Axis permutations: rows stay when output dim 0 is input dim 0, else all rows."""
    x = call.x()
    nd = x.ndim
    name = call.name.rsplit(".", 1)[-1]
    if nd <= 1:
        source = 0
    elif name == "permute":
        source = _varargs(call, "dims")[0] % nd
    elif name in ("transpose", "swapaxes", "swapdims"):
        d0, d1 = (int(call.arg(k, n)) % nd for k, n in ((1, "dim0"), (2, "dim1")))
        source = d1 if d0 == 0 else d0 if d1 == 0 else 0
    elif name == "t":
        source = 1
    elif name == "T":
        source = nd - 1
    elif name in ("mT", "mH", "adjoint"):
        source = 1 if nd == 2 else 0
    else:  # movedim / moveaxis: probe on a meta tensor where dim 0 lands
        probe = torch.empty(tuple(range(2, nd + 2)), device="meta")  # dim d has size d + 2
        source = int(call.func(probe, *call.args[1:], **call.kwargs).shape[0]) - 2
    if source == 0:
        return _one(call, outs, lambda i, n: [_identity(i, n)])
    return _one(call, outs, lambda i, n: [_all(i, n, ROWS_MOVED)])


def _flip(call: _Call, outs: list[Any]) -> Spec:
    x = call.x()
    name = call.name.rsplit(".", 1)[-1]
    dims = [0] if name == "flipud" else [1] if name == "fliplr" else _varargs(call, "dims")
    if x.ndim and any(d % x.ndim == 0 for d in dims):
        return _one(call, outs, lambda i, n: [_range(i, n - 1, -1, n)],
                    json.dumps({"dims": dims}))
    return _one(call, outs, lambda i, n: [_identity(i, n)], json.dumps({"dims": dims}))


def _roll(call: _Call, outs: list[Any]) -> Spec:
    x = call.x()
    shifts, dims = call.arg(1, "shifts"), call.arg(2, "dims")
    nd = x.ndim
    if nd == 0:
        return _one(call, outs, lambda i, n: [_identity(i, n)])
    if dims is None or dims == ():
        if nd > 1:
            raise _NotUnderstood  # rolled flattened: rows straddle
        dims = (0,)
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    shifts = shifts if isinstance(shifts, (tuple, list)) else (shifts,) * len(dims)
    total = sum(int(s) for d, s in zip(dims, shifts, strict=True) if int(d) % nd == 0)

    def segments(i: int, n: int) -> Segments:
        s = total % n
        if s == 0:
            return [_identity(i, n)]  # out row r <- (r - s) mod n
        return [_range(i, n - s, 1, s), _range(i, 0, 1, n - s, out_start=s)]
    return _one(call, outs, segments, json.dumps({"shift": total, "dim": 0}))


def _repeat_interleave(call: _Call, outs: list[Any]) -> Spec:
    x, repeats, dim = call.x(), call.arg(1, "repeats"), call.arg(2, "dim")
    if repeats is None:
        raise _NotUnderstood  # repeat_interleave(counts): indices
    call.select(repeats)
    shape = _shape(x)
    if dim is not None and shape and int(dim) % len(shape) != 0:
        return _one(call, outs, lambda i, n: [_identity(i, n)], _json_axis(dim))
    if dim is None:  # flattened first: element e belongs to row e // k
        size = math.prod(shape)
        base = np.arange(size, dtype=np.int64) // max(1, size // _rows(shape))
    else:
        base = np.arange(_rows(shape), dtype=np.int64)
    rows = np.repeat(base, _np(repeats))
    return _one(call, outs, lambda i, n: rows_segments(i, rows), _json_axis(dim))


def _tile(call: _Call, outs: list[Any]) -> Spec:
    """x.repeat(*sizes) / torch.tile(x, dims): NumPy's tile."""
    x = call.x()
    tile = call.name.endswith("tile")
    sizes = _varargs(call, "dims" if tile else "repeats")
    nd = x.ndim
    if tile and len(sizes) < nd:
        sizes = [1] * (nd - len(sizes)) + sizes
    if nd == 0:
        return _one(call, outs, lambda i, n: [_broadcast(i, 0, n)])
    if len(sizes) > nd:  # new leading dims: every output row holds every row
        return _one(call, outs, lambda i, n: [_all(i, n, "tiled")])
    rows = np.tile(np.arange(x.shape[0], dtype=np.int64), sizes[0])
    return _one(call, outs, lambda i, n: rows_segments(i, rows),
                json.dumps({"repeats": sizes}))


def _diff(call: _Call, outs: list[Any]) -> Spec:
    x = call.x()
    order, dim = int(call.arg(1, "n", 1)), int(call.arg(2, "dim", -1))
    if call.arg(3, "prepend") is not None or call.arg(4, "append") is not None:
        raise _NotUnderstood
    if x.ndim and dim % x.ndim == 0:  # row r <- rows r .. r + n
        return _one(call, outs, lambda i, n: [_range(i, j, 1, n) for j in range(order + 1)],
                    json.dumps({"n": order, "dim": dim}))
    return _one(call, outs, lambda i, n: [_identity(i, n)], _json_axis(dim))


# -- products and nn ops ------------------------------------------------------------------


def _product(call: _Call, outs: list[Any]) -> Spec:
    """Matrix products: rows of the left operand, each against all rows of the right."""
    name = call.name.rsplit(".", 1)[-1]
    out_shape = _shape(outs[0])
    segments: Segments = []
    if name in ("addmm", "addmv", "baddbmm", "addbmm", "addr"):  # input + product
        base = call.x()
        seg = _one_of(call, base, outs[0])[0]
        segments.extend(seg)
        a, b = call.arg(1, "mat1"), call.arg(2, "mat2")
    elif name == "__rmatmul__":
        a, b = call.args[1], call.args[0]
    else:
        a, b = call.args[0], call.args[1]
    a_shape, b_shape = _shape(a), _shape(b)
    kind = "matmul"
    if name in ("outer", "ger", "addr"):  # (n,) x (m,): rows of a
        a_shape, b_shape = (a_shape[0], 1), (1, b_shape[0])
    elif name in ("dot", "vdot", "inner"):
        kind = "inner" if name == "inner" else "vdot"
    elif name == "cdist":  # pairwise distances: rows of x1 against all rows of x2
        b_shape = (*b_shape[:-2], b_shape[-1], b_shape[-2])
    segments.extend(_product_segments(kind, call.input_of(a), a_shape, call.input_of(b),
                                      b_shape, out_shape))
    return _merge(segments), True, "{}"


def _linear(call: _Call, outs: list[Any]) -> Spec:
    """F.linear(x, W, b) = x @ W.T + b."""
    x, w, b = call.x(), call.arg(1, "weight"), call.arg(2, "bias")
    w_shape = _shape(w)[::-1]
    segments = _product_segments("matmul", call.input_of(x), _shape(x), call.input_of(w),
                                 w_shape, _shape(outs[0]))
    if b is not None:
        segments = segments + _one_of(call, b, outs[0])[0]
    return _merge(segments), True, "{}"


def _merge(segments: Segments) -> Segments:
    """Drop repeated segments (an input appearing as both operands maps once per kind)."""
    return list(dict.fromkeys(segments))


def _batched(unbatched_ndim: int | None = None) -> Callable[[_Call, list[Any]], Spec]:
    """nn ops over a batch (conv, pools, norms, pad, interpolate): output row r <- input row
    r; other tracked tensors (weights) are used by every row. `unbatched_ndim`: an input
    with that many dims has no batch dim and its rows (channels) are mixed."""
    def rule(call: _Call, outs: list[Any]) -> Spec:
        x = call.x()
        n_out = _rows(_shape(outs[0]))
        i = call.input_of(x)
        segments: Segments = []
        if i is not None and n_out:
            if unbatched_ndim is not None and x.ndim == unbatched_ndim:
                segments.append(_all(i, n_out, "unbatched input: channels mixed"))
            elif _rows(_shape(x)) != n_out:
                raise _NotUnderstood
            else:
                segments.append(_identity(i, n_out))
        for a in _find_tracked(call.args[1:], call.kwargs):
            j = call.input_of(a)
            if j is not None and j != i and n_out:
                segments.append(_all(cast(int, j), n_out, "weights of the op"))
        return _merge(segments), True, "{}"
    return rule


def _batch_norm(call: _Call, outs: list[Any]) -> Spec:
    """Training mode (or no running stats) normalises with batch statistics: all rows."""
    segments, ok, params = _batched()(call, outs)
    if not (call.arg(5, "training", False) or call.arg(1, "running_mean") is None):
        return segments, ok, params
    i, n = call.input_of(call.x()), _rows(_shape(outs[0]))
    return ([_all(i, n, REDUCTION) if s[0] == i else s for s in segments], ok,
            '{"batch_statistics": true}')


def _embedding(call: _Call, outs: list[Any]) -> Spec:
    """F.embedding(indices, weight): row r <- indices row r; weight rows indices[r, ...]."""
    x, weight = call.x(), call.arg(1, "weight")
    if x.ndim == 0:
        raise _NotUnderstood
    i, j = call.input_of(x), call.input_of(weight)
    n_out = _rows(_shape(outs[0]))
    segments: Segments = [_identity(i, n_out)] if i is not None and n_out else []
    ok = True
    if j is not None and n_out:
        table = _np(x).astype(np.int64).reshape(n_out, -1)
        looked_up, ok = _fanin_segments(j, table, "op not understood: embedding (too wide)")
        segments.extend(looked_up)
    return segments, ok, "{}"


def _pad(call: _Call, outs: list[Any]) -> Spec:
    """F.pad pads the last len(pad) // 2 dims; padding dim 0 adds rows with no input."""
    x, pad = call.x(), list(call.arg(1, "pad"))
    mode = call.arg(2, "mode", "constant")
    if len(pad) // 2 < x.ndim:
        return _one(call, outs, lambda i, n: [_identity(i, n)])
    if mode != "constant":
        raise _NotUnderstood
    before, n_in = int(pad[-2]), _rows(_shape(x))

    def segments(i: int, n: int) -> Segments:
        lo, hi = max(0, before), min(n, n_in + before)  # output rows holding input rows
        if hi <= lo:
            call.selectors.add(i)  # every row cropped away: padding only, no input rows
            return []
        return [_range(i, lo - before, 1, hi - lo, lo)]
    return _one(call, outs, segments, json.dumps({"pad": pad}))


def _attention(call: _Call, outs: list[Any]) -> Spec:
    """scaled_dot_product_attention: batched (>= 3-D) inputs keep their batch rows; 2-D
    inputs' rows are positions, each attending to all of k and v."""
    q = call.x()
    if q.ndim >= 3:
        return _elementwise(call, outs)
    n_out = _rows(_shape(outs[0]))
    i = call.input_of(q)
    segments: Segments = [_identity(i, n_out)] if i is not None and n_out else []
    for pos, name in ((1, "key"), (2, "value"), (3, "attn_mask")):
        j = call.input_of(call.arg(pos, name))
        if j is not None and n_out:
            segments.append(_all(j, n_out, "attention over positions"))
    return _merge(segments), True, "{}"


# -- specials: run differently ------------------------------------------------------------


def _deepcopy(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """copy.deepcopy: a copy of the plain tensor (never of the tracker), same rows."""
    x = args[0]
    result = x.as_subclass(Tensor).__deepcopy__(*args[1:], **kwargs)
    tracker = x._hw_tracker
    if tracker is None or tracker._off:
        return result
    if tracker._batch:
        return _derive(tracker, result, [x])
    n = _rows(_shape(x))
    return _record(tracker, result, _op_name(func), "{}", [node_of(x)],
                   [_identity(0, n)] if n else [], True)


def _reduce_ex(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Pickles as a plain tensor: node ids and trackers are process-local."""
    return args[0].as_subclass(Tensor).__reduce_ex__(*args[1:], **kwargs)


_SPECIALS: dict[Any, Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]] = {
    Tensor.__setitem__: _setitem, Tensor.__deepcopy__: _deepcopy,
    Tensor.__reduce_ex__: _reduce_ex}


# ---------------------------------------------------------------------------------------
# The rule table


_RULES: dict[Any, Callable[[_Call, list[Any]], Any]] = {}
_NAMES: dict[Any, str] = {}
_IN_PLACE: set[Any] = set()
_SPACES = {"torch": torch, "Tensor": Tensor, "F": F, "linalg": torch.linalg}
_PUBLIC = {"torch": "torch", "Tensor": "torch.Tensor", "F": "torch.nn.functional",
           "linalg": "torch.linalg"}


def _register(rule: Callable[[_Call, list[Any]], Any], spaces: str, names: str,
              in_place: bool = False) -> None:
    """rule for every `space.name` that exists (spaces: "torch Tensor F");
    in_place: also the trailing-underscore variants."""
    for space in spaces.split():
        for name in names.split():
            for n in (name, name + "_") if in_place else (name,):
                f = getattr(_SPACES[space], n, None)
                if f is not None and f not in _RULES:
                    _RULES[f] = rule
                    _NAMES.setdefault(f, f"{_PUBLIC[space]}.{n}")


def _getter(name: str) -> Any:
    return getattr(Tensor, name).__get__


_ELEMENTWISE = """
add sub subtract mul multiply div divide true_divide floor_divide remainder fmod pow
float_power neg negative abs absolute exp exp2 expm1 log log1p log2 log10 sqrt rsqrt square
reciprocal sin cos tan asin acos atan sinh cosh tanh asinh acosh atanh arcsin arccos arctan
arcsinh arccosh arctanh sigmoid relu sign sgn signbit floor ceil round trunc frac fix clamp
clip clamp_min clamp_max maximum minimum fmax fmin eq ne lt le gt ge greater less
greater_equal less_equal not_equal logical_and logical_or logical_xor logical_not
bitwise_and bitwise_or bitwise_xor bitwise_not lerp addcmul addcdiv atan2 arctan2 hypot
erf erfc erfinv isnan isinf isfinite isposinf isneginf isreal nan_to_num logit xlogy
copysign nextafter heaviside positive conj deg2rad rad2deg lgamma digamma i0 sinc
masked_fill logaddexp logaddexp2 ldexp gcd lcm isclose angle bernoulli dropout
alpha_dropout feature_alpha_dropout selu celu rrelu threshold hardtanh relu6 silu mish
gelu elu leaky_relu hardsigmoid hardswish softplus softsign logsigmoid tanhshrink
softshrink hardshrink prelu dropout1d dropout2d dropout3d
"""
_DUNDERS = """
__add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__ __imul__ __truediv__
__rtruediv__ __itruediv__ __div__ __rdiv__ __idiv__ __floordiv__ __rfloordiv__
__ifloordiv__ __mod__ __rmod__ __imod__ __pow__ __rpow__ __ipow__ __neg__ __abs__ __pos__
__invert__ __and__ __rand__ __iand__ __or__ __ror__ __ior__ __xor__ __rxor__ __ixor__
__lshift__ __rlshift__ __ilshift__ __rshift__ __rrshift__ __irshift__ __eq__ __ne__ __lt__
__le__ __gt__ __ge__
"""
_register(_elementwise, "torch Tensor F", _ELEMENTWISE, in_place=True)
_register(_elementwise, "Tensor", _DUNDERS)
_register(_same_rows, "torch Tensor", "clone detach detach_")
_register(_same_rows, "Tensor", """contiguous to float double half bfloat16 int long short
          bool byte char cfloat cdouble type type_as cpu cuda pin_memory""")
_RULES[_getter("data")] = _same_rows
_NAMES[_getter("data")] = "torch.Tensor.data"
_register(_constant_fill, "Tensor", """zero_ fill_ uniform_ normal_ random_ exponential_
          cauchy_ log_normal_ geometric_ bernoulli_""")
_register(_copy, "Tensor", "copy_")
_QUANTILES = {f for f in (torch.quantile, torch.nanquantile, Tensor.quantile,
                          Tensor.nanquantile)}
_register(_reduce_at(), "torch Tensor", """sum mean nansum nanmean prod std var std_mean
          var_mean amax amin aminmax argmax argmin all any logsumexp median nanmedian
          count_nonzero""")
_register(_reduce_at(pairwise=True), "torch Tensor", "max min")
_register(_reduce_at(2), "torch Tensor", "norm quantile nanquantile")
_register(_reduce_at(2, -1), "torch Tensor", "kthvalue")
_register(_reduce_at(1, -1), "torch Tensor", "mode")
_register(_along_at(1, None, "softmax along rows"), "F", "softmax log_softmax softmin")
_register(_along_at(1, None, "softmax along rows"), "torch Tensor", "softmax log_softmax")
_register(_along_at(2, 1, "normalised along rows"), "F", "normalize")
_register(_along_at(1, -1, "sorted along rows"), "torch Tensor", "sort argsort")
_register(_along_at(1, 0, "sorted along rows"), "torch Tensor", "msort")
_register(_along_at(2, -1, "top-k along rows"), "torch Tensor", "topk")
_register(_along_at(1, None, ""), "torch Tensor", """cumsum cumprod cummax cummin
          logcumsumexp""", in_place=True)
_register(_glu, "F", "glu")
_register(_loss, "F", """mse_loss l1_loss smooth_l1_loss huber_loss cross_entropy nll_loss
          binary_cross_entropy binary_cross_entropy_with_logits kl_div soft_margin_loss
          poisson_nll_loss gaussian_nll_loss margin_ranking_loss hinge_embedding_loss
          cosine_embedding_loss multilabel_soft_margin_loss""")
_register(_getitem, "Tensor", "__getitem__")
_register(_index_select, "torch Tensor", "index_select")
_register(_gather, "torch Tensor", "gather take_along_dim")
_TAKE_ALONG = {torch.take_along_dim, Tensor.take_along_dim}
_register(_take, "torch Tensor", "take")
_register(_masked_select, "torch Tensor", "masked_select")
_register(_nonzero, "torch Tensor", "nonzero argwhere")
_register(_where, "torch Tensor", "where")
_register(_cat, "torch", "cat concat concatenate")
_register(_stack, "torch", "stack")
_register(_vstack, "torch", "vstack row_stack")
_register(_hstack, "torch", "hstack")
_register(_column_stack, "torch", "column_stack")
_register(_dstack, "torch", "dstack")
_register(_split, "torch Tensor", """split split_with_sizes unsafe_split chunk tensor_split
          vsplit hsplit dsplit unbind""")
_register(_reshape, "torch Tensor", """reshape view flatten unflatten ravel view_as
          reshape_as squeeze unsqueeze atleast_1d atleast_2d atleast_3d""")
_register(_expand, "torch Tensor", "expand expand_as broadcast_to broadcast_tensors")
_register(_permute, "torch Tensor", """permute transpose swapaxes swapdims t movedim
          moveaxis adjoint""")
for _name in ("T", "mT", "mH"):
    _RULES[_getter(_name)] = _permute
    _NAMES[_getter(_name)] = f"torch.Tensor.{_name}"
_register(_flip, "torch Tensor", "flip flipud fliplr")
_register(_roll, "torch Tensor", "roll")
_register(_repeat_interleave, "torch Tensor", "repeat_interleave")
_register(_tile, "torch Tensor", "repeat tile")
_register(_diff, "torch Tensor", "diff")
_register(_product, "torch Tensor", """matmul mm bmm mv dot vdot inner outer ger addmm addmv
          baddbmm addr cdist __matmul__ __rmatmul__""")
_register(_linear, "F", "linear")
for _k in (1, 2, 3):
    _register(_batched(_k + 1), "F", f"conv{_k}d conv_transpose{_k}d")
_register(_batched(), "F", """avg_pool1d avg_pool2d avg_pool3d max_pool1d max_pool2d
          max_pool3d max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices
          adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d
          adaptive_max_pool2d adaptive_max_pool3d lp_pool1d lp_pool2d layer_norm group_norm
          instance_norm rms_norm local_response_norm one_hot interpolate upsample
          upsample_nearest upsample_bilinear pixel_shuffle pixel_unshuffle unfold""")
_register(_batch_norm, "F", "batch_norm")
_register(_embedding, "F", "embedding")
_register(_pad, "F", "pad")
_register(_attention, "F", "scaled_dot_product_attention")
_register(_UNTRACKED, "torch Tensor", """zeros_like ones_like empty_like full_like rand_like
          randn_like randint_like new_zeros new_ones new_empty new_full new_tensor""")
_RULES[_getter("grad")] = _UNTRACKED
for _name in ("shape", "dtype", "device", "ndim", "requires_grad", "is_leaf", "grad_fn",
              "is_cuda", "layout"):
    _RULES[_getter(_name)] = _PASS
_register(_PASS, "Tensor", """dim size numel __len__ stride storage_offset is_contiguous
          element_size item tolist __bool__ __float__ __int__ __index__ __hash__ __format__
          data_ptr backward register_hook retain_grad get_device nelement numpy __array__
          is_floating_point is_complex untyped_storage __dlpack__ __dlpack_device__
          share_memory_""")
for _f in _SPECIALS:
    _RULES[_f] = _SPECIAL

# every in-place op: trailing-underscore methods and functions, augmented assignment
for _space in ("Tensor", "torch", "F"):
    for _name in dir(_SPACES[_space]):
        if _name.endswith("_") and not _name.startswith("_"):
            _IN_PLACE.add(getattr(_SPACES[_space], _name))
_IN_PLACE.update(getattr(Tensor, n) for n in _DUNDERS.split()
                 if n.startswith("__i") and hasattr(Tensor, n))
_IN_PLACE.discard(Tensor.requires_grad_)

# nn.functional ops with an `inplace` argument: its position
_INPLACE_ARG: dict[Any, int] = {}
for _f in vars(F).values():
    if inspect.isfunction(_f):
        _params = _f.__code__.co_varnames[:_f.__code__.co_argcount]
        if "inplace" in _params:
            _INPLACE_ARG[_f] = _params.index("inplace")


def _inplace_flag(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    pos = _INPLACE_ARG.get(func)
    if pos is None:
        return False
    return bool(kwargs.get("inplace", args[pos] if len(args) > pos else False))


_PRIVATE_MODULES = (("torch._C._nn", "torch.nn.functional", ""),
                    ("torch.functional", "torch", ""),
                    ("torch._C._linalg", "torch.linalg", "linalg_"),
                    ("torch._C._fft", "torch.fft", "fft_"),
                    ("torch._C._special", "torch.special", "special_"))


def _op_name(func: Any) -> str:
    """`torch.add`, `torch.Tensor.__getitem__`, `torch.nn.functional.relu`, ..."""
    name = _NAMES.get(func)
    if name is None:
        name = _NAMES[func] = _derive_name(func)
    return name


def _derive_name(func: Any) -> str:
    short = getattr(func, "__name__", None) or type(func).__name__
    qual = getattr(func, "__qualname__", None) or short
    if short == "__get__" and hasattr(getattr(func, "__self__", None), "__name__"):
        return f"torch.Tensor.{func.__self__.__name__}"  # a property
    if qual.startswith(("TensorBase.", "Tensor.")):
        return f"torch.Tensor.{qual.split('.', 1)[1]}"
    if qual.startswith("_VariableFunctionsClass."):
        return f"torch.{short}"
    module = getattr(func, "__module__", None) or "torch"
    for private, public, prefix in _PRIVATE_MODULES:
        if module == private:
            return f"{public}.{short.removeprefix(prefix)}"
    return f"{module}.{qual}"


# ---------------------------------------------------------------------------------------
# Making tracked tensors, conversions, row keys


def track_tensor(tracker: Tracker, values: Any, node_id: str | None = None, *,
                 source: events_pb2.SourceRegistered | None = None) -> Any:
    """`values` as a TrackedTensor (no copy when already a tensor or a NumPy array) holding
    the rows of `source` (its node_id, else its source_id), of `node_id`, or of a fresh node.
    A TrackedArray keeps its node (same rows: no event); a TrackedTensor is returned as is.
    With granularity "off" a plain tensor is returned."""
    if isinstance(values, TrackedTensor):
        with _NoSubclass():
            if tracker._off:
                return values.as_subclass(Tensor)
        given = _given_node(source, node_id, _rows(_shape(values)))
        if given is not None and given != values._hw_node:
            raise ValueError(f"tensor is already tracked as {values._hw_node!r}; "
                             f"got node {given!r}")
        return values
    if isinstance(values, TrackedArray) and values.tracker is not None:
        given = _given_node(source, node_id, _rows(values.shape))
        node = values.tracker.node_of(values)
        if given is not None and given != node:
            raise ValueError(f"array is already tracked as {node!r}; got node {given!r}")
        node_id, source = node, None
    tensor = values if isinstance(values, Tensor) else torch.as_tensor(
        np.asarray(values) if isinstance(values, np.ndarray) else values)
    if tensor.ndim == 0:
        raise ValueError("a tracked tensor needs at least one dimension (dim 0 = rows)")
    node = _given_node(source, node_id, tensor.shape[0])
    if tracker._off:
        return tensor
    out = tensor.as_subclass(TrackedTensor)
    out._hw_tracker = tracker
    out._hw_node = node or tracker.new_node_id()
    return out


def _given_node(source: events_pb2.SourceRegistered | None, node_id: str | None,
                rows: int) -> str | None:
    """The node named by `source` or `node_id` (checked against the row count)."""
    if source is None:
        return node_id
    if node_id is not None:
        raise ValueError("give node_id or source, not both")
    node = source.node_id or source.source_id
    if not node:
        raise ValueError("source has neither node_id nor source_id")
    if source.row_count and source.row_count != rows:
        raise ValueError(f"source {node} has row_count={source.row_count} but the tensor "
                         f"has {rows} rows")
    return node


def to_array(t: Any) -> Any:
    """A TrackedTensor as a TrackedArray of the same node (same rows, no event)."""
    node = node_of(t)
    with _NoSubclass():
        values = t.detach().cpu().numpy()
    return cast(Tracker, t._hw_tracker).array(values, node_id=node)


def row_keys(batch: Any) -> events_pb2.RowKeys:
    """Training-row keys of a tracked batch (tensor or array): (node, 0..len-1)."""
    if isinstance(batch, TrackedArray):
        return tracking.row_keys(batch)
    if not isinstance(batch, TrackedTensor) or batch._hw_tracker is None:
        raise TypeError("row_keys needs a TrackedTensor or TrackedArray (is the tracker's "
                        "granularity 'off'?)")
    return events_pb2.RowKeys(node_ids=[node_of(batch)], rows=range(_rows(_shape(batch))))


# ---------------------------------------------------------------------------------------
# Dataset-level ops: splits, shuffles, DataLoader batches (recorded as BATCH_LEVEL)


def _tensors_of(tracker: Tracker, data: Any, node_id: str | None,
                source: events_pb2.SourceRegistered | None) -> tuple[list[Any], bool]:
    """(tracked tensors, one_tensor) of a tensor or a TensorDataset. Plain tensors share one
    node (they are columns of the same dataset rows): `source`/`node_id`, else a fresh one."""
    if isinstance(data, Tensor):
        tensors, single = [data], True
    elif isinstance(data, TensorDataset):
        tensors, single = list(data.tensors), False
    else:
        raise TypeError(f"expected a tensor or a TensorDataset; got {type(data).__name__}")
    if not tensors or any(t.ndim == 0 for t in tensors):
        raise ValueError("dataset tensors need at least one dimension (dim 0 = rows)")
    n = _rows(_shape(tensors[0]))
    if any(_rows(_shape(t)) != n for t in tensors):
        raise ValueError(f"dataset tensors disagree on the row count: "
                         f"{[_rows(_shape(t)) for t in tensors]}")
    shared = None
    out = []
    for t in tensors:
        if not isinstance(t, TrackedTensor):
            shared = shared or _given_node(source, node_id, n) or tracker.new_node_id()
            t = track_tensor(tracker, t, shared)
        out.append(t)
    return out, single


def _dataset_op(tracker: Tracker, x: Any, rows: np.ndarray, op_name: str,
                params: dict[str, Any]) -> Any:
    """x[rows] recorded as one BATCH_LEVEL gather op (plain with granularity "off")."""
    index = torch.as_tensor(rows, dtype=torch.long)
    with _NoSubclass():
        result = x[index.to(x.device)]
        if tracker._off or not isinstance(x, TrackedTensor):
            return result.as_subclass(Tensor)
        return _record(tracker, result, op_name, json.dumps(params), [node_of(x)],
                       rows_segments(0, rows), True, _BATCH_LEVEL)


def _per_tensor(tracker: Tracker, tensors: list[Any], single: bool, rows: np.ndarray,
                op_name: str, params: dict[str, Any]) -> Any:
    parts = [_dataset_op(tracker, t, rows, op_name, params if single else {**params, "tensor": p})
             for p, t in enumerate(tensors)]
    return parts[0] if single else TensorDataset(*parts)


def split(tracker: Tracker, data: Any, test_size: float | int = 0.25, seed: int | None = 0,
          *, node_id: str | None = None, source: events_pb2.SourceRegistered | None = None
          ) -> tuple[Any, Any]:
    """(train, test) rows of a tensor or TensorDataset after a seeded permutation, exactly
    as `Tracker.split` cuts arrays (same rows for the same seed): one op per tensor and part.
    Returns tensors, or TensorDatasets of tracked tensors."""
    tensors, single = _tensors_of(tracker, data, node_id, source)
    train_rows, test_rows = tracker.split(np.arange(_rows(_shape(tensors[0]))), test_size,
                                          seed)
    params = {"test_size": test_size, "seed": seed}
    return (_per_tensor(tracker, tensors, single, train_rows, "headwater.split",
                        {**params, "part": "train"}),
            _per_tensor(tracker, tensors, single, test_rows, "headwater.split",
                        {**params, "part": "test"}))


def shuffle(tracker: Tracker, data: Any, seed: int | None = 0, *, node_id: str | None = None,
            source: events_pb2.SourceRegistered | None = None) -> Any:
    """Rows of a tensor or TensorDataset in `Tracker.shuffle`'s seeded order."""
    tensors, single = _tensors_of(tracker, data, node_id, source)
    rows = tracker.shuffle(np.arange(_rows(_shape(tensors[0]))), seed)
    return _per_tensor(tracker, tensors, single, rows, "headwater.shuffle", {"seed": seed})


class _Rows(Dataset[Any]):
    """Rows of plain tensors, fetched a batch at a time (DataLoader calls __getitems__)."""

    def __init__(self, tensors: list[Tensor]):
        self.tensors = tensors

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    def __getitem__(self, i: int) -> Any:
        return self.__getitems__([i])

    def __getitems__(self, rows: list[int]) -> Any:
        index = torch.as_tensor(rows, dtype=torch.long)
        return index, tuple(t[index] for t in self.tensors)


def _as_is(batch: Any) -> Any:
    return batch


class _Indexed(Dataset[Any]):
    """A map-style dataset whose samples carry their index."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return i, self.dataset[i]


class _IndexedCollate:
    """Collates (index, sample) pairs into (indices, collate(samples))."""

    def __init__(self, collate: Callable[[list[Any]], Any]):
        self.collate = collate

    def __call__(self, samples: list[tuple[int, Any]]) -> Any:
        return (torch.as_tensor([i for i, _ in samples], dtype=torch.long),
                self.collate([s for _, s in samples]))


class TrackedLoader:
    """A torch DataLoader over dataset rows whose batch tensors are TrackedTensors, each
    made by one BATCH_LEVEL `headwater.batch` op mapping batch rows to the sampler's
    dataset rows. See `tracked_loader`."""

    def __init__(self, tracker: Tracker, data: Any, batch_size: int = 1,
                 shuffle: bool = False, seed: int | None = 0, drop_last: bool = False, *,
                 node_id: str | None = None,
                 source: events_pb2.SourceRegistered | None = None,
                 sampler: Sampler[int] | None = None, **loader_kwargs: Any):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
        if sampler is not None and shuffle:
            raise ValueError("give a sampler or shuffle=True, not both")
        for bad in ("batch_sampler", "batch_size", "shuffle"):
            if bad in loader_kwargs:
                raise ValueError(f"{bad} is not a DataLoader option of tracked_loader")
        self.tracker = tracker
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch = 0
        if isinstance(data, (Tensor, TensorDataset)):
            self._tensors, self._single = _tensors_of(tracker, data, node_id, source)
            with _NoSubclass():
                plain = [t.as_subclass(Tensor) for t in self._tensors]
            dataset: Any = _Rows(plain)
            if "collate_fn" in loader_kwargs:
                raise ValueError("collate_fn is only for general datasets; tensors and "
                                 "TensorDatasets are batched by indexing")
            collate: Any = _as_is
            self._node: str | None = None
        elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
            self._tensors, self._single = [], False
            self._node = _given_node(source, node_id, len(data)) or tracker.new_node_id()
            dataset = _Indexed(data)
            collate = _IndexedCollate(loader_kwargs.pop("collate_fn", None)
                                      or default_collate)
        else:
            raise TypeError(f"expected a tensor, a TensorDataset or a map-style dataset; "
                            f"got {type(data).__name__}")
        n = len(dataset)
        if sampler is None:
            generator = torch.Generator()
            if seed is not None:
                generator.manual_seed(seed)
            sampler = (RandomSampler(range(n), generator=generator) if shuffle
                       else SequentialSampler(range(n)))
        self.loader = DataLoader(dataset, batch_sampler=BatchSampler(
            sampler, batch_size, drop_last), collate_fn=collate, **loader_kwargs)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        for b, (index, batch) in enumerate(self.loader):
            rows = index.numpy()
            params = {"batch": b, "epoch": epoch, "batch_size": self.batch_size,
                      "shuffle": self.shuffle, "seed": self.seed}
            if self._node is None:
                parts = [self._batch_op(t, p, rows, params) for p, t in enumerate(batch)]
                yield parts[0] if self._single else tuple(parts)
            else:
                yield self._wrap_general(batch, rows, params, [0])

    def _batch_op(self, part: Tensor, p: int, rows: np.ndarray, params: dict[str, Any]
                  ) -> Any:
        if self.tracker._off:
            return part
        node = node_of(self._tensors[p])
        with _NoSubclass():
            return _record(self.tracker, part, "headwater.batch",
                           json.dumps({**params, "tensor": p}), [node],
                           rows_segments(0, rows), True, _BATCH_LEVEL)

    def _wrap_general(self, batch: Any, rows: np.ndarray, params: dict[str, Any],
                      counter: list[int]) -> Any:
        """Every tensor of a collated batch: its rows are the sampled dataset rows."""
        if isinstance(batch, Tensor):
            if self.tracker._off:
                return batch
            p = counter[0]
            counter[0] += 1
            n = _rows(_shape(batch))
            ok = n == len(rows)
            segments = rows_segments(0, rows) if ok else (
                [_all(0, n, "op not understood: headwater.batch (tensor rows are not the "
                            "samples)")] if n else [])
            with _NoSubclass():
                return _record(self.tracker, batch.as_subclass(Tensor), "headwater.batch",
                               json.dumps({**params, "tensor": p}), [cast(str, self._node)],
                               segments, ok, _BATCH_LEVEL)
        if isinstance(batch, dict):
            return {k: self._wrap_general(v, rows, params, counter) for k, v in batch.items()}
        if isinstance(batch, (tuple, list)):
            parts = [self._wrap_general(v, rows, params, counter) for v in batch]
            return tuple(parts) if isinstance(batch, tuple) else parts
        return batch


def tracked_loader(tracker: Tracker, data: Any, batch_size: int = 1, shuffle: bool = False,
                   seed: int | None = 0, drop_last: bool = False, **kwargs: Any
                   ) -> TrackedLoader:
    """Batches of a tensor, a TensorDataset (yields tuples (x, y, ...), all tracked with the
    same rows) or a map-style dataset (give `node_id`/`source` for its rows), drawn by a
    torch DataLoader (seeded RandomSampler when `shuffle`); other keyword arguments go to
    the DataLoader (num_workers, pin_memory, collate_fn for general datasets, sampler)."""
    return TrackedLoader(tracker, data, batch_size, shuffle, seed, drop_last, **kwargs)
