"""The factored projection's factor matrices (orthonormalised seeded Rademacher rows) and
the split of the k budget between layers (issue 16: factored within 0.03 LDS of dense)."""

from __future__ import annotations

import numpy as np
import pytest

from headwater.producers.capture.kronecker import Factor, KroneckerProjection, plan_factors


def test_factor_rows_are_orthonormal_scaled_and_seeded() -> None:
    spec = KroneckerProjection(3, (Factor("a", 32, 65, 23, 11, True),))
    p_rows, p_cols = spec.matrices(0)
    assert p_rows.shape == (23, 32) and p_cols.shape == (11, 65)
    for p, d in ((p_rows, 32), (p_cols, 65)):
        k = len(p)
        np.testing.assert_allclose(p @ p.T, (d / k) * np.eye(k), atol=1e-12)
    again = KroneckerProjection(3, (Factor("a", 32, 65, 23, 11, True),)).matrices(0)
    assert all(np.array_equal(x, y) for x, y in zip(again, (p_rows, p_cols), strict=True))
    other = KroneckerProjection(4, (Factor("a", 32, 65, 23, 11, True),)).matrices(0)
    assert not np.allclose(other[0], p_rows)
    whole = KroneckerProjection(3, (Factor("b", 10, 33, 10, 25, True),)).matrices(0)[0]
    assert np.array_equal(whole, np.eye(10))  # k equals the dimension: the identity


def test_factor_is_unbiased_and_beats_independent_rows() -> None:
    """E[PᵀP] = I over seeds, and inner products of correlated vectors keep a smaller error
    than with independent ±1/√k rows at k = d/2 (variance about 1/k − 1/d against 1/k)."""
    d, k, seeds = 16, 8, 400
    rng = np.random.default_rng(0)
    u = rng.standard_normal(d)
    v = u + 0.5 * rng.standard_normal(d)
    mean = np.zeros((d, d))
    ortho, indep = [], []
    for s in range(seeds):
        spec = KroneckerProjection(s, (Factor("a", d, 1, k, 1, False),))
        p = spec.matrices(0)[0]
        mean += p.T @ p / seeds
        ortho.append((p @ u) @ (p @ v))
        r = np.random.default_rng(10_000 + s).choice([-1.0, 1.0], (k, d)) / np.sqrt(k)
        indep.append((r @ u) @ (r @ v))
    assert np.abs(mean - np.eye(d)).max() < 0.25  # entries' spread ~ 1/√400 = 0.05 each
    assert abs(np.mean(ortho) - u @ v) < 0.1 * abs(u @ v)
    err = np.mean((np.array(ortho) - u @ v) ** 2)
    assert err < 0.7 * np.mean((np.array(indep) - u @ v) ** 2)


def test_budget_split_favours_the_output_gradient_side() -> None:
    digits = plan_factors([("0", 32, 65, True), ("2", 10, 33, True)], 512)
    assert [(f.k_rows, f.k_cols) for f in digits] == [(23, 11), (10, 25)]
    big = plan_factors([("0", 512, 785, True), ("2", 512, 513, True), ("4", 10, 513, True)],
                       512)
    assert [(f.k_rows, f.k_cols) for f in big] == [(19, 9), (19, 9), (10, 17)]
    assert sum(f.k for f in big) == 512
    narrow = plan_factors([("a", 4, 1000, False)], 100)  # few rows: kept whole
    assert (narrow[0].k_rows, narrow[0].k_cols) == (4, 25)
    tall = plan_factors([("a", 1000, 3, False)], 100)  # few columns: kept whole
    assert (tall[0].k_rows, tall[0].k_cols) == (33, 3)


def test_projection_id_names_how_factors_are_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """Events recorded with other factor matrices (e.g. independent rows) keep other ids."""
    from headwater.producers.capture import kronecker

    spec = KroneckerProjection(0, (Factor("a", 5, 4, 3, 2, True),))
    msg = spec.to_proto()
    monkeypatch.setattr(kronecker, "SIDES", "rademacher")
    assert spec.projection_id != msg.projection_id
    with pytest.raises(ValueError, match="does not match its fields"):
        KroneckerProjection.from_proto(msg)
