"""Row-map rules of torch ops: elementwise ops and operators (broadcasting), conversions,
fills and copies, reductions, ops along a dim (softmax, sort, cumsum), losses, and
indexing (`x[key]`, index_select, gather, take, masked_select, nonzero, where). Joining,
splitting and shape ops: shape_ops.py; products and nn ops: nn_ops.py. Registered with
`registry.rule("torch", names, spaces=...)`; see registry.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch

from headwater.producers.tracking.maps import (
    NotUnderstood,
    getitem_segments,
    json_axis,
    operand_segment,
    reduction_segments,
)
from headwater.producers.tracking.registry import rule
from headwater.producers.tracking.segments import (
    BROADCAST,
    REDUCTION,
    Segments,
    all_rows,
    broadcast,
    fanin_segments,
    identity,
    n_rows,
    range_segment,
    rows_segments,
)
from headwater.producers.tracking.torch.tensor import (
    DERIVED,
    DUNDERS,
    Call,
    Spec,
    Tensor,
    TrackedTensor,
    as_numpy,
    dim_arg,
    elementwise,
    find_tracked,
    node_of,
    one_input,
    roots,
    shape_of,
    special,
)
from headwater.producers.tracking.writes import setitem_segments

ELEMENTWISE = """
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
rule("torch", ELEMENTWISE, spaces="torch Tensor F", in_place=True)(elementwise)
rule("torch", DUNDERS, spaces="Tensor")(elementwise)


def _same_rows(call: Call, outs: list[Any]) -> Spec:
    """Conversions and copies (.to, .float, .clone, .detach, .contiguous): identity.
    Other tensor arguments (x.to(y), x.type_as(y)) only give a dtype or device."""
    x = call.x()
    for a in call.args[1:]:
        call.select(a)
    for a in call.kwargs.values():
        call.select(a)
    if shape_of(outs[0]) != shape_of(x):
        raise NotUnderstood
    return one_input(call, outs, lambda i, n: [identity(i, n)])


rule("torch", "clone detach detach_", spaces="torch Tensor")(_same_rows)
rule("torch", """contiguous to float double half bfloat16 int long short bool byte char
     cfloat cdouble type type_as cpu cuda pin_memory""", spaces="Tensor")(_same_rows)
rule("torch", "data", spaces="Tensor", properties=True)(_same_rows)


@rule("torch", """zero_ fill_ uniform_ normal_ random_ exponential_
          cauchy_ log_normal_ geometric_ bernoulli_""", spaces="Tensor")
def _constant_fill(call: Call, outs: list[Any]) -> Spec:
    """zero_/fill_/uniform_/...: the old values are gone; a tensor fill value maps
    elementwise."""
    i = call.input_of(call.x())
    if i is not None:
        call.selectors.add(i)
    return [s for s in elementwise(call, outs)[0] if s[0] != i], True, "{}"


@rule("torch", "copy_", spaces="Tensor")
def _copy(call: Call, outs: list[Any]) -> Spec:
    """dst.copy_(src): dst now holds src (broadcast)."""
    src = call.arg(1, "src")
    i, j = call.input_of(call.x()), call.input_of(src)
    if i is not None and i != j:
        call.selectors.add(i)
    seg = operand_segment(j, shape_of(src), shape_of(outs[0])) if j is not None else None
    return ([seg] if seg is not None else []), True, "{}"




_QUANTILES = {f for f in (torch.quantile, torch.nanquantile, Tensor.quantile,
                          Tensor.nanquantile)}


def _reduce_at(pos: int = 1, default: Any = None, pairwise: bool = False
               ) -> Callable[[Call, list[Any]], Spec]:
    """Reductions with `dim` at position `pos`; `pairwise`: max(x, y)-style elementwise
    when the second argument is a tensor."""
    def rule(call: Call, outs: list[Any]) -> Spec:
        if pairwise and isinstance(call.arg(1, "other"), Tensor):
            return elementwise(call, outs)
        dim = dim_arg(call, pos, default)
        x = call.x()
        i = call.input_of(x)
        n_out = n_rows(shape_of(outs[0]))
        if i is None:
            return [], True, json_axis(dim)
        if call.func in _QUANTILES and np.ndim(as_numpy(call.arg(1, "q"))) > 0:
            return ([all_rows(i, n_out, REDUCTION)] if n_out else []), True, json_axis(dim)
        segments, ok = reduction_segments(i, x, dim, n_out)
        return segments, ok, json_axis(dim)
    return rule


