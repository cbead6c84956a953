"""Row resolution (stream_processors/lineage_resolve.py) on hand-built op graphs: segment
edges, diamonds, aggregates followed through copies, the depth bound, per-row op lists.
Each check was written against a mutant of the module that got past the oracle tests
(issue 25, `make mutate`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from headwater.producers import rowmap
from headwater.stream_processors.lineage_resolve import (
    Aggregate,
    OpView,
    map_rows,
    oldest_first,
    trace,
    trace_each,
)
from headwater.v1 import events_pb2


def _op(op_id: str, inputs: dict[str, int], *segments: events_pb2.RowSegment,
        name: str | None = None) -> OpView:
    return OpView(op_id, name or f"name-{op_id}", tuple(inputs), tuple(inputs.values()),
                  tuple(segments))


def _rng(inp: int, out_start: int, length: int, start: int, step: int = 1):
    return events_pb2.RowSegment(input=inp, out_start=out_start, length=length,
                                 range=events_pb2.RowRange(start=start, step=step))


def _graph(*ops: tuple[str, OpView]):
    table = dict(ops)
    return table.get


def _as_lists(rows: dict[str, np.ndarray]) -> dict[str, list[int]]:
    return {k: v.tolist() for k, v in sorted(rows.items())}


def test_map_rows_takes_segment_edges_exactly_and_unions_per_input() -> None:
    op = _op("o", {"a": 10, "b": 4},
             _rng(0, 0, 3, 5),  # out 0..2 <- a 5..7
             _rng(1, 3, 2, 0, 2),  # out 3..4 <- b 0, 2
             *rowmap.from_indices(0, np.array([9, 1, 5, 0]), out_start=5),  # out 5..8
             rowmap.all_rows(1, 1, "mean", out_start=9))  # out 9 <- all of b
    assert _as_lists(map_rows(op, np.array([2]))) == {"a": [7]}
    assert _as_lists(map_rows(op, np.array([3]))) == {"b": [0]}
    assert _as_lists(map_rows(op, np.array([0, 2, 5, 7]))) == {"a": [5, 7, 9]}
    assert _as_lists(map_rows(op, np.array([8, 4]))) == {"a": [0], "b": [2]}
    assert _as_lists(map_rows(op, np.array([9]))) == {"b": [0, 1, 2, 3]}
    assert map_rows(op, np.array([10])) == {}


def test_trace_walks_to_sources_through_a_diamond_and_names_ops_oldest_first() -> None:
    op_of = _graph(
        ("x1", _op("slice", {"src": 10}, _rng(0, 0, 5, 2))),  # x1[i] <- src[i+2]
        ("x2", _op("rev", {"src": 10}, _rng(0, 0, 5, 9, -1))),  # x2[i] <- src[9-i]
        ("y", _op("concat", {"x1": 5, "x2": 5}, _rng(0, 0, 5, 0), _rng(1, 5, 5, 0))))
    t = trace("y", np.array([1, 6, 1]), op_of)
    assert _as_lists(t.rows) == {"src": [3, 8]}
    assert t.op_ids[-1] == "concat" and set(t.op_ids) == {"slice", "rev", "concat"}
    assert t.op_names == [f"name-{o}" for o in t.op_ids]
    only = trace("y", np.array([0]), op_of)
    assert only.op_ids == ["slice", "concat"]  # rev was not passed
    both = trace("y", np.array([4, 5]), op_of)  # src 6 via x1 and src 9 via x2
    assert _as_lists(both.rows) == {"src": [6, 9]}
    assert _as_lists(trace("src", np.array([3, 3, 1]), op_of).rows) == {"src": [1, 3]}


def test_a_source_reached_twice_on_paths_of_different_length_keeps_both_row_sets() -> None:
    op_of = _graph(("x", _op("copy", {"src": 4}, _rng(0, 0, 4, 0))),
                   ("y", _op("pair", {"src": 4, "x": 4}, _rng(0, 0, 2, 0), _rng(1, 2, 2, 2))))
    assert _as_lists(trace("y", np.array([0, 1, 2, 3]), op_of).rows) == {"src": [0, 1, 2, 3]}


def _chain(depth: int):
    ops = {f"n{i}": _op(f"op{i}", {f"n{i - 1}": 3}, _rng(0, 0, 3, 0)) for i in range(1, depth + 1)}
    return ops.get


def test_the_depth_bound_counts_ops_and_a_cycle_is_named() -> None:
    op_of = _chain(4)  # n4 <- n3 <- n2 <- n1 <- n0 (a source)
    assert _as_lists(trace("n4", np.array([1]), op_of, max_depth=10).rows) == {"n0": [1]}
    with pytest.raises(ValueError, match="lineage of n4 is deeper than 3 ops"):
        trace("n4", np.array([1]), op_of, max_depth=3)
    # exactly max_depth ops is within the bound (it once refused a 4-op chain at 5)
    assert _as_lists(trace("n4", np.array([1]), op_of, max_depth=4).rows) == {"n0": [1]}
    assert _as_lists(trace_each("n4", np.array([1]), op_of, max_depth=4)[0].rows) == \
        {"n0": [1]}
    assert _as_lists(trace_each("n4", np.array([1]), op_of, max_depth=10)[0].rows) == \
        {"n0": [1]}
    with pytest.raises(ValueError, match="lineage of n4 is deeper than 3 ops"):
        trace_each("n4", np.array([1]), op_of, max_depth=3)
    loop = _graph(("a", _op("ab", {"b": 2}, _rng(0, 0, 2, 0))),
                  ("b", _op("ba", {"a": 2}, _rng(0, 0, 2, 0))))
    with pytest.raises(ValueError, match=r"\(a cycle\?\)"):
        trace("a", np.array([0]), loop, max_depth=50)


def _with_mean():
    """y[i] = x[i] - mean(x) for 3 rows; x = copy of src rows 4..6; mean = all rows of x."""
    return _graph(
        ("x", _op("take", {"src": 10}, _rng(0, 0, 3, 4))),
        ("m", _op("mean", {"x": 3}, rowmap.all_rows(0, 1, "reduction"), name="numpy.mean")),
        ("mb", _op("bcast", {"m": 1}, _rng(0, 0, 3, 0, 0))),
        ("y", _op("sub", {"x": 3, "mb": 3}, _rng(0, 0, 3, 0), _rng(1, 0, 3, 0))))


def test_trace_each_separates_direct_rows_from_an_aggregate_and_expands_on_request() -> None:
    op_of = _with_mean()
    traces = trace_each("y", np.array([0, 2]), op_of)
    assert [_as_lists(t.direct) for t in traces] == [{"src": [4]}, {"src": [6]}]
    assert [_as_lists(t.rows) for t in traces] == [{"src": [4, 5, 6]}] * 2
    agg = Aggregate("mean", "numpy.mean", "x", 3, "reduction", (("src", 3),))
    assert [t.aggregates for t in traces] == [[agg], [agg]]
    assert traces[0].op_ids == ["take", "mean", "bcast", "sub"]
    assert traces[0].op_names == ["name-take", "numpy.mean", "name-bcast", "name-sub"]
    lean = trace_each("y", np.array([0, 2]), op_of, expand=False)
    assert [_as_lists(t.rows) for t in lean] == [{"src": [4]}, {"src": [6]}]
    assert lean[1].aggregates == [agg]


def test_trace_each_gives_each_row_its_own_ops() -> None:
    op_of = _graph(
        ("x1", _op("slice", {"src": 10}, _rng(0, 0, 5, 2))),
        ("x2", _op("rev", {"src": 10}, _rng(0, 0, 5, 9, -1))),
        ("y", _op("concat", {"x1": 5, "x2": 5}, _rng(0, 0, 5, 0), _rng(1, 5, 5, 0))))
    a, b, c = trace_each("y", np.array([0, 9, 0]), op_of)
    assert (a.op_ids, b.op_ids, c.op_ids) == (["slice", "concat"], ["rev", "concat"],
                                              ["slice", "concat"])
    assert b.op_names == ["name-rev", "name-concat"]
    assert (_as_lists(a.rows), _as_lists(b.rows)) == ({"src": [2]}, {"src": [5]})
    assert trace_each("y", np.array([], dtype=np.int64), op_of) == []


def test_an_aggregate_is_named_by_the_input_its_rows_came_from() -> None:
    """all rows of a copy of x are all rows of x; of a 2-of-3 slice they are not."""
    copy = _graph(("x", _op("take", {"src": 3}, _rng(0, 0, 3, 0))),
                  ("m", _op("mean", {"x": 3}, rowmap.all_rows(0, 1, "r"))))
    (t,) = trace_each("m", np.array([0]), copy)
    assert [(a.op_id, a.node_id, a.node_rows) for a in t.aggregates] == [("mean", "src", 3)]
    part = _graph(("x", _op("take", {"src": 3}, _rng(0, 0, 2, 1))),
                  ("m", _op("mean", {"x": 2}, rowmap.all_rows(0, 1, "r"))))
    (t,) = trace_each("m", np.array([0]), part)
    assert [(a.node_id, a.node_rows) for a in t.aggregates] == [("x", 2)]
    shifted = _graph(("x", _op("take", {"src": 4}, _rng(0, 0, 3, 1))),
                     ("m", _op("mean", {"x": 3}, rowmap.all_rows(0, 1, "r"))))
    (t,) = trace_each("m", np.array([0]), shifted)
    assert [(a.node_id, a.node_rows) for a in t.aggregates] == [("x", 3)]
    nested = _graph(("s", _op("sum", {"src": 5}, rowmap.all_rows(0, 2, "inner"))),
                    ("m", _op("mean", {"s": 2}, rowmap.all_rows(0, 1, "outer"))))
    (t,) = trace_each("m", np.array([0]), nested)
    assert [(a.op_id, a.op_name, a.node_id, a.node_rows, a.reason) for a in t.aggregates] \
        == [("sum", "name-sum", "src", 5, "inner")]
    two = _graph(("x", _op("cat", {"src": 2}, _rng(0, 0, 1, 0), _rng(0, 1, 1, 1))),
                 ("m", _op("mean", {"x": 2}, rowmap.all_rows(0, 1, "r"))))
    (t,) = trace_each("m", np.array([0]), two)
    assert [(a.node_id, a.node_rows) for a in t.aggregates] == [("x", 2)]
    empty = _graph(("x", _op("take", {"src": 0}, _rng(0, 0, 0, 0))),
                   ("m", _op("mean", {"x": 0}, rowmap.all_rows(0, 1, "r"))))
    (t,) = trace_each("m", np.array([0]), empty)
    assert [(a.node_id, a.node_rows) for a in t.aggregates] == [("x", 0)]


def test_an_aggregated_input_brings_its_upstream_ops_and_rows_to_its_row_only() -> None:
    op_of = _graph(
        ("a", _op("mean-a", {"src": 2}, rowmap.all_rows(0, 1, "r"))),
        ("b", _op("mean-b", {"a": 1}, rowmap.all_rows(0, 1, "r"))),
        ("bb", _op("copy-b", {"b": 1}, _rng(0, 0, 1, 0, 0), _rng(0, 1, 1, 0, 0))),
        ("y", _op("both", {"bb": 2, "src2": 3}, rowmap.all_rows(0, 1, "r"),
                  rowmap.all_rows(1, 1, "r", out_start=1))))
    t0, t1 = trace_each("y", np.array([0, 1]), op_of)
    assert [a.node_id for a in t0.aggregates] == ["bb"]
    assert [a.node_id for a in t1.aggregates] == ["src2"]
    assert t0.op_ids == ["mean-a", "mean-b", "copy-b", "both"] and t1.op_ids == ["both"]
    assert _as_lists(t0.rows) == {"src": [0, 1]}


def test_oldest_first_puts_every_op_after_the_ops_of_its_inputs() -> None:
    op_of = _graph(("a", _op("A", {"s": 1}, _rng(0, 0, 1, 0))),
                   ("b", _op("B", {"a": 1}, _rng(0, 0, 1, 0))),
                   ("c", _op("C", {"a": 1, "b": 1}, _rng(0, 0, 1, 0))),
                   ("d", _op("D", {"c": 1, "b": 1}, _rng(0, 0, 1, 0))))
    assert oldest_first("d", op_of) == ["A", "B", "C", "D"]
    assert oldest_first("s", op_of) == []


def test_an_aggregate_stops_at_a_strided_slice_and_at_an_op_of_two_inputs() -> None:
    strided = _graph(("x", _op("every2", {"src": 6}, _rng(0, 0, 3, 0, 2))),
                     ("m", _op("mean", {"x": 3}, rowmap.all_rows(0, 1, "r"))))
    (t,) = trace_each("m", np.array([0]), strided)
    assert [(a.node_id, a.node_rows) for a in t.aggregates] == [("x", 3)]
    added = _graph(("x", _op("add", {"a": 3, "b": 3}, _rng(0, 0, 3, 0), _rng(1, 0, 3, 0))),
                   ("m", _op("mean", {"x": 3}, rowmap.all_rows(0, 1, "r"))))
    (t,) = trace_each("m", np.array([0]), added)
    assert [(a.node_id, a.node_rows) for a in t.aggregates] == [("x", 3)]
    assert _as_lists(t.rows) == {"a": [0, 1, 2], "b": [0, 1, 2]}


def test_an_aggregate_followed_through_a_copy_keeps_its_op_name_and_reason() -> None:
    copy = _graph(("x", _op("take", {"src": 3}, _rng(0, 0, 3, 0))),
                  ("m", _op("mean", {"x": 3}, rowmap.all_rows(0, 1, "reduction"),
                            name="numpy.mean")))
    (t,) = trace_each("m", np.array([0]), copy)
    assert t.aggregates == [Aggregate("mean", "numpy.mean", "src", 3, "reduction",
                                      (("src", 3),))]


def test_an_aggregate_stops_at_a_node_its_one_segment_covers_only_in_part() -> None:
    """x has 4 rows, its op's one all-rows segment makes rows 0-1 only: all rows of x are
    not all rows of src (rows 2-3 came from elsewhere)."""
    padded = _graph(("x", _op("pad", {"src": 3}, rowmap.all_rows(0, 2, "inner"))),
                    ("m", _op("mean", {"x": 4}, rowmap.all_rows(0, 1, "r"))))
    (t,) = trace_each("m", np.array([0]), padded)
    assert [(a.op_id, a.node_id, a.node_rows) for a in t.aggregates] == [("mean", "x", 4)]


def test_an_aggregate_stops_at_a_gather_as_long_as_its_input() -> None:
    """x = src[[0, 0, 1, 1]] has as many rows as src but holds only 2 of them."""
    dup = _graph(("x", _op("dup", {"src": 4}, *rowmap.from_indices(0, np.array([0, 0, 1, 1])))),
                 ("m", _op("mean", {"x": 4}, rowmap.all_rows(0, 1, "r"))))
    (t,) = trace_each("m", np.array([0]), dup)
    assert t.aggregates == [Aggregate("mean", "name-mean", "x", 4, "r", (("src", 2),))]
    assert _as_lists(t.rows) == {"src": [0, 1]}


def test_trace_each_passes_over_a_segment_its_rows_miss_to_the_next() -> None:
    op_of = _graph(
        ("x1", _op("slice", {"src": 10}, _rng(0, 0, 5, 2))),
        ("x2", _op("rev", {"src": 10}, _rng(0, 0, 5, 9, -1))),
        ("y", _op("concat", {"x1": 5, "x2": 5}, _rng(0, 0, 5, 0), _rng(1, 5, 5, 0))))
    (t,) = trace_each("y", np.array([7]), op_of)  # the first segment (rows 0-4) misses
    assert _as_lists(t.rows) == {"src": [7]} and t.op_ids == ["rev", "concat"]


def test_op_views_and_aggregates_are_immutable() -> None:
    """One Aggregate is shared by every trace that reached it: a change would leak."""
    agg = Aggregate("mean", "numpy.mean", "x", 3, "reduction", (("src", 3),))
    view = _op("take", {"src": 3}, _rng(0, 0, 3, 0))
    for obj, name in ((agg, "node_rows"), (view, "op_name")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, 1)
    assert {agg, agg} == {agg}  # hashable: frozen


def test_aggregates_are_listed_oldest_op_first_then_by_aggregated_node() -> None:
    """A row's aggregates come in a fixed order: the op's place upstream (oldest first),
    then the aggregated node's id - not the node names alone, not the row counts."""
    op_of = _graph(
        ("m1", _op("first", {"zsrc": 4}, rowmap.all_rows(0, 1, "r"))),
        ("y", _op("second", {"m1": 1, "asrc": 2}, _rng(0, 0, 1, 0, 0),
                  rowmap.all_rows(1, 1, "r"))))
    (t,) = trace_each("y", np.array([0]), op_of)
    assert [(a.op_id, a.node_id) for a in t.aggregates] == [("first", "zsrc"),
                                                            ("second", "asrc")]
    # one op aggregating two inputs: by node id ("p" before "q"), whatever the segment
    # order or the row counts (q has fewer rows)
    pair = _graph(("y", _op("pair", {"p": 5, "q": 2}, rowmap.all_rows(1, 1, "r"),
                            rowmap.all_rows(0, 1, "r"))))
    (t,) = trace_each("y", np.array([0]), pair)
    assert [(a.node_id, a.node_rows) for a in t.aggregates] == [("p", 5), ("q", 2)]
