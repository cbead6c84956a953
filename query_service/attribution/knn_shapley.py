"""Exact KNN-Shapley data values (Jia et al., VLDB 2019, Theorem 1), computed blockwise.

The game: for one test point (x, y) the utility of a training subset S is the K-nearest-neighbour
classifier's vote share for the true label, U(S) = (1/K) sum_{j<=min(K,|S|)} 1[y_{a_j(S)} = y],
where a_j(S) is the j-th nearest point of S to x; U(empty) = 0. The Shapley value of every training
point under this game has a closed form that needs only the points' distance ranks, so the exact
values for N points cost one sort per test point instead of 2^N utility evaluations. Values for
several test points are averaged (the Shapley value of the averaged game).

Ordering and ties: training points are ranked by the distance computed here (euclidean, or cosine
distance 1 - cos); equal computed distances are broken by training index, lower index = nearer
(as a stable sort would). Distances are computed as ||t||^2 - 2 x.t (euclidean, the constant
||x||^2 dropped) or -x.t / ||t|| (cosine), in float32 when `train_x` is float32 and float64
otherwise, so true ties between different vectors are only seen as ties when that arithmetic is
exact (e.g. small integer features); identical training rows get identical scores.

Memory: test points are processed `block_rows` at a time, so every per-block array (scores, the
sort order, the recursion) has at most block_rows x N entries; `train_x` is never copied when it is
already float32/float64 and C- or F-ordered.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

Metric = Literal["euclidean", "cosine"]

# Default per-block budget in matrix entries (block_rows * N): 4M entries keeps each float64 or
# int64 block array at 32 MiB.
BLOCK_ENTRIES = 1 << 22


def knn_shapley(train_x: ArrayLike, train_y: ArrayLike, test_x: ArrayLike, test_y: ArrayLike,
                k_neighbours: int, *, metric: Metric = "euclidean",
                block_rows: int | None = None) -> NDArray[np.float64]:
    """Exact KNN-Shapley value [N] of each training row, averaged over the M test points.

    Sums to mean over test points of U(all) - U(empty) (the efficiency axiom).
    """
    prep = _prepare(train_x, train_y, test_x, test_y, k_neighbours, metric, block_rows)
    n = prep.train.shape[0]
    total = np.zeros(n, dtype=np.float64)
    for _start, order, values in _blocks(prep):
        # Scatter each row's rank-ordered values back to training indices and sum over the block.
        total += np.bincount(order.ravel(), weights=values.ravel(), minlength=n)
    return total / prep.test.shape[0]


def knn_shapley_per_test(train_x: ArrayLike, train_y: ArrayLike, test_x: ArrayLike,
                         test_y: ArrayLike, k_neighbours: int, *, metric: Metric = "euclidean",
                         block_rows: int | None = None) -> NDArray[np.float64]:
    """Exact KNN-Shapley values [M, N], one row per test point (holds M x N; small inputs only)."""
    prep = _prepare(train_x, train_y, test_x, test_y, k_neighbours, metric, block_rows)
    out = np.empty((prep.test.shape[0], prep.train.shape[0]), dtype=np.float64)
    for start, order, values in _blocks(prep):
        np.put_along_axis(out[start:start + order.shape[0]], order, values, axis=1)
    return out


def shapley_from_sorted_matches(match: NDArray[np.bool_], k_neighbours: int
                                ) -> NDArray[np.float64]:
    """Shapley values [B, N] in rank order from match[b, i] = 1[label of (i+1)-th nearest = y_b].

    Jia et al. Theorem 1, with ranks i = 1..N (1 = nearest) and c_i the match indicator:
        s_N = c_N / N * min(K, N) / K        (the paper's c_N / N when N >= K)
        s_i = s_{i+1} + (c_i - c_{i+1}) / K * min(K, i) / i.
    Unrolled, s_i = s_N + sum_{j=i}^{N-1} d_j with d_j the increment above, i.e. a reversed
    cumulative sum over the rank axis, vectorised over the block of test points.
    """
    if match.ndim != 2 or match.shape[1] == 0:
        raise ValueError(f"match must be a non-empty [B, N] array, got shape {match.shape}")
    k = _check_k(k_neighbours)
    n = match.shape[1]
    c = match.astype(np.float64)
    # The farthest point counts only when it is inside the K nearest of S, i.e. |S| < K; over the
    # uniformly distributed coalition size |S| in 0..N-1 that happens with probability min(K,N)/N.
    last = c[:, -1] * (min(k, n) / (k * n))
    ranks = np.arange(1, n, dtype=np.float64)                     # i = 1..N-1
    weight = np.minimum(k, ranks) / (k * ranks)                   # min(K, i) / (K i)
    steps = np.subtract(c[:, :-1], c[:, 1:])
    steps *= weight                                               # d_i, i = 1..N-1
    out = np.empty_like(c)
    out[:, -1] = last
    # Reversed cumulative sum written straight into out[:, :-1] through a reversed view.
    np.cumsum(steps[:, ::-1], axis=1, out=out[:, -2::-1])
    out[:, :-1] += last[:, None]
    return out


def rank_order(score: NDArray[np.floating]) -> NDArray[np.intp]:
    """Per-row argsort of score [B, N], equal scores ordered by column index (as a stable sort).

    An unstable sort is ~3x faster than a stable one on float rows; ties (common in float32 scores
    over 100k rows) are then repaired in the rows that have them by sorting on the unique key
    (tie-run id, column).
    """
    order = np.argsort(score, axis=1)
    ranked = np.take_along_axis(score, order, axis=1)
    equal_next = ranked[:, 1:] == ranked[:, :-1]
    tied = np.flatnonzero(equal_next.any(axis=1))
    if tied.size:
        n = score.shape[1]
        # run[b, i] = number of distinct scores before rank i; sorting run * N + column keeps the
        # score order between runs and puts columns in ascending order within a run.
        run = np.zeros((tied.size, n), dtype=np.int64)
        np.cumsum(~equal_next[tied], axis=1, out=run[:, 1:])
        composite = run * n + order[tied]
        # composite is sorted except inside tie runs; the stable sort (timsort) is adaptive to
        # nearly sorted input, so this pass costs a few percent of the first sort.
        repair = np.argsort(composite, axis=1, kind="stable")
        order[tied] = np.take_along_axis(order[tied], repair, axis=1)
    return order


def group_values(values: ArrayLike, keys: ArrayLike) -> tuple[NDArray[Any], NDArray[np.float64]]:
    """Sum row values by key (e.g. source id or op): returns (sorted unique keys, sums).

    Each sum is the total of the rows' own Shapley values (every row a player in the N-player
    game). It is NOT the Shapley value of the group as one player of a coarser game: that can
    differ because rows inside a group interact (near-duplicates split credit between them).
    """
    v = np.asarray(values, dtype=np.float64)
    k = np.asarray(keys)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {v.shape}")
    if k.shape != v.shape:
        raise ValueError(f"keys must have the same shape as values {v.shape}, got {k.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"values has a non-finite entry at index {_first_false(np.isfinite(v))}")
    uniq, inverse = np.unique(k, return_inverse=True)
    sums = np.bincount(inverse.ravel(), weights=v, minlength=uniq.shape[0]).astype(np.float64)
    return uniq, sums


class _Prepared:
    """Validated inputs in compute form: float matrices, integer label codes, per-row norms."""

    def __init__(self, train: NDArray[np.floating], test: NDArray[np.floating],
                 train_codes: NDArray[np.intp], test_codes: NDArray[np.intp], k: int,
                 metric: Metric, block_rows: int) -> None:
        self.train, self.test = train, test
        self.train_codes, self.test_codes = train_codes, test_codes
        self.k, self.metric, self.block_rows = k, metric, block_rows
        if metric == "euclidean":
            self.train_scale = np.einsum("ij,ij->i", train, train)   # ||t||^2
        else:
            self.train_scale = np.sqrt(np.einsum("ij,ij->i", train, train))  # ||t||


def _blocks(prep: _Prepared) -> Iterator[tuple[int, NDArray[np.intp], NDArray[np.float64]]]:
    """Yield (first test row, order [B, N], rank-ordered Shapley values [B, N]) per test block."""
    m = prep.test.shape[0]
    for start in range(0, m, prep.block_rows):
        block = prep.test[start:start + prep.block_rows]
        dots = block @ prep.train.T
        if prep.metric == "euclidean":
            # ||x - t||^2 = ||x||^2 - 2 x.t + ||t||^2; ||x||^2 is constant per row, so dropped.
            score = prep.train_scale[None, :] - 2.0 * dots
        else:
            # cosine distance 1 - x.t/(||x|| ||t||) ranks like -x.t/||t|| (||x|| > 0 per row).
            score = -(dots / prep.train_scale[None, :])
        order = rank_order(score)
        del score, dots
        match = prep.train_codes[order] == prep.test_codes[start:start + block.shape[0], None]
        yield start, order, shapley_from_sorted_matches(match, prep.k)


def _prepare(train_x: ArrayLike, train_y: ArrayLike, test_x: ArrayLike, test_y: ArrayLike,
             k_neighbours: int, metric: str, block_rows: int | None) -> _Prepared:
    k = _check_k(k_neighbours)
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    train = _features(train_x, "train_x")
    dtype = train.dtype
    test = _features(test_x, "test_x", dtype)
    n, m = train.shape[0], test.shape[0]
    if n == 0:
        raise ValueError("train_x has no rows (N == 0); Shapley values need at least one player")
    if m == 0:
        raise ValueError("test_x has no rows (M == 0); values are averaged over test points")
    if test.shape[1] != train.shape[1]:
        raise ValueError(f"test_x has {test.shape[1]} features per row but train_x has "
                         f"{train.shape[1]}")
    train_codes, test_codes = _label_codes(train_y, test_y, n, m)
    if metric == "cosine":
        for arr, name in ((train, "train_x"), (test, "test_x")):
            nonzero = np.any(arr != 0, axis=1)
            if not nonzero.all():
                raise ValueError(f"{name} row {_first_false(nonzero)} is all zeros; cosine "
                                 "distance is undefined for it")
    if block_rows is None:
        rows = max(1, min(m, BLOCK_ENTRIES // n))
    elif isinstance(block_rows, (bool, np.bool_)) or not isinstance(block_rows, (int, np.integer)):
        raise ValueError(f"block_rows must be a positive int or None, got {block_rows!r}")
    elif block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    else:
        rows = int(block_rows)
    return _Prepared(train, test, train_codes, test_codes, k, cast(Metric, metric), rows)


def _check_k(k_neighbours: int) -> int:
    if isinstance(k_neighbours, (bool, np.bool_)) or not isinstance(k_neighbours,
                                                                   (int, np.integer)):
        raise ValueError(f"k_neighbours must be an int, got {k_neighbours!r}")
    if k_neighbours < 1:
        raise ValueError(f"k_neighbours must be >= 1, got {k_neighbours}")
    return int(k_neighbours)


def _features(x: ArrayLike, name: str, dtype: np.dtype[Any] | None = None
              ) -> NDArray[np.floating]:
    """A finite 2-D float matrix: float32/float64 kept as is (no copy), anything else float64."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [rows, features] array, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if dtype is None:
        dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    arr = arr.astype(dtype, copy=False)
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has no feature columns")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        raise ValueError(f"{name} row {_first_false(finite)} contains NaN or infinity")
    return arr


