"""Unlearning where the model lives: remove the influence of training rows, then verify it.

    result = unlearn(model, forget=(x_f, y_f), retain=(x_r, y_r), test=(x_t, y_t))
    result.model, result.method, result.verification, result.seconds

Convex models (`LinearModel`) and the last layer of torch models get an influence/Newton
correction θ ← θ + H_R⁻¹ Σ_{i∈F} ∇ℓ_i(θ), computed from the forget rows themselves; other
torch parameters get a bounded corrective fine-tune (ascent on the forget rows, descent on
retained rows, stopped at the held-out loss level). `verify` fills the
`headwater.v1.Verification` recorded with every request. The maths: docs/unlearning.md.
NumPy throughout; torch is imported only when a torch model is passed.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from headwater.producers.capture import TASKS, margin_weights, regression_weights
from headwater.v1 import events_pb2

if TYPE_CHECKING:
    import torch

Rows = tuple[Any, Any]  # (x, y): arrays or tensors with the same number of rows
_METHOD_NAMES = {"auto": events_pb2.UNLEARNING_METHOD_UNSPECIFIED, "newton": events_pb2.NEWTON,
                 "fine_tune": events_pb2.FINE_TUNE}
_CHUNK = 4096  # rows per forward pass / Hessian block: bounds memory for large row sets


class RowsNotInTraining(ValueError):
    """Forget rows that the model's training-row digest does not hold (never trained on, or
    already forgotten: the listener reports ALREADY_APPLIED for the latter)."""

    def __init__(self, message: str, rows: np.ndarray) -> None:
        super().__init__(message)
        self.rows = rows


def parse_method(method: int | str) -> int:
    """`events_pb2.UnlearningMethod` value (0 = auto, NEWTON, FINE_TUNE) or its name."""
    if isinstance(method, str):
        key = method.lower()
        if key not in _METHOD_NAMES:
            raise ValueError(f"method must be one of {', '.join(_METHOD_NAMES)} or an "
                             f"UnlearningMethod value; got {method!r}")
        return _METHOD_NAMES[key]
    if method not in _METHOD_NAMES.values():
        raise ValueError(f"method must be UNLEARNING_METHOD_UNSPECIFIED (0), NEWTON (1) or "
                         f"FINE_TUNE (2); got {method!r}")
    return int(method)


# -- training-row digests (multisets of row hashes) ----------------------------------------

def _splitmix64(h: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised (uint64 arithmetic wraps, as intended)."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def row_hashes(x: Any, y: Any) -> np.ndarray:
    """One 64-bit hash per row of (x, y), from the float64 bit patterns of its values: equal
    rows hash equally whatever their dtype was (-0.0 counts as 0.0)."""
    xa, ya = _numpy(x), _numpy(y)
    if len(xa) != len(ya):
        raise ValueError(f"x has {len(xa)} rows but y has {len(ya)}")
    h = np.full(len(xa), 0x9E3779B97F4A7C15, dtype=np.uint64)
    for block in (xa.reshape(len(xa), -1), ya.reshape(len(ya), -1)):
        cols = np.asfortranarray(block, dtype=np.float64) + 0.0  # column-contiguous copy
        for j in range(cols.shape[1]):  # chain the columns: order matters, as it should
            h = _splitmix64(h ^ cols[:, j].view(np.uint64))
    return h


@dataclass(frozen=True, eq=False)
class RowDigest:
    """The multiset of training rows a model was trained on, as sorted row hashes (8 bytes a
    row, never the data): lets unlearning check that forget rows were trained on, that the
    retained rows are the rest, and tell a repeated request (rows already forgotten)."""

    hashes: np.ndarray

    @classmethod
    def of(cls, x: Any, y: Any) -> RowDigest:
        return cls(np.sort(row_hashes(x, y)))

    def __len__(self) -> int:
        return len(self.hashes)

    def missing(self, x: Any, y: Any) -> np.ndarray:
        """Boolean per row of (x, y): not covered by the digest. Multiset-aware: a row given
        twice but trained on once is missing the second time."""
        return self._missing(row_hashes(x, y))

    def contains(self, x: Any, y: Any) -> np.ndarray:
        """Boolean per row: still in the training data (False once forgotten)."""
        return ~self.missing(x, y)

    def minus(self, x: Any, y: Any) -> RowDigest:
        """The digest without one occurrence of each row of (x, y) (absent rows are
        ignored)."""
        return self._minus(row_hashes(x, y))

    def check_partition(self, forget: Rows, retain: Rows) -> RowDigest:
        """Raise unless forget ∪ retain is exactly the training multiset; returns the digest
        of what remains (the retained rows)."""
        hf, hr = row_hashes(*forget), row_hashes(*retain)
        gone = self._missing(hf)
        if gone.any():
            rows = np.flatnonzero(gone)
            raise RowsNotInTraining(
                f"{len(rows)} of {len(gone)} forget rows are not in the model's training data "
                f"(never trained on, or already forgotten); first: forget row {rows[0]}", rows)
        rest = self._minus(hf)
        if len(hr) != len(rest) or not np.array_equal(np.sort(hr), rest.hashes):
            extra = int(rest._missing(hr).sum())
            raise ValueError(f"retain must be the training rows minus the forget rows: it has "
                             f"{len(hr)} rows, {len(rest)} expected; {extra} of its rows are "
                             "not among the training rows left once the forget rows go")
        return rest

    def _missing(self, q: np.ndarray) -> np.ndarray:
        order = np.argsort(q, kind="stable")
        sq = q[order]
        # occurrence number of each query row among equal hashes (0 for the first)
        first = np.searchsorted(sq, sq, side="left")
        occurrence = np.empty(len(q), dtype=np.int64)
        occurrence[order] = np.arange(len(q)) - first
        have = (np.searchsorted(self.hashes, q, side="right")
                - np.searchsorted(self.hashes, q, side="left"))
        return np.asarray(occurrence >= have)

    def _minus(self, q: np.ndarray) -> RowDigest:
        values, counts = np.unique(self.hashes, return_counts=True)
        gone, gone_counts = np.unique(q, return_counts=True)
        at = np.searchsorted(values, gone).clip(0, max(len(values) - 1, 0))
        hit = (values[at] == gone) if len(values) else np.zeros(len(gone), dtype=bool)
        counts = counts.copy()
        np.subtract.at(counts, at[hit], gone_counts[hit])
        return RowDigest(np.repeat(values, np.maximum(counts, 0)))


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
        x = _numpy(x)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"x must be a non-empty matrix [n, d]; got shape {x.shape}")
        start = cls(np.zeros(x.shape[1]), 0.0, l2, task)
        x, y = start._rows(x, y, "x")
        theta, _ = _newton_minimise(start._glm(), start.params, x, y, l2, max_iter, tol)
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

    def _glm(self) -> _Glm:
        return _Glm("logistic" if self.task == "classification" else "squared")

    def _rows(self, x: Any, y: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
        x, y = _numpy(x).astype(np.float64), _numpy(y).astype(np.float64).ravel()
        if x.ndim != 2 or x.shape[1] != len(self.coef):
            raise ValueError(f"{what} must be [n, {len(self.coef)}]; got shape {x.shape}")
        if len(y) != len(x):
            raise ValueError(f"{what} has {len(x)} rows but its labels/targets have {len(y)}")
        if self.task == "classification" and not np.isin(y, (0.0, 1.0)).all():
            raise ValueError(f"{what}: classification labels must be 0 or 1")
        return x, y

    def decision(self, x: Any) -> np.ndarray:
        """f(x): the logit (classification) or the prediction (regression)."""
        return np.asarray(_numpy(x), dtype=np.float64) @ self.coef + self.intercept

    def predict(self, x: Any) -> np.ndarray:
        f = self.decision(x)
        return (f > 0).astype(np.int64) if self.task == "classification" else f

    def losses(self, x: Any, y: Any) -> np.ndarray:
        """ℓ_i per row: -log p(y_i) (classification) or ½(f − y)²."""
        x, y = self._rows(x, y, "x")
        return self._glm().losses(_augment(x) @ self.params, y)

    def objective(self, x: Any, y: Any) -> float:
        """Σ ℓ_i + λ/2 |θ|² over the rows (x, y)."""
        return float(self.losses(x, y).sum() + 0.5 * self.l2 * self.params @ self.params)


# -- the loss families, on features with a 1 appended (the intercept / bias) ---------------

def _augment(a: np.ndarray) -> np.ndarray:
    return np.hstack([a, np.ones((len(a), 1))])


@dataclass(frozen=True)
class _Glm:
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
        for lo in range(0, len(a), _CHUNK):
            ac, p = a[lo:lo + _CHUNK], _softmax(f[lo:lo + _CHUNK])
            b = (p[:, :, None] * ac[:, None, :]).reshape(len(ac), -1)
            hess -= b.T @ b
            for k in range(c):
                hess[k * h1:(k + 1) * h1, k * h1:(k + 1) * h1] += (ac * p[:, k:k + 1]).T @ ac
        return hess


def _softmax(f: np.ndarray) -> np.ndarray:
    z = np.exp(f - f.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _solve_spd(h: np.ndarray, g: np.ndarray) -> np.ndarray:
    """h⁻¹ g for the symmetric positive definite h = Σ∇²ℓ + λI (λ > 0 makes it definite)."""
    return np.linalg.solve(h, g)


def _newton_step(glm: _Glm, theta: np.ndarray, a: np.ndarray, y: np.ndarray, lam: float,
                 offset: np.ndarray | None = None) -> np.ndarray:
    """One Newton step on J(θ) = Σ ℓ + λ/2|θ|² − offsetᵀθ, halved until J does not rise."""
    shift = np.zeros_like(theta) if offset is None else offset

    def objective(t: np.ndarray) -> float:
        return glm.loss(t, a, y) + 0.5 * lam * t @ t - shift @ t

    grad = glm.gradient(theta, a, y) + lam * theta - shift
    step = _solve_spd(glm.hessian(theta, a) + lam * np.eye(len(theta)), grad)
    before = objective(theta)
    for _ in range(40):
        if objective(theta - step) <= before + 1e-12 * abs(before):
            return theta - step
        step = step / 2
    return theta


def _newton_minimise(glm: _Glm, theta: np.ndarray, x: np.ndarray, y: np.ndarray, lam: float,
                     max_iter: int, tol: float) -> tuple[np.ndarray, int]:
    a = _augment(x)
    for k in range(1, max_iter + 1):
        new = _newton_step(glm, theta, a, y, lam)
        done = np.abs(new - theta).max() < tol
        theta = new
        if done:
            return theta, k
    return theta, max_iter


@dataclass(frozen=True)
class NewtonReport:
    """What a Newton removal did: steps taken; the gradient left, ||∇J_R(θ) − r₀||, relative
    to the removed rows' gradient ||Σ_F ∇ℓ_i||; the certified bound ||θ − θ*|| ≤ that
    gradient / λ on the distance to the exact target θ* (the objective is λ-strongly
    convex); and ||r₀||, the training gradient left in the model before removal (0 when it
    was trained to convergence, as LinearModel.fit does)."""

    steps: int
    residual_ratio: float
    distance_bound: float
    training_gradient: float


def _newton_removal(glm: _Glm, theta: np.ndarray, af: np.ndarray, yf: np.ndarray,
                    ar: np.ndarray, yr: np.ndarray, lam: float, steps: int,
                    tol: float | None, max_steps: int, keep_offset: bool = False
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
    """
    if steps < 1 or max_steps < steps:
        raise ValueError(f"need 1 <= steps <= max_steps; got steps={steps}, "
                         f"max_steps={max_steps}")
    g_forget = glm.gradient(theta, af, yf)
    offset = glm.gradient(theta, ar, yr) + g_forget + lam * theta  # r₀ = ∇J_D(θ₀)
    target = offset if keep_offset else np.zeros_like(theta)
    theta = theta + _solve_spd(glm.hessian(theta, ar) + lam * np.eye(len(theta)), g_forget)
    taken = 1
    residual = np.linalg.norm(glm.gradient(theta, ar, yr) + lam * theta - target)
    scale = max(float(np.linalg.norm(g_forget)), 1e-300)
    while taken < max_steps and (taken < steps or (tol is not None
                                                   and residual > tol * scale)):
        theta = _newton_step(glm, theta, ar, yr, lam, target)
        taken += 1
        residual = np.linalg.norm(glm.gradient(theta, ar, yr) + lam * theta - target)
    return theta, NewtonReport(taken, float(residual / scale), float(residual / lam),
                               float(np.linalg.norm(offset)))


