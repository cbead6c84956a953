"""The tracked tensor type: `__torch_function__` runs each op on plain tensors and records
it through the tensor's Tracker, with the row map from the op's rule in the registry
(ops.py, shape_ops.py, nn_ops.py); special ops, in-place writes and op names. See the
package docstring for what is recorded."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from headwater.producers.tracking import pending
from headwater.producers.tracking.maps import NotUnderstood, not_understood, operand_segment
from headwater.producers.tracking.registry import NAMES as _ALL_NAMES
from headwater.producers.tracking.registry import RULES as _ALL_RULES
from headwater.producers.tracking.registry import rule
from headwater.producers.tracking.segments import Segments, all_rows, identity, n_rows
from headwater.producers.tracking.tracker import Tracker
from headwater.v1 import events_pb2

RULES = _ALL_RULES["torch"]
NAMES = _ALL_NAMES["torch"]
EVERY_OP = events_pb2.OpRecorded.EVERY_OP
BATCH_LEVEL = events_pb2.OpRecorded.BATCH_LEVEL
NoSubclass = torch._C.DisableTorchFunctionSubclass
Tensor = torch.Tensor
Spec = tuple[Segments, bool, str]  # (segments, understood, params_json) of one output
DERIVED = "ops not recorded at batch granularity"


# ---------------------------------------------------------------------------------------
# The tensor type


class TrackedTensor(torch.Tensor):
    """A tensor whose rows (dim 0) are a lineage node; see the module docstring."""

    _hw_node: str | None = None
    _hw_tracker: Tracker | None = None
    _hw_roots: tuple[str, ...] = ()  # recorded nodes this tensor came from when _hw_node
    _hw_why: str = ""                # is None (batch granularity), and why
    _hw_pending: Any = None          # rows on another dim: element ids (tracking/pending.py)

    @property
    def node_id(self) -> str:
        """The lineage node holding this tensor's rows (recorded now if it was deferred)."""
        return node_of(self)

    @property
    def tracker(self) -> Tracker | None:
        return self._hw_tracker

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]
        with NoSubclass():
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
    rule = RULES.get(func, unknown)
    with NoSubclass():
        if rule is PASS:
            return func(*args, **kwargs)
        if rule is SPECIAL:
            return SPECIALS[func](func, args, kwargs)
        result = func(*args, **kwargs)
        rtype = type(result)
        if rtype is Tensor:
            fresh = sys.getrefcount(result) == 2  # held by `result` alone: re-classable
            if func in MOVES:
                moved = _pending_move(func, args, kwargs, result, fresh)
                if moved is not None:
                    return moved
            elif func in REDUCTIONS and args and type(args[0]) is TrackedTensor \
                    and args[0]._hw_pending is not None:
                reduced = _pending_reduce(func, args, kwargs, result, fresh)
                if reduced is not None:
                    return reduced
            if rule is elementwise and (not kwargs or _plain_kwargs(kwargs)):
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
                return derive(tracker, result, [b for b in args if type(b) is TrackedTensor
                                                 and b._hw_tracker is not None], fresh)
        if a._hw_pending is not None:
            out = _pending_elementwise(func, tracker, args, result, fresh)
            if out is not None:
                return out
        node = a._hw_node or node_of(a)
        if node not in nodes:
            seg = operand_segment(len(nodes), a.shape, shape)
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
    tracker._op(NAMES.get(func) or op_name(func), "{}", nodes, out_node, shape, segments,
                True, EVERY_OP, k)
    return out


def record(tracker: Tracker, result: Any, op_name: str, params: str,
            inputs: Sequence[str], segments: Segments, understood: bool,
            granularity: int = EVERY_OP) -> TrackedTensor:
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


def derive(tracker: Tracker, result: Any, inputs: Sequence[TrackedTensor],
            fresh: bool = False) -> TrackedTensor:
    """Batch granularity: no event; the result remembers the recorded nodes it came from."""
    if type(result) is _Fresh:
        result, fresh = result.tensor, True
    out = _as_tracked(result, fresh)
    out._hw_tracker = tracker
    out._hw_node = None
    out._hw_roots = roots(inputs)
    out._hw_why = DERIVED
    return out


def roots(inputs: Sequence[TrackedTensor]) -> tuple[str, ...]:
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
    if rule is UNTRACKED or kwargs.get("out") is not None:
        return result  # data-independent, or written into an untracked `out`
    tracked = find_tracked(args, kwargs)
    if not tracked:
        return result
    tracker = cast(Tracker, tracked[0]._hw_tracker)
    if tracker._off:
        return result
    wrap = [type(o) is Tensor or type(o) is _Fresh for o in outs]
    if tracker._batch:
        return _rebuild(result, [derive(tracker, o, tracked) if w else o
                                 for o, w in zip(outs, wrap, strict=True)])
    call = Call(func, args, kwargs, tracked)
    specs = call.specs(rule, [o.tensor if type(o) is _Fresh else o for o in outs])
    return _rebuild(result, [
        record(tracker, o, call.name, params, call.nodes, segments, ok) if w else o
        for o, w, (segments, ok, params) in zip(outs, wrap, specs, strict=True)])


