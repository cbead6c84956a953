"""Row maps: compression round-trips exactly and stays small for structured index arrays."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from headwater.producers import rowmap


def _expand(segments, n_out: int) -> np.ndarray:
    out = np.full(n_out, -1, dtype=np.int64)
    for seg in segments:
        rows = np.arange(seg.out_start, seg.out_start + seg.length)
        assert (out[rows] == -1).all(), "segments overlap"
        out[rows] = rowmap.segment_inputs(seg, rows, input_rows=10**9)
    return out


@settings(max_examples=300, deadline=None)
@given(arrays(np.int64, st.integers(0, 300), elements=st.integers(0, 10**6)))
def test_any_index_array_round_trips(rows: np.ndarray) -> None:
    segments = rowmap.from_indices(0, rows, out_start=7)
    assert sum(s.length for s in segments) == len(rows)
    if len(rows):
        assert (_expand(segments, 7 + len(rows))[7:] == rows).all()


def test_structured_indices_stay_small() -> None:
    n = 10_000_000
    for rows in (np.arange(n), np.arange(n)[::-1], np.arange(5, n, 3)):
        segments = rowmap.from_indices(0, rows)
        assert len(segments) == 1 and segments[0].WhichOneof("kind") == "range"
        assert segments[0].ByteSize() < 32


def test_random_gather_is_compressed() -> None:
    rows = np.sort(np.random.default_rng(0).choice(10**7, size=10**6, replace=False))
    segments = rowmap.from_indices(0, rows)
    size = sum(s.ByteSize() for s in segments)
    assert size < rows.nbytes / 3  # sorted gathers compress well below 8 bytes a row
    assert (_expand(segments, len(rows)) == rows).all()


def test_adjacent_long_runs_share_their_boundary_row_once() -> None:
    """Two arithmetic runs of at least MIN_RANGE rows that meet at one row (the step changes
    without a jump): the plan covers every row exactly once, in order (issue 25: a planner
    letting the runs overlap summed 41 lengths for 40 rows and no test noticed)."""
    from headwater.producers.rowmap import MIN_RANGE, plan

    first = np.arange(0, 20)  # step 1 up to row 19
    second = 19 + 2 * np.arange(1, 21)  # step 2 from 21: the runs meet at 19
    rows = np.concatenate([first, second])
    assert len(first) >= MIN_RANGE and len(second) >= MIN_RANGE
    pieces = plan(rows)
    assert sum(length for _, _, length, _ in pieces) == len(rows) == 40
    cursor = 0
    rebuilt = []
    for is_range, at, length, step in pieces:
        assert at == cursor
        if is_range:
            rebuilt.extend(rows[at] + step * np.arange(length))
        else:
            rebuilt.extend(rows[at:at + length])
        cursor = at + length
    assert np.array_equal(np.asarray(rebuilt), rows)
    assert [p[0] for p in pieces].count(True) == 2