def newton_forget(model: LinearModel, forget_x: Any, forget_y: Any, retain_x: Any,
                  retain_y: Any, steps: int = 1, *, tol: float | None = None,
                  max_steps: int = 10) -> LinearModel:
    """Remove rows (forget_x, forget_y) from a LinearModel: θ ← θ + H_R⁻¹ Σ_F ∇ℓ_i(θ), then
    `steps − 1` further Newton steps on the retained objective; with `tol`, more steps (up
    to `max_steps`) until ||∇J_R(θ)|| <= tol·||Σ_F ∇ℓ_i||. The retain rows must be the
    training rows minus the forget rows (checked when the model carries `trained_on`)."""
    new, _ = _linear_forget(model, (forget_x, forget_y), (retain_x, retain_y), steps, tol,
                            max_steps)
    return new


def _linear_forget(model: LinearModel, forget: Rows, retain: Rows, steps: int,
                   tol: float | None, max_steps: int) -> tuple[LinearModel, NewtonReport]:
    if not isinstance(model, LinearModel):
        raise TypeError(f"newton_forget needs a LinearModel; got {_type_name(model)}")
    xf, yf = model._rows(*_pair(forget, "forget"), "forget")
    xr, yr = model._rows(*_pair(retain, "retain"), "retain")
    _nonempty(xf, xr)
    digest = None if model.trained_on is None else \
        model.trained_on.check_partition((xf, yf), (xr, yr))
    theta, report = _newton_removal(model._glm(), model.params, _augment(xf), yf,
                                    _augment(xr), yr, model.l2, steps, tol, max_steps)
    return replace(model.with_params(theta), trained_on=digest), report


