"""The linear model (binary logistic or squared error, L2 on the summed loss) and its
loss families (GLMs on features with a 1 appended), fitted by Newton's method."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from headwater.producers.capture.recorder import TASKS, margin_weights, regression_weights
from headwater.producers.unlearning.digests import (
    RowDigest,
)
from headwater.producers.unlearning.rows import (
    CHUNK,
    as_numpy,
)

# -- the linear model (binary logistic or squared error, L2 on the summed loss) ------------

@dataclass(frozen=True, eq=False)
class LinearModel:
    """f(x) = x·coef + intercept, trained on Σ_i ℓ_i + λ/2 |θ|² with θ = (coef, intercept)
    (the intercept is penalised too, as in benchmarks/attribution_lds.py). Classification is
    binary logistic on labels 0/1 (f = the logit); regression is squared error ½(f − y)².
    `trained_on` (set by `fit`) is the digest of the training rows, for the checks."""

    coef: np.ndarray
    intercept: float = 0.0
    l2: float = 1.0
    task: str = "classification"
    trained_on: RowDigest | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}; got {self.task!r}")
        if not (self.l2 > 0 and math.isfinite(self.l2)):
            raise ValueError(f"l2 must be a positive finite penalty; got {self.l2!r}")
        coef = np.asarray(self.coef, dtype=np.float64)
        if coef.ndim != 1:
            raise ValueError(f"coef must be a vector [d]; got shape {coef.shape}")
        object.__setattr__(self, "coef", coef)
        object.__setattr__(self, "intercept", float(self.intercept))

    @classmethod
    def fit(cls, x: Any, y: Any, *, l2: float = 1.0, task: str = "classification",
            max_iter: int = 100, tol: float = 1e-10) -> LinearModel:
        """Train from scratch to convergence by Newton's method (the retrain path)."""
        x = as_numpy(x)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"x must be a non-empty matrix [n, d]; got shape {x.shape}")
        start = cls(np.zeros(x.shape[1]), 0.0, l2, task)
        x, y = start._rows(x, y, "x")
        theta, _ = newton_minimise(start._glm(), start.params, x, y, l2, max_iter, tol)
        return replace(start.with_params(theta), trained_on=RowDigest.of(x, y))

    @property
    def params(self) -> np.ndarray:
        """θ = (coef..., intercept)."""
        return np.append(self.coef, self.intercept)

    def with_params(self, theta: np.ndarray) -> LinearModel:
        theta = np.asarray(theta, dtype=np.float64).ravel()
        if theta.shape != (len(self.coef) + 1,):
            raise ValueError(f"θ must have {len(self.coef) + 1} values (coef..., intercept); "
                             f"got {theta.size}")
        return replace(self, coef=theta[:-1], intercept=float(theta[-1]))

    def _glm(self) -> Glm:
        return Glm("logistic" if self.task == "classification" else "squared")

    def _rows(self, x: Any, y: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
        x, y = as_numpy(x).astype(np.float64), as_numpy(y).astype(np.float64).ravel()
        if x.ndim != 2 or x.shape[1] != len(self.coef):
            raise ValueError(f"{what} must be [n, {len(self.coef)}]; got shape {x.shape}")
        if len(y) != len(x):
            raise ValueError(f"{what} has {len(x)} rows but its labels/targets have {len(y)}")
        if self.task == "classification" and not np.isin(y, (0.0, 1.0)).all():
            raise ValueError(f"{what}: classification labels must be 0 or 1")
        return x, y

    def decision(self, x: Any) -> np.ndarray:
        """f(x): the logit (classification) or the prediction (regression)."""
        return np.asarray(as_numpy(x), dtype=np.float64) @ self.coef + self.intercept

    def predict(self, x: Any) -> np.ndarray:
        f = self.decision(x)
        return (f > 0).astype(np.int64) if self.task == "classification" else f

    def losses(self, x: Any, y: Any) -> np.ndarray:
        """ℓ_i per row: -log p(y_i) (classification) or ½(f − y)²."""
        x, y = self._rows(x, y, "x")
        return self._glm().losses(augment(x) @ self.params, y)

    def objective(self, x: Any, y: Any) -> float:
        """Σ ℓ_i + λ/2 |θ|² over the rows (x, y)."""
        return float(self.losses(x, y).sum() + 0.5 * self.l2 * self.params @ self.params)


# -- the loss families, on features with a 1 appended (the intercept / bias) ---------------

def augment(a: np.ndarray) -> np.ndarray:
    return np.hstack([a, np.ones((len(a), 1))])


@dataclass(frozen=True)
class Glm:
    """Summed loss, gradient and Hessian of a generalised linear model in θ, flattened:
    "logistic" and "squared" θ [h+1]; "softmax" θ [C·(h+1)] row-major from W|b [C, h+1]."""

    kind: str
    classes: int = 1

    def _logits(self, theta: np.ndarray, a: np.ndarray) -> np.ndarray:
        if self.kind == "softmax":
            return a @ theta.reshape(self.classes, -1).T
        return a @ theta

    def losses(self, f: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.kind == "softmax":
            z = f - f.max(axis=1, keepdims=True)
            logz = np.log(np.exp(z).sum(axis=1))
            return logz - z[np.arange(len(z)), y.astype(np.int64)]
        if self.kind == "logistic":
            return margin_weights((2.0 * y - 1.0) * f).loss
        return regression_weights(f, y).loss

    def loss(self, theta: np.ndarray, a: np.ndarray, y: np.ndarray) -> float:
        return float(self.losses(self._logits(theta, a), y).sum())

    def gradient(self, theta: np.ndarray, a: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Σ_i ∇_θ ℓ_i over the rows."""
        f = self._logits(theta, a)
        if self.kind == "softmax":
            r = _softmax(f)
            r[np.arange(len(r)), y.astype(np.int64)] -= 1.0  # dℓ/dz = p − onehot(y)
            return (r.T @ a).ravel()
        if self.kind == "logistic":
            s = 2.0 * y - 1.0
            dldf = -s * margin_weights(s * f).q  # = σ(f) − y
        else:
            dldf = -regression_weights(f, y).q  # = f − y
        return a.T @ dldf

    def hessian(self, theta: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Σ_i ∇²_θ ℓ_i (exact for these losses; no λ)."""
        f = self._logits(theta, a)
        if self.kind != "softmax":
            w = margin_weights(f).w if self.kind == "logistic" else np.ones(len(a))
            return (a * w[:, None]).T @ a
        # ∇²ℓ_i = (diag p_i − p_i p_iᵀ) ⊗ a_i a_iᵀ: a block-diagonal part Σ p_ic a_i a_iᵀ per
        # class, minus Bᵀ B with B_i = p_i ⊗ a_i, accumulated in row chunks to bound memory.
        c, h1 = self.classes, a.shape[1]
        hess = np.zeros((c * h1, c * h1))
        for lo in range(0, len(a), CHUNK):
            ac, p = a[lo:lo + CHUNK], _softmax(f[lo:lo + CHUNK])
            b = (p[:, :, None] * ac[:, None, :]).reshape(len(ac), -1)
            hess -= b.T @ b
            for k in range(c):
                hess[k * h1:(k + 1) * h1, k * h1:(k + 1) * h1] += (ac * p[:, k:k + 1]).T @ ac
        return hess


def _softmax(f: np.ndarray) -> np.ndarray:
    z = np.exp(f - f.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def solve_spd(h: np.ndarray, g: np.ndarray) -> np.ndarray:
    """h⁻¹ g for the symmetric positive definite h = Σ∇²ℓ + λI (λ > 0 makes it definite)."""
    return np.linalg.solve(h, g)


def newton_step(glm: Glm, theta: np.ndarray, a: np.ndarray, y: np.ndarray, lam: float,
                 offset: np.ndarray | None = None) -> np.ndarray:
    """One Newton step on J(θ) = Σ ℓ + λ/2|θ|² − offsetᵀθ, halved until J does not rise."""
    shift = np.zeros_like(theta) if offset is None else offset

    def objective(t: np.ndarray) -> float:
        return glm.loss(t, a, y) + 0.5 * lam * t @ t - shift @ t

    grad = glm.gradient(theta, a, y) + lam * theta - shift
    step = solve_spd(glm.hessian(theta, a) + lam * np.eye(len(theta)), grad)
    before = objective(theta)
    for _ in range(40):
        if objective(theta - step) <= before + 1e-12 * abs(before):
            return theta - step
        step = step / 2
    return theta


def newton_minimise(glm: Glm, theta: np.ndarray, x: np.ndarray, y: np.ndarray, lam: float,
                     max_iter: int, tol: float) -> tuple[np.ndarray, int]:
    a = augment(x)
    for k in range(1, max_iter + 1):
        new = newton_step(glm, theta, a, y, lam)
        done = np.abs(new - theta).max() < tol
        theta = new
        if done:
            return theta, k
    return theta, max_iter
