"""Row maps of ops that only move values (pure): tile, flat roll, sliding windows /
unfold, and a probe that runs any such op on row ids.

The probe: each tracked data input i is replaced by an int64 array of its shape whose
elements name their row, id = (i << ROW_BITS) + row + 1 (a zero-stride view, no copy);
the op runs on the ids, so every output element holds the id of the element it was moved
from. Values the op makes up (padding, triu's zeros, inserted constants, untracked
operands) are told apart by a second run with every id shifted by SHIFT: moved elements
shift by exactly SHIFT, made-up ones do not. Only ops whose output elements are copies of
input elements (or constants) may be probed: a mean of ids would shift by SHIFT too.
Each output row then depends on the distinct rows its elements came from: one per row is
a gather; up to MAX_FANIN_SEGMENTS, one gather per column of the sorted distinct rows; a
row holding every row of an input (a transpose) is all rows of it; more, not understood.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from headwater.producers.tracking.maps import NotUnderstood
from headwater.producers.tracking.segments import (
    MAX_FANIN_SEGMENTS,
    ROWS_MOVED,
    Segments,
    all_rows,
    broadcast,
    range_segment,
    rows_segments,
)

ROW_BITS = 33  # rows < 2**33 - 1; input index above them; ids stay below 2**40
SHIFT = 1 << 40  # ids and shifted ids are exact in float64 (< 2**53)
MAX_INPUTS = 64
MAX_RUNS = 4096  # output rows with and without a source alternating more often: not understood


def row_ids(i: int, shape: tuple[int, ...], shift: int = 0) -> np.ndarray:
    """Element ids of input i of this shape (each element names its row)."""
    if i >= MAX_INPUTS:
        raise NotUnderstood
    n = shape[0] if shape else 1
    base = np.arange(n, dtype=np.int64) + (1 + (i << ROW_BITS) + shift)
    if not shape:
        return base.reshape(())
    return np.broadcast_to(base.reshape((n,) + (1,) * (len(shape) - 1)), shape)


def probe(run: Callable[[Callable[[int, tuple[int, ...]], np.ndarray]], Any],
          made_up: bool) -> np.ndarray:
    """Output ids of `run(ids_of)` (ids_of(i, shape) gives input i's ids); 0 where the op
    made the value up. `made_up=False`: every output element is a moved input element
    (transposes, reshapes, windows), so one run suffices."""
    first = np.asarray(run(lambda i, shape: row_ids(i, shape)))
    if not made_up:
        return first.astype(np.int64, copy=False)
    second = np.asarray(run(lambda i, shape: row_ids(i, shape, SHIFT)))
    moved = (second - first) == SHIFT
    return np.where(moved, first, 0).astype(np.int64)


def id_segments(ids: np.ndarray, inputs: Sequence[int], input_rows: Sequence[int]
                ) -> Segments:
    """Segments from output ids (see `probe`); inputs[k] has input_rows[k] rows."""
    n_out = ids.shape[0] if ids.ndim else 1
    if n_out == 0:
        return []
    flat = ids.reshape(n_out, -1)
    segments: Segments = []
    which = flat >> ROW_BITS
    for i, n_in in zip(inputs, input_rows, strict=True):
        mine = (which == i) & (flat != 0)
        if not mine.any():
            continue
        rows = np.where(mine, (flat & ((1 << ROW_BITS) - 1)) - 1, -1)
        hi = rows.max(axis=1)
        lo = np.where(mine, rows, np.iinfo(np.int64).max).min(axis=1)
        has = hi >= 0
        if (lo[has] == hi[has]).all():  # one source row per output row: a gather
            segments += _runs(i, hi, has)
            continue
        s = np.sort(rows, axis=1)
        starts = np.ones(s.shape, dtype=bool)
        starts[:, 1:] = s[:, 1:] != s[:, :-1]
        starts &= s >= 0
        count = starts.sum(axis=1)
        k = int(count.max())
        if k > MAX_FANIN_SEGMENTS:
            if (count[has] == n_in).all():  # each such row holds every row: exact
                segments += _runs(i, hi, has, _all_rows_of(i))
                continue
            raise NotUnderstood
        table = np.repeat(hi[:, None], k, axis=1)  # padded with a row already listed
        r, c = np.nonzero(starts)
        slot = np.cumsum(starts, axis=1) - 1
        table[r, slot[r, c]] = s[r, c]
        for j in range(k):
            segments += _runs(i, table[:, j], has)
    return segments


def _all_rows_of(i: int) -> Callable[[int, int], Any]:
    def make(a: int, b: int) -> Any:
        return all_rows(i, b - a, ROWS_MOVED, a)
    return make


def _runs(i: int, col: np.ndarray, has: np.ndarray,
          make: Callable[[int, int], Any] | None = None) -> Segments:
    """Segments for the output rows where `has`, in runs of consecutive rows."""
    if has.all():
        return [make(0, len(col))] if make else rows_segments(i, col)
    where = np.flatnonzero(has)
    if where.size == 0:
        return []
    starts = np.flatnonzero(np.r_[True, where[1:] != where[:-1] + 1])
    if len(starts) > MAX_RUNS:
        raise NotUnderstood
    ends = np.r_[starts[1:], len(where)]
    out: Segments = []
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        lo, hi = int(where[a]), int(where[b - 1]) + 1
        out += [make(lo, hi)] if make else rows_segments(i, col[lo:hi], lo)
    return out


# ---------------------------------------------------------------------------------------
# closed forms shared by NumPy and torch (the probe would give the same, at a cost)


def tile_segments(i: int, shape: tuple[int, ...], reps: Sequence[int], n_out: int
                  ) -> Segments:
    """np.tile(x, reps) / torch.tile(x, reps) / x.repeat(*reps): reps padded with leading
    ones to x's rank; extra leading reps make each output row hold every row."""
    if not shape:
        return [broadcast(i, 0, n_out)] if n_out else []
    reps = list(reps)
    if len(reps) > len(shape):  # output rows run along a new axis: each holds every row
        if not n_out:
            return []
        return [broadcast(i, 0, n_out) if shape[0] == 1 else
                all_rows(i, n_out, "tiled into a new leading axis")]
    reps = [1] * (len(shape) - len(reps)) + reps
    rows = np.tile(np.arange(shape[0], dtype=np.int64), reps[0])
    return rows_segments(i, rows) if rows.size else []


def flat_roll_segments(i: int, shape: tuple[int, ...], shift: int) -> Segments:
    """np.roll(x, s) / torch.roll(x, s) without an axis: the flattened elements move by s,
    so output row r holds the elements of at most two neighbouring input rows."""
    n = shape[0] if shape else 1
    size = int(np.prod(shape)) if shape else 1
    if size == 0:
        return []
    k = size // n
    r = np.arange(n, dtype=np.int64)
    first = ((r * k - shift) % size) // k
    last = ((r * k + k - 1 - shift) % size) // k
    segs = rows_segments(i, first)
    if (first != last).any():
        segs += rows_segments(i, last)
    return segs


def window_segments(i: int, n_windows: int, size: int, step: int) -> Segments:
    """Windows along rows (sliding_window_view over axis 0, Tensor.unfold(0, size,
    step)): window w holds rows w*step .. w*step + size - 1."""
    if n_windows == 0:
        return []
    if size > MAX_FANIN_SEGMENTS:
        raise NotUnderstood
    return [range_segment(i, j, step, n_windows) for j in range(size)]