# -- verification maths ----------------------------------------------------------------------

def membership_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """AUC of the loss-threshold membership attack: P(loss of a member < loss of a
    non-member), ties counted half (Mann-Whitney U from average ranks). 0.5 = no signal."""
    m = np.asarray(member_losses, dtype=np.float64).ravel()
    n = np.asarray(nonmember_losses, dtype=np.float64).ravel()
    if len(m) == 0 or len(n) == 0:
        raise ValueError(f"membership AUC needs members and non-members; got {len(m)} and "
                         f"{len(n)} rows")
    scores = -np.concatenate([m, n])  # a lower loss => predicted member
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average rank within each run of ties
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[:len(m)].sum() - len(m) * (len(m) + 1) / 2.0
    return float(u / (len(m) * len(n)))


def gap_closed(before: float, after: float, retrained: float) -> float:
    """(after − before) / (retrained − before): 1 = the forget loss moved exactly as far as
    retraining moved it, 0 = not at all, > 1 = overshoot. NaN when retraining did not move it."""
    denominator = retrained - before
    if abs(denominator) <= 1e-12 * max(1.0, abs(before)):
        return float("nan")
    return float((after - before) / denominator)


@dataclass(frozen=True)
class RetrainTargets:
    """Quality targets against retraining from scratch (issue text): gap closed within
    [low, high], distance to the retrained parameters <= `distance_ratio` × the original's,
    |test accuracy − retrained's| <= `accuracy_pp` points, |MIA AUC − retrained's| <=
    `membership_auc`."""

    gap_low: float = 0.9
    gap_high: float = 1.1
    distance_ratio: float = 0.10
    accuracy_pp: float = 0.5
    membership_auc: float = 0.05

    def failures(self, v: events_pb2.Verification, original_distance: float) -> list[str]:
        """The targets `v` misses (empty = all met); `original_distance` = ||θ_before −
        θ_retrained|| (UnlearnResult.detail["original_distance_to_retrained"])."""
        if not v.retrained:
            return ["not verified against retraining (retrained is false)"]
        out = []
        if not self.gap_low <= v.gap_closed <= self.gap_high:  # NaN fails too
            out.append(f"gap closed {v.gap_closed:.3f} outside [{self.gap_low}, "
                       f"{self.gap_high}]")
        ratio = v.distance_to_retrained / original_distance if original_distance > 0 \
            else float("inf")
        if not ratio <= self.distance_ratio:
            out.append(f"distance to retrained is {ratio:.3f} of the original's "
                       f"(> {self.distance_ratio})")
        pp = 100 * abs(v.test_accuracy_after - v.retrain_test_accuracy)
        if not pp <= self.accuracy_pp:
            out.append(f"test accuracy {pp:.2f} pp from the retrained model's "
                       f"(> {self.accuracy_pp})")
        mia = abs(v.membership_auc - v.retrain_membership_auc)
        if not mia <= self.membership_auc:
            out.append(f"membership AUC {mia:.3f} from the retrained model's "
                       f"(> {self.membership_auc})")
        return out