def _along_at(pos: int, default: Any, over_rows: str) -> Callable[[Call, list[Any]], Spec]:
    """Ops along one dim keeping the other dims' rows (softmax, sort, cumsum, topk).
    Along rows: `over_rows` is the all-rows reason, or "" for not understood (prefix
    ops over rows, like NumPy's cumsum)."""
    def rule(call: Call, outs: list[Any]) -> Spec:
        x = call.x()
        nd = x.ndim
        dim = call.arg(pos, "dim", default)
        if dim is None:  # legacy implicit softmax dim
            dim = 0 if nd in (0, 1, 3) else 1
        params = json_axis(dim)
        if nd == 0:
            return one_input(call, outs, lambda i, n: [broadcast(i, 0, n)], params)
        if int(dim) % nd == 0:
            if not over_rows:
                raise NotUnderstood
            return one_input(call, outs, lambda i, n: [all_rows(i, n, over_rows)], params)
        if n_rows(shape_of(outs[0])) != n_rows(shape_of(x)):
            raise NotUnderstood
        return one_input(call, outs, lambda i, n: [identity(i, n)], params)
    return rule


rule("torch", """sum mean nansum nanmean prod std var std_mean var_mean amax amin aminmax
     argmax argmin all any logsumexp median nanmedian count_nonzero""",
     spaces="torch Tensor", precision="aggregate",
     note="over rows (dim 0 or None); other dims: exact")(_reduce_at())
rule("torch", "max min", spaces="torch Tensor", precision="aggregate",
     note="over rows (dim 0 or None); other dims: exact")(_reduce_at(pairwise=True))
rule("torch", "norm quantile nanquantile", spaces="torch Tensor", precision="aggregate",
     note="over rows (dim 0 or None); other dims: exact")(_reduce_at(2))
rule("torch", "kthvalue", spaces="torch Tensor", precision="aggregate",
     note="over rows (dim 0 or None); other dims: exact")(_reduce_at(2, -1))
rule("torch", "mode", spaces="torch Tensor", precision="aggregate",
     note="over rows (dim 0 or None); other dims: exact")(_reduce_at(1, -1))
_SOFTMAX = _along_at(1, None, "softmax along rows")
rule("torch", "softmax log_softmax softmin", spaces="F", precision="aggregate",
     note="along rows (dim 0); other dims: exact")(_SOFTMAX)
rule("torch", "softmax log_softmax", spaces="torch Tensor", precision="aggregate",
     note="along rows (dim 0); other dims: exact")(_SOFTMAX)
rule("torch", "normalize", spaces="F", precision="aggregate",
     note="along rows (dim 0); other dims: exact")(_along_at(2, 1, "normalised along rows"))
rule("torch", "sort argsort", spaces="torch Tensor", precision="aggregate",
     note="along rows (dim 0); other dims: exact")(_along_at(1, -1, "sorted along rows"))
rule("torch", "msort", spaces="torch Tensor", precision="aggregate",
     note="along rows (dim 0); other dims: exact")(_along_at(1, 0, "sorted along rows"))
rule("torch", "topk", spaces="torch Tensor", precision="aggregate",
     note="along rows (dim 0); other dims: exact")(_along_at(2, -1, "top-k along rows"))
rule("torch", "cumsum cumprod cummax cummin logcumsumexp", spaces="torch Tensor",
     in_place=True, precision="not understood",
     note="along rows (a prefix of rows); other dims: exact")(_along_at(1, None, ""))


@rule("torch", "glu", spaces="F")
def _glu(call: Call, outs: list[Any]) -> Spec:
    """glu halves `dim`: along rows, output row r <- rows r and r + n/2."""
    x = call.x()
    dim = int(call.arg(1, "dim", -1))
    if x.ndim and dim % x.ndim == 0:
        h = x.shape[0] // 2
        return one_input(call, outs,
                         lambda i, n: [range_segment(i, 0, 1, h), range_segment(i, h, 1, h)],
                         json_axis(dim))
    return one_input(call, outs, lambda i, n: [identity(i, n)], json_axis(dim))


@rule("torch", """mse_loss l1_loss smooth_l1_loss huber_loss cross_entropy nll_loss
          binary_cross_entropy binary_cross_entropy_with_logits kl_div soft_margin_loss
          poisson_nll_loss gaussian_nll_loss margin_ranking_loss hinge_embedding_loss
          cosine_embedding_loss multilabel_soft_margin_loss""", spaces="F",
      precision="aggregate", note="reduction mean or sum: all rows")
