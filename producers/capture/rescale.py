"""From the training loss's gradient to the margin's: the factored capture reuses the step's
own backward, so every layer's δ is the loss gradient, -c·q_i times the gradient of the
output function f_i of the same row (q_i = 1 - p_y, or y - f for regression; c the loss's
per-row scale: 1/B for a mean, 1 for a sum, 2/B for F.mse_loss).

Softmax cross-entropy: dℓ/dz = c (p - e_y) = -c q ∂f/∂z. Binary logit: c (σ(z) - y) = -c q s,
s = ±1. Squared error: c (f - y). The model's output is wrapped at the forward so that its
backward passes here first: c is measured (and must be one number for the batch: any other
loss is named and refused), and the entries float32 computes by cancellation are rebuilt —
p_y - 1 loses every digit once q < 6e-8, so the label entry is recomputed as -Σ of the other
entries (multiclass) or as -c s σ(-f) (binary). Those entries change by less than an ulp of
the value the backward had, in the direction of the exact one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

TOLERANCE = 1e-3  # relative mismatch between the backward's gradient and c (p - e_y)
ACCURATE_Q = 1e-2  # binary/label entries are compared only where float32 keeps them


class LossMismatch(ValueError):
    """The loss whose backward ran is not the one the capture can rescale."""


@dataclass
class OutputGradient:
    """Filled by the backward: the loss's per-row scale c; the model's output."""

    task: str
    labels: torch.Tensor
    output: torch.Tensor | None = None
    scale: float | None = None
    calls: int = 0
    errors: list[str] = field(default_factory=list)


def _classes(z: torch.Tensor) -> bool:
    return z.dim() == 2 and z.shape[1] > 1


def rescale_gradient(g: torch.Tensor, z: torch.Tensor, labels: torch.Tensor, task: str
                     ) -> tuple[torch.Tensor, float | None]:
    """(the corrected loss gradient at the outputs, c) — c None when no row can measure it
    (every row certain); raises LossMismatch when g is not c·(the expected shape)."""
    z64, g64 = z.detach().double(), g.double()
    if task == "regression":
        r = z64.reshape(-1) - labels.double().reshape(-1)
        gv = g64.reshape(-1)
        denom = float((r * r).sum())
        if denom == 0.0:
            return g, None
        c = float((gv * r).sum()) / denom
        if float((gv - c * r).abs().max()) > TOLERANCE * float(gv.abs().max()):
            raise LossMismatch("the loss gradient at the outputs is not c (f - y) for one c: "
                               "capture.step() rescales squared error (F.mse_loss, mean or "
                               "sum) only")
        return g, c
    if not _classes(z):  # binary logit
        zv, gv = z64.reshape(-1), g64.reshape(-1)
        s = torch.where(labels.reshape(-1) > 0, 1.0, -1.0).double()
        q = torch.sigmoid(-s * zv)
        expect = -s * q  # σ(z) - y
        sure = q > ACCURATE_Q
        if not bool(sure.any()):
            return g, None
        c = float((gv[sure] * expect[sure]).sum() / (expect[sure] ** 2).sum())
        if float((gv[sure] - c * expect[sure]).abs().max()) > \
                TOLERANCE * float((c * expect[sure]).abs().max()):
            raise LossMismatch("the loss gradient at the outputs is not c (σ(z) - y) for one "
                               "c: capture.step() rescales binary cross-entropy with logits "
                               "(mean or sum) only")
        return (c * expect).to(g.dtype).reshape(g.shape), c
    y = labels.reshape(-1).long()
    rows = torch.arange(len(y), device=z.device)
    p = torch.softmax(z64, dim=1)
    own = torch.zeros_like(p, dtype=torch.bool)
    own[rows, y] = True
    others = z64.masked_fill(own, float("-inf"))
    q = torch.exp(torch.logsumexp(others, 1) - torch.logsumexp(z64, 1))  # Σ_{j≠y} p_j
    off = g64.masked_fill(own, 0.0).sum(1)  # = c q per row, accurate to float32
    if float(q.sum()) == 0.0:
        return g, None
    c = float(off.sum() / q.sum())
    expect = c * p.masked_fill(own, 0.0)
    worst = float((g64.masked_fill(own, 0.0) - expect).abs().max())
    sure = q > ACCURATE_Q
    if bool(sure.any()):
        label_err = (g64[rows, y] + c * q)[sure].abs() / (abs(c) * q[sure])
        label_bad = float(label_err.max()) > TOLERANCE
    else:
        label_bad = False
    if label_bad or worst > TOLERANCE * float(expect.abs().max()):
        raise LossMismatch("the loss gradient at the outputs is not c (softmax(z) - onehot(y))"
                           " for one c: capture.step() rescales softmax cross-entropy of the "
                           "model's outputs (mean or sum, no label smoothing or class weights)"
                           " only")
    fixed = g.clone()
    fixed[rows, y] = (-g64.masked_fill(own, 0.0).sum(1)).to(g.dtype)
    return fixed, c


class _Rescale(torch.autograd.Function):
    """Identity forward; backward measures c and rebuilds the cancelled entries."""

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
            fixed, state.scale = rescale_gradient(g, out, state.labels, state.task)
        except LossMismatch as exc:
            state.errors.append(str(exc))
            return g, None
        return fixed, None


def wrap_output(model: torch.nn.Module, state: OutputGradient) -> Any:
    """Forward hook on the model: its output passes through _Rescale (returns the handle)."""

    def hook(module: torch.nn.Module, args: tuple, out: Any) -> Any:
        if not isinstance(out, torch.Tensor):
            state.errors.append(f"the model returned {type(out).__name__}, not a tensor of "
                                "outputs")
            return out
        state.calls += 1
        state.output = out
        return _Rescale.apply(out, state) if out.requires_grad else out

    return model.register_forward_hook(hook)