def _returned_input(func: Any, rule: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                    result: TrackedTensor) -> TrackedTensor:
    """An op returned one of its tracked inputs: re-bind it when written in place."""
    if not (func in IN_PLACE or kwargs.get("out") is result or inplace_flag(func, args,
                                                                             kwargs)):
        return result  # a no-op (x.float() on a float tensor): same rows, same node
    tracker = result._hw_tracker
    tracked = find_tracked(args, kwargs)
    if tracker is None or tracker._off:
        return result
    if tracker._batch:
        result._hw_roots, result._hw_node, result._hw_why = roots(tracked), None, DERIVED
        return result
    call = Call(func, args, kwargs, tracked)
    ((segments, ok, params),) = call.specs(rule, [result])
    node = tracker.new_node_id()
    tracker._op(call.name, params, call.nodes, node, result.shape, segments, ok)
    result._hw_node, result._hw_roots, result._hw_pending = node, (), None
    return result


def _rebuild(result: Any, wrapped: list[Any]) -> Any:
    if isinstance(result, Tensor):
        return wrapped[0]
    if hasattr(type(result), "n_fields"):  # torch.return_types (values, indices)
        return type(result)(wrapped)
    return tuple(wrapped) if isinstance(result, tuple) else wrapped


def find_tracked(args: Any, kwargs: dict[str, Any]) -> list[TrackedTensor]:
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
        if t._hw_pending is not None:
            return _settle(t)
        with NoSubclass():
            t._hw_tracker._collapse(cast(Any, t))  # one all-rows headwater.unrecorded_ops
    return cast(str, t._hw_node)


# ---------------------------------------------------------------------------------------
# Rows on another dim (tracking/pending.py, as for NumPy): x.T.T maps rows to themselves

# ops that may start a pending stretch (rows moved off dim 0), and ops that keep one
STARTS: set[Any] = set()
MOVES: set[Any] = set()
REDUCTIONS: set[Any] = set()  # reductions over given dims of a pending tensor


def _settle(t: TrackedTensor) -> str:
    p = t._hw_pending
    tracker = cast(Tracker, t._hw_tracker)
    name, params, segments, understood = pending.settle_segments(p, tuple(t.shape))
    node = tracker.new_node_id()
    t._hw_pending = None
    tracker._op(name, params, p.nodes, node, tuple(t.shape), segments, understood)
    t._hw_node = node
    return node


def _ids_run(func: Any, rest: tuple[Any, ...], kwargs: dict[str, Any]
             ) -> Callable[[np.ndarray], np.ndarray]:
    def run(ids: np.ndarray) -> np.ndarray:
        out = func(torch.from_numpy(np.ascontiguousarray(ids)), *rest, **kwargs)
        return out.numpy()
    return run


def _pending_move(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], result: Tensor,
                  fresh: bool) -> TrackedTensor | None:
    """A move of a pending tensor stays pending; a permutation moving rows off dim 0
    starts pending. None: record as usual."""
    if not args or type(args[0]) is not TrackedTensor:
        return None
    x = args[0]
    tracker = x._hw_tracker
    if tracker is None or tracker._off or tracker._batch or len(find_tracked(args, kwargs)) > 1:
        return None
    starts = x._hw_pending is None
    if starts:
        if func not in STARTS or x.ndim < 2 or result.ndim < 2:
            return None
        probe = torch.empty(tuple(range(2, x.ndim + 2)), device="meta")  # dim d: d + 2
        try:
            if int(func(probe, *args[1:], **kwargs).shape[0]) == 2:
                return None  # rows stay on dim 0
        except (RuntimeError, TypeError, ValueError, NotImplementedError):
            return None
    try:
        moved = pending.apply(pending.ids_of(cast(Any, x), node_of),
                              _ids_run(func, args[1:], kwargs), tuple(result.shape),
                              op_name(func))
    except (NotUnderstood, RuntimeError, TypeError, ValueError):
        return None
    moved.moved_only = starts
    out = _as_tracked(result, fresh)
    out._hw_tracker, out._hw_node, out._hw_pending = tracker, None, moved
    return out


