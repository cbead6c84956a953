"""The influence/Newton removal: theta <- theta + H_R^-1 sum_{i in F} grad l_i(theta), computed
from the forget rows themselves, for LinearModel (and torch last layers: finetune.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from headwater.producers.unlearning.linear import (
    Glm,
    LinearModel,
    augment,
    newton_step,
    solve_spd,
)
from headwater.producers.unlearning.recipe import Recipe
from headwater.producers.unlearning.rows import (
    Rows,
    nonempty,
    pair,
    type_name,
)


@dataclass(frozen=True)
class NewtonReport:
    """What a Newton removal did: steps taken; the gradient left, ||∇J_R(θ) − r₀||, relative
    to the one at θ₀ (||Σ_F ∇ℓ_i|| when λ is unchanged); the certified bound ||θ − θ*|| ≤ that
    gradient / λ on the distance to the exact target θ* (the objective is λ-strongly
    convex); and ||r₀||, the training gradient left in the model before removal (0 when it
    was trained to convergence, as LinearModel.fit does)."""

    steps: int
    residual_ratio: float
    distance_bound: float
    training_gradient: float


def newton_removal(glm: Glm, theta: np.ndarray, af: np.ndarray, yf: np.ndarray,
                    ar: np.ndarray, yr: np.ndarray, lam: float, steps: int,
                    tol: float | None, max_steps: int, keep_offset: bool = False,
                    lam_retained: float | None = None, offset_scale: float = 1.0
                    ) -> tuple[np.ndarray, NewtonReport]:
    """θ ← θ + H_R⁻¹ Σ_{i∈F} ∇ℓ_i(θ), then Newton steps on the retained objective.

    Why H_R, the Hessian of J_R = Σ_{i∈R} ℓ_i + λ/2|θ|², and not the full H = H_R + H_F: the
    target is θ_R* = argmin J_R, and at the trained optimum ∇J_R(θ) = −Σ_F ∇ℓ_i, so this is
    exactly a Newton step on J_R (exact for squared error, quadratically convergent for
    logistic/softmax). The full-H form is the infinitesimal-jackknife influence estimate: it
    linearises around the forget rows at full weight and, since H ⪰ H_R, under-corrects by
    their own curvature — badly when F is a whole source rather than a few rows.

    A model not trained to convergence has r₀ = ∇J_D(θ₀) ≠ 0. With `keep_offset` (the last
    layer of a network, which retraining from scratch would not converge either) the
    further steps solve ∇J_R(θ) = r₀, i.e. minimise J_R − r₀ᵀθ: they remove the forget rows
    and nothing else, where plain steps on J_R would also finish the interrupted training.
    The first step is the same in both cases: its gradient at θ₀ is −Σ_F ∇ℓ_i either way.

    The trainer's own recipe (recipe.py): a mean-loss trainer with weight decay wd has
    λ = n·wd on n rows, so the retained objective has `lam_retained` = n_R·wd, not `lam`;
    the step then also removes the forget rows' share of the penalty, and a kept offset is
    rescaled by `offset_scale` (n_R/n: the same residual per row in the trainer's units).
    """
    if steps < 1 or max_steps < steps:
        raise ValueError(f"need 1 <= steps <= max_steps; got steps={steps}, "
                         f"max_steps={max_steps}")
    lam_r = lam if lam_retained is None else lam_retained
    g_forget = glm.gradient(theta, af, yf)
    g_retain = glm.gradient(theta, ar, yr)
    offset = g_retain + g_forget + lam * theta  # r₀ = ∇J_D(θ₀)
    target = offset * offset_scale if keep_offset else np.zeros_like(theta)
    # ∇(J_R − targetᵀθ) at θ₀; = −Σ_F ∇ℓ_i when λ is unchanged and the offset is kept
    start = g_retain + lam_r * theta - target
    theta = theta - solve_spd(glm.hessian(theta, ar) + lam_r * np.eye(len(theta)), start)
    taken = 1
    residual = np.linalg.norm(glm.gradient(theta, ar, yr) + lam_r * theta - target)
    scale = max(float(np.linalg.norm(start)), 1e-300)
    while taken < max_steps and (taken < steps or (tol is not None
                                                   and residual > tol * scale)):
        theta = newton_step(glm, theta, ar, yr, lam_r, target)
        taken += 1
        residual = np.linalg.norm(glm.gradient(theta, ar, yr) + lam_r * theta - target)
    return theta, NewtonReport(taken, float(residual / scale), float(residual / lam_r),
                               float(np.linalg.norm(offset)))


def newton_forget(model: LinearModel, forget_x: Any, forget_y: Any, retain_x: Any,
                  retain_y: Any, steps: int = 1, *, tol: float | None = None,
                  max_steps: int = 10) -> LinearModel:
    """Remove rows (forget_x, forget_y) from a LinearModel: θ ← θ + H_R⁻¹ Σ_F ∇ℓ_i(θ), then
    `steps − 1` further Newton steps on the retained objective; with `tol`, more steps (up
    to `max_steps`) until ||∇J_R(θ)|| <= tol·||Σ_F ∇ℓ_i||. The retain rows must be the
    training rows minus the forget rows (checked when the model carries `trained_on`)."""
    new, _ = linear_forget(model, (forget_x, forget_y), (retain_x, retain_y), steps, tol,
                            max_steps)
    return new


def linear_forget(model: LinearModel, forget: Rows, retain: Rows, steps: int,
                   tol: float | None, max_steps: int, recipe: Recipe | None = None
                   ) -> tuple[LinearModel, NewtonReport]:
    """Newton removal on a LinearModel. With the trainer's `recipe`, the model's l2 must be
    the recipe's λ on the training rows, and the result has the retained rows' λ (a
    mean-loss trainer's penalty shrinks with the data)."""
    if not isinstance(model, LinearModel):
        raise TypeError(f"newton_forget needs a LinearModel; got {type_name(model)}")
    xf, yf = model._rows(*pair(forget, "forget"), "forget")
    xr, yr = model._rows(*pair(retain, "retain"), "retain")
    nonempty(xf, xr)
    digest = None if model.trained_on is None else \
        model.trained_on.check_partition((xf, yf), (xr, yr))
    lam_r = model.l2
    if recipe is not None:
        expected = recipe.lam(len(xf) + len(xr))
        if not np.isclose(expected, model.l2, rtol=1e-9, atol=0.0):
            raise ValueError(f"the model's l2 {model.l2:g} is not the recipe's λ for "
                             f"{len(xf) + len(xr)} training rows ({expected:g}); pass the "
                             "recipe the model was trained with")
        lam_r = recipe.lam(len(xr))
    theta, report = newton_removal(model._glm(), model.params, augment(xf), yf,
                                    augment(xr), yr, model.l2, steps, tol, max_steps,
                                    lam_retained=lam_r)
    return replace(model.with_params(theta), l2=lam_r, trained_on=digest), report
