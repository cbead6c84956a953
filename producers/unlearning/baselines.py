"""The field's approximate-unlearning baselines for networks, run as their papers run them
(fixed steps, no stopping rule), so benchmarks/unlearning.py measures them side by side
with Headwater's methods on the same forget sets:

- NegGrad+ (Kurmanji et al. 2023, "Towards Unbounded Machine Unlearning"): fine-tune on
  β·L_retain − (1 − β)·L_forget;
- SCRUB (same paper): a student started from the model, the original as a frozen teacher;
  max-steps push the student's outputs on forget rows away from the teacher's (maximise
  KL(teacher ‖ student)), min-steps keep them on retained rows (KL + cross-entropy).

Both return a new model; torch is imported when called."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from headwater.producers.unlearning.rows import Rows
from headwater.producers.unlearning.verification import torch_losses, torch_rows

if TYPE_CHECKING:
    import torch


def _batches(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    import torch

    return torch.randint(n, (min(size, n),), generator=gen)


def neggrad_plus(model: torch.nn.Module, forget: Rows, retain: Rows, *,
                 task: str = "classification", steps: int = 100, lr: float = 0.01,
                 beta: float = 0.95, batch_size: int = 64, seed: int = 0) -> torch.nn.Module:
    """NegGrad+: `steps` SGD (momentum 0.9) steps on β·mean retained loss − (1 − β)·mean
    forget loss, over random batches of each."""
    import torch

    out = copy.deepcopy(model)
    f, r = torch_rows(out, forget, task, "forget"), torch_rows(out, retain, task, "retain")
    opt = torch.optim.SGD([p for p in out.parameters() if p.requires_grad], lr=lr,
                          momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    out.train()
    for _ in range(steps):
        fb, rb = _batches(len(f[0]), batch_size, gen), _batches(len(r[0]), batch_size, gen)
        loss = beta * torch_losses(out(r[0][rb]), r[1][rb], task).mean() - \
            (1 - beta) * torch_losses(out(f[0][fb]), f[1][fb], task).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    out.eval()
    return out


def _kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) of the tempered softmax outputs, batch mean, × T²."""
    import torch.nn.functional as F

    return F.kl_div(F.log_softmax(student / temperature, dim=1),
                    F.softmax(teacher / temperature, dim=1),
                    reduction="batchmean") * temperature ** 2


def scrub(model: torch.nn.Module, forget: Rows, retain: Rows, *, steps: int = 100,
          max_steps: int = 40, lr: float = 0.005, alpha: float = 0.5, gamma: float = 1.0,
          temperature: float = 4.0, batch_size: int = 64, seed: int = 0,
          task: str = "classification") -> torch.nn.Module:
    """SCRUB for classifiers with class logits: `steps` min-steps on retained batches
    (α·KL(teacher ‖ student) + γ·cross-entropy), the first `max_steps` of them each preceded
    by a max-step on a forget batch (−KL), SGD momentum 0.9."""
    import torch

    if task != "classification":
        raise ValueError("SCRUB distils class probabilities: classification only")
    teacher = copy.deepcopy(model).eval()
    out = copy.deepcopy(model)
    f, r = torch_rows(out, forget, task, "forget"), torch_rows(out, retain, task, "retain")
    opt = torch.optim.SGD([p for p in out.parameters() if p.requires_grad], lr=lr,
                          momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    out.train()

    def step(loss: Any) -> None:
        opt.zero_grad()
        loss.backward()
        opt.step()

    for t in range(steps):
        if t < max_steps:
            fb = _batches(len(f[0]), batch_size, gen)
            with torch.no_grad():
                target = teacher(f[0][fb])
            step(-_kl(out(f[0][fb]), target, temperature))
        rb = _batches(len(r[0]), batch_size, gen)
        with torch.no_grad():
            target = teacher(r[0][rb])
        logits = out(r[0][rb])
        step(alpha * _kl(logits, target, temperature)
             + gamma * torch_losses(logits, r[1][rb], task).mean())
    out.eval()
    return out
