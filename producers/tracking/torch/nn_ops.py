"""Row-map rules of torch's matrix products and nn ops: matmul/mm/bmm/dot/outer/addmm/
cdist, F.linear, batched nn ops (conv, pools, norms, interpolate, ...), batch_norm,
embedding, pad, scaled_dot_product_attention; and the ops never recorded (metadata,
data-independent results). Registered with `registry.rule("torch", ...)`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import numpy as np

from headwater.producers.tracking.maps import NotUnderstood, product_segments
from headwater.producers.tracking.registry import rule
from headwater.producers.tracking.segments import (
    REDUCTION,
    Segments,
    all_rows,
    fanin_segments,
    identity,
    n_rows,
    range_segment,
)
from headwater.producers.tracking.torch.shape_ops import one_of
from headwater.producers.tracking.torch.tensor import (
    PASS,
    UNTRACKED,
    Call,
    Spec,
    as_numpy,
    elementwise,
    find_tracked,
    one_input,
    shape_of,
)


@rule("torch", """matmul mm bmm mv dot vdot inner outer ger addmm addmv
          baddbmm addr cdist __matmul__ __rmatmul__""", spaces="torch Tensor",
      precision="aggregate", note="all rows of the operand whose rows are summed over")
def _product(call: Call, outs: list[Any]) -> Spec:
    """Matrix products: rows of the left operand, each against all rows of the right."""
    name = call.name.rsplit(".", 1)[-1]
    out_shape = shape_of(outs[0])
    segments: Segments = []
    if name in ("addmm", "addmv", "baddbmm", "addbmm", "addr"):  # input + product
        base = call.x()
        seg = one_of(call, base, outs[0])[0]
        segments.extend(seg)
        a, b = call.arg(1, "mat1"), call.arg(2, "mat2")
    elif name == "__rmatmul__":
        a, b = call.args[1], call.args[0]
    else:
        a, b = call.args[0], call.args[1]
    a_shape, b_shape = shape_of(a), shape_of(b)
    kind = "matmul"
    if name in ("outer", "ger", "addr"):  # (n,) x (m,): rows of a
        a_shape, b_shape = (a_shape[0], 1), (1, b_shape[0])
    elif name in ("dot", "vdot", "inner"):
        kind = "inner" if name == "inner" else "vdot"
    elif name == "cdist":  # pairwise distances: rows of x1 against all rows of x2
        b_shape = (*b_shape[:-2], b_shape[-1], b_shape[-2])
    segments.extend(product_segments(kind, call.input_of(a), a_shape, call.input_of(b),
                                      b_shape, out_shape))
    return merge(segments), True, "{}"


@rule("torch", "linear", spaces="F", precision="aggregate", note="all rows of the weight")
def _linear(call: Call, outs: list[Any]) -> Spec:
    """F.linear(x, W, b) = x @ W.T + b."""
    x, w, b = call.x(), call.arg(1, "weight"), call.arg(2, "bias")
    w_shape = shape_of(w)[::-1]
    segments = product_segments("matmul", call.input_of(x), shape_of(x), call.input_of(w),
                                 w_shape, shape_of(outs[0]))
    if b is not None:
        segments = segments + one_of(call, b, outs[0])[0]
    return merge(segments), True, "{}"


def merge(segments: Segments) -> Segments:
    """Drop repeated segments (an input appearing as both operands maps once per kind)."""
    return list(dict.fromkeys(segments))


def _batched(unbatched_ndim: int | None = None) -> Callable[[Call, list[Any]], Spec]:
    """nn ops over a batch (conv, pools, norms, pad, interpolate): output row r <- input row
    r; other tracked tensors (weights) are used by every row. `unbatched_ndim`: an input
    with that many dims has no batch dim and its rows (channels) are mixed."""
    def rule(call: Call, outs: list[Any]) -> Spec:
        x = call.x()
        n_out = n_rows(shape_of(outs[0]))
        i = call.input_of(x)
        segments: Segments = []
        if i is not None and n_out:
            if unbatched_ndim is not None and x.ndim == unbatched_ndim:
                segments.append(all_rows(i, n_out, "unbatched input: channels mixed"))
            elif n_rows(shape_of(x)) != n_out:
                raise NotUnderstood
            else:
                segments.append(identity(i, n_out))
        for a in find_tracked(call.args[1:], call.kwargs):
            j = call.input_of(a)
            if j is not None and j != i and n_out:
                segments.append(all_rows(cast(int, j), n_out, "weights of the op"))
        return merge(segments), True, "{}"
    return rule


@rule("torch", "batch_norm", spaces="F", precision="aggregate",
      note="batch statistics (training, or no running stats): all rows")
def _batch_norm(call: Call, outs: list[Any]) -> Spec:
    """Training mode (or no running stats) normalises with batch statistics: all rows."""
    segments, ok, params = _batched()(call, outs)
    if not (call.arg(5, "training", False) or call.arg(1, "running_mean") is None):
        return segments, ok, params
    i, n = call.input_of(call.x()), n_rows(shape_of(outs[0]))
    return ([all_rows(i, n, REDUCTION) if s[0] == i else s for s in segments], ok,
            '{"batch_statistics": true}')


@rule("torch", "embedding", spaces="F")
def _embedding(call: Call, outs: list[Any]) -> Spec:
    """F.embedding(indices, weight): row r <- indices row r; weight rows indices[r, ...]."""
    x, weight = call.x(), call.arg(1, "weight")
    if x.ndim == 0:
        raise NotUnderstood
    i, j = call.input_of(x), call.input_of(weight)
    n_out = n_rows(shape_of(outs[0]))
    segments: Segments = [identity(i, n_out)] if i is not None and n_out else []
    ok = True
    if j is not None and n_out:
        table = as_numpy(x).astype(np.int64).reshape(n_out, -1)
        looked_up, ok = fanin_segments(j, table, "op not understood: embedding (too wide)")
        segments.extend(looked_up)
    return segments, ok, "{}"


@rule("torch", "pad", spaces="F")
def _pad(call: Call, outs: list[Any]) -> Spec:
    """F.pad pads the last len(pad) // 2 dims; padding dim 0 adds rows with no input."""
    x, pad = call.x(), list(call.arg(1, "pad"))
    mode = call.arg(2, "mode", "constant")
    if len(pad) // 2 < x.ndim:
        return one_input(call, outs, lambda i, n: [identity(i, n)])
    if mode != "constant":
        raise NotUnderstood
    before, n_in = int(pad[-2]), n_rows(shape_of(x))

    def segments(i: int, n: int) -> Segments:
        lo, hi = max(0, before), min(n, n_in + before)  # output rows holding input rows
        if hi <= lo:
            call.selectors.add(i)  # every row cropped away: padding only, no input rows
            return []
        return [range_segment(i, lo - before, 1, hi - lo, lo)]
    return one_input(call, outs, segments, json.dumps({"pad": pad}))


