"""From the training loss's gradient to the margin's: the factored capture reuses the step's
own backward, so every layer's δ is the loss gradient, -c·q_i times the gradient of the
output function f_i of the same row (q_i = 1 - p_y, or y - f for regression; c the loss's
per-row scale: 1/B for a mean, 1 for a sum, 2/B for F.mse_loss).

Softmax cross-entropy: dℓ/dz = c (p - e_y) = -c q ∂f/∂z. Binary logit: c (σ(z) - y) = -c q s,
s = ±1. Squared error: c (f - y). A tensor hook on the model's output sees its gradient before
the backward goes on: c is measured (and must be one number for the batch: any other
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


_SOFTMAX_REFUSAL = ("the loss gradient at the outputs is not c (softmax(z) - onehot(y)) for "
                    "one c: capture.step() rescales softmax cross-entropy of the model's "
                    "outputs (mean or sum, no label smoothing or class weights) only")


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
    label: torch.Tensor | None = None  # softmax: the rebuilt label entries, -c q per row
    hooks: Any = None  # the output hook: our own hook dict, or a handle; see release()

    def backward(self, g: torch.Tensor) -> torch.Tensor:
        """The tensor hook on the output: keep the corrected gradient and pass it on (or,
        for a loss the capture cannot read, note why and pass g on unchanged)."""
        assert self.output is not None  # the hook is registered on it
        try:
            self.grad, self.label = correct(g, self.output, self.labels, self.task)
        except LossMismatch as exc:
            self.errors.append(str(exc))
            return g
        return self.grad

    def release(self) -> None:
        """Remove the hook from the output once the step is over: the hook holds this
        object, which holds the output, and a cycle through the output's autograd node is
        one Python's collector cannot see (every step's graph would stay in memory)."""
        hooks, self.hooks = self.hooks, None
        if isinstance(hooks, dict):
            hooks.clear()
        elif hooks is not None:
            hooks.remove()

    def floor(self) -> float:
        """The smallest over rows of the row's largest |loss gradient| (softmax: |label
        entry|, the largest when the loss is cross-entropy)."""
        assert self.grad is not None
        if self.label is not None:
            return -float(self.label.max())
        return float(self.grad.abs().reshape(len(self.grad), -1).amax(1).min())


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


def correct(g: torch.Tensor, z: torch.Tensor, labels: torch.Tensor, task: str
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The loss gradient at the outputs with the entries float32 cancels rebuilt: the label
    entry as -Σ of the others (softmax; also returned, [n, 1]), c (σ(z) - y) from exact σ
    (binary logit)."""
    if task == "regression":
        return g, None
    if _classes(z):
        y = labels.reshape(-1, 1)
        if y.dtype != torch.long or y.device != g.device:
            y = y.to(g.device, torch.long)
        others = g.scatter(1, y, 0.0)  # the label entry zeroed, then refilled
        label = others.sum(1, keepdim=True).neg_()
        return others.scatter_(1, y, label), label
    zn, ln = _numpy(z), labels.detach().cpu().double().numpy()
    c = _binary_scale(zn, _numpy(g), ln)
    if c is None:
        return g, None
    s = np.where(ln.reshape(-1) > 0, 1.0, -1.0)
    exact = -c * s / (1.0 + np.exp(s * zn.reshape(-1)))
    return torch.as_tensor(exact.reshape(g.shape), dtype=g.dtype, device=g.device), None


def loss_scale(state: OutputGradient, f: np.ndarray | None = None
               ) -> tuple[float | None, np.ndarray]:
    """(c, f) of a finished step: the loss's per-row scale measured from the gradient at
    the outputs (None when no row can tell: every row certain, or every residual 0), and
    the float64 margins (computed unless given). Raises LossMismatch unless the gradient
    is c x that of the expected loss for one c."""
    assert state.output is not None and state.grad is not None
    z, g = _numpy(state.output), _numpy(state.grad)
    labels = state.labels.detach().cpu().double().numpy()
    f = margins(z, labels, state.task) if f is None else f
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
    (measured,) = _softmax_scales(z, g, labels, f, 1)
    if isinstance(measured, LossMismatch):
        raise measured
    return measured, f


