"""One small example call per registered op, for the row-map contract (test_op_contract.py).

An example is `fn(a, f)`, f the registered function (so one entry serves `torch.X`,
`torch.Tensor.X` and `F.X` alike): `a.x`, `a.y` are (4, 3) float inputs and `a.v` a (4,)
float input, tracked when the contract records and plain when it perturbs rows; `a.i`
(int64 row indices), `a.m` (a bool mask), `a.w` (a (3, 3) weight) are plain constants.

Lookup for an op named `numpy.sort` / `torch.Tensor.add_`: EXAMPLES by its public name,
then by its name without the namespace (`sort`, `add_`, shared by torch, Tensor and F),
then the default trials of its rule (DEFAULT_TRIALS: f(x), f(x, y), f(x, 0), ...; the
first that runs and gives a tracked result). An op none of these can call fails the
contract: give it an entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Example = Callable[[Any, Any], Any]  # (inputs, the registered function) -> result


def _np() -> Any:
    import numpy as np

    return np


def _t() -> Any:
    import torch

    return torch


def _F() -> Any:  # noqa: N802 - torch.nn.functional
    import torch.nn.functional as F

    return F


# tried in order when an op has no explicit example (long: integer and bitwise ops)
DEFAULT_TRIALS: list[Example] = [
    lambda a, f: f(a.x),
    lambda a, f: f(a.x, a.y),
    lambda a, f: f(a.x, 0),
    lambda a, f: f(a.x, 1),
    lambda a, f: f(a.x, a.y, a.y),
    lambda a, f: f(a.x, 0.5),
    lambda a, f: f(a.x, 0.5, True),
    lambda a, f: f([a.x, a.y]),
    lambda a, f: f(a.x.long()),
    lambda a, f: f(a.x.long(), a.y.long()),
]

# special ops whose result is not a tensor (pickling): checked to record nothing
UNRECORDED = {"torch.Tensor.__reduce_ex__"}

# by short name (numpy and torch alike) or by public name
EXAMPLES: dict[str, Example] = {
    # -- NumPy ---------------------------------------------------------------------------
    "numpy.average": lambda a, f: f(a.x, axis=1, weights=[1.0, 2.0, 3.0]),
    "numpy.percentile": lambda a, f: f(a.x, 50, axis=1),
    "numpy.nanpercentile": lambda a, f: f(a.x, 50, axis=0),
    "numpy.quantile": lambda a, f: f(a.x, [0.2, 0.8], axis=1),
    "numpy.nanquantile": lambda a, f: f(a.x, 0.5),
    "numpy.where": lambda a, f: f(a.x > 1.0, a.x, a.y),
    "numpy.clip": lambda a, f: f(a.x, 0.8, 1.2),
    "numpy.broadcast_to": lambda a, f: f(a.v[:1], (4, 1)),
    "numpy.dot": lambda a, f: f(a.x, a.w),
    "numpy.matmul": lambda a, f: f(a.x, a.w),
    "numpy.inner": lambda a, f: f(a.x, a.y),
    "numpy.vdot": lambda a, f: f(a.x, a.y),
    "numpy.swapaxes": lambda a, f: f(a.x, 0, 1),
    "numpy.moveaxis": lambda a, f: f(a.x, 0, -1),
    "numpy.rollaxis": lambda a, f: f(a.x, 1),
    "numpy.reshape": lambda a, f: f(a.x, (6, 2)),
    "numpy.squeeze": lambda a, f: f(a.x[:, :1]),
    "numpy.expand_dims": lambda a, f: f(a.x, 1),
    "numpy.roll": lambda a, f: f(a.x, 1, axis=0),
    "numpy.repeat": lambda a, f: f(a.x, 2, axis=0),
    "numpy.take": lambda a, f: f(a.x, a.i, axis=0),
    "numpy.delete": lambda a, f: f(a.x, [1, 3], axis=0),
    "numpy.insert": lambda a, f: f(a.x, [2, 0], a.y[1:3], axis=0),
    "numpy.append": lambda a, f: f(a.x, a.y[:2], axis=0),
    "numpy.pad": lambda a, f: f(a.x, ((2, 1), (0, 1)), mode="reflect"),
    "numpy.compress": lambda a, f: f([True, False, True, True], a.x, axis=0),
    "numpy.take_along_axis": lambda a, f: f(a.x, _np().array(
        [[2, 0, 1], [3, 3, 0], [1, 2, 2], [0, 1, 3]]), axis=0),
    "numpy.resize": lambda a, f: f(a.x, (6, 3)),
    "numpy.lib.stride_tricks.sliding_window_view": lambda a, f: f(a.x, 2, axis=0),
    "narrow": lambda a, f: f(a.x, 0, 1, 2),
    "narrow_copy": lambda a, f: f(a.x, 0, 1, 2),
    "torch.Tensor.unfold": lambda a, f: f(a.x, 0, 2, 1),
    "numpy.concatenate": lambda a, f: f([a.x, a.y]),
    "numpy.concat": lambda a, f: f([a.x, a.y], axis=1),
    "numpy.stack": lambda a, f: f([a.x, a.y]),
    "numpy.split": lambda a, f: f(a.x, 2),
    "numpy.array_split": lambda a, f: f(a.x, 3),
    "numpy.vsplit": lambda a, f: f(a.x, 2),
    "numpy.hsplit": lambda a, f: f(a.x, 3),
    "numpy.diff": lambda a, f: f(a.x, axis=0),
    "numpy.may_share_memory": lambda a, f: f(a.x, a.y),
    "numpy.shares_memory": lambda a, f: f(a.x, a.y),
    "numpy.full_like": lambda a, f: f(a.x, 2.0),
    # -- torch ---------------------------------------------------------------------------
    "masked_fill": lambda a, f: f(a.x, a.m, 0.0),
    "masked_fill_": lambda a, f: f(a.x, a.m, 0.0),
    "lerp": lambda a, f: f(a.x, a.y, 0.3),
    "lerp_": lambda a, f: f(a.x, a.y, 0.3),
    "addcmul": lambda a, f: f(a.x, a.y, a.y),
    "addcdiv": lambda a, f: f(a.x, a.y, a.y),
    "clamp": lambda a, f: f(a.x, 0.8, 1.2),
    "clip": lambda a, f: f(a.x, 0.8, 1.2),
    "threshold": lambda a, f: f(a.x, 1.0, 0.0),
    "threshold_": lambda a, f: f(a.x, 1.0, 0.0),
    "gcd": lambda a, f: f(a.x.long(), a.y.long()),
    "lcm": lambda a, f: f(a.x.long(), a.y.long()),
    "bitwise_and": lambda a, f: f(a.x.long(), a.y.long()),
    "bitwise_or": lambda a, f: f(a.x.long(), a.y.long()),
    "bitwise_xor": lambda a, f: f(a.x.long(), a.y.long()),
    "bitwise_not": lambda a, f: f(a.x.long()),
    "ldexp": lambda a, f: f(a.x, a.y.long()),
    "prelu": lambda a, f: f(a.x, _t().tensor([0.25], dtype=a.x.dtype)),
    "dropout1d": lambda a, f: f(a.x, 0.5),
    "dropout2d": lambda a, f: f(a.x[:, :, None], 0.5),
    "dropout3d": lambda a, f: f(a.x[:, :, None, None], 0.5),
    "isclose": lambda a, f: f(a.x, a.y),
    "polar": lambda a, f: f(a.x, a.y),
    "kthvalue": lambda a, f: f(a.x, 2, 0),
    "quantile": lambda a, f: f(a.x, 0.5, dim=1),
    "nanquantile": lambda a, f: f(a.x, 0.5, dim=0),
    "norm": lambda a, f: f(a.x, dim=1),
    "mode": lambda a, f: f(a.x, 0),
    "topk": lambda a, f: f(a.x, 2, dim=1),
    "normalize": lambda a, f: f(a.x, dim=1),
    "softmin": lambda a, f: f(a.x, dim=1),
    "glu": lambda a, f: f(_t().cat([a.x, a.y], dim=1), dim=1),
    "mse_loss": lambda a, f: f(a.x, a.y, reduction="none"),
    "l1_loss": lambda a, f: f(a.x, a.y),
    "smooth_l1_loss": lambda a, f: f(a.x, a.y),
    "huber_loss": lambda a, f: f(a.x, a.y, reduction="sum"),
    "cross_entropy": lambda a, f: f(a.x, a.i % 3, reduction="none"),
    "nll_loss": lambda a, f: f(a.x, a.i % 3),
    "binary_cross_entropy": lambda a, f: f(a.x / 4, a.y / 4),
    "binary_cross_entropy_with_logits":
        lambda a, f: f(a.x, a.y / 2, reduction="none"),
    "kl_div": lambda a, f: f(a.x, a.y, reduction="batchmean"),
    "soft_margin_loss": lambda a, f: f(a.x, a.y),
    "poisson_nll_loss": lambda a, f: f(a.x, a.y),
    "gaussian_nll_loss": lambda a, f: f(a.x, a.y, a.y),
    "margin_ranking_loss": lambda a, f: f(a.x, a.y, a.y.sign()),
    "hinge_embedding_loss": lambda a, f: f(a.x, a.y.sign()),
    "cosine_embedding_loss": lambda a, f: f(a.x, a.y, a.v.sign()),
    "multilabel_soft_margin_loss": lambda a, f: f(a.x, a.y),
    "index_select": lambda a, f: f(a.x, 0, a.i),
    "gather": lambda a, f: f(a.x, 0, a.i[:, None].expand(4, 3)),
    "take_along_dim": lambda a, f: f(a.x, a.i[:, None], dim=0),
    "take": lambda a, f: f(a.x, a.i),
    "masked_select": lambda a, f: f(a.x, a.m),
    "torch.Tensor.where": lambda a, f: f(a.x, a.x > 1.0, a.y),  # self, condition, other
    "where": lambda a, f: f(a.x > 1.0, a.x, a.y),
    "split_with_sizes": lambda a, f: f(a.x, [1, 3]),
    "unsafe_split": lambda a, f: f(a.x, 2),
    "split": lambda a, f: f(a.x, 2),
    "chunk": lambda a, f: f(a.x, 2),
    "tensor_split": lambda a, f: f(a.x, [1, 3]),
    "vsplit": lambda a, f: f(a.x, 2),
    "hsplit": lambda a, f: f(a.x, 3),
    "dsplit": lambda a, f: f(a.x[:, :, None].expand(4, 3, 2), 2),
    "reshape": lambda a, f: f(a.x, (6, 2)),
    "view": lambda a, f: f(a.x, 6, 2),
    "unflatten": lambda a, f: f(a.x, 1, (3, 1)),
    "view_as": lambda a, f: f(a.x, a.y),
    "reshape_as": lambda a, f: f(a.x, a.y),
    "expand": lambda a, f: f(a.x[:1], 4, 3),
    "expand_as": lambda a, f: f(a.x[:1], a.y),
    "broadcast_to": lambda a, f: f(a.x[:1], (4, 3)),
    "broadcast_tensors": lambda a, f: f(a.x, a.v[:3]),
    "permute": lambda a, f: f(a.x, (1, 0)),
    "transpose": lambda a, f: f(a.x, 0, 1),
    "swapaxes": lambda a, f: f(a.x, 0, 1),
    "swapdims": lambda a, f: f(a.x, 0, 1),
    "movedim": lambda a, f: f(a.x, 0, 1),
    "moveaxis": lambda a, f: f(a.x, 0, 1),
    "flip": lambda a, f: f(a.x, (0,)),
    "roll": lambda a, f: f(a.x, 1, 0),
    "repeat_interleave": lambda a, f: f(a.x, 2, dim=0),
    "repeat": lambda a, f: f(a.x, 2, 1),
    "tile": lambda a, f: f(a.x, (2, 1)),
    "diff": lambda a, f: f(a.x, dim=0),
    "mm": lambda a, f: f(a.x, a.w),
    "matmul": lambda a, f: f(a.x, a.w),
    "bmm": lambda a, f: f(a.x[:, None], a.w.expand(4, 3, 3)),
    "mv": lambda a, f: f(a.x, a.w[0]),
    "dot": lambda a, f: f(a.v, a.v),
    "vdot": lambda a, f: f(a.v, a.v),
    "inner": lambda a, f: f(a.x, a.y),
    "outer": lambda a, f: f(a.v, a.v),
    "ger": lambda a, f: f(a.v, a.v),
    "addmm": lambda a, f: f(a.x, a.x, a.w),
    "addmv": lambda a, f: f(a.v, a.x, a.w[0]),
    "addmv_": lambda a, f: f(a.v, a.x, a.w[0]),
    "baddbmm": lambda a, f: f(a.x[:, None], a.x[:, None], a.w.expand(4, 3, 3)),
    "addr": lambda a, f: f(a.x[:, :1].expand(4, 4).contiguous(), a.v, a.v),
    "cdist": lambda a, f: f(a.x, a.y),
    "__matmul__": lambda a, f: f(a.x, a.w),
    "__rmatmul__": lambda a, f: f(a.x.T, a.w.T),
    "linear": lambda a, f: f(a.x, a.w, a.w[0]),
    "batch_norm": lambda a, f: f(a.x, None, None, training=True),
    "embedding": lambda a, f: f(a.i, a.x),
    "pad": lambda a, f: f(a.x, (1, 1, 1, 0)),
    "scaled_dot_product_attention":
        lambda a, f: f(a.x, a.y, a.y),
    "one_hot": lambda a, f: f(a.x.long(), 4),
    "interpolate": lambda a, f: f(a.x[:, None], scale_factor=2.0),
    "upsample": lambda a, f: f(a.x[:, None], scale_factor=2.0),
    "upsample_nearest": lambda a, f: f(a.x[:, None], scale_factor=2.0),
    "upsample_bilinear": lambda a, f: f(
        a.x[:, None, :, None].expand(4, 1, 3, 2), scale_factor=2),
    "layer_norm": lambda a, f: f(a.x, (3,)),
    "group_norm": lambda a, f: f(a.x, 3),
    "instance_norm": lambda a, f: f(a.x[:, :, None].expand(4, 3, 2)),
    "rms_norm": lambda a, f: f(a.x, (3,)),
    "local_response_norm": lambda a, f: f(a.x[:, :, None], 2),
    "pixel_shuffle":
        lambda a, f: f(_t().cat([a.x, a.y[:, :1]], 1)[:, :, None, None], 2),
    "pixel_unshuffle":
        lambda a, f: f(a.x[:, None, :2, None].expand(4, 1, 2, 2), 2),
    "unfold": lambda a, f: f(a.x[:, None, :, None].expand(4, 1, 3, 2), (2, 1)),
    "lp_pool1d": lambda a, f: f(a.x[:, None], 2, 2),
    "lp_pool2d": lambda a, f: f(a.x[:, None, :, None].expand(4, 1, 3, 2), 2, 1),
    "__setitem__": lambda a, f: (f(a.x, slice(0, 2), a.y[:2]), a.x)[1],
    "__deepcopy__": lambda a, f: f(a.x, {}),
    "__reduce_ex__": lambda a, f: f(a.x, 2),
    "copy_": lambda a, f: f(a.x, a.y),
    "detach_": lambda a, f: f(a.x.clone()),
    "type": lambda a, f: f(a.x, _t().float32),
    "type_as": lambda a, f: f(a.x, a.y),
    "to": lambda a, f: f(a.x, _t().float32),
    # None: not exercised here, with the reason
    "numpy.ascontiguousarray": None,  # NumPy >= 2 dispatches it only with like=: never seen
    "numpy.asfortranarray": None,  # (same)
    "cuda": None,  # no GPU in the contract: checked elsewhere (tests/unit/test_torch_tracking.py)
    "pin_memory": None,
    "is_cuda": None,
    "backward": None,  # autograd plumbing, never recorded (PASS): nothing to map
    "register_hook": None,
    "retain_grad": None,
    "__dlpack__": None,
    "__dlpack_device__": None,
    "share_memory_": None,
    "get_device": None,
    "untyped_storage": None,
    "new_full": lambda a, f: f(a.x, (2,), 1.0),
    "new_tensor": lambda a, f: f(a.x, [1.0]),
    "new_zeros": lambda a, f: f(a.x, (2,)),
    "new_ones": lambda a, f: f(a.x, (2,)),
    "new_empty": lambda a, f: f(a.x, (2,)),
    "randint_like": lambda a, f: f(a.x, 5),
    "__format__": lambda a, f: f(a.x[:1, :1], ""),
    "__index__": lambda a, f: f(a.x[:1, :1].long()),
    "__int__": lambda a, f: f(a.x[:1, :1]),
    "__float__": lambda a, f: f(a.x[:1, :1]),
    "__bool__": lambda a, f: f(a.x[:1, :1]),
    "item": lambda a, f: f(a.x[:1, :1]),
}


def _batch(a: Any, k: int) -> Any:
    """x as a batch of 4 rows, 3 channels and k spatial dims of size 2."""
    return a.x.reshape(4, 3, *((1,) * k)).expand(4, 3, *((2,) * k))


for _k in (1, 2, 3):
    EXAMPLES[f"conv{_k}d"] = (lambda k: lambda a, f: f(
        _batch(a, k), _t().ones((2, 3, *((1,) * k)), dtype=a.x.dtype)))(_k)
    EXAMPLES[f"conv_transpose{_k}d"] = (lambda k: lambda a, f: f(
        _batch(a, k), _t().ones((3, 2, *((1,) * k)), dtype=a.x.dtype)))(_k)
    for _pool in ("avg_pool", "max_pool", "adaptive_avg_pool", "adaptive_max_pool"):
        _size = 1 if _pool.startswith("adaptive") else 2
        EXAMPLES[f"{_pool}{_k}d"] = (lambda k, sz: lambda a, f: f(_batch(a, k), sz))(_k, _size)
    EXAMPLES[f"max_pool{_k}d_with_indices"] = (lambda k: lambda a, f: f(_batch(a, k), 2))(_k)
