"""From the training loss's gradient to the margin's: the factored capture reuses the step's
own backward, so every layer's δ is the loss gradient, -c·q_i times the gradient of the
output function f_i of the same row (q_i = 1 - p_y, or y - f for regression; c the loss's
per-row scale: 1/B for a mean, 1 for a sum, 2/B for F.mse_loss).

Softmax cross-entropy: dℓ/dz = c (p - e_y) = -c q ∂f/∂z. Binary logit: c (σ(z) - y) = -c q s,
s = ±1. Squared error: c (f - y). The model's output is wrapped at the forward so that its
backward passes here first: c is measured (and must be one number for the batch: any other
loss is named and refused), and the entries float32 computes by cancellation are rebuilt —
p_y - 1 loses every digit once q < 6e-8, so the label entry is recomputed as -Σ of the other
entries (multiclass) or as -c s σ(-f) (binary). Those entries change only by the rounding
error of the value the backward had (training is unchanged to 1e-7, see the tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

TOLERANCE = 1e-3  # relative mismatch between the backward's gradient and c (p - e_y)
ACCURATE_Q = 1e-2  # binary/label entries are compared only where float32 keeps them


class LossMismatch(ValueError):
    """The loss whose backward ran is not the one the capture can rescale."""


@dataclass
class OutputGradient:
    """What the step's forward and backward leave at the model's output: the output, the
    corrected loss gradient there, and the messages of anything refused."""

    task: str
    labels: torch.Tensor
    output: torch.Tensor | None = None
    grad: torch.Tensor | None = None
    calls: int = 0
    errors: list[str] = field(default_factory=list)


def _classes(z: Any) -> bool:
    return z.ndim == 2 and z.shape[1] > 1


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def margins(z: np.ndarray, labels: np.ndarray, task: str) -> np.ndarray:
    """f per row in float64: the label's margin log p_y - log(1 - p_y), or the output."""
    if task == "regression" or not _classes(z):
        f = z.reshape(len(z))
        return f if task == "regression" else np.where(labels.reshape(-1) > 0, f, -f)
    y = labels.reshape(-1).astype(np.int64)
    rows = np.arange(len(y))
    others = z.copy()
    others[rows, y] = -np.inf
    top = others.max(1)
    return z[rows, y] - top - np.log(np.exp(others - top[:, None]).sum(1))


def _binary_scale(z: np.ndarray, g: np.ndarray, labels: np.ndarray) -> float | None:
    """c of a binary logit's loss gradient c (σ(z) - y), from the rows float32 keeps."""
    s = np.where(labels.reshape(-1) > 0, 1.0, -1.0)
    q = 1.0 / (1.0 + np.exp(s * z.reshape(-1)))
    expect, gv = -s * q, g.reshape(-1)
    sure = q > ACCURATE_Q
    if not sure.any():
        return None
    c = float(gv[sure] @ expect[sure] / (expect[sure] @ expect[sure]))
    if np.abs(gv[sure] - c * expect[sure]).max() > TOLERANCE * np.abs(c * expect[sure]).max():
        raise LossMismatch("the loss gradient at the outputs is not c (σ(z) - y) for one c: "
                           "capture.step() rescales binary cross-entropy with logits (mean "
                           "or sum) only")
    return c


def correct(g: torch.Tensor, z: torch.Tensor, labels: torch.Tensor, task: str) -> torch.Tensor:
    """The loss gradient at the outputs with the entries float32 cancels rebuilt: the label
    entry as -Σ of the others (softmax), c (σ(z) - y) from exact σ (binary logit)."""
    if task == "regression":
        return g
    if _classes(z):
        y = labels.reshape(-1, 1).to(g.device, torch.long)
        others = g.scatter(1, y, 0.0)  # the label entry zeroed, then refilled
        return others.scatter_(1, y, others.sum(1, keepdim=True).neg_())
    zn, ln = _numpy(z), labels.detach().cpu().double().numpy()
    c = _binary_scale(zn, _numpy(g), ln)
    if c is None:
        return g
    s = np.where(ln.reshape(-1) > 0, 1.0, -1.0)
    exact = -c * s / (1.0 + np.exp(s * zn.reshape(-1)))
    return torch.as_tensor(exact.reshape(g.shape), dtype=g.dtype, device=g.device)


def loss_scale(state: OutputGradient) -> tuple[float | None, np.ndarray]:
    """(c, f) of a finished step: the loss's per-row scale measured from the gradient at
    the outputs (None when no row can tell: every row certain, or every residual 0), and
    the float64 margins. Raises LossMismatch unless the gradient is c x that of the
    expected loss for one c."""
    assert state.output is not None and state.grad is not None
    z, g = _numpy(state.output), _numpy(state.grad)
    labels = state.labels.detach().cpu().double().numpy()
    f = margins(z, labels, state.task)
    if state.task == "regression":
        r, gv = z.reshape(-1) - labels.reshape(-1), g.reshape(-1)
        denom = float(r @ r)
        if denom == 0.0:
            return None, f
        c = float(gv @ r) / denom
        if np.abs(gv - c * r).max() > TOLERANCE * np.abs(gv).max():
            raise LossMismatch("the loss gradient at the outputs is not c (f - y) for one c: "
                               "capture.step() rescales squared error (F.mse_loss, mean or "
                               "sum) only")
        return c, f
    if not _classes(z):
        return _binary_scale(z, g, labels), f
    y = labels.reshape(-1).astype(np.int64)
    rows = np.arange(len(y))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = 1.0 / (1.0 + np.exp(f))  # Σ_{j≠y} p_j, exact where p_y rounds to 1
    off = g.copy()
    off[rows, y] = 0.0
    if q.sum() == 0.0:
        return None, f
    c = float(off.sum() / q.sum())
    expect = c * p
    expect[rows, y] = 0.0
    worst = np.abs(off - expect).max()
    sure = q > ACCURATE_Q
    label_err = (np.abs(g[rows, y] + c * q)[sure] / (abs(c) * q[sure])).max() \
        if sure.any() else 0.0
    if label_err > TOLERANCE or worst > TOLERANCE * np.abs(expect).max():
        raise LossMismatch("the loss gradient at the outputs is not c (softmax(z) - "
                           "onehot(y)) for one c: capture.step() rescales softmax "
                           "cross-entropy of the model's outputs (mean or sum, no label "
                           "smoothing or class weights) only")
    return c, f


class _Rescale(torch.autograd.Function):
    """Identity forward; backward rebuilds the cancelled entries and keeps the result."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, state: OutputGradient) -> torch.Tensor:
        ctx.state = state
        ctx.save_for_backward(out)
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        state: OutputGradient = ctx.state
        (out,) = ctx.saved_tensors
        try:
            state.grad = correct(g, out, state.labels, state.task)
        except LossMismatch as exc:
            state.errors.append(str(exc))
            return g, None
        return state.grad, None


def wrap_output(state: OutputGradient) -> Any:
    """The forward hook for the model: its output passes through _Rescale."""

    def hook(module: torch.nn.Module, args: tuple, out: Any) -> Any:
        if not isinstance(out, torch.Tensor):
            state.errors.append(f"the model returned {type(out).__name__}, not a tensor of "
                                "outputs")
            return out
        state.calls += 1
        state.output = out if type(out) is torch.Tensor else out.as_subclass(torch.Tensor)
        return _Rescale.apply(out, state) if out.requires_grad else out

    return hook
