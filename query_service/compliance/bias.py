"""Bias examination (Art. 10(2)(f)): differences in distribution between sources and between
the training and test/prediction splits, computed (pure) from the source files that
source_stats read after their SHA-256 matched the registered one.

Per column two groups share: a column with at most MAX_DISTINCT values over both groups
(labels, categories) is compared by its value shares — total variation distance
TVD = ½ Σ_v |p_v − q_v|, flagged above 0.1; a numeric column with more values by the
standardised mean difference SMD = (m₁ − m₂) / √((s₁² + s₂²)/2), flagged when |SMD| > 0.25,
and the two-sample Kolmogorov–Smirnov statistic D = max_x |F₁(x) − F₂(x)|, flagged above
its asymptotic critical value at α = 0.01, 1.628·√((n₁ + n₂)/(n₁·n₂)). Only these unitless
figures and the group sizes leave the store, never a value; missing values (null, NaN) are
left out of both groups.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pyarrow as pa

from headwater.query_service.compliance.model import DistributionDifference

MAX_DISTINCT = 10  # as source_stats: at most this many values -> compared by value shares
TVD_FLAG = 0.1
SMD_FLAG = 0.25
KS_C_ALPHA = 1.628  # sqrt(-ln(0.01 / 2) / 2): the KS critical constant at alpha = 0.01
MAX_SOURCES = 12  # pairs of sources compared: at most 66

Columns = dict[str, np.ndarray]  # column -> float64 (NaN missing) or object (None missing)


def columns_of(table: pa.Table) -> Columns:
    """A table's columns as NumPy: numeric ones as float64 (nulls NaN), others as text."""
    out: Columns = {}
    for name in table.column_names:
        column = table[name]
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or \
                pa.types.is_boolean(column.type):
            out[name] = np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False),
                                   dtype=np.float64)
        else:
            out[name] = np.asarray([None if v is None else str(v)
                                    for v in column.to_pylist()], dtype=object)
    return out


def take(columns: Columns, rows: np.ndarray) -> Columns:
    """The given rows (indices past the end are dropped)."""
    n = min((len(v) for v in columns.values()), default=0)
    rows = rows[rows < n]
    return {k: v[rows] for k, v in columns.items()}


def pooled(groups: list[Columns]) -> Columns:
    """Rows of several groups stacked, per column every group has, of one kind."""
    if not groups:
        return {}
    names = [n for n in groups[0] if all(n in g and g[n].dtype == groups[0][n].dtype
                                          for g in groups)]
    return {n: np.concatenate([g[n] for g in groups]) for n in names}


def _present(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return values[np.array([v is not None for v in values], dtype=bool)]
    return values[~np.isnan(values)]


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    """½ Σ |p − q| over the values of both (shares of the non-missing rows)."""
    keys = sorted(set(a.tolist()) | set(b.tolist()), key=str)
    p = np.array([np.sum(a == k) for k in keys], dtype=float) / len(a)
    q = np.array([np.sum(b == k) for k in keys], dtype=float) / len(b)
    return float(0.5 * np.abs(p - q).sum())


def standardised_mean_difference(a: np.ndarray, b: np.ndarray) -> float | None:
    """(mean a − mean b) / √((var a + var b)/2), sample variances; None when both are
    constant."""
    spread = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    return None if spread == 0 else float((a.mean() - b.mean()) / spread)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """max over x of |F_a(x) − F_b(x)| (empirical distribution functions)."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / len(a)
    fb = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


def compare(between: str, groups: tuple[str, str], a: Columns, b: Columns
            ) -> list[DistributionDifference]:
    """One difference per column both groups have (and can be compared: same kind, at
    least two present values in each)."""
    out = []
    for name in sorted(set(a) & set(b)):
        x, y = _present(a[name]), _present(b[name])
        if a[name].dtype != b[name].dtype or len(x) < 2 or len(y) < 2:
            continue
        distinct = len(set(x.tolist()) | set(y.tolist()))
        sizes = [len(x), len(y)]
        if distinct <= MAX_DISTINCT:
            tvd = total_variation(x, y)
            out.append(DistributionDifference(
                column=name, between=between, groups=list(groups), rows=sizes,
                measure="value shares", total_variation=tvd, flagged=tvd > TVD_FLAG,
                rule=f"total variation distance > {TVD_FLAG}"))
        elif a[name].dtype != object:
            smd = standardised_mean_difference(x, y)
            d = ks_statistic(x, y)
            critical = KS_C_ALPHA * np.sqrt((len(x) + len(y)) / (len(x) * len(y)))
            out.append(DistributionDifference(
                column=name, between=between, groups=list(groups), rows=sizes,
                measure="numeric", standardised_mean_difference=smd, ks_statistic=d,
                ks_critical=float(critical),
                flagged=(smd is not None and abs(smd) > SMD_FLAG) or d > critical,
                rule=f"|SMD| > {SMD_FLAG}, or KS D > its critical value at alpha 0.01"))
    return out


def differences(sources: dict[str, Columns], splits: dict[str, dict[str, np.ndarray]]
                ) -> list[DistributionDifference]:
    """Every pair of sources (all their rows), then each pair of splits (the rows each
    draws on, pooled over the sources). `splits`: split -> source id -> source rows."""
    out: list[DistributionDifference] = []
    named = sorted(sources)[:MAX_SOURCES]
    for s, t in combinations(named, 2):
        out += compare("sources", (s, t), sources[s], sources[t])
    drawn = {split: pooled([take(sources[sid], rows) for sid, rows in sorted(by_source.items())
                            if sid in sources and len(rows)])
             for split, by_source in splits.items()}
    for s, t in combinations(list(drawn), 2):
        out += compare("splits", (s, t), drawn[s], drawn[t])
    return out
