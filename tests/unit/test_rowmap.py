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