# -- model adapters: one interface over LinearModel and torch modules ---------------------

class _Adapter:
    """Per-row losses, a quality score (accuracy; R² for regression) and the flat parameter
    vector of a model, for verification."""

    def losses(self, model: Any, rows: Rows) -> np.ndarray:
        raise NotImplementedError

    def accuracy(self, model: Any, rows: Rows) -> float:
        raise NotImplementedError

    def params(self, model: Any) -> np.ndarray:
        raise NotImplementedError

    def as_model(self, like: Any, retrained: Any) -> Any:
        """A retrain callable's result (model or parameters) as a model of `like`'s kind."""
        raise NotImplementedError


class _LinearAdapter(_Adapter):
    def losses(self, model: LinearModel, rows: Rows) -> np.ndarray:
        return model.losses(*rows)

    def accuracy(self, model: LinearModel, rows: Rows) -> float:
        x, y = model._rows(*rows, "test")
        if model.task == "classification":
            return float(np.mean(model.predict(x) == y))
        return _r2(model.decision(x), y)

    def params(self, model: LinearModel) -> np.ndarray:
        return model.params

    def as_model(self, like: LinearModel, retrained: Any) -> LinearModel:
        if isinstance(retrained, LinearModel):
            return retrained
        return like.with_params(_numpy(retrained))


def _r2(pred: np.ndarray, y: np.ndarray) -> float:
    ss = float(((y - y.mean()) ** 2).sum())
    return float(1.0 - ((y - pred) ** 2).sum() / ss) if ss > 0 else float("nan")


