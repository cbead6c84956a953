"""Tracked DataFrames: selection, filters, to_array and merges record row maps that
resolve each output row to exactly the input rows it came from (checked against row ids
carried through pandas itself) and column mappings that name where each column came from."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.producers.envelope import EnvelopeBuilder
from headwater.producers.rowmap import segment_inputs
from headwater.producers.tracking import TrackedArray, Tracker
from headwater.producers.tracking.frames import TrackedFrame, encode_ranges, merge, pair_rowmap
from headwater.producers.tracking.sources import track_dataframe
from headwater.stream_processors.lineage_resolve import OpView, trace_each
from headwater.stream_processors.processors.validate import validate_event
from headwater.v1 import events_pb2

Key = tuple[str, int]


def op_lookup(events: list[Any]) -> Callable[[str], OpView | None]:
    """Resolution over captured events: sources give row counts, ops give row maps."""
    rows: dict[str, int] = {}
    ops: dict[str, events_pb2.OpRecorded] = {}
    for e in events:
        if isinstance(e, events_pb2.SourceRegistered):
            rows[e.node_id] = e.row_count
        else:
            rows[e.output_node_id] = e.row_map.output_rows
            ops[e.output_node_id] = e

    def op_of(node: str) -> OpView | None:
        op = ops.get(node)
        if op is None:
            return None
        return OpView(op.op_id, op.op_name, tuple(op.input_node_ids),
                      tuple(rows.get(n, 0) for n in op.input_node_ids),
                      tuple(op.row_map.segments))
    return op_of


def resolve(events: list[Any], node: str, n: int) -> list[set[Key]]:
    """For each of n rows of `node`, the (source node, row) pairs it resolves to."""
    traces = trace_each(node, np.arange(n), op_lookup(events))
    return [{(s, int(r)) for s, rs in t.rows.items() for r in rs} for t in traces]


def setup(*frames: pd.DataFrame, granularity: str = "every_op"
          ) -> tuple[list[Any], Tracker, list[TrackedFrame]]:
    events: list[Any] = []
    tracker = Tracker(events.append, granularity=granularity, code_version="t1")
    tracked = [track_dataframe(tracker, df, uri=f"memory://f{i}") for i, df in enumerate(frames)]
    return events, tracker, tracked


PEOPLE = pd.DataFrame({"id": [3, 1, 2, 3], "age": [40.0, 25.0, np.nan, 41.0],
                       "name": ["c", "a", "b", "c2"]})


# ---------------------------------------------------------------------------------------
# Selection, filters, to_array


def test_column_selection_records_identity_rows_and_columns() -> None:
    events, _, (frame,) = setup(PEOPLE)
    sub = frame[["name", "id"]]
    op = events[-1]
    assert isinstance(sub, TrackedFrame) and sub.columns == ["name", "id"]
    assert op.input_node_ids == [frame.node_id] and op.output_node_id == sub.node_id
    assert list(op.output_columns) == ["name", "id"] and list(op.output_shape) == [4, 2]
    assert [(c.output_column, c.input, list(c.input_columns), c.transformation)
            for c in op.columns] == [("name", 0, ["name"], "IDENTITY"),
                                     ("id", 0, ["id"], "IDENTITY")]
    assert resolve(events, sub.node_id, 4) == [{(frame.node_id, r)} for r in range(4)]
    with pytest.raises(KeyError, match=r"\['nope'\] are not in the frame"):
        frame[["id", "nope"]]
    with pytest.raises(TypeError, match=r"frame\[\['id'\]\]"):
        frame["id"]


def test_row_filter_resolves_kept_rows() -> None:
    events, tracker, (frame,) = setup(PEOPLE)
    kept = frame[frame.df["id"] == 3]
    assert kept.df["name"].tolist() == ["c", "c2"]
    assert resolve(events, kept.node_id, 2) == [{(frame.node_id, 0)}, {(frame.node_id, 3)}]
    # a tracked mask is an input (an edge) but adds no rows
    mask = tracker.array(np.array([False, True, True, False]), node_id="mask-node")
    picked = frame[mask]
    assert list(events[-1].input_node_ids) == [frame.node_id, "mask-node"]
    assert resolve(events, picked.node_id, 2) == [{(frame.node_id, 1)}, {(frame.node_id, 2)}]


def test_row_filter_errors() -> None:
    _, _, (frame,) = setup(PEOPLE)
    with pytest.raises(TypeError, match="must be boolean; got dtype int64"):
        frame[np.array([0, 1, 0, 1])]
    with pytest.raises(ValueError, match=r"shape \(4,\); got \(3,\)"):
        frame[np.array([True, False, True])]
    shifted = pd.Series([True, False, True, False], index=[9, 8, 7, 6])
    with pytest.raises(ValueError, match="index differs"):
        frame[shifted]


def test_to_array_records_columns_and_checks_dtypes() -> None:
    events, _, (frame,) = setup(PEOPLE)
    x = frame.to_array(["age", "id"])
    op = events[-1]
    assert isinstance(x, TrackedArray) and x.node_id == op.output_node_id
    assert op.op_name == "pandas.DataFrame.to_numpy" and list(op.output_columns) == ["age", "id"]
    assert [c.input_columns[0] for c in op.columns] == ["age", "id"]
    np.testing.assert_array_equal(np.asarray(x), [[40, 3], [25, 1], [np.nan, 2], [41, 3]])
    assert resolve(events, x.node_id, 4) == [{(frame.node_id, r)} for r in range(4)]
    y = x * 2  # NumPy ops keep resolving through the frame's op
    assert resolve(events, y.node_id, 4)[2] == {(frame.node_id, 2)}
    with pytest.raises(TypeError, match=r"column 'name' has dtype (str|object)"):
        frame.to_array()
    with pytest.raises(ValueError, match="missing values"):
        frame.to_array(["age"], dtype=np.int64)
    with pytest.raises(TypeError, match="requested array dtype has dtype <U1"):
        frame.to_array(["id"], dtype="U1")


def test_frame_construction_errors_and_off() -> None:
    tracker = Tracker(lambda e: None)
    with pytest.raises(TypeError, match="pandas DataFrame; got ndarray"):
        TrackedFrame(np.zeros(3), "n", tracker)  # type: ignore[arg-type]
    dup = pd.DataFrame([[1, 2]], columns=["a", "a"])
    with pytest.raises(ValueError, match=r"duplicated: \['a'\]"):
        TrackedFrame(dup, "n", tracker)
    with pytest.raises(ValueError, match="'off'"):
        TrackedFrame(PEOPLE, "n", Tracker(lambda e: None, granularity="off"))
    events: list[Any] = []
    off = Tracker(events.append, granularity="off")
    df = track_dataframe(off, PEOPLE, uri="memory://people")
    assert df is PEOPLE and [type(e).__name__ for e in events] == ["SourceRegistered"]


def test_batch_granularity_records_frame_ops_as_batch_level() -> None:
    events, _, (frame,) = setup(PEOPLE, granularity="batch")
    frame[["id"]].to_array()
    assert [e.granularity for e in events[1:]] == [events_pb2.OpRecorded.BATCH_LEVEL] * 2


# ---------------------------------------------------------------------------------------
# Merge


LEFT = pd.DataFrame({"k": [1, 2, 2, 4], "v": [10, 20, 21, 40], "a": [0.1, 0.2, 0.3, 0.4]})
RIGHT = pd.DataFrame({"k": [2, 4, 4, 5], "v": [7, 8, 9, 6], "b": ["p", "q", "r", "s"]})


def test_merge_outer_pairs_and_columns() -> None:
    events, _, (left, right) = setup(LEFT, RIGHT)
    out = left.merge(right, on="k", how="outer")
    op = events[-1]
    assert op.op_name == "pandas.merge" and list(op.input_node_ids) == [left.node_id,
                                                                        right.node_id]
    assert list(op.output_columns) == ["k", "v_x", "a", "v_y", "b"]
    mapped = {(c.output_column, c.input, c.input_columns[0]) for c in op.columns}
    assert mapped == {("k", 0, "k"), ("k", 1, "k"), ("v_x", 0, "v"), ("a", 0, "a"),
                      ("v_y", 1, "v"), ("b", 1, "b")}
    ln, rn = left.node_id, right.node_id
    got = resolve(events, out.node_id, len(out))
    expected = []
    for k, lv, rv in zip(out.df["k"], out.df["v_x"], out.df["v_y"], strict=True):
        pair = set()
        if not np.isnan(lv):
            pair.add((ln, LEFT.index[LEFT["v"] == lv][0]))
        if not np.isnan(rv):
            pair.add((rn, RIGHT.index[RIGHT["v"] == rv][0]))
        assert pair, f"row with key {k} has no partner at all"
        expected.append({(n, int(r)) for n, r in pair})
    assert got == expected
    # unmatched sides are uncovered: row with key 1 has no right segment, key 5 no left
    assert {(ln, 0)} in got and {(rn, 3)} in got


def test_merge_left_on_right_on_and_self_join() -> None:
    right = RIGHT.rename(columns={"k": "key"}).assign(k=[0, 0, 0, 0])
    events, _, (left, r) = setup(LEFT, right)
    out = merge(left, r, left_on="k", right_on="key", how="inner")
    assert list(events[-1].output_columns) == ["k_x", "v_x", "a", "key", "v_y", "b", "k_y"]
    assert ("k_y", 1, "k") in {(c.output_column, c.input, c.input_columns[0])
                               for c in events[-1].columns}
    assert len(out) == 4
    self_join = left.merge(left, on="k")
    op = events[-1]
    assert list(op.input_node_ids) == [left.node_id]
    assert {s.input for s in op.row_map.segments} == {0}
    # row 0 pairs left row 0 with itself; key 2 rows pair (1|2) x (1|2)
    assert resolve(events, self_join.node_id, len(self_join))[:3] == [
        {(left.node_id, 0)}, {(left.node_id, 1)}, {(left.node_id, 1), (left.node_id, 2)}]


def test_merge_errors() -> None:
    _, tracker, (left, right) = setup(LEFT, RIGHT)
    with pytest.raises(ValueError, match="how must be one of"):
        left.merge(right, on="k", how="semi")
    with pytest.raises(ValueError, match="never guessed"):
        left.merge(right)
    with pytest.raises(KeyError, match=r"\['zz'\] are not columns of the right frame"):
        left.merge(right, left_on="k", right_on="zz")
    with pytest.raises(ValueError, match="takes no on"):
        left.merge(right, on="k", how="cross")
    with pytest.raises(TypeError, match="two TrackedFrames.*got DataFrame"):
        left.merge(RIGHT, on="k")  # type: ignore[arg-type]
    _, _, (other,) = setup(RIGHT)
    with pytest.raises(ValueError, match="different trackers"):
        left.merge(other, on="k")


def test_merge_of_sorted_unique_keys_is_a_few_segments() -> None:
    n = 5000
    left = pd.DataFrame({"k": np.arange(n), "x": np.arange(n, dtype=float)})
    right = pd.DataFrame({"k": np.arange(0, 2 * n, 2), "y": np.ones(n)})
    events, _, (lf, rf) = setup(left, right)
    out = lf.merge(rf, on="k", how="left")
    segs = events[-1].row_map.segments
    # left: identity; right: every other output row has a partner -> per-run segments,
    # so check the matched runs of an inner join instead, which are contiguous
    assert segs[0].WhichOneof("kind") == "range" and segs[0].length == n
    inner = lf.merge(rf, on="k")
    assert len(inner) == n // 2
    assert [s.WhichOneof("kind") for s in events[-1].row_map.segments] == ["range", "range"]
    assert len(out) == n


def covered(row_map: events_pb2.RowMap, input_index: int, input_rows: int) -> dict[int, int]:
    """output row -> input row, for the segments of one input (each row covered once)."""
    found: dict[int, int] = {}
    for seg in row_map.segments:
        if seg.input != input_index:
            continue
        rows = np.arange(seg.out_start, seg.out_start + seg.length)
        for r, x in zip(rows.tolist(), segment_inputs(seg, rows, input_rows).tolist(),
                        strict=True):
            assert r not in found, f"output row {r} covered twice"
            found[r] = x
    return found


def test_pair_rowmap_leaves_unmatched_rows_uncovered() -> None:
    pos = np.array([-1, 5, 6, 7, -1, -1, 2, 0, 9, 11, 13, -1, 4])
    rm = pair_rowmap(len(pos), [(1, pos), (0, np.arange(len(pos)))])
    assert rm.output_rows == len(pos)
    assert covered(rm, 1, 20) == {r: int(x) for r, x in enumerate(pos) if x >= 0}
    assert covered(rm, 0, 20) == {r: r for r in range(len(pos))}
    # arithmetic pieces are ranges: 5,6,7 is one; 0,9 / 11,13 or similar pairs, not rows
    assert sum(s.input == 1 for s in rm.segments) <= 5
    assert not pair_rowmap(2, [(0, np.array([-1, -1]))]).segments
    with pytest.raises(ValueError, match="positions for 3 output rows"):
        pair_rowmap(3, [(0, np.zeros(2, dtype=np.int64))])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-1, 300), max_size=400), st.integers(0, 3))
def test_pair_rowmap_is_exact(values: list[int], seed: int) -> None:
    # long runs (gathered), arithmetic stretches (ranges) and random rows, with gaps
    rng = np.random.default_rng(seed)
    pos = np.array(values + list(range(7, 7 + 3 * 90, 3)) + [-1] * 3
                   + rng.integers(0, 1000, 100).tolist(), dtype=np.int64)
    rm = pair_rowmap(len(pos), [(0, pos)])
    assert covered(rm, 0, 2000) == {r: int(x) for r, x in enumerate(pos) if x >= 0}


def test_encode_ranges_matches_protobuf() -> None:
    out_start = np.array([0, 127, 128, 2**40])
    length = np.array([1, 300, 5, 1])
    start = np.array([0, 2**62, 16384, 3])
    step = np.array([1, -1, 0, -(2**40)])
    data = encode_ranges(3, out_start, length, start, step)
    expected = events_pb2.RowMap(segments=[
        events_pb2.RowSegment(input=3, out_start=o, length=n,
                              range=events_pb2.RowRange(start=a, step=s))
        for o, n, a, s in zip(out_start.tolist(), length.tolist(), start.tolist(),
                              step.tolist(), strict=True)])
    assert events_pb2.RowMap.FromString(data) == expected
    assert encode_ranges(0, *(np.zeros(0, dtype=np.int64),) * 4) == b""


def test_frame_events_validate() -> None:
    events, _, (left, right) = setup(LEFT, RIGHT)
    left.merge(right, on="k", how="outer")[["a", "b"]]
    builder = EnvelopeBuilder("run-1")
    names = [e.op_name for e in events if isinstance(e, events_pb2.OpRecorded)]
    assert any("merge" in n for n in names), names  # the merge was recorded at all
    for e in events:
        validate_event(builder.wrap(e))


# ---------------------------------------------------------------------------------------
# Property: merges resolve row pairs exactly, for every join kind


def _frame(draw: Any, side: str, n: int) -> pd.DataFrame:
    keys = draw(st.lists(st.one_of(st.integers(0, 3), st.none()), min_size=n, max_size=n))
    return pd.DataFrame({
        "k": pd.array([np.nan if k is None else float(k) for k in keys], dtype="float64"),
        "v": np.arange(n) * 10 + (1 if side == "l" else 2),
        side: np.arange(n, dtype=float),
    })


@st.composite
def merge_cases(draw: Any) -> tuple[pd.DataFrame, pd.DataFrame, str, str]:
    left = _frame(draw, "l", draw(st.integers(0, 6)))
    right = _frame(draw, "r", draw(st.integers(0, 6)))
    how = draw(st.sampled_from(["inner", "left", "right", "outer", "cross"]))
    keys = "none" if how == "cross" else draw(st.sampled_from(["on", "left_right_on"]))
    return left, right, how, keys


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(merge_cases())
def test_merge_row_pairs_match_brute_force(case: tuple[pd.DataFrame, pd.DataFrame, str, str]
                                           ) -> None:
    left_df, right_df, how, keys = case
    events, _, (left, right) = setup(left_df, right_df)
    kwargs: dict[str, Any] = {}
    if keys == "on":
        kwargs = {"on": "k"}
    elif keys == "left_right_on":
        kwargs = {"left_on": ["k", "v"], "right_on": ["k", "v"]}
    out = merge(left, right, how=how, **kwargs)

    ref = pd.merge(left_df.assign(__left_row=np.arange(len(left_df))),
                   right_df.assign(__right_row=np.arange(len(right_df))), how=how, **kwargs)
    pd.testing.assert_frame_equal(out.df, ref.drop(columns=["__left_row", "__right_row"]))
    expected = []
    for lr, rr in zip(ref["__left_row"], ref["__right_row"], strict=True):
        pair = set()
        if not pd.isna(lr):
            pair.add((left.node_id, int(lr)))
        if not pd.isna(rr):
            pair.add((right.node_id, int(rr)))
        expected.append(pair)
    assert resolve(events, out.node_id, len(out)) == expected

    # each column mapping is true of the data: where the row has a partner on the mapped
    # side, the output value equals that partner's value in the named input column
    op = events[-1]
    assert set(op.output_columns) == {m.output_column for m in op.columns}
    sides = [(left_df, "__left_row"), (right_df, "__right_row")]
    for m in op.columns:
        src, carried = sides[m.input]
        rows = ref[carried]
        has = rows.notna().to_numpy()
        got = out.df[m.output_column].to_numpy()[has]
        want = src[m.input_columns[0]].to_numpy()[rows[has].astype(int).to_numpy()]
        np.testing.assert_array_equal(got, want)
