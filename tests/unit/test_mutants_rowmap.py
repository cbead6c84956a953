"""The row-map planner's exact plans at its boundaries (a run of exactly MIN_RANGE rows, one
row, exactly MAX_RANGES runs) and the decoded-gather cache's byte bound, found by mutating
producers/rowmap.py (issue 25, `make mutate`): each check here failed on a mutant that the
round-trip tests let through."""

from __future__ import annotations

import numpy as np
import pytest

from headwater.producers import rowmap
from headwater.v1 import events_pb2

IRREGULAR = [100, 37, 5]  # after a run: steps 85-ish, -63, -32, no run of two equal steps


def test_one_row_is_a_unit_range() -> None:
    assert rowmap.plan(np.array([7])) == [(True, 0, 1, 1)]
    assert rowmap.plan(np.array([], dtype=np.int64)) == []


def test_a_run_of_exactly_min_range_rows_is_a_range_and_one_shorter_is_gathered() -> None:
    run = np.arange(rowmap.MIN_RANGE)
    assert rowmap.plan(np.concatenate((run, IRREGULAR))) == [
        (True, 0, rowmap.MIN_RANGE, 1), (False, rowmap.MIN_RANGE, 3, 0)]
    short = np.concatenate((run[:-1], IRREGULAR))
    assert rowmap.plan(short) == [(False, 0, len(short), 0)]


def test_irregular_rows_are_one_gather_with_step_zero() -> None:
    rows = np.array([3, 9, 4, 4, 20, 1])
    assert rowmap.plan(rows) == [(False, 0, 6, 0)]
    (seg,) = rowmap.from_indices(2, rows, out_start=5)
    assert (seg.input, seg.out_start, seg.length, seg.WhichOneof("kind")) == (2, 5, 6, "gather")
    assert rowmap.decode_gather(seg.gather).tolist() == rows.tolist()


def _runs(count: int) -> np.ndarray:
    """`count` arithmetic runs of MIN_RANGE rows, steps alternating 1 and 2."""
    rows, at = [], 0
    for k in range(count):
        step = 1 + k % 2
        rows.extend(range(at, at + step * rowmap.MIN_RANGE, step))
        at += step * rowmap.MIN_RANGE + 1000
    return np.array(rows)


def test_exactly_max_ranges_runs_stay_ranges_and_one_more_is_one_gather() -> None:
    at_most = rowmap.plan(_runs(rowmap.MAX_RANGES))
    assert sum(1 for is_range, *_ in at_most if is_range) == rowmap.MAX_RANGES
    assert sum(length for _, _, length, _ in at_most) == rowmap.MAX_RANGES * rowmap.MIN_RANGE
    over = _runs(rowmap.MAX_RANGES + 1)
    assert rowmap.plan(over) == [(False, 0, len(over), 0)]


def test_segment_inputs_of_each_kind() -> None:
    rng = events_pb2.RowSegment(input=0, out_start=10, length=5,
                                range=events_pb2.RowRange(start=100, step=-3))
    assert rowmap.segment_inputs(rng, np.array([10, 12]), 0).tolist() == [100, 94]
    (gather,) = rowmap.from_indices(0, np.array([8, 1, 5]), out_start=4)
    assert rowmap.segment_inputs(gather, np.array([6, 4]), 0).tolist() == [5, 8]
    every = rowmap.all_rows(1, 3, "reduction", out_start=2)
    assert rowmap.segment_inputs(every, np.array([2]), 4).tolist() == [0, 1, 2, 3]
    assert (every.input, every.out_start, every.length, every.all_rows.reason) == \
        (1, 2, 3, "reduction")
    ident = rowmap.identity(3, 7, out_start=1)
    assert (ident.input, ident.out_start, ident.length, ident.range.start, ident.range.step) \
        == (3, 1, 7, 0, 1)


def test_plain_uint64_gathers_decode_and_unknown_encodings_are_named() -> None:
    rows = np.array([5, 2, 9], dtype="<u8")
    g = events_pb2.RowGather(encoding=events_pb2.RowGather.UINT64_LE, data=rows.tobytes(),
                             count=3)
    assert rowmap.decode_gather(g).tolist() == [5, 2, 9]
    with pytest.raises(ValueError, match="row gather encoding 7 is not supported"):
        rowmap.decode_gather(events_pb2.RowGather(encoding=7, data=b"", count=0))


def _gather(n: int, seed: int) -> events_pb2.RowGather:
    return rowmap.encode_gather(np.random.default_rng(seed).permutation(n * 3)[:n])


def test_the_decoded_cache_keeps_a_quarter_of_its_bound_per_array(monkeypatch) -> None:
    monkeypatch.setattr(rowmap, "DECODED_CACHE_BYTES", 320)  # arrays up to 80 bytes kept
    cache = rowmap._DecodedGathers()
    ten, eleven = _gather(10, 1), _gather(11, 2)  # 80 and 88 bytes decoded
    assert cache.get(ten) is cache.get(ten)
    first = cache.get(eleven)
    assert cache.get(eleven) is not first and np.array_equal(cache.get(eleven), first)
    assert not first.flags.writeable


def test_the_decoded_cache_evicts_least_recently_used_past_its_bound(monkeypatch) -> None:
    monkeypatch.setattr(rowmap, "DECODED_CACHE_BYTES", 319)  # 5 x 64 bytes is one too many
    cache = rowmap._DecodedGathers()
    gathers = [_gather(8, seed) for seed in range(5)]
    kept = [cache.get(g) for g in gathers[:4]]
    assert all(cache.get(g) is k for g, k in zip(gathers[:4], kept, strict=True))
    assert cache.get(gathers[0]) is kept[0]  # 0 used last: 1 is now the oldest
    cache.get(gathers[4])  # 320 bytes > 319: the oldest goes
    assert cache.get(gathers[1]) is not kept[1]
    assert cache.get(gathers[0]) is kept[0]


def test_a_plan_ending_in_a_run_has_no_empty_tail_and_defaults_start_at_row_0() -> None:
    rows = np.concatenate((IRREGULAR, np.arange(200, 200 + rowmap.MIN_RANGE)))
    assert rowmap.plan(rows) == [(False, 0, 3, 0), (True, 3, rowmap.MIN_RANGE, 1)]
    assert rowmap.plan(np.arange(0, 40, 2)) == [(True, 0, 20, 2)]
    assert rowmap.identity(3, 7).out_start == 0
    assert rowmap.all_rows(0, 2, "r").out_start == 0


def test_the_decoded_cache_keeps_arrays_filling_its_bound_exactly(monkeypatch) -> None:
    monkeypatch.setattr(rowmap, "DECODED_CACHE_BYTES", 256)  # 4 x 64 bytes: full, not over
    cache = rowmap._DecodedGathers()
    gathers = [_gather(8, seed) for seed in range(4)]
    kept = [cache.get(g) for g in gathers]
    assert all(cache.get(g) is k for g, k in zip(gathers, kept, strict=True))


def test_two_rows_are_one_range_of_their_step() -> None:
    assert rowmap.plan(np.array([3, 7])) == [(True, 0, 2, 4)]
