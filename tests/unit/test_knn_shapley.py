"""KNN-Shapley closed form against brute-force Shapley values over all subsets of small games."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from headwater.query_service.attribution.knn_shapley import (
    group_values,
    knn_shapley,
    knn_shapley_per_test,
    rank_order,
    shapley_from_sorted_matches,
)


def brute_distances(train_x: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
    """Distances computed directly (not by the module's expansion), in float64."""
    t = train_x.astype(np.float64)
    x = x.astype(np.float64)
    if metric == "euclidean":
        return ((t - x) ** 2).sum(axis=1)
    return 1.0 - (t @ x) / (np.linalg.norm(t, axis=1) * np.linalg.norm(x))


def brute_utility(subset: tuple[int, ...], dist: np.ndarray, hits: np.ndarray, k: int) -> float:
    """U(S) = (1/K) * number of label matches among the K nearest of S (ties: lower index)."""
    nearest = sorted(subset, key=lambda i: (dist[i], i))[:k]
    return sum(float(hits[i]) for i in nearest) / k


def brute_shapley(train_x, train_y, x, y, k, metric) -> np.ndarray:
    """phi_i = sum over S not containing i of |S|!(N-|S|-1)!/N! * (U(S + i) - U(S))."""
    n = len(train_y)
    dist = brute_distances(train_x, x, metric)
    hits = np.array([label == y for label in train_y])
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for s in itertools.combinations(others, size):
                gain = brute_utility(s + (i,), dist, hits, k) - brute_utility(s, dist, hits, k)
                phi[i] += weight * gain
    return phi


def random_game(seed: int, n: int, m: int, d: int = 3, classes: int = 3):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)), rng.integers(0, classes, n),
            rng.normal(size=(m, d)), rng.integers(0, classes, m))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("seed,n", [(0, 1), (1, 2), (2, 4), (3, 6), (4, 7)])
def test_matches_brute_force(seed: int, n: int, k: int, m: int, metric: str) -> None:
    tx, ty, qx, qy = random_game(seed, n, m)
    expected = np.array([brute_shapley(tx, ty, qx[j], qy[j], k, metric) for j in range(m)])
    per_test = knn_shapley_per_test(tx, ty, qx, qy, k, metric=metric)
    np.testing.assert_allclose(per_test, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(knn_shapley(tx, ty, qx, qy, k, metric=metric),
                               expected.mean(axis=0), rtol=0, atol=1e-12)


def test_hand_worked_two_points() -> None:
    # K=1, nearest point wrong, farthest right: U({1})=0, U({2})=1, U({1,2})=0, so
    # phi_1 = (0 + (0 - 1))/2 = -1/2 and phi_2 = (1 + 0)/2 = 1/2.
    got = shapley_from_sorted_matches(np.array([[False, True], [True, False]]), 1)
    np.testing.assert_allclose(got, [[-0.5, 0.5], [1.0, 0.0]])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 5, 40, 80])
def test_efficiency_axiom(k: int, metric: str) -> None:
    tx, ty, qx, qy = random_game(11, 60, 7, d=5)
    per_test = knn_shapley_per_test(tx, ty, qx, qy, k, metric=metric)
    for j in range(len(qy)):
        dist = brute_distances(tx, qx[j], metric)
        full = brute_utility(tuple(range(len(ty))), dist, ty == qy[j], k)
        assert per_test[j].sum() == pytest.approx(full, abs=1e-12)  # U(all) - U(empty), U(empty)=0
    np.testing.assert_allclose(knn_shapley(tx, ty, qx, qy, k, metric=metric),
                               per_test.mean(axis=0), atol=1e-14)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_blockwise_equals_unblocked(metric: str) -> None:
    tx, ty, qx, qy = random_game(5, 300, 23, d=8)
    whole = knn_shapley(tx, ty, qx, qy, 4, metric=metric, block_rows=23)
    whole_rows = knn_shapley_per_test(tx, ty, qx, qy, 4, metric=metric, block_rows=23)
    for rows in (1, 2, 5, 22, 100, None):
        np.testing.assert_allclose(knn_shapley(tx, ty, qx, qy, 4, metric=metric, block_rows=rows),
                                   whole, rtol=0, atol=1e-14)
        np.testing.assert_array_equal(
            knn_shapley_per_test(tx, ty, qx, qy, 4, metric=metric, block_rows=rows), whole_rows)