def _pending_reduce(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], result: Tensor,
                    fresh: bool) -> TrackedTensor | None:
    """x.mean(dim) of a pending x: pending while few ids meet per element, else recorded
    at once from the ids (a mean over the original rows: an aggregate) with x left
    pending."""
    x = args[0]
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if dim is None or len(args) > 2 or set(kwargs) - {"dim", "keepdim"} \
            or len(find_tracked(args, kwargs)) > 1:
        return None
    dims = tuple(int(d) for d in (dim if isinstance(dim, (tuple, list)) else (dim,)))
    keep, name = bool(kwargs.get("keepdim", False)), op_name(func)
    tracker = cast(Tracker, x._hw_tracker)
    shape = tuple(result.shape)
    reduced = pending.reduce_axes(x._hw_pending, dims, keep, name)
    if reduced is not None and reduced.ids.shape[:-1] == shape:
        out = _as_tracked(result, fresh)
        out._hw_tracker, out._hw_node, out._hw_pending = tracker, None, reduced
        return out
    whole = pending.reduce_axes(x._hw_pending, dims, keep, name, limit=2**62)
    if whole is None or whole.ids.shape[:-1] != shape:
        return None
    op, params, segments, ok = pending.settle_segments(whole, shape)
    return record(tracker, _Fresh(result) if fresh else result, op, params, whole.nodes,
                  segments, ok)


def _pending_elementwise(func: Any, tracker: Tracker, args: tuple[Any, ...], result: Tensor,
                         fresh: bool) -> TrackedTensor | None:
    operands = {id(a): a for a in args
                if type(a) is TrackedTensor and a._hw_tracker is not None}
    merged = pending.merge([pending.ids_of(cast(Any, a), node_of) for a in operands.values()],
                           tuple(result.shape), NAMES.get(func) or op_name(func))
    if merged is None:
        return None
    out = _as_tracked(result, fresh)
    out._hw_tracker, out._hw_node, out._hw_pending = tracker, None, merged
    return out


# ---------------------------------------------------------------------------------------
# One call: its inputs and row maps


class Call:
    """One torch call on tracked tensors: the distinct input nodes and argument access."""

    __slots__ = ("func", "args", "kwargs", "name", "nodes", "rows", "selectors", "_index")

    def __init__(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                 tracked: list[TrackedTensor]):
        self.func, self.args, self.kwargs = func, args, kwargs
        self.name = op_name(func)
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
                self.rows.append(n_rows(tuple(a.shape)))
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
            spec = None if rule is unknown else rule(self, outs)
        except NotUnderstood:
            spec = None
        if spec is None:
            return [(not_understood(len(self.nodes), n_rows(shape_of(o)), self.name), False,
                     "{}") for o in outs]
        specs = [spec] * len(outs) if isinstance(spec, tuple) else spec
        mapped = self.selectors | {s[0] for segments, _, _ in specs for s in segments}
        missing = [i for i in range(len(self.nodes)) if i not in mapped and self.rows[i]]
        if not missing:
            return specs
        reason = f"op not understood: {self.name} (input not mapped)"
        return [(segments + [all_rows(i, n, reason) for i in missing], False, params)
                if (n := n_rows(shape_of(o))) else (segments, ok, params)
                for o, (segments, ok, params) in zip(outs, specs, strict=True)]


def shape_of(t: Any) -> tuple[int, ...]:
    return tuple(t.shape) if isinstance(t, Tensor) else ()


def dim_arg(call: Call, pos: int, default: Any = None) -> Any:
    """The `dim` argument (alias `axis`); None means all dims."""
    dim = call.arg(pos, "dim", call.kwargs.get("axis", default))
    if isinstance(dim, bool) or (isinstance(dim, (tuple, list)) and not dim):
        return None  # x.std(True) is `unbiased`; dim=() reduces everything
    if isinstance(dim, str) or (isinstance(dim, (tuple, list))
                                and any(isinstance(d, str) for d in dim)):
        raise NotUnderstood  # named dimensions
    return dim


def one_input(call: Call, outs: list[Any], seg_fn: Callable[[int, int], Segments],
         params: str = "{}") -> Spec:
    """A spec for an op on its first argument: seg_fn(input, output rows)."""
    i = call.input_of(call.x())
    n_out = n_rows(shape_of(outs[0]))
    if i is None or n_out == 0:
        return [], True, params
    return seg_fn(i, n_out), True, params


def as_numpy(t: Any) -> np.ndarray:
    """A (small) index tensor as a NumPy array."""
    if isinstance(t, Tensor):
        return t.detach().cpu().numpy()
    return np.asarray(t)


# ---------------------------------------------------------------------------------------
# Markers and the broadcasting rule (rules: (call, outputs) -> Spec | list[Spec] | None)


def PASS(call: Call, outs: list[Any]) -> None:  # noqa: N802 - a marker
    """Metadata and autograd plumbing: run and return as is, never recorded."""