def _label_codes(train_y: ArrayLike, test_y: ArrayLike, n: int, m: int
                 ) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Integer codes such that train code == test code iff the labels are equal.

    Test labels absent from the training labels get code -1, which matches nothing.
    """
    tr, te = np.asarray(train_y), np.asarray(test_y)
    for arr, name, rows, xname in ((tr, "train_y", n, "train_x"), (te, "test_y", m, "test_x")):
        if arr.shape != (rows,):
            raise ValueError(f"{name} must be 1-D with one label per {xname} row ({rows}), "
                             f"got shape {arr.shape}")
        if arr.dtype.kind == "f" and np.isnan(arr).any():
            raise ValueError(f"{name} contains NaN labels, which equal nothing")
    if tr.dtype.kind == "O" or te.dtype.kind == "O":
        # Arbitrary hashable labels: a Python dict does the equality (O(N), fine for labels).
        table: dict[Any, int] = {}
        tr_codes = np.fromiter((table.setdefault(v, len(table)) for v in tr.tolist()),
                               dtype=np.intp, count=n)
        te_codes = np.fromiter((table.get(v, -1) for v in te.tolist()), dtype=np.intp, count=m)
        return tr_codes, te_codes
    if _label_kind(tr) != _label_kind(te):
        raise ValueError(f"train_y ({tr.dtype}) and test_y ({te.dtype}) hold different kinds of "
                         "labels (numbers, strings or bytes); they can never be equal")
    uniq, tr_codes = np.unique(tr, return_inverse=True)
    pos = np.minimum(np.searchsorted(uniq, te), uniq.shape[0] - 1)
    te_codes = np.where(uniq[pos] == te, pos, -1)
    return tr_codes.astype(np.intp).ravel(), te_codes.astype(np.intp)


def _label_kind(arr: NDArray[Any]) -> str:
    if arr.dtype.kind in "biuf":
        return "number"
    if arr.dtype.kind == "U":
        return "string"
    if arr.dtype.kind == "S":
        return "bytes"
    raise ValueError(f"labels must be numbers or strings, got dtype {arr.dtype}")


def _first_false(mask: NDArray[np.bool_]) -> int:
    return int(np.flatnonzero(~mask)[0])
