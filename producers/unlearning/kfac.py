"""Full-network Newton removal with Kronecker-factored (K-FAC) curvature, for networks whose
trainable parameters are all nn.Linear layers (docs/unlearning.md).

Per layer the retained objective's curvature is approximated as A ⊗ G: A = mean a aᵀ over
the layer's inputs (a 1 appended for the bias), G = Σ g gᵀ over the gradients of the
summed loss at the layer's outputs, with labels drawn from the model's own predictive
distribution (the Fisher, the Gauss-Newton of cross-entropy). With A = Q_A Λ_A Q_Aᵀ and
G = Q_G Λ_G Q_Gᵀ, (A ⊗ G + λI)⁻¹ V = Q_G [(Q_Gᵀ V Q_A) / (λ_G λ_Aᵀ + λ)] Q_Aᵀ exactly, for
the layer's gradient matrix V [out, in + 1]. The step is the Newton step of newton.py on
every layer at once, θ ← θ − (H_R + λ_R I)⁻¹ (∇J_R(θ₀) − s·r₀), then shortened (bisection)
so the mean forget loss does not pass the target (the retrained model's, estimated):
curvature that is only approximate must not overshoot.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np

from headwater.producers.unlearning.rows import CHUNK, Rows, type_name
from headwater.producers.unlearning.verification import torch_losses, torch_rows

if TYPE_CHECKING:
    import torch


def _linear_layers(model: torch.nn.Module) -> list[torch.nn.Linear]:
    import torch

    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    covered = {id(p) for m in layers for p in m.parameters()}
    other = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
    if other or not layers:
        raise TypeError(f"K-FAC Newton needs every trainable parameter in nn.Linear layers; "
                        f"{type_name(model)} also trains {', '.join(other) or 'nothing'}")
    return layers


def all_linear(model: torch.nn.Module) -> bool:
    """Whether K-FAC Newton applies: every trainable parameter is in an nn.Linear."""
    try:
        _linear_layers(model)
    except TypeError:
        return False
    return True


def _factors(model: torch.nn.Module, layers: list[torch.nn.Linear], x: torch.Tensor,
             task: str, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(A, G) per layer over rows x, labels sampled from the model (float64)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    inputs: dict[int, torch.Tensor] = {}
    grads: dict[int, torch.Tensor] = {}
    hooks = []
    def keep(i: int) -> Any:
        def hook(_m: Any, a: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            inputs[i] = a[0].detach()
            out.register_hook(lambda g: grads.__setitem__(i, g.detach()))
        return hook

    for i, layer in enumerate(layers):
        hooks.append(layer.register_forward_hook(keep(i)))
    sums = [[np.zeros((m.in_features + (m.bias is not None),) * 2),
             np.zeros((m.out_features, m.out_features))] for m in layers]
    was = model.training
    model.eval()
    try:
        for lo in range(0, len(x), CHUNK):
            out = model(x[lo:lo + CHUNK])
            with torch.no_grad():
                if task == "regression":
                    sampled = out.reshape(len(out)) + torch.randn(len(out), generator=gen)
                elif out.dim() == 1 or out.shape[-1] == 1:
                    sampled = torch.bernoulli(torch.sigmoid(out.reshape(len(out))),
                                              generator=gen)
                else:
                    sampled = torch.multinomial(torch.softmax(out, 1), 1,
                                                generator=gen).reshape(-1)
            model.zero_grad()
            torch_losses(out, sampled, task).sum().backward()
            for i, layer in enumerate(layers):
                a = inputs[i].reshape(-1, layer.in_features).double()
                if layer.bias is not None:
                    a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)
                g = grads[i].reshape(-1, layer.out_features).double()
                sums[i][0] += (a.T @ a).numpy()
                sums[i][1] += (g.T @ g).numpy()
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad()
        model.train(was)
    return [(a / len(x), g) for a, g in sums]


def _layer_grads(model: torch.nn.Module, layers: list[torch.nn.Linear], rows: tuple[Any, Any],
                 task: str) -> list[np.ndarray]:
    """Σ ∇ℓ_i over `rows` per layer, as [out, in (+1)] float64 matrices."""
    import torch

    total = [np.zeros((m.out_features, m.in_features + (m.bias is not None))) for m in layers]
    was = model.training
    model.eval()
    try:
        for lo in range(0, len(rows[0]), CHUNK):
            model.zero_grad()
            torch_losses(model(rows[0][lo:lo + CHUNK]), rows[1][lo:lo + CHUNK],
                         task).sum().backward()
            for i, m in enumerate(layers):
                parts = [m.weight.grad] + ([m.bias.grad[:, None]]
                                           if m.bias is not None and m.bias.grad is not None
                                           else [])
                total[i] += torch.cat([p for p in parts if p is not None], 1).double().numpy()
    finally:
        model.zero_grad()
        model.train(was)
    return total


def kfac_newton(model: torch.nn.Module, forget: Rows, retain: Rows, *, task: str,
                lam: float, lam_retained: float, offset_scale: float,
                target_loss: float | None, damping: float = 0.0, seed: int = 0,
                ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A new model: the K-FAC Newton removal step (module docstring), shortened so the mean
    forget loss stays at or below `target_loss` (None: the full step). `lam` is the
    training objective's λ on the summed loss, `lam_retained` the retained one's, and
    `offset_scale` n_R/n for a mean loss (1 for a sum); `damping` is added to λ_R."""
    import torch

    out = copy.deepcopy(model)
    layers = _linear_layers(out)
    f, r = torch_rows(out, forget, task, "forget"), torch_rows(out, retain, task, "retain")
    factors = _factors(out, layers, r[0], task, seed)
    g_f = _layer_grads(out, layers, f, task)
    g_r = _layer_grads(out, layers, r, task)
    theta = [torch.cat([m.weight.detach()] + ([m.bias.detach()[:, None]]
                       if m.bias is not None else []), 1).double().numpy() for m in layers]
    steps = []
    for (a, g), gf, gr, t in zip(factors, g_f, g_r, theta, strict=True):
        offset = gr + gf + lam * t  # r₀ = ∇J_D(θ₀) of this layer
        v = gr + lam_retained * t - offset_scale * offset  # ∇(J_R − s·r₀ᵀθ) at θ₀
        la, qa = np.linalg.eigh(a)
        lg, qg = np.linalg.eigh(g)
        inner = (qg.T @ v @ qa) / (np.outer(np.clip(lg, 0, None), np.clip(la, 0, None))
                                   + lam_retained + damping)
        steps.append(-(qg @ inner @ qa.T))

    def place(alpha: float) -> None:
        with torch.no_grad():
            for m, t, d in zip(layers, theta, steps, strict=True):
                new = torch.as_tensor(t + alpha * d, dtype=m.weight.dtype)
                m.weight.copy_(new[:, :m.in_features])
                if m.bias is not None:
                    m.bias.copy_(new[:, -1])

    def forget_loss() -> float:
        with torch.no_grad():
            return float(torch_losses(out(f[0]), f[1], task).mean())

    place(1.0)
    alpha, shortened = 1.0, False
    if target_loss is not None and forget_loss() > target_loss:
        lo, hi = 0.0, 1.0  # forget loss at lo <= target < at hi
        for _ in range(30):
            mid = (lo + hi) / 2
            place(mid)
            lo, hi = (mid, hi) if forget_loss() <= target_loss else (lo, mid)
        alpha, shortened = lo, True
        place(alpha)
    norm = float(np.sqrt(sum((d ** 2).sum() for d in steps)))
    return out, {"kfac_step_norm": norm, "kfac_alpha": alpha, "kfac_shortened": shortened,
                 "kfac_forget_loss": forget_loss()}
