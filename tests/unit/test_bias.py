"""Issue 23, third wave: the bias examination's figures (pure) — total variation of value
shares, standardised mean difference and the two-sample KS statistic checked against
scipy and hand-computed values; which columns are compared, and how, between sources and
between splits; thresholds flag a real shift and not a draw from one distribution."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from headwater.query_service.compliance.bias import (
    columns_of,
    compare,
    differences,
    ks_statistic,
    standardised_mean_difference,
    total_variation,
)


def test_figures_against_references() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 300), rng.normal(0.4, 1.5, 200)
    assert ks_statistic(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic)
    pooled = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    assert standardised_mean_difference(a, b) == pytest.approx((a.mean() - b.mean()) / pooled)
    assert standardised_mean_difference(np.ones(3), np.ones(4)) is None
    # shares 3/4, 1/4 against 1/2, 1/2: TVD = 1/4
    assert total_variation(np.array([1.0, 1, 1, 0]), np.array([1.0, 0])) == pytest.approx(0.25)
    assert total_variation(np.array(["x", "y"], dtype=object),
                           np.array(["y", "x"], dtype=object)) == 0.0


def _table(n: int, shift: float, positive: float, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"age": rng.normal(50 + shift, 10, n),
                     "label": (rng.random(n) < positive).astype(np.int64),
                     "site": np.array([f"w{i % 3}" for i in range(n)]),
                     "note": np.array([f"n{i}" for i in range(n)])})


def test_a_shifted_source_is_flagged_and_a_like_one_is_not() -> None:
    base = columns_of(_table(400, 0, 0.5, 1))
    like = columns_of(_table(400, 0, 0.5, 2))
    shifted = columns_of(_table(400, 8, 0.8, 3))
    same = {d.column: d for d in compare("sources", ("a", "b"), base, like)}
    moved = {d.column: d for d in compare("sources", ("a", "c"), base, shifted)}
    # many-valued text ("note") is never compared: only counts and unitless figures leave
    assert set(same) == set(moved) == {"age", "label", "site"}
    assert same["age"].measure == "numeric" and not same["age"].flagged
    assert same["label"].measure == "value shares" and not same["label"].flagged
    assert moved["age"].flagged and moved["age"].standardised_mean_difference < -0.5
    assert moved["age"].ks_statistic > moved["age"].ks_critical
    assert moved["label"].flagged and moved["label"].total_variation > 0.2
    assert moved["site"].total_variation == 0.0 and moved["label"].rows == [400, 400]


def test_missing_values_are_left_out_and_kinds_must_match() -> None:
    a = columns_of(pa.table({"x": pa.array([1.0, None, float("nan"), 2.0, 3.0] * 3),
                             "y": pa.array(["1", "2", "3"] * 5)}))
    b = columns_of(pa.table({"x": pa.array([1.0, 2.0, 3.0] * 5), "y": pa.array([1, 2, 3] * 5)}))
    (x,) = compare("sources", ("a", "b"), a, b)  # y: text against numbers, not compared
    assert x.column == "x" and x.rows == [9, 15]


def test_sources_pairwise_then_splits_pooled() -> None:
    a = columns_of(_table(100, 0, 0.5, 1))
    b = columns_of(_table(80, 0, 0.5, 2))
    splits = {"training": {"a": np.arange(0, 60), "b": np.arange(0, 50)},
              "test/prediction": {"a": np.arange(60, 100), "b": np.arange(50, 200)}}
    found = differences({"a": a, "b": b}, splits)
    between = {(d.between, tuple(d.groups)) for d in found}
    assert between == {("sources", ("a", "b")), ("splits", ("training", "test/prediction"))}
    label = next(d for d in found if d.between == "splits" and d.column == "label")
    assert label.rows == [110, 70]  # rows past a file's end are dropped
