"""Retained-objective descent: the approximate method for a network's earlier layers
(docs/unlearning.md, section 3).

Newton removal solves ∇J_R(θ) = s·r₀ — the retained objective's gradient equal to the
training gradient the model already had (r₀ = ∇J_D(θ₀), s = n_R/n for a mean loss, 1 for a
sum) — so it removes the forget rows without finishing the training the original left
unfinished. For a network its curvature is only approximate (last layer alone, or K-FAC),
so the step lands short or past that point. This module finishes the solve to first order:
it minimises

    S(θ) = J_R(θ) − s·r₀ᵀθ       (∇S = 0 ⇔ the Newton equation)

on the retained rows with Adam (invariant to the objective's scale, so the recipe's units do
not matter). Nothing here estimates the retrained model's forget loss: the forget rows are
not in S, they move only as S's minimiser moves them, as they would when retraining without
them. S has directions the retained rows barely constrain, along which a single descent
keeps drifting, so convergence is judged from two sides: one descent starts at the Newton
step (on the digits MLP past the solution), one at θ₀ (short of it, its forget loss rising),
in lockstep; they stop when their forget losses agree to within `agree` of the change since
θ₀, and the first is the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from headwater.producers.unlearning.rows import CHUNK
from headwater.producers.unlearning.verification import torch_losses

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Descent:
    """Settings of the retained-objective descent: at most `steps` Adam steps of rate `lr`
    (PyTorch's default) per run, on random retained batches of `batch_size` rows (all of
    them when fewer: then each step is the exact gradient of S); every `check` steps the two
    runs' forget losses are compared, and they stop when they differ by at most `agree` of
    the change since θ₀."""

    steps: int = 600
    lr: float = 1e-3
    agree: float = 0.05
    check: int = 10
    batch_size: int = 2048

    def __post_init__(self) -> None:
        if self.steps < 0 or self.check < 1:
            raise ValueError(f"descent needs steps >= 0 and check >= 1; got "
                             f"steps={self.steps}, check={self.check}")
        if not (self.lr > 0 and self.agree > 0 and self.batch_size >= 1):
            raise ValueError(f"descent needs lr > 0, agree > 0 and batch_size >= 1; got "
                             f"lr={self.lr}, agree={self.agree}, "
                             f"batch_size={self.batch_size}")


def training_gradient(model: torch.nn.Module, params: list[torch.nn.Parameter],
                      rows: tuple[torch.Tensor, torch.Tensor], task: str,
                      lam: float) -> list[torch.Tensor]:
    """r₀ = Σ_i ∇ℓ_i(θ) + λθ over `rows` (every training row), per parameter, float64:
    the summed objective's gradient the model has now (zero only at a converged optimum)."""
    import torch

    total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    was = model.training
    model.eval()
    try:
        for lo in range(0, len(rows[0]), CHUNK):
            loss = torch_losses(model(rows[0][lo:lo + CHUNK]), rows[1][lo:lo + CHUNK],
                                task).sum()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for t, g in zip(total, grads, strict=True):
                if g is not None:
                    t += g.double()
    finally:
        model.train(was)
    return [t + lam * p.detach().double() for t, p in zip(total, params, strict=True)]