def UNTRACKED(call: Call, outs: list[Any]) -> None:  # noqa: N802 - a marker
    """Data-independent results (zeros_like, new_ones, .grad): returned untracked."""


def SPECIAL(call: Call, outs: list[Any]) -> None:  # noqa: N802 - a marker
    """Handled by a function of SPECIALS."""


def unknown(call: Call, outs: list[Any]) -> None:
    """Not understood: all rows of every input."""


Special = Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]
SPECIALS: dict[Any, Special] = {}


def special(names: str) -> Callable[[Special], Special]:
    """Register a function run instead of the op (`x[k] = v`, deepcopy, pickling): the
    registry maps the op to the SPECIAL marker, the handler is looked up here."""
    def register(fn: Special) -> Special:
        rule("torch", names, spaces="Tensor")(SPECIAL)
        for name in names.split():
            SPECIALS[getattr(Tensor, name)] = fn
        return fn
    return register


def elementwise(call: Call, outs: list[Any]) -> Spec:
    """Output = broadcast of the tensor operands (NumPy's rules, via operand_segment)."""
    out_shape = shape_of(outs[0])
    segments: Segments = []
    seen: set[int] = set()
    for a in find_tracked(call.args, call.kwargs):
        i = call.input_of(a)
        if i is None or i in seen:
            continue
        seen.add(i)
        seg = operand_segment(i, shape_of(a), out_shape)
        if seg is not None:
            segments.append(seg)
    return segments, True, "{}"


@special("__deepcopy__")
def _deepcopy(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """copy.deepcopy: a copy of the plain tensor (never of the tracker), same rows."""
    x = args[0]
    result = x.as_subclass(Tensor).__deepcopy__(*args[1:], **kwargs)
    tracker = x._hw_tracker
    if tracker is None or tracker._off:
        return result
    if tracker._batch:
        return derive(tracker, result, [x])
    n = n_rows(shape_of(x))
    return record(tracker, result, op_name(func), "{}", [node_of(x)],
                   [identity(0, n)] if n else [], True)


@special("__reduce_ex__")
def _reduce_ex(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Pickles as a plain tensor: node ids and trackers are process-local."""
    return args[0].as_subclass(Tensor).__reduce_ex__(*args[1:], **kwargs)




# Names of every op and whether it writes in place

DUNDERS = """
__add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__ __imul__ __truediv__
__rtruediv__ __itruediv__ __div__ __rdiv__ __idiv__ __floordiv__ __rfloordiv__
__ifloordiv__ __mod__ __rmod__ __imod__ __pow__ __rpow__ __ipow__ __neg__ __abs__ __pos__
__invert__ __and__ __rand__ __iand__ __or__ __ror__ __ior__ __xor__ __rxor__ __ixor__
__lshift__ __rlshift__ __ilshift__ __rshift__ __rrshift__ __irshift__ __eq__ __ne__ __lt__
__le__ __gt__ __ge__
"""  # Tensor operators: elementwise (ops.py registers them), __i*__ write in place

# every in-place op: trailing-underscore methods and functions, augmented assignment
IN_PLACE: set[Any] = set()
for _ns in (Tensor, torch, F):
    for _name in dir(_ns):
        if _name.endswith("_") and not _name.startswith("_"):
            IN_PLACE.add(getattr(_ns, _name))
IN_PLACE.update(getattr(Tensor, n) for n in DUNDERS.split()
                 if n.startswith("__i") and hasattr(Tensor, n))
IN_PLACE.discard(Tensor.requires_grad_)

# nn.functional ops with an `inplace` argument: its position
_INPLACE_ARG: dict[Any, int] = {}
for _f in vars(F).values():
    if inspect.isfunction(_f):
        _params = _f.__code__.co_varnames[:_f.__code__.co_argcount]
        if "inplace" in _params:
            _INPLACE_ARG[_f] = _params.index("inplace")


def inplace_flag(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    pos = _INPLACE_ARG.get(func)
    if pos is None:
        return False
    return bool(kwargs.get("inplace", args[pos] if len(args) > pos else False))


_PRIVATE_MODULES = (("torch._C._nn", "torch.nn.functional", ""),
                    ("torch.functional", "torch", ""),
                    ("torch._C._linalg", "torch.linalg", "linalg_"),
                    ("torch._C._fft", "torch.fft", "fft_"),
                    ("torch._C._special", "torch.special", "special_"))


def op_name(func: Any) -> str:
    """`torch.add`, `torch.Tensor.__getitem__`, `torch.nn.functional.relu`, ..."""
    name = NAMES.get(func)
    if name is None:
        name = NAMES[func] = _derive_name(func)
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