def test_float32_features_agree_with_float64() -> None:
    tx, ty, qx, qy = random_game(8, 200, 5, d=16)
    np.testing.assert_allclose(
        knn_shapley(tx.astype(np.float32), ty, qx.astype(np.float32), qy, 3),
        knn_shapley(tx, ty, qx, qy, 3), atol=1e-12)


def test_ties_broken_by_training_index() -> None:
    # Two identical training rows: the lower index counts as nearer; with K=1 it takes the credit.
    tx, qx = np.zeros((2, 2)), np.zeros((1, 2))
    np.testing.assert_allclose(knn_shapley(tx, [1, 0], qx, [1], 1), [1.0, 0.0])
    np.testing.assert_allclose(knn_shapley(tx, [0, 1], qx, [1], 1), [-0.5, 0.5])


@pytest.mark.parametrize("levels", [2, 50, 10**9])
def test_rank_order_equals_stable_argsort(levels: int) -> None:
    # Few levels: long tie runs; many levels: no ties, so the repair path is skipped.
    score = np.random.default_rng(levels).integers(0, levels, size=(9, 500)).astype(np.float32)
    np.testing.assert_array_equal(rank_order(score), np.argsort(score, axis=1, kind="stable"))


def test_string_and_object_labels() -> None:
    tx, ty, qx, qy = random_game(3, 6, 2)
    names = np.array(["cat", "dog", "eel"])
    expected = knn_shapley(tx, ty, qx, qy, 2)
    np.testing.assert_allclose(knn_shapley(tx, names[ty], qx, names[qy], 2), expected)
    np.testing.assert_allclose(
        knn_shapley(tx, list(names[ty].astype(object)), qx, names[qy].astype(object), 2), expected)
    # A test label never seen in training matches nothing: every value is zero.
    assert not knn_shapley(tx, names[ty], qx, ["yak", "yak"], 2).any()


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 6), m=st.integers(1, 2), d=st.integers(1, 3),
       k=st.integers(1, 4))
def test_hypothesis_euclidean_with_ties(data, n: int, m: int, d: int, k: int) -> None:
    # Small integer features: the squared distances are exact in float64, so ties (frequent here)
    # are exact in both implementations and must be broken the same way, by training index.
    ints = arrays(np.int64, st.tuples(st.just(n), st.just(d)), elements=st.integers(-2, 2))
    tx = data.draw(ints)
    qx = data.draw(arrays(np.int64, (m, d), elements=st.integers(-2, 2)))
    ty = data.draw(arrays(np.int64, n, elements=st.integers(0, 2)))
    qy = data.draw(arrays(np.int64, m, elements=st.integers(0, 2)))
    expected = np.array([brute_shapley(tx, ty, qx[j], qy[j], k, "euclidean") for j in range(m)])
    np.testing.assert_allclose(knn_shapley_per_test(tx, ty, qx, qy, k), expected, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(1, 6), d=st.integers(1, 3), k=st.integers(1, 4))
def test_hypothesis_cosine(data, n: int, d: int, k: int) -> None:
    floats = st.floats(-10, 10, allow_nan=False).filter(lambda v: abs(v) > 1e-3)
    tx = data.draw(arrays(np.float64, (n, d), elements=floats))
    qx = data.draw(arrays(np.float64, (1, d), elements=floats))
    ty = data.draw(arrays(np.int64, n, elements=st.integers(0, 1)))
    qy = data.draw(arrays(np.int64, 1, elements=st.integers(0, 1)))
    # Distinct rows at (nearly) equal cosine distance may round to either order; identical rows
    # tie exactly in both implementations, so only near-ties of distinct rows are excluded.
    dist = brute_distances(tx, qx[0], "cosine")
    for a, b in itertools.combinations(range(n), 2):
        assume(np.array_equal(tx[a], tx[b]) or abs(dist[a] - dist[b]) > 1e-9)
    expected = brute_shapley(tx, ty, qx[0], qy[0], k, "cosine")
    np.testing.assert_allclose(knn_shapley(tx, ty, qx, qy, k, metric="cosine"), expected,
                               atol=1e-12)