def row_gradient_scale(model: torch.nn.Module, params: list[torch.nn.Parameter],
                       *parts: tuple[torch.Tensor, torch.Tensor], task: str, draws: int = 4,
                       seed: int = 0) -> float:
    """√(Σ_i ‖∇ℓ_i(θ)‖²) over the rows of `parts`, without per-row gradients: for independent
    random signs ε_i = ±1, E‖Σ_i ε_i ∇ℓ_i‖² = Σ_i ‖∇ℓ_i‖² (the cross terms vanish), so the
    mean of `draws` signed sums (one pass over the rows each) estimates it. The scale a
    sum of the rows' gradients would have if they pointed nowhere in common."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    was = model.training
    model.eval()
    squares = 0.0
    try:
        for _ in range(draws):
            total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
            for x, y in parts:
                for lo in range(0, len(x), CHUNK):
                    losses = torch_losses(model(x[lo:lo + CHUNK]), y[lo:lo + CHUNK], task)
                    signs = torch.randint(0, 2, (len(losses),), generator=gen) * 2 - 1
                    grads = torch.autograd.grad((losses * signs.to(losses)).sum(), params,
                                                allow_unused=True)
                    for t, g in zip(total, grads, strict=True):
                        if g is not None:
                            t += g.double()
            squares += sum(float((t ** 2).sum()) for t in total)
    finally:
        model.train(was)
    return (squares / max(draws, 1)) ** 0.5


def _forget_loss(model: torch.nn.Module, forget: tuple[torch.Tensor, torch.Tensor],
                 task: str) -> float:
    import torch

    with torch.no_grad():
        return float(torch.cat([
            torch_losses(model(forget[0][lo:lo + CHUNK]), forget[1][lo:lo + CHUNK], task)
            for lo in range(0, len(forget[0]), CHUNK)]).mean())


def retained_descent(model: torch.nn.Module, start: torch.nn.Module,
                     forget: tuple[torch.Tensor, torch.Tensor],
                     retain: tuple[torch.Tensor, torch.Tensor], *, task: str,
                     offset: list[torch.Tensor], lam_retained: float, offset_scale: float,
                     loss_before: float, settings: Descent = Descent(),
                     seed: int = 0,
                     observe: Callable[[int, torch.nn.Module, torch.nn.Module], None] | None
                     = None) -> dict[str, Any]:
    """Minimise S(θ) = Σ_R ℓ(θ) + λ_R/2·|θ|² − s·r₀ᵀθ (divided by n_R) from two points in
    lockstep, in eval mode: `model` (after the Newton step; changed in place, the result)
    and `start` (a copy of the original θ₀; changed too). `offset` is r₀ over their
    trainable parameters in order (training_gradient at θ₀), `offset_scale` s,
    `loss_before` the original's mean forget loss. `observe(step, model, start)`, when
    given, sees both at every check before the stop is judged (the benchmark traces them)."""
    import torch

    runs = []
    for net in (model, start):
        params = [p for p in net.parameters() if p.requires_grad]
        if len(offset) != len(params):
            raise ValueError(f"offset has {len(offset)} tensors for {len(params)} trainable "
                             "parameters")
        shift = [(offset_scale * r).to(p.dtype) for r, p in zip(offset, params, strict=True)]
        runs.append((net, params, shift, torch.optim.Adam(params, lr=settings.lr)))
    gen = torch.Generator().manual_seed(seed)
    n_r = len(retain[0])
    full = n_r <= settings.batch_size
    losses = (_forget_loss(model, forget, task), _forget_loss(start, forget, task))
    reason, step = "max steps (the two descents did not meet)", 0
    modes = [net.training for net, *_ in runs]
    try:
        for net, *_ in runs:
            net.eval()
        for step in range(1, settings.steps + 1):
            if full:
                xb, yb, weight = retain[0], retain[1], 1.0
            else:  # the same batch for both runs
                pick = torch.randperm(n_r, generator=gen)[:settings.batch_size]
                pick = pick.to(retain[0].device)
                xb, yb, weight = retain[0][pick], retain[1][pick], n_r / settings.batch_size
            for net, params, shift, opt in runs:
                opt.zero_grad()
                loss = weight * torch_losses(net(xb), yb, task).sum()
                loss = loss + sum(lam_retained / 2 * (p ** 2).sum() - (c * p).sum()
                                  for p, c in zip(params, shift, strict=True))
                (loss / n_r).backward()
                opt.step()
            if step % settings.check:
                continue
            if observe is not None:
                observe(step, model, start)
            losses = (_forget_loss(model, forget, task), _forget_loss(start, forget, task))
            if abs(losses[0] - losses[1]) <= settings.agree * abs(losses[0] - loss_before):
                reason = "the two descents met"
                break
    finally:
        for (net, _, _, opt), was in zip(runs, modes, strict=True):
            opt.zero_grad(set_to_none=True)
            net.train(was)
    return {"descent_steps": step, "descent_stop": reason, "descent_forget_loss": losses[0],
            "descent_from_original_forget_loss": losses[1]}