@rule("torch", "scaled_dot_product_attention", spaces="F", precision="aggregate",
      note="2-D inputs: all rows of key and value")
def _attention(call: Call, outs: list[Any]) -> Spec:
    """scaled_dot_product_attention: batched (>= 3-D) inputs keep their batch rows; 2-D
    inputs' rows are positions, each attending to all of k and v."""
    q = call.x()
    if q.ndim >= 3:
        return elementwise(call, outs)
    n_out = n_rows(shape_of(outs[0]))
    i = call.input_of(q)
    segments: Segments = [identity(i, n_out)] if i is not None and n_out else []
    for pos, name in ((1, "key"), (2, "value"), (3, "attn_mask")):
        j = call.input_of(call.arg(pos, name))
        if j is not None and n_out:
            segments.append(all_rows(j, n_out, "attention over positions"))
    return merge(segments), True, "{}"




for _k in (1, 2, 3):
    rule("torch", f"conv{_k}d conv_transpose{_k}d", spaces="F", precision="aggregate",
         note="unbatched input, and all rows of the weight")(_batched(_k + 1))
rule("torch", """avg_pool1d avg_pool2d avg_pool3d max_pool1d max_pool2d max_pool3d
     max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices
     adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d
     adaptive_max_pool2d adaptive_max_pool3d lp_pool1d lp_pool2d layer_norm group_norm
     instance_norm rms_norm local_response_norm one_hot interpolate upsample
     upsample_nearest upsample_bilinear pixel_shuffle pixel_unshuffle unfold""",
     spaces="F", precision="aggregate", note="unbatched input: all rows")(_batched())


# -- not recorded: data-independent results, metadata and autograd plumbing ------------

rule("torch", """zeros_like ones_like empty_like full_like rand_like randn_like
     randint_like new_zeros new_ones new_empty new_full new_tensor""",
     spaces="torch Tensor")(UNTRACKED)
rule("torch", "grad", spaces="Tensor", properties=True)(UNTRACKED)
rule("torch", """shape dtype device ndim requires_grad is_leaf grad_fn is_cuda layout""",
     spaces="Tensor", properties=True)(PASS)
rule("torch", """dim size numel __len__ stride storage_offset is_contiguous element_size
     item tolist __bool__ __float__ __int__ __index__ __hash__ __format__ data_ptr
     backward register_hook retain_grad get_device nelement numpy __array__
     is_floating_point is_complex untyped_storage __dlpack__ __dlpack_device__
     share_memory_""", spaces="Tensor")(PASS)
