"""The curvature sketch's Σ w φφᵀ through the symmetric product (gradients.weighted_gram)."""

from __future__ import annotations

import numpy as np
import pytest

from headwater.stream_processors.processors.sketch import weighted_gram


@pytest.mark.parametrize("weights", ["positive", "mixed", "zeros", "negative"])
def test_weighted_gram_is_the_general_product(weights: str) -> None:
    rng = np.random.default_rng(7)
    phi = rng.standard_normal((300, 48))
    w = {"positive": rng.random(300), "mixed": rng.standard_normal(300),
         "zeros": np.zeros(300), "negative": -rng.random(300)}[weights]
    if weights == "mixed":
        w[::7] = 0.0
    expected = (phi * w[:, None]).T @ phi
    got = weighted_gram(phi, w)
    scale = max(np.abs(expected).max(), 1.0)
    assert np.abs(got - expected).max() <= 1e-12 * scale
    assert np.array_equal(got, got.T)  # exactly symmetric


def test_weighted_gram_of_a_single_row() -> None:
    phi = np.array([[1.0, -2.0, 3.0]])
    assert np.allclose(weighted_gram(phi, np.array([-0.5])), -0.5 * np.outer(phi[0], phi[0]))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("weights", ["positive", "mixed"])
def test_narrow_gradients_give_the_float64_sum_bit_for_bit(dtype: type, weights: str) -> None:
    """φ as sent (float16/32) is widened inside the multiply: the same bits as a float64
    copy first, never arithmetic in the narrow type."""
    rng = np.random.default_rng(11)
    phi = rng.standard_normal((200, 32)).astype(dtype)
    w = rng.random(200) if weights == "positive" else rng.standard_normal(200)
    got = weighted_gram(phi, w)
    assert got.dtype == np.float64
    assert np.array_equal(got, weighted_gram(phi.astype(np.float64), w))
    narrow = (phi * np.sqrt(np.abs(w)).astype(dtype)[:, None]).astype(np.float64)
    assert not np.array_equal(got, narrow.T @ narrow)  # what narrow arithmetic would give
