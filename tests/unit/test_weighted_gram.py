"""The curvature sketch's Σ w φφᵀ through the symmetric product (gradients.weighted_gram)."""

from __future__ import annotations

import numpy as np
import pytest

from headwater.stream_processors.processors.gradients import part_matrix, upper_indices
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


@pytest.mark.parametrize("dim", [1, 2, 7, 64])
def test_an_upper_part_is_the_whole_matrix_bit_for_bit(dim: int) -> None:
    """The stored triangle (row by row, on and above the diagonal) reads back as every
    entry of the symmetric sum; a 'dense' part of the same sum reads back the same."""
    rng = np.random.default_rng(dim)
    matrix = weighted_gram(rng.standard_normal((3 * dim + 1, dim)), rng.standard_normal(
        3 * dim + 1))
    upper = matrix[upper_indices(dim)].astype("<f8").tobytes()
    assert len(upper) == dim * (dim + 1) // 2 * 8
    got = part_matrix(upper, 3 * dim + 1, dim, "upper")
    assert np.array_equal(got, matrix)
    assert np.array_equal(part_matrix(matrix.astype("<f8").tobytes(), 0, dim, "dense"), got)
    if dim > 1:  # row by row: the second value is entry (0, 1), not (1, 1)
        assert np.frombuffer(upper, "<f8")[1] == matrix[0, 1]
    with pytest.raises(ValueError):
        part_matrix(upper[:-8], 0, dim, "upper")  # a short part is refused, not misread
