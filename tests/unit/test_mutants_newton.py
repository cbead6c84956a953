"""The Newton removal (producers/unlearning/newton.py) against the retrained optimum and its
own report, step by step: the step count, the residual and its bound, the kept offset and
the recipe's λ. Found by mutating the module (issue 25, `make mutate`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from headwater.producers.unlearning.linear import Glm, LinearModel, augment, newton_minimise
from headwater.producers.unlearning.newton import linear_forget, newton_forget, newton_removal
from headwater.producers.unlearning.recipe import Recipe

RNG = np.random.default_rng(7)
X = RNG.normal(size=(80, 3))
Y = (X @ np.array([1.5, -2.0, 0.5]) + 0.3 * RNG.normal(size=80) > 0).astype(float)
F = slice(0, 12)
R = slice(12, None)
LOGISTIC = Glm("logistic")


def _optimum(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    return LinearModel.fit(x, y, l2=lam).params


def _grad_retained(theta: np.ndarray, lam: float, target: np.ndarray | float = 0.0) -> float:
    a = augment(X[R])
    return float(np.linalg.norm(LOGISTIC.gradient(theta, a, Y[R]) + lam * theta - target))


def _removal(steps: int = 1, tol: float | None = None, max_steps: int = 10, **kw):
    theta0 = _optimum(X, Y, 2.0)
    return theta0, newton_removal(LOGISTIC, theta0, augment(X[F]), Y[F], augment(X[R]), Y[R],
                                  2.0, steps, tol, max_steps, **kw)


def test_one_step_then_more_steps_approach_the_retrained_optimum() -> None:
    exact = _optimum(X[R], Y[R], 2.0)
    theta0, (one, r1) = _removal(1)
    _, (three, r3) = _removal(3)
    assert r1.steps == 1 and r3.steps == 3
    d0, d1, d3 = (np.linalg.norm(t - exact) for t in (theta0, one, three))
    assert d1 < 0.1 * d0 and d3 < 1e-3 * d1 and d3 < 1e-9
    assert r1.training_gradient < 1e-6  # fitted to convergence: no training gradient left


def test_the_report_is_the_residual_relative_to_the_first_gradient_and_its_bound() -> None:
    theta0, (one, report) = _removal(1)
    a_f = augment(X[F])
    first = np.linalg.norm(LOGISTIC.gradient(theta0, augment(X[R]), Y[R]) + 2.0 * theta0)
    assert first == pytest.approx(np.linalg.norm(LOGISTIC.gradient(theta0, a_f, Y[F])),
                                  rel=1e-4)
    left = _grad_retained(one, 2.0)
    assert report.residual_ratio == pytest.approx(left / first, rel=1e-9)
    assert report.distance_bound == pytest.approx(left / 2.0, rel=1e-9)
    exact = _optimum(X[R], Y[R], 2.0)
    assert np.linalg.norm(one - exact) <= report.distance_bound


def test_tol_takes_steps_until_the_residual_is_below_it_and_max_steps_caps_them() -> None:
    _, (_, tight) = _removal(1, tol=1e-12, max_steps=10)
    assert 2 <= tight.steps < 10 and tight.residual_ratio <= 1e-12
    _, (_, loose) = _removal(1, tol=0.5, max_steps=10)
    assert loose.steps == 1  # the first step already met it
    _, (_, capped) = _removal(1, tol=0.0, max_steps=3)
    assert capped.steps == 3
    _, (_, fixed) = _removal(2, tol=None, max_steps=2)
    assert fixed.steps == 2


@pytest.mark.parametrize(("steps", "max_steps"), [(0, 5), (3, 2)])
def test_impossible_step_counts_are_named(steps: int, max_steps: int) -> None:
    with pytest.raises(ValueError, match=f"need 1 <= steps <= max_steps; got steps={steps}, "
                                         f"max_steps={max_steps}"):
        _removal(steps, max_steps=max_steps)
    _removal(2, max_steps=2)  # the bounds themselves are allowed


def test_a_kept_offset_leaves_the_unfinished_training_gradient_in_place() -> None:
    theta0 = _optimum(X, Y, 2.0) + np.array([0.05, -0.02, 0.03, 0.01])  # not converged
    a_f, a_r = augment(X[F]), augment(X[R])
    offset = (LOGISTIC.gradient(theta0, a_f, Y[F]) + LOGISTIC.gradient(theta0, a_r, Y[R])
              + 2.0 * theta0)
    kept, report = newton_removal(LOGISTIC, theta0, a_f, Y[F], a_r, Y[R], 2.0, 4, None, 4,
                                  keep_offset=True, offset_scale=0.5)
    assert report.training_gradient == pytest.approx(np.linalg.norm(offset), rel=1e-9)
    assert _grad_retained(kept, 2.0, 0.5 * offset) < 1e-8
    assert report.residual_ratio < 1e-6  # measured against the kept offset, not zero
    plain, _ = newton_removal(LOGISTIC, theta0, a_f, Y[F], a_r, Y[R], 2.0, 4, None, 4)
    assert _grad_retained(plain, 2.0) < 1e-8
    assert np.linalg.norm(kept - plain) > 1e-3


def test_a_retained_lambda_is_the_objective_the_steps_solve() -> None:
    theta0 = _optimum(X, Y, 2.0)
    exact, _ = newton_minimise(LOGISTIC, theta0, X[R], Y[R], 1.5, 100, 1e-12)
    theta, report = newton_removal(LOGISTIC, theta0, augment(X[F]), Y[F], augment(X[R]),
                                   Y[R], 2.0, 5, None, 5, lam_retained=1.5)
    assert np.linalg.norm(theta - exact) < 1e-8
    assert report.distance_bound == pytest.approx(_grad_retained(theta, 1.5) / 1.5, rel=1e-6)


def test_newton_forget_on_a_model_matches_retraining_and_records_what_it_kept() -> None:
    model = LinearModel.fit(X, Y, l2=2.0)
    new = newton_forget(model, X[F], Y[F], X[R], Y[R], steps=4)
    np.testing.assert_allclose(new.params, _optimum(X[R], Y[R], 2.0), atol=1e-8)
    assert new.l2 == 2.0 and new.trained_on is not None
    tol = newton_forget(model, X[F], Y[F], X[R], Y[R], tol=1e-10)
    np.testing.assert_allclose(tol.params, _optimum(X[R], Y[R], 2.0), atol=1e-7)


def test_with_a_mean_loss_recipe_the_result_has_the_retained_rows_lambda() -> None:
    recipe = Recipe(reduction="mean", weight_decay=0.025)
    model = LinearModel.fit(X, Y, l2=recipe.lam(80))
    new, report = linear_forget(model, (X[F], Y[F]), (X[R], Y[R]), 5, None, 5, recipe)
    assert new.l2 == pytest.approx(recipe.lam(68)) and report.steps == 5
    np.testing.assert_allclose(new.params, _optimum(X[R], Y[R], recipe.lam(68)), atol=1e-7)
    wrong = LinearModel.fit(X, Y, l2=recipe.lam(80) * 1.01)
    with pytest.raises(ValueError, match=r"the model's l2 2\.02 is not the recipe's λ for 80 "
                                         r"training rows \(2\); pass the recipe"):
        linear_forget(wrong, (X[F], Y[F]), (X[R], Y[R]), 1, None, 1, recipe)


def test_only_a_linear_model_is_taken() -> None:
    with pytest.raises(TypeError, match="newton_forget needs a LinearModel; got"):
        linear_forget(object(), (X[F], Y[F]), (X[R], Y[R]), 1, None, 1)  # type: ignore[arg-type]


def test_the_residual_is_relative_even_when_the_first_gradient_is_small() -> None:
    theta0 = _optimum(X, Y, 2.0)
    losses = LinearModel.fit(X, Y, l2=2.0).losses(X, Y)
    easy = int(np.argmin(losses))  # its gradient is tiny: ||Σ_F ∇ℓ|| < 1
    rest = np.delete(np.arange(80), easy)
    a_f, a_r = augment(X[[easy]]), augment(X[rest])
    first = np.linalg.norm(LOGISTIC.gradient(theta0, a_f, Y[[easy]]))
    assert first < 1e-2
    theta, report = newton_removal(LOGISTIC, theta0, a_f, Y[[easy]], a_r, Y[rest], 2.0, 1,
                                   None, 1)
    left = np.linalg.norm(LOGISTIC.gradient(theta, a_r, Y[rest]) + 2.0 * theta)
    assert report.residual_ratio == pytest.approx(left / first, rel=1e-3)


def test_the_recipe_check_allows_rounding_and_nothing_more() -> None:
    recipe = Recipe(reduction="mean", weight_decay=0.025)
    close = LinearModel.fit(X, Y, l2=recipe.lam(80) * (1 + 1e-12))
    new, _ = linear_forget(close, (X[F], Y[F]), (X[R], Y[R]), 1, None, 1, recipe)
    assert new.l2 == pytest.approx(recipe.lam(68))
    off = LinearModel.fit(X, Y, l2=recipe.lam(80) * (1 + 1e-6))
    with pytest.raises(ValueError, match="is not the recipe's λ"):
        linear_forget(off, (X[F], Y[F]), (X[R], Y[R]), 1, None, 1, recipe)


def test_newton_forget_takes_one_step_unless_told() -> None:
    model = LinearModel.fit(X, Y, l2=2.0)
    one = newton_forget(model, X[F], Y[F], X[R], Y[R])
    np.testing.assert_array_equal(one.params, newton_forget(model, X[F], Y[F], X[R], Y[R],
                                                            steps=1).params)
    two = newton_forget(model, X[F], Y[F], X[R], Y[R], steps=2)
    assert np.abs(one.params - two.params).max() > 1e-9


def test_one_kept_offset_step_is_the_newton_step_on_the_shifted_objective() -> None:
    theta0 = _optimum(X, Y, 2.0) + np.array([0.05, -0.02, 0.03, 0.01])
    a_f, a_r = augment(X[F]), augment(X[R])
    offset = (LOGISTIC.gradient(theta0, a_f, Y[F]) + LOGISTIC.gradient(theta0, a_r, Y[R])
              + 2.0 * theta0)
    one, report = newton_removal(LOGISTIC, theta0, a_f, Y[F], a_r, Y[R], 2.0, 1, None, 1,
                                 keep_offset=True)  # offset_scale 1 by default
    h = LOGISTIC.hessian(theta0, a_r) + 2.0 * np.eye(4)
    want = theta0 - np.linalg.solve(h, LOGISTIC.gradient(theta0, a_r, Y[R]) + 2.0 * theta0
                                    - offset)
    np.testing.assert_allclose(one, want, rtol=1e-10, atol=1e-12)
    start = LOGISTIC.gradient(theta0, a_r, Y[R]) + 2.0 * theta0 - offset
    left = LOGISTIC.gradient(one, a_r, Y[R]) + 2.0 * one - offset
    assert report.residual_ratio == pytest.approx(np.linalg.norm(left) / np.linalg.norm(start),
                                                  rel=1e-6)


def test_tol_is_relative_to_the_first_gradient() -> None:
    theta0 = _optimum(X, Y, 2.0)
    first = np.linalg.norm(LOGISTIC.gradient(theta0, augment(X[F]), Y[F]))
    assert first**2 > 1.1  # so tol x first and tol / first fall on either side below
    _, (_, one) = _removal(1, tol=None, max_steps=10)
    _, (_, met) = _removal(1, tol=1.1 * one.residual_ratio, max_steps=10)
    assert met.steps == 1
    _, (_, unmet) = _removal(1, tol=0.5 * one.residual_ratio, max_steps=10)
    assert unmet.steps >= 2


def test_the_report_is_a_frozen_value() -> None:
    """A report is part of a removal's public result (NewtonReport is exported): a caller
    must not be able to rewrite the certified bound after the fact."""
    _, (_, report) = _removal(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.distance_bound = 0.0  # type: ignore[misc]
    assert {report, report} == {report}  # hashable: frozen


def test_forget_rows_without_a_gradient_leave_nothing_to_remove() -> None:
    """Rows the model already fits exactly (squared loss, every target 0 at θ = 0) carry no
    gradient: the removal changes nothing and reports 0 left, not 0/0."""
    squared = Glm("squared")
    a, zeros, theta0 = augment(X), np.zeros(80), np.zeros(4)
    with np.errstate(all="raise"):
        theta, report = newton_removal(squared, theta0, a[F], zeros[F], a[R], zeros[R], 2.0, 1,
                                       None, 1)
    np.testing.assert_array_equal(theta, theta0)
    assert report.steps == 1 and report.residual_ratio == 0.0 and report.distance_bound == 0.0
    # tol=0 asks for an exact result: one already exact takes no further step
    _, exact = newton_removal(squared, theta0, a[F], zeros[F], a[R], zeros[R], 2.0, 1, 0.0, 5)
    assert exact.steps == 1