class _TorchAdapter(_Adapter):
    def __init__(self, task: str) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
        self.task = task

    def outputs(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        import torch

        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                return torch.cat([model(x[lo:lo + _CHUNK]) for lo in range(0, len(x), _CHUNK)])
        finally:
            model.train(was)

    def losses(self, model: torch.nn.Module, rows: Rows) -> np.ndarray:
        x, y = _torch_rows(model, rows, self.task, "rows")
        return _torch_losses(self.outputs(model, x), y, self.task).double().cpu().numpy()

    def accuracy(self, model: torch.nn.Module, rows: Rows) -> float:
        x, y = _torch_rows(model, rows, self.task, "test")
        out = self.outputs(model, x)
        if self.task == "regression":
            return _r2(out.reshape(-1).double().cpu().numpy(), y.double().cpu().numpy())
        pred = (out.reshape(-1) > 0).long() if out.dim() == 1 or out.shape[-1] == 1 \
            else out.argmax(dim=1)
        return float((pred == y.long()).double().mean())

    def params(self, model: torch.nn.Module) -> np.ndarray:
        return np.concatenate([p.detach().double().cpu().numpy().ravel()
                               for p in model.parameters()])

    def as_model(self, like: torch.nn.Module, retrained: Any) -> torch.nn.Module:
        import torch

        if isinstance(retrained, torch.nn.Module):
            return retrained
        out = copy.deepcopy(like)
        if isinstance(retrained, dict):
            out.load_state_dict(retrained)
            return out
        flat = torch.as_tensor(_numpy(retrained)).reshape(-1)
        total = sum(p.numel() for p in out.parameters())
        if flat.numel() != total:
            raise ValueError(f"retrained parameters have {flat.numel()} values; the model has "
                             f"{total}")
        torch.nn.utils.vector_to_parameters(flat.to(next(out.parameters())), out.parameters())
        return out


def _torch_losses(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """Per-row loss: ½(f − y)² (regression), logistic on a binary logit [n] / [n, 1] (labels
    0/1), softmax cross-entropy on class logits [n, C] — TorchCapture's conventions."""
    import torch.nn.functional as F

    if task == "regression":
        return 0.5 * (out.reshape(len(out)) - y.reshape(len(out)).to(out.dtype)) ** 2
    if out.dim() == 1 or out.shape[-1] == 1:
        return F.binary_cross_entropy_with_logits(out.reshape(len(out)), y.to(out.dtype),
                                                  reduction="none")
    return F.cross_entropy(out, y.long(), reduction="none")


def _torch_rows(model: torch.nn.Module, rows: Rows, task: str,
                what: str) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    x, y = _pair(rows, what)
    p = next(model.parameters(), None)
    if p is None:
        raise ValueError("the model has no parameters to unlearn")
    x = torch.as_tensor(x)
    x = x.to(device=p.device, dtype=p.dtype if x.is_floating_point() else x.dtype)
    y = torch.as_tensor(y).to(p.device).reshape(-1)
    if len(y) != len(x):
        raise ValueError(f"{what} has {len(x)} rows but its labels/targets have {len(y)}")
    if task == "classification" and (y.is_floating_point()
                                     and not torch.equal(y, y.round())):
        raise ValueError(f"{what}: classification labels must be integers")
    return x, y


# -- torch: last-layer Newton and the bounded fine-tune -----------------------------------

def _last_linear(model: torch.nn.Module, name: str | None) -> tuple[str, torch.nn.Linear]:
    import torch

    modules = dict(model.named_modules())
    if name is None:
        owners = [n for n, m in modules.items() if list(m.parameters(recurse=False))]
        if not owners:
            raise ValueError("the model has no parameters to unlearn")
        name = owners[-1]
    if name not in modules:
        raise ValueError(f"no module named {name!r}; the model has "
                         f"{', '.join(n for n in modules if n)}")
    layer = modules[name]
    if not isinstance(layer, torch.nn.Linear):
        raise TypeError(f"last-layer Newton needs an nn.Linear last layer; {name!r} is "
                        f"{_type_name(layer)} (pass last_layer=, or method='fine_tune')")
    return name, layer


def _features(model: torch.nn.Module, layer: torch.nn.Linear, x: torch.Tensor,
              name: str) -> np.ndarray:
    """The last layer's inputs (penultimate activations) for x, as float64 [n, h]; checks the
    model's output is that layer's output (nothing after it)."""
    import torch

    got: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = layer.register_forward_hook(lambda _m, i, o: got.append((i[0], o)))
    was = model.training
    model.eval()
    feats = []
    try:
        with torch.no_grad():
            for lo in range(0, len(x), _CHUNK):
                got.clear()
                out = model(x[lo:lo + _CHUNK])
                if len(got) != 1:
                    raise ValueError(f"layer {name!r} ran {len(got)} times in one forward "
                                     "pass; last-layer Newton needs it to run once")
                inp, last = got[0]
                if out.shape[0] != last.shape[0] or not torch.allclose(
                        out.reshape(len(out), -1), last.reshape(len(last), -1)):
                    raise ValueError(f"the model's output is not layer {name!r}'s output "
                                     "(something follows it); pass last_layer= the final "
                                     "nn.Linear, or method='fine_tune'")
                feats.append(inp.reshape(len(inp), -1).double().cpu().numpy())
    finally:
        hook.remove()
        model.train(was)
    return np.concatenate(feats)


def _last_layer_newton(model: torch.nn.Module, forget: tuple[torch.Tensor, torch.Tensor],
                       retain: tuple[torch.Tensor, torch.Tensor], *, task: str,
                       last_layer: str | None, l2: float, steps: int, tol: float | None,
                       max_steps: int) -> NewtonReport:
    """Newton removal on the last nn.Linear (in place), the features held fixed."""
    import torch

    name, layer = _last_linear(model, last_layer)
    classes = layer.out_features
    if task == "regression" and classes != 1:
        raise ValueError(f"regression needs one output; layer {name!r} has {classes}")
    glm = _Glm("softmax", classes) if classes > 1 else \
        _Glm("logistic" if task == "classification" else "squared")
    weight = layer.weight.detach().double().cpu().numpy()
    bias = (layer.bias.detach().double().cpu().numpy() if layer.bias is not None
            else None)
    if bias is None:
        raise ValueError(f"layer {name!r} has no bias; last-layer Newton expects one")
    theta = np.hstack([weight, bias[:, None]])  # [C, h+1]
    af = _augment(_features(model, layer, forget[0], name))
    ar = _augment(_features(model, layer, retain[0], name))
    yf, yr = (t.double().cpu().numpy() for t in (forget[1], retain[1]))
    if glm.kind == "logistic" and not (np.isin(yf, (0, 1)).all() and np.isin(yr, (0, 1)).all()):
        raise ValueError("binary-logit classification labels must be 0 or 1")
    labels = np.concatenate([yf, yr])
    if glm.kind == "softmax" and ((labels < 0) | (labels >= classes)).any():
        raise ValueError(f"class labels must lie in [0, {classes})")
    new, report = _newton_removal(glm, theta.ravel(), af, yf, ar, yr, l2, steps, tol,
                                  max_steps, keep_offset=True)
    new = new.reshape(classes, -1)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(new[:, :-1]))
        layer.bias.copy_(torch.as_tensor(new[:, -1]))
    return report


@dataclass(frozen=True)
class FineTuneBound:
    """The bound on the corrective fine-tune (docs/unlearning.md):
    - stop as soon as the mean forget loss reaches `target_loss` (the held-out loss level of
      the original model: what a row it never saw gets), and only rows still below it are
      pushed up — ascent never drives a row past what a non-member gets;
    - each step moves the parameters by at most `max_step_norm` (the gradient is clipped
      before the plain SGD step), so after `steps` steps ||θ − θ₀|| ≤ steps·max_step_norm;
    - `max_distance`, when set, stops (and projects back) at ||θ − θ₀|| = max_distance."""

    target_loss: float
    steps: int = 100
    max_step_norm: float = 0.05
    max_distance: float | None = None


def _fine_tune(model: torch.nn.Module, params: list[torch.nn.Parameter],
               forget: tuple[torch.Tensor, torch.Tensor],
               retain: tuple[torch.Tensor, torch.Tensor], *, task: str, bound: FineTuneBound,
               lr: float, batch_size: int, retain_weight: float, seed: int) -> dict[str, Any]:
    """Gradient ascent on forget rows below the target loss, balanced by descent on random
    retained batches, in eval mode (dropout off, batch-norm statistics frozen), in place."""
    import torch

    if not params:
        raise ValueError("no parameters to fine-tune")
    gen = torch.Generator().manual_seed(seed)
    start = [p.detach().clone() for p in params]
    was = model.training
    model.eval()
    reason, step, forget_loss = "max steps", 0, float("nan")
    try:
        for step in range(bound.steps + 1):
            with torch.no_grad():
                forget_loss = float(torch.cat([
                    _torch_losses(model(forget[0][lo:lo + _CHUNK]), forget[1][lo:lo + _CHUNK],
                                  task) for lo in range(0, len(forget[0]), _CHUNK)]).mean())
            if forget_loss >= bound.target_loss:
                reason = "forget loss reached the target"
                break
            if step == bound.steps:
                break
            fb = torch.randperm(len(forget[0]), generator=gen)[:batch_size].to(forget[0].device)
            rb = torch.randperm(len(retain[0]), generator=gen)[:batch_size].to(retain[0].device)
            lf = _torch_losses(model(forget[0][fb]), forget[1][fb], task)
            # only rows below the target pull the parameters; divided by the batch size, so
            # the ascent fades as rows reach the held-out level
            ascent = -(lf * (lf.detach() < bound.target_loss)).sum() / len(fb)
            descent = _torch_losses(model(retain[0][rb]), retain[1][rb], task).mean()
            grads = torch.autograd.grad(ascent + retain_weight * descent, params,
                                        allow_unused=True)
            grads = tuple(torch.zeros_like(p) if g is None else g
                          for p, g in zip(params, grads, strict=True))
            norm = float(torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(g.double()) for g in grads])))
            scale = lr if lr * norm <= bound.max_step_norm else bound.max_step_norm / norm
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    p.sub_(scale * g)
                moved = float(torch.linalg.vector_norm(torch.stack(
                    [torch.linalg.vector_norm(p.double() - s.double())
                     for p, s in zip(params, start, strict=True)])))
                if bound.max_distance is not None and moved >= bound.max_distance:
                    for p, s in zip(params, start, strict=True):  # project onto the ball
                        p.copy_(s + (p - s) * (bound.max_distance / moved))
                    reason = "distance bound"
                    step += 1
                    break
    finally:
        model.train(was)
    return {"fine_tune_steps": step, "fine_tune_stop": reason,
            "fine_tune_target_loss": bound.target_loss, "fine_tune_forget_loss": forget_loss}


