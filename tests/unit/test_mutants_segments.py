"""The hand-encoded row-map segments (producers/tracking/segments.py) byte for byte against
the protobuf API, at the varint edges, and the fan-in bound. Written against mutants of the
module (issue 25, `make mutate`)."""

from __future__ import annotations

import numpy as np
import pytest

from headwater.producers import rowmap
from headwater.producers.tracking import segments as sg
from headwater.v1 import events_pb2

EDGES = [0, 1, 127, 128, 300, 16383, 16384, 2**31, 2**63 - 1, -1, -128, -(2**63)]


@pytest.mark.parametrize("value", EDGES)
def test_varint_is_protobufs_int64_encoding(value: int) -> None:
    wire = events_pb2.RowRange(step=value).SerializeToString()  # step is an int64
    assert sg.field_varint(2, value) == wire
    if value:
        assert wire[:1] == b"\x10" and sg.varint(value) == wire[1:]
    else:
        assert sg.varint(0) == b"\x00"


def test_empty_fields_are_omitted_as_proto3_does() -> None:
    assert sg.field_varint(3, 0) == b"" and sg.field_str(2, "") == b""
    assert sg.field_bytes(5, b"") == b"\x2a\x00"  # a present empty message is kept
    assert sg.shape_field(()) == b""


def _wire(*segments: events_pb2.RowSegment) -> bytes:
    return events_pb2.RowMap(segments=list(segments)).SerializeToString()


def _ours(*segments: sg.Seg) -> bytes:
    return b"".join(s for _, s in segments)


@pytest.mark.parametrize(("i", "start", "step", "n", "out"),
                         [(0, 0, 1, 5, 0), (2, 7, -3, 200, 130), (1, 0, 0, 1, 0),
                          (0, 2**40, 2, 3, 9)])
def test_range_segments_match_the_api(i: int, start: int, step: int, n: int, out: int) -> None:
    seg = sg.range_segment(i, start, step, n, out)
    assert seg[0] == i
    assert _ours(seg) == _wire(events_pb2.RowSegment(
        input=i, out_start=out, length=n, range=events_pb2.RowRange(start=start, step=step)))
    assert sg.identity(i, n, out) == sg.range_segment(i, 0, 1, n, out)
    assert sg.broadcast(i, start, n, out) == sg.range_segment(i, start, 0, n, out)


def test_all_rows_and_gather_segments_match_the_api() -> None:
    seg = sg.all_rows(3, 9, sg.REDUCTION, 4)
    assert seg[0] == 3 and _ours(seg) == _wire(events_pb2.RowSegment(
        input=3, out_start=4, length=9, all_rows=events_pb2.AllRows(reason=sg.REDUCTION)))
    rows = np.array([5, 1, 9, 9, 0])
    g = sg.gather_segment(1, rows, 7)
    assert g[0] == 1 and _ours(g) == _wire(events_pb2.RowSegment(
        input=1, out_start=7, length=5, gather=rowmap.encode_gather(rows)))
    (decoded,) = sg.decode_segments([g])
    assert rowmap.decode_gather(decoded.gather).tolist() == rows.tolist()


def test_head_name_and_shape_fields_match_the_api() -> None:
    op = events_pb2.OpRecorded(op_name="numpy.take", params_json='{"axis": 0}',
                               output_shape=[300, 4, 1], understood=True)
    assert sg.head_fields("numpy.take", '{"axis": 0}') + sg.shape_field((300, 4, 1)) + \
        sg.UNDERSTOOD == op.SerializeToString()
    assert sg.str_field(4, "node-1") == events_pb2.OpRecorded(
        input_node_ids=["node-1"]).SerializeToString()
    assert sg.head_fields("x", "") == events_pb2.OpRecorded(op_name="x").SerializeToString()


def test_rows_segments_are_the_planners_pieces() -> None:
    rows = np.concatenate((np.arange(20), [3, 99, 4], np.arange(50, 10, -2)))
    ours = sg.decode_segments(sg.rows_segments(2, rows, out_start=11))
    assert ours == rowmap.from_indices(2, rows, out_start=11)
    assert [s.WhichOneof("kind") for s in ours] == ["range", "gather", "range"]
    assert sg.rows_segments(0, np.array([], dtype=np.int64)) == []


def test_fanin_up_to_the_bound_is_row_maps_beyond_it_all_rows() -> None:
    assert sg.fanin_segments(0, np.zeros((0, 3), dtype=np.int64), "r") == ([], True)
    table = np.arange(6 * sg.MAX_FANIN_SEGMENTS).reshape(6, sg.MAX_FANIN_SEGMENTS)
    segs, exact = sg.fanin_segments(1, table, "r")
    assert exact and len(segs) == sg.MAX_FANIN_SEGMENTS
    decoded = sg.decode_segments(segs)
    out0 = sorted(int(rowmap.segment_inputs(s, np.array([0]), 0)[0]) for s in decoded)
    assert out0 == table[0].tolist()
    wide = np.zeros((6, sg.MAX_FANIN_SEGMENTS + 1), dtype=np.int64)
    assert sg.fanin_segments(1, wide, "too many") == ([sg.all_rows(1, 6, "too many")], False)
    cube = np.arange(12).reshape(3, 2, 2)  # columns are the trailing axes, flattened
    segs, exact = sg.fanin_segments(0, cube, "r")
    assert exact and len(segs) == 4


def test_n_rows_of_a_scalar_is_one() -> None:
    assert sg.n_rows(()) == 1 and sg.n_rows((7, 2)) == 7 and sg.n_rows((0,)) == 0


def test_segments_start_at_output_row_0_by_default() -> None:
    (g,) = sg.decode_segments([sg.gather_segment(0, np.array([2, 0, 1]))])
    assert g.out_start == 0
