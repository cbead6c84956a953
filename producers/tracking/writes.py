"""Row maps of writes into rows: `x[key] = value` (NumPy and torch alike).

After the write, row r of x holds its old values (input `own`) unless the key overwrote it
whole, and the value's rows that landed in it (input `val`). Keys that select whole rows or
parts of rows through axis 0 (an int, a slice, an int array, a mask, then slices / ints
of later axes) map exactly; the maps are built from the written rows only (no per-element
work), so a loop of single-row writes — NumPy's shuffles swap rows this way — stays cheap.
Other keys raise NotUnderstood.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from headwater.producers.tracking.maps import NotUnderstood
from headwater.producers.tracking.segments import (
    MAX_FANIN_SEGMENTS,
    Segments,
    all_rows,
    broadcast,
    range_segment,
    rows_segments,
)

MAX_RUNS = 4096  # written rows scattered into more runs than this: not understood


def _rows_of(k: Any, n: int) -> np.ndarray | None:
    """Rows selected by axis-0 entry k, in the order the selection lists them (None: an
    int, which drops axis 0)."""
    if isinstance(k, slice):
        return np.arange(*k.indices(n), dtype=np.int64)
    if isinstance(k, (bool, np.bool_)):
        raise NotUnderstood
    if isinstance(k, (int, np.integer)):
        return None
    a = np.asarray(k)
    if a.dtype == bool:
        if a.ndim != 1 or a.shape[0] != n:
            raise NotUnderstood
        return np.flatnonzero(a)
    if a.dtype.kind not in "iu" or a.ndim != 1:
        raise NotUnderstood
    a = a.astype(np.int64)
    return np.where(a < 0, a + n, a)


def _full(entry: Any) -> bool:
    return entry is Ellipsis or (isinstance(entry, slice) and entry == slice(None))


def setitem_segments(key: Any, shape: tuple[int, ...], own: int | None, val: int | None,
                     value_shape: tuple[int, ...]) -> Segments:
    """Segments of x after `x[key] = value` (x of `shape`; `own`/`val`: input indices of x
    and of a tracked value, None when untracked: a constant value adds no segment)."""
    n = shape[0] if shape else 1
    if not shape:  # a 0-d array: one row, written whole by x[...] = v or x[()] = v
        if not (key is Ellipsis or (isinstance(key, tuple) and not key)):
            raise NotUnderstood
        if val is None:
            return []
        return [broadcast(val, 0, 1)] if not value_shape or value_shape[0] == 1 else [
            all_rows(val, 1, "value spread over a written row")]
    entries: tuple[Any, ...] = key if isinstance(key, tuple) else (key,)
    first: Any
    rest: tuple[Any, ...]
    if not entries or entries[0] is Ellipsis and len(entries) == 1:
        first, rest = slice(None), ()
    elif entries[0] is Ellipsis or entries[0] is None:
        raise NotUnderstood  # axis 0 inside an Ellipsis / a new axis: not mapped here
    else:
        first, rest = entries[0], entries[1:]
    for e in rest:  # later axes: basic indices only (advanced ones reorder the selection)
        if not (e is Ellipsis or isinstance(e, (slice, int, np.integer))):
            raise NotUnderstood
    picked = _rows_of(first, n)
    int_key = picked is None
    if int_key:
        r = int(first)
        picked = np.array([r + n if r < 0 else r], dtype=np.int64)
    assert picked is not None
    # the selection's shape: rows of the selection, then what the later entries keep
    n_sel = len(picked)
    whole_rows = all(_full(e) for e in rest)
    # which value row lands in selection row k: same rank and length -> k, one row -> 0,
    # fewer dims (its axis 0 is not the selection's rows) or an int key -> all of them
    sel_ndim = len(shape) - (1 if int_key else 0) - sum(
        isinstance(e, (int, np.integer)) for e in rest)
    if val is None or not n_sel:
        value_rows: np.ndarray | None = None
        value_all = False
    elif not value_shape:
        value_rows, value_all = np.zeros(n_sel, dtype=np.int64), False
    elif int_key or len(value_shape) < sel_ndim:
        value_rows, value_all = None, True
    elif value_shape[0] == n_sel:
        value_rows, value_all = np.arange(n_sel, dtype=np.int64), False
    elif value_shape[0] == 1:
        value_rows, value_all = np.zeros(n_sel, dtype=np.int64), False
    else:
        raise NotUnderstood
    # the last write to a row wins (x[[1, 1]] = v): keep each row's last selection index
    order = np.argsort(picked, kind="stable")
    sorted_rows = picked[order]
    last = np.r_[sorted_rows[1:] != sorted_rows[:-1], True] if n_sel else np.ones(0, bool)
    rows, at = sorted_rows[last], order[last]
    if rows.size and (rows[0] < 0 or rows[-1] >= n):
        raise NotUnderstood
    segments: Segments = []
    if own is not None:
        if whole_rows:  # written rows lose their old values; the gaps keep theirs
            starts = np.r_[0, rows + 1]  # O(written rows): shuffles write one at a time
            ends = np.r_[rows, n]
            gaps = np.flatnonzero(starts < ends)
            if len(gaps) > MAX_RUNS:
                raise NotUnderstood
            segments += [range_segment(own, a, 1, b - a, a) for a, b in zip(
                starts[gaps].tolist(), ends[gaps].tolist(), strict=True)]
        elif n:
            segments.append(range_segment(own, 0, 1, n))
    if val is not None and rows.size:
        if value_all:
            k = value_shape[0]  # the value's rows all land in each written row
            if k <= MAX_FANIN_SEGMENTS:  # row-wise (one segment per value row), so a
                # moved row stays a direct source, not an aggregate, and resolves cheaply
                for a, b in _run_bounds(rows):
                    segments += [range_segment(val, c, 0, b - a, a) for c in range(k)]
            else:
                segments += _runs(val, rows, lambda a, b: all_rows(
                    val, b - a, "value spread over a written row", a))
        else:
            assert value_rows is not None
            src = value_rows[at]
            starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1] + 1])
            if len(starts) > MAX_RUNS:
                raise NotUnderstood
            ends = np.r_[starts[1:], len(rows)]
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
                if b - a == 1:
                    segments.append(broadcast(val, int(src[a]), 1, int(rows[a])))
                else:
                    segments += rows_segments(val, src[a:b], int(rows[a]))
    return segments


def _run_bounds(rows: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of consecutive sorted rows."""
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1] + 1])
    if len(starts) > MAX_RUNS:
        raise NotUnderstood
    ends = np.r_[starts[1:], len(rows)]
    return [(int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(
        starts.tolist(), ends.tolist(), strict=True)]


def _runs(i: int, rows: np.ndarray, make: Any) -> Segments:
    """One segment per run of consecutive rows (make(start, stop))."""
    if rows.size == 0:
        return []
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1] + 1])
    if len(starts) > MAX_RUNS:
        raise NotUnderstood
    ends = np.r_[starts[1:], len(rows)]
    return [make(int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(
        starts.tolist(), ends.tolist(), strict=True)]