def _softmax_scales(z: np.ndarray, g: np.ndarray, labels: np.ndarray, f: np.ndarray,
                    steps: int) -> list[float | None | LossMismatch]:
    """c (None: no row can tell; or its refusal) of each of `steps` equal-sized steps whose
    softmax outputs z, output gradients g, labels and margins f are stacked row-wise: every
    quantity is row-wise or a reduction over one step's contiguous rows, so a step's c is
    the same whether it is measured alone or in a group."""
    y = labels.reshape(-1).astype(np.int64)
    if len(y) == 0:
        return [None] * steps
    rows = np.arange(len(y))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = 1.0 / (1.0 + np.exp(f))  # Σ_{j≠y} p_j, exact where p_y rounds to 1
    off = g.copy()
    off[rows, y] = 0.0
    q_sums = q.reshape(steps, -1).sum(1)
    known = q_sums != 0.0
    c = np.where(known, off.reshape(steps, -1).sum(1) / np.where(known, q_sums, 1.0), 1.0)
    c_rows = np.repeat(c, len(y) // steps)
    expect = c_rows[:, None] * p
    expect[rows, y] = 0.0
    worst = np.abs(off - expect).reshape(steps, -1).max(1)
    largest = np.abs(expect).reshape(steps, -1).max(1)
    sure = q > ACCURATE_Q
    with np.errstate(divide="ignore", invalid="ignore"):  # rows not `sure` are dropped
        label_err = np.where(sure, np.abs(g[rows, y] + c_rows * q) / (np.abs(c_rows) * q),
                             -np.inf).reshape(steps, -1).max(1)
    scales: list[float | None | LossMismatch] = []
    for i in range(steps):
        if not known[i]:
            scales.append(None)
        elif label_err[i] > TOLERANCE or worst[i] > TOLERANCE * largest[i]:
            scales.append(LossMismatch(_SOFTMAX_REFUSAL))
        else:
            scales.append(float(c[i]))
    return scales


def watch(state: OutputGradient) -> Any:
    """What the model's output is passed through in a training step (Taps' root): the
    call is counted, the output kept, and a tensor hook registered whose return value is
    the corrected gradient, so the backward carries it on to every layer."""

    def on_output(out: Any) -> Any:
        if not isinstance(out, torch.Tensor):
            state.errors.append(f"the model returned {type(out).__name__}, not a tensor of "
                                "outputs")
            return out
        state.calls += 1
        state.output = out if type(out) is torch.Tensor else out.as_subclass(torch.Tensor)
        if out.requires_grad:
            if out.grad_fn is not None and out._backward_hooks is None:
                # what out.register_hook() does, without the handle it makes each call
                state.hooks = {0: state.backward}
                out._backward_hooks = state.hooks
                out.grad_fn._register_hook_dict(out)
            else:  # hooks of its own already: ours is added, and removed by its handle
                state.hooks = out.register_hook(state.backward)
        return out

    return on_output


def group_scales(states: list[OutputGradient]
                 ) -> tuple[list[np.ndarray], list[float | None | LossMismatch]]:
    """(f, c or its refusal) of each of several finished steps. Softmax steps of one shape
    go in one go: every quantity is row-wise or a per-step reduction over the same
    contiguous rows, so each step's figures are those loss_scale gives it (bit for bit);
    other steps go one by one."""
    first = states[0].output
    assert first is not None
    if len(states) == 1 or not _classes(first) or any(
            s.task != states[0].task or s.output is None or s.grad is None
            or s.output.shape != first.shape or s.labels.shape[0] != first.shape[0]
            for s in states):
        return _one_by_one(states)
    n, g_count = first.shape[0], len(states)
    z = _numpy(torch.cat([s.output for s in states]))  # type: ignore[misc]
    g = _numpy(torch.cat([s.grad for s in states]))  # type: ignore[misc]
    labels = torch.cat([s.labels.reshape(-1) for s in states]).detach().cpu().double().numpy()
    f = margins(z, labels, states[0].task)
    return list(f.reshape(g_count, n)), _softmax_scales(z, g, labels, f, g_count)


def _one_by_one(states: list[OutputGradient]
                ) -> tuple[list[np.ndarray], list[float | None | LossMismatch]]:
    fs: list[np.ndarray] = []
    scales: list[float | None | LossMismatch] = []
    for s in states:
        assert s.output is not None
        f = margins(_numpy(s.output), s.labels.detach().cpu().double().numpy(), s.task)
        fs.append(f)
        try:
            scales.append(loss_scale(s, f)[0])
        except LossMismatch as exc:
            scales.append(exc)
    return fs, scales