def _loss(call: Call, outs: list[Any]) -> Spec:
    """Losses: reduction "none" keeps the batch rows; "mean"/"sum" use all rows."""
    if call.kwargs.get("size_average") is not None or call.kwargs.get("reduce") is not None:
        raise NotUnderstood  # legacy arguments
    reduction = call.kwargs.get("reduction", next(
        (a for a in call.args if isinstance(a, str) and a in ("none", "mean", "sum")),
        "mean"))
    n_out = n_rows(shape_of(outs[0]))
    segments: Segments = []
    seen: set[int] = set()
    for a in find_tracked(call.args, call.kwargs):
        i = cast(int, call.input_of(a))
        if i in seen or not n_out:
            continue
        seen.add(i)
        shape = shape_of(a)
        if reduction != "none":
            segments.append(all_rows(i, n_out, REDUCTION))
        elif not shape:
            segments.append(broadcast(i, 0, n_out))
        elif len(shape_of(outs[0])) and shape[0] == n_out:
            segments.append(identity(i, n_out))
        else:
            segments.append(all_rows(i, n_out, BROADCAST))
    return segments, True, json.dumps({"reduction": reduction})


# -- indexing ---------------------------------------------------------------------------


def _np_key(key: Any, call: Call) -> Any:
    """An index key with tensors as NumPy arrays; tracked index tensors become selectors."""
    if isinstance(key, Tensor):
        call.select(key)
        return as_numpy(key)
    if isinstance(key, tuple):
        return tuple(_np_key(k, call) for k in key)
    if isinstance(key, list) and any(isinstance(k, (Tensor, list, tuple)) for k in key):
        return [_np_key(k, call) for k in key]
    if isinstance(key, slice) and any(isinstance(v, Tensor) for v in
                                      (key.start, key.stop, key.step)):
        return slice(*(int(v) if isinstance(v, Tensor) else v
                       for v in (key.start, key.stop, key.step)))
    return key


@rule("torch", "__getitem__", spaces="Tensor")
def _getitem(call: Call, outs: list[Any]) -> Spec:
    x, key = call.args[0], call.args[1]
    pkey = _np_key(key, call)
    if call.input_of(x) != 0:
        return [], True, "{}"  # an untracked tensor indexed by tracked indices
    segments, params = getitem_segments(pkey, shape_of(x), n_rows(shape_of(outs[0])))
    return segments, True, params