def unlearn_torch(model: torch.nn.Module, forget: Rows, retain: Rows, *,
                  method: int | str = "auto", task: str = "classification",
                  last_layer: str | None = None, l2: float = 1.0,
                  newton_steps: int | str = "auto", tol: float = 0.05, max_newton_steps: int = 10,
                  earlier_layers: bool | None = None, held_out: Rows | None = None,
                  target_loss: float | None = None, fine_tune_steps: int = 300,
                  lr: float = 0.5, max_step_norm: float = 0.1,
                  max_distance: float | None = None, batch_size: int = 128,
                  retain_weight: float = 1.0, seed: int = 0,
                  inplace: bool = False) -> tuple[torch.nn.Module, int, dict[str, Any]]:
    """Unlearn rows from a torch model; returns (model, method used, details).

    The last nn.Linear gets exact Newton removal (softmax cross-entropy, binary logit or
    squared error on the penultimate activations; `l2` = λ on the summed loss, i.e. n × the
    weight decay of a mean-reduced loss). `earlier_layers`: then also the bounded fine-tune
    of every other trainable parameter — by default yes for method auto when the model
    trains parameters outside its last layer, no for NEWTON; reported as FINE_TUNE.
    FINE_TUNE: the bounded fine-tune of all trainable parameters, no Newton. The fine-tune's
    target is `target_loss`, else the original model's mean loss on `held_out` (one is
    required); see FineTuneBound. A new model unless `inplace`."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"unlearn_torch needs a torch.nn.Module; got {_type_name(model)}")
    chosen = parse_method(method)
    f = _torch_rows(model, forget, task, "forget")
    r = _torch_rows(model, retain, task, "retain")
    _nonempty(f[0], r[0])
    if f[0].shape[1:] != r[0].shape[1:]:
        raise ValueError(f"forget rows have shape {tuple(f[0].shape[1:])} but retain rows "
                         f"have {tuple(r[0].shape[1:])}")
    if newton_steps != "auto" and not (isinstance(newton_steps, int) and newton_steps >= 1):
        raise ValueError(f"newton_steps must be 'auto' or an int >= 1; got {newton_steps!r}")
    steps, step_tol = (1, tol) if newton_steps == "auto" else (int(newton_steps), None)
    out = model if inplace else copy.deepcopy(model)
    trainable = [p for p in out.parameters() if p.requires_grad]
    tuned, detail = trainable, cast(dict[str, Any], {})
    if chosen != events_pb2.FINE_TUNE:
        name, layer = _last_linear(out, last_layer)
        own = {id(p) for p in layer.parameters()}
        tuned = [p for p in trainable if id(p) not in own]
        if earlier_layers is None:
            earlier_layers = chosen == events_pb2.UNLEARNING_METHOD_UNSPECIFIED and bool(tuned)
    fine_tune = chosen == events_pb2.FINE_TUNE or bool(earlier_layers)
    bound = None
    if fine_tune:
        if target_loss is None:
            if held_out is None:
                raise ValueError(
                    "the corrective fine-tune (method FINE_TUNE, or auto on a model that trains "
                    "more than its last layer) needs held_out rows or target_loss to bound the "
                    "ascent; method='newton' corrects the last layer alone")
            target_loss = float(_TorchAdapter(task).losses(model, held_out).mean())
        bound = FineTuneBound(float(target_loss), fine_tune_steps, max_step_norm, max_distance)
    if chosen != events_pb2.FINE_TUNE:
        report = _last_layer_newton(out, f, r, task=task, last_layer=name, l2=l2, steps=steps,
                                    tol=step_tol, max_steps=max_newton_steps)
        detail.update(last_layer=name, newton_steps=report.steps,
                      residual_ratio=report.residual_ratio,
                      last_layer_distance_bound=report.distance_bound,
                      training_gradient=report.training_gradient)
    if bound is not None:
        detail.update(_fine_tune(out, tuned, f, r, task=task, bound=bound, lr=lr,
                                 batch_size=batch_size, retain_weight=retain_weight,
                                 seed=seed))
    return out, events_pb2.FINE_TUNE if fine_tune else events_pb2.NEWTON, detail


# -- verification and the one entry point ---------------------------------------------------

def _adapter_for(model: Any, task: str | None = None) -> _Adapter:
    if isinstance(model, LinearModel):
        return _LinearAdapter()
    torch = sys.modules.get("torch")  # a torch module can only exist if torch is imported
    if torch is not None and isinstance(model, torch.nn.Module):
        return _TorchAdapter(task or "classification")
    raise TypeError(f"unsupported model type {_type_name(model)}: unlearning supports "
                    "headwater LinearModel and torch.nn.Module")


def verify(model_before: Any, model_after: Any, forget: Rows, test: Rows | None,
           held_out: Rows | None = None, *, retrain: Callable[[], Any] | None = None,
           task: str = "classification") -> events_pb2.Verification:
    """The Verification recorded with an unlearning request (docs/unlearning.md). Losses are
    the model's own per-row losses (cross-entropy for classification); test accuracy is R²
    for regression; NaN marks a figure that could not be measured (no test rows).
    `retrain`: a callable returning the model retrained without the forget rows (or its
    parameters), filling the retrain fields. `held_out` defaults to `test`."""
    v, _ = _verify(model_before, model_after, forget, test, held_out, retrain, task)
    return v


def _verify(before: Any, after: Any, forget: Rows, test: Rows | None, held_out: Rows | None,
            retrain: Callable[[], Any] | None, task: str
            ) -> tuple[events_pb2.Verification, dict[str, float]]:
    adapter = _adapter_for(before, task)
    if type(after) is not type(before):
        raise TypeError(f"model_after is {_type_name(after)} but model_before is "
                        f"{_type_name(before)}")
    held_out = test if held_out is None else held_out
    forget = _pair(forget, "forget")
    if len(forget[0]) == 0:
        raise ValueError("forget is empty: nothing to verify")
    nan = float("nan")

    def figures(model: Any) -> tuple[float, float, float]:
        fl = adapter.losses(model, forget)
        acc = adapter.accuracy(model, _pair(test, "test")) if test is not None else nan
        mia = membership_auc(fl, adapter.losses(model, _pair(held_out, "held_out"))) \
            if held_out is not None else nan
        return float(fl.mean()), acc, mia

    loss_b, acc_b, _ = figures(before)
    loss_a, acc_a, mia_a = figures(after)
    theta_b, theta_a = adapter.params(before), adapter.params(after)
    if theta_a.shape != theta_b.shape:
        raise ValueError(f"model_after has {theta_a.size} parameters, model_before "
                         f"{theta_b.size}")
    v = events_pb2.Verification(
        forget_loss_before=loss_b, forget_loss_after=loss_a, test_accuracy_before=acc_b,
        test_accuracy_after=acc_a, membership_auc=mia_a,
        parameter_distance=float(np.linalg.norm(theta_a - theta_b)))
    extra: dict[str, float] = {}
    if retrain is not None:
        if not callable(retrain):
            raise TypeError(f"retrain must be a callable returning the retrained model or "
                            f"its parameters; got {_type_name(retrain)}")
        retrained = adapter.as_model(before, retrain())
        loss_r, acc_r, mia_r = figures(retrained)
        theta_r = adapter.params(retrained)
        if theta_r.shape != theta_b.shape:
            raise ValueError(f"the retrained model has {theta_r.size} parameters, the "
                             f"original {theta_b.size}")
        v.retrained = True
        v.retrain_forget_loss = loss_r
        v.gap_closed = gap_closed(loss_b, loss_a, loss_r)
        v.distance_to_retrained = float(np.linalg.norm(theta_a - theta_r))
        v.retrain_membership_auc = mia_r
        v.retrain_test_accuracy = acc_r
        extra["original_distance_to_retrained"] = float(np.linalg.norm(theta_b - theta_r))
    return v, extra


@dataclass(frozen=True)
class UnlearnResult:
    """A new (or, with inplace, the same) model without the forget rows' influence, the
    Verification for UnlearningApplied, the method used, the seconds to apply (verification
    and retraining excluded), and details (Newton steps, certified bound, fine-tune stop
    reason, original_distance_to_retrained)."""

    model: Any
    verification: events_pb2.Verification
    method: int
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)
    trained_on: RowDigest | None = None


def unlearn(model: Any, forget: Rows, retain: Rows, *, test: Rows | None = None,
            held_out: Rows | None = None, method: int | str = "auto",
            retrain: bool | Callable[[], Any] = False, inplace: bool = False,
            newton_steps: int | str = "auto", tol: float = 0.05,
            trained_on: RowDigest | None = None, task: str | None = None,
            **torch_options: Any) -> UnlearnResult:
    """Remove the influence of `forget` = (x, y) from `model`, trained on forget ∪ `retain`,
    and verify it. LinearModel: Newton removal (`newton_steps` an int, or "auto": further
    steps until ||∇J_R|| <= tol·||Σ_F ∇ℓ||); it is immutable, a new one is returned. torch
    nn.Module: `unlearn_torch` (options passed through); a copy unless `inplace`.
    `retrain`: True (LinearModel: refit from scratch on retain) or a callable returning the
    retrained model or parameters. `trained_on`: the digest of the training rows, checked
    and returned minus the forget rows (a LinearModel from `fit` carries its own)."""
    chosen = parse_method(method)
    new: Any
    if isinstance(model, LinearModel):
        if torch_options:
            raise TypeError(f"options {', '.join(sorted(torch_options))} apply to torch "
                            "models only")
        if chosen == events_pb2.FINE_TUNE:
            raise ValueError("FINE_TUNE is for torch models; a LinearModel is convex and is "
                             "unlearned by Newton removal (method 'newton' or 'auto')")
        if task is not None and task != model.task:
            raise ValueError(f"task {task!r} does not match the model's {model.task!r}")
        if trained_on is not None:
            model = replace(model, trained_on=trained_on)
        steps, step_tol = (1, tol) if newton_steps == "auto" else (int(newton_steps), None)
        started = time.perf_counter()
        new, report = _linear_forget(model, forget, retain, steps, step_tol, 10)
        seconds = time.perf_counter() - started
        detail: dict[str, Any] = {"newton_steps": report.steps,
                                  "residual_ratio": report.residual_ratio,
                                  "distance_bound": report.distance_bound,
                                  "training_gradient": report.training_gradient}
        used, digest, kind = events_pb2.NEWTON, new.trained_on, model.task
        if retrain is True:
            def refit() -> LinearModel:
                return LinearModel.fit(*retain, l2=model.l2, task=model.task)
            retrain_fn: Callable[[], Any] | None = refit
        else:
            retrain_fn = retrain or None
    else:
        _adapter_for(model)  # names an unsupported type before anything else
        if retrain is True:
            raise ValueError("retrain=True refits LinearModels only; for a torch model pass "
                             "a callable that trains it from scratch on the retained rows")
        kind = task or "classification"
        digest = None if trained_on is None else \
            trained_on.check_partition(_pair(forget, "forget"), _pair(retain, "retain"))
        started = time.perf_counter()
        new, used, detail = unlearn_torch(
            model, forget, retain, method=chosen, task=kind, newton_steps=newton_steps,
            tol=tol, held_out=held_out if held_out is not None else test, inplace=False,
            **torch_options)
        seconds = time.perf_counter() - started
        retrain_fn = retrain or None
    verification, extra = _verify(model, new, forget, test, held_out, retrain_fn, kind)
    detail.update(extra)
    if inplace and not isinstance(model, LinearModel):
        original: Any = model
        with _torch_no_grad():
            for p, q in zip(original.parameters(), new.parameters(), strict=True):
                p.copy_(q)
        new = original
    return UnlearnResult(new, verification, used, seconds, detail, digest)


# -- small helpers ----------------------------------------------------------------------------

def _torch_no_grad() -> Any:
    import torch

    return torch.no_grad()


def _numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _pair(rows: Any, what: str) -> Rows:
    if not isinstance(rows, (tuple, list)) or len(rows) != 2:
        raise TypeError(f"{what} must be a pair (x, y); got {_type_name(rows)}")
    return rows[0], rows[1]


def _nonempty(xf: Any, xr: Any) -> None:
    if len(xf) == 0:
        raise ValueError("forget is empty: name at least one row to unlearn")
    if len(xr) == 0:
        raise ValueError("retain is empty: forgetting every training row leaves nothing to "
                         "keep; re-initialise the model instead")


def _type_name(obj: Any) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