def test_group_values_sums_rows_by_key() -> None:
    keys, sums = group_values([0.5, -0.25, 1.0, 2.0], ["b", "a", "b", "c"])
    assert keys.tolist() == ["a", "b", "c"]
    np.testing.assert_allclose(sums, [-0.25, 1.5, 2.0])
    with pytest.raises(ValueError, match="keys must have the same shape"):
        group_values([1.0, 2.0], ["a"])
    with pytest.raises(ValueError, match="values has a non-finite entry at index 1"):
        group_values([1.0, np.nan], ["a", "b"])


GOOD = (np.zeros((3, 2)), [0, 1, 0], np.ones((2, 2)), [0, 1])


@pytest.mark.parametrize("change,message", [
    ({1: [0, 1]}, r"train_y must be 1-D with one label per train_x row \(3\)"),
    ({3: [0]}, r"test_y must be 1-D with one label per test_x row \(2\)"),
    ({2: np.ones((2, 3))}, "test_x has 3 features per row but train_x has 2"),
    ({0: np.zeros(3)}, "train_x must be a 2-D"),
    ({0: np.zeros((0, 2)), 1: []}, r"train_x has no rows \(N == 0\)"),
    ({2: np.zeros((0, 2)), 3: []}, r"test_x has no rows"),
    ({0: np.array([[0.0, 0.0], [np.nan, 1.0], [0.0, 0.0]])}, "train_x row 1 contains NaN"),
    ({2: np.array([[1.0, np.inf], [0.0, 0.0]])}, "test_x row 0 contains NaN or infinity"),
    ({0: np.array([["a", "b"]] * 3)}, "train_x must be numeric"),
    ({4: 0}, "k_neighbours must be >= 1, got 0"),
    ({4: 2.0}, "k_neighbours must be an int"),
    ({3: ["a", "b"]}, "hold different kinds of labels"),
    ({1: [0.0, np.nan, 1.0]}, "train_y contains NaN"),
])
def test_errors_name_the_argument(change: dict, message: str) -> None:
    args = list(GOOD) + [1]
    for position, value in change.items():
        args[position] = value
    with pytest.raises(ValueError, match=message):
        knn_shapley(*args)


def test_option_errors() -> None:
    with pytest.raises(ValueError, match="metric must be 'euclidean' or 'cosine'"):
        knn_shapley(*GOOD, 1, metric="manhattan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="block_rows must be >= 1, got 0"):
        knn_shapley(*GOOD, 1, block_rows=0)
    with pytest.raises(ValueError, match="train_x row 0 is all zeros; cosine"):
        knn_shapley(*GOOD, 1, metric="cosine")


@pytest.mark.slow
@pytest.mark.parametrize("m", [1, 100])
def test_timing_100k_rows(m: int) -> None:
    rng = np.random.default_rng(0)
    tx = rng.normal(size=(100_000, 512)).astype(np.float32)
    ty = rng.integers(0, 10, 100_000)
    qx = rng.normal(size=(m, 512)).astype(np.float32)
    qy = rng.integers(0, 10, m)
    start = time.perf_counter()
    values = knn_shapley(tx, ty, qx, qy, 10)
    elapsed = time.perf_counter() - start
    print(f"knn_shapley N=100000 d=512 M={m} K=10: {elapsed:.3f} s")
    # Efficiency at scale: the values add up to the mean top-10 vote share for the true label.
    d2 = (tx.astype(np.float64) ** 2).sum(1)[None, :] - 2 * qx.astype(np.float64) @ tx.T
    top = np.argsort(d2, axis=1, kind="stable")[:, :10]
    assert values.sum() == pytest.approx((ty[top] == qy[:, None]).mean(), abs=1e-9)