@special("__setitem__")
def _setitem(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """x[key] = value: written rows take the value's rows, exactly as NumPy's (writes.py);
    keys it cannot map keep x's rows and record a tracked value as going to all rows; x
    is re-bound to a new node."""
    x, key, value = args
    func(x, key, value)
    if not isinstance(x, TrackedTensor) or x._hw_tracker is None or x._hw_tracker._off:
        return
    tracker = x._hw_tracker
    tracked = find_tracked(args, {})
    if tracker._batch:
        x._hw_roots, x._hw_node, x._hw_why = roots(tracked), None, DERIVED
        return
    call = Call(func, (x, key), {}, [t for t in tracked if t is not value])
    pkey = _np_key(key, call)
    n = n_rows(shape_of(x))
    own = call.input_of(x)
    j = None
    if isinstance(value, TrackedTensor) and value._hw_tracker is not None:
        node = node_of(value)
        if node not in call.nodes:
            call.nodes.append(node)
        j = call.nodes.index(node)
    try:
        segments = setitem_segments(pkey, shape_of(x), own, j,
                                    shape_of(value) if j is not None else ())
        understood = True
    except NotUnderstood:
        segments = [identity(0, n)] if n else []
        understood = j is None
        if j is not None and n:
            segments.append(all_rows(j, n, "op not understood: torch.Tensor.__setitem__ of "
                                           "tracked values with this key (all rows)"))
    node = tracker.new_node_id()
    tracker._op(call.name, "{}", call.nodes, node, x.shape, segments, understood)
    x._hw_node, x._hw_roots, x._hw_pending = node, (), None


@rule("torch", "index_select", spaces="torch Tensor")
def _index_select(call: Call, outs: list[Any]) -> Spec:
    x, dim, index = call.x(), int(call.arg(1, "dim")), call.arg(2, "index")
    call.select(index)
    if x.ndim == 0:
        raise NotUnderstood
    if dim % x.ndim == 0:
        rows = as_numpy(index).ravel()
        return one_input(call, outs, lambda i, n: rows_segments(i, rows), json_axis(dim))
    return one_input(call, outs, lambda i, n: [identity(i, n)], json_axis(dim))


_TAKE_ALONG = {torch.take_along_dim, Tensor.take_along_dim}


@rule("torch", "gather take_along_dim", spaces="torch Tensor")
def _gather(call: Call, outs: list[Any]) -> Spec:
    """gather / take_along_dim along `dim`: along rows, output row r <- rows index[r, ...];
    along another dim, output row r <- row r."""
    x = call.x()
    if call.func in _TAKE_ALONG:
        index, dim = call.arg(1, "indices"), call.arg(2, "dim")
    else:
        dim, index = call.arg(1, "dim"), call.arg(2, "index")
    call.select(index)
    n_in = n_rows(shape_of(x))
    idx = as_numpy(index).astype(np.int64)
    idx = np.where(idx < 0, idx + (x.numel() if dim is None else n_in), idx)
    if x.ndim == 0:
        raise NotUnderstood
    if dim is None:  # flattened: element e belongs to row e // (size / rows)
        rows = idx.ravel() // max(1, x.numel() // n_in)
        return one_input(call, outs, lambda i, n: rows_segments(i, rows), json_axis(dim))
    if int(dim) % x.ndim != 0:
        out_shape = shape_of(outs[0])
        return one_input(call, outs, lambda i, n: [operand_segment(i, shape_of(x), out_shape)
                                              or identity(i, n)], json_axis(dim))
    table = np.broadcast_to(idx, shape_of(outs[0])) if idx.ndim == len(shape_of(outs[0])) else idx
    i = call.input_of(x)
    if i is None or not table.size:
        return [], True, json_axis(dim)
    segments, ok = fanin_segments(i, table, f"op not understood: {call.name} (too wide)")
    if not ok:
        raise NotUnderstood
    return segments, True, json_axis(dim)


@rule("torch", "take", spaces="torch Tensor")
def _take(call: Call, outs: list[Any]) -> Spec:
    """take(x, index): x flattened; element e belongs to row e // (size / rows)."""
    x, index = call.x(), call.arg(1, "index")
    call.select(index)
    size, n_in = x.numel(), n_rows(shape_of(x))
    idx = as_numpy(index).astype(np.int64)
    rows = np.where(idx < 0, idx + size, idx) // max(1, size // n_in)
    if rows.ndim == 0:
        return one_input(call, outs, lambda i, n: [broadcast(i, int(rows), n)])
    if rows.ndim == 1:
        return one_input(call, outs, lambda i, n: rows_segments(i, rows))
    i = call.input_of(x)
    if i is None:
        return [], True, "{}"
    segments, ok = fanin_segments(i, rows, f"op not understood: {call.name} (too wide)")
    if not ok:
        raise NotUnderstood
    return segments, True, "{}"


@rule("torch", "masked_select", spaces="torch Tensor")
def _masked_select(call: Call, outs: list[Any]) -> Spec:
    """Output element e comes from the e-th selected element: its row."""
    x, mask = call.x(), call.arg(1, "mask")
    call.select(mask)
    m = as_numpy(mask).astype(bool)
    shape = np.broadcast_shapes(shape_of(x), m.shape)
    coords = np.nonzero(np.broadcast_to(m, shape))
    xs = shape_of(x)
    if not shape or not xs:
        rows = np.zeros(len(coords[0]) if coords else int(m.all()), dtype=np.int64)
    elif len(xs) < len(shape):
        return one_input(call, outs, lambda i, n: [all_rows(i, n, BROADCAST)])
    else:
        rows = coords[0] if xs[0] == shape[0] else np.zeros_like(coords[0])
    return one_input(call, outs, lambda i, n: rows_segments(i, rows))


@rule("torch", "nonzero argwhere", spaces="torch Tensor")
def _nonzero(call: Call, outs: list[Any]) -> Spec | list[Spec]:
    """nonzero / argwhere / where(cond): output row k <- the row of the k-th nonzero."""
    x = call.x()
    if x.ndim == 0:
        return one_input(call, outs, lambda i, n: [broadcast(i, 0, n)])
    first = outs[0]
    rows = as_numpy(first if first.ndim == 1 else first[:, 0])
    return [one_input(call, [o], lambda i, n: rows_segments(i, rows)) for o in outs]


@rule("torch", "where", spaces="torch Tensor")
def _where(call: Call, outs: list[Any]) -> Spec | list[Spec]:
    if len(call.args) + len(call.kwargs) == 1:
        return _nonzero(call, outs)
    return elementwise(call, outs)
