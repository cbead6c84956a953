"""Row-map segments and their protobuf wire encoding (shared by NumPy and torch tracking).

A segment is one `RowSegment` of an `OpRecorded.row_map`, kept as (input index, bytes
encoded as RowMap field 2): building an OpRecorded field by field through the protobuf API
costs ~15 us in CPython; encoding the few fields here (segments cached by value) and parsing
once costs a few. tests/unit/test_tracking.py checks the bytes against the API.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from headwater.producers import rowmap
from headwater.v1 import events_pb2

Seg = tuple[int, bytes]  # (input index, RowSegment encoded as RowMap field 2)
Segments = list[Seg]

MAX_FANIN_SEGMENTS = 64  # output rows built from more input rows each: all rows instead

BROADCAST = "broadcast across output rows"
REDUCTION = "reduction over rows"
ROWS_MOVED = "rows moved to another axis"


_SMALL = [bytes((v,)) for v in range(128)]


def varint(v: int) -> bytes:
    if 0 <= v < 128:
        return _SMALL[v]
    v = int(v)
    if v < 0:
        v += 1 << 64  # int64 two's complement, ten bytes
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def field_varint(field: int, v: int) -> bytes:
    """A varint field (omitted when 0, as proto3 does)."""
    return _SMALL[field << 3] + varint(v) if v else b""


def field_bytes(field: int, data: bytes) -> bytes:
    """A length-delimited field."""
    return _SMALL[(field << 3) | 2] + varint(len(data)) + data


def field_str(field: int, text: str) -> bytes:
    return field_bytes(field, text.encode()) if text else b""


@functools.lru_cache(maxsize=8192)
def range_segment(i: int, start: int, step: int, n: int, out_start: int = 0) -> Seg:
    """Output rows out_start + k <- start + k * step, k < n."""
    rng = field_varint(1, start) + field_varint(2, step)
    return i, field_bytes(2, field_varint(1, i) + field_varint(2, out_start)
                          + field_varint(3, n) + field_bytes(4, rng))


def identity(i: int, n: int, out_start: int = 0) -> Seg:
    return range_segment(i, 0, 1, n, out_start)


def broadcast(i: int, row: int, n: int, out_start: int = 0) -> Seg:
    return range_segment(i, row, 0, n, out_start)


@functools.lru_cache(maxsize=8192)
def all_rows(i: int, n: int, reason: str, out_start: int = 0) -> Seg:
    """Every covered output row <- every input row."""
    return i, field_bytes(2, field_varint(1, i) + field_varint(2, out_start)
                          + field_varint(3, n) + field_bytes(6, field_str(1, reason)))


def gather_segment(i: int, rows: np.ndarray, out_start: int = 0) -> Seg:
    gather = rowmap.encode_gather(rows).SerializeToString()
    return i, field_bytes(2, field_varint(1, i) + field_varint(2, out_start)
                          + field_varint(3, len(rows)) + field_bytes(5, gather))


UNDERSTOOD = field_varint(9, 1)


@functools.lru_cache(maxsize=65536)
def str_field(field: int, text: str) -> bytes:
    """A string field, cached: op names, params and input node ids repeat."""
    return field_str(field, text)


@functools.lru_cache(maxsize=4096)
def head_fields(op_name: str, params: str) -> bytes:
    return field_str(2, op_name) + field_str(3, params)


@functools.lru_cache(maxsize=4096)
def shape_field(shape: tuple[int, ...]) -> bytes:
    return field_bytes(6, b"".join([varint(d) for d in shape])) if shape else b""


def decode_segments(segments: Segments) -> list[events_pb2.RowSegment]:
    """The segments as protobuf messages (for inspection and tests)."""
    return list(events_pb2.RowMap.FromString(b"".join(s for _, s in segments)).segments)


def rows_segments(i: int, rows: Any, out_start: int = 0) -> Segments:
    """Segments for `out_start + k <- rows[k]`: `rowmap.plan`'s pieces, hand-encoded."""
    rows = np.asarray(rows, dtype=np.int64).ravel()
    return [
        range_segment(i, int(rows[at]), step, length, out_start + at) if is_range
        else gather_segment(i, rows[at:at + length], out_start + at)
        for is_range, at, length, step in rowmap.plan(rows)
    ]


def fanin_segments(i: int, table: np.ndarray, reason: str) -> tuple[Segments, bool]:
    """Output row r <- every input row in table[r, :] (one segment set per column)."""
    n_out = table.shape[0]
    if n_out == 0:
        return [], True
    cols = table.reshape(n_out, -1)
    if cols.shape[1] > MAX_FANIN_SEGMENTS:
        return [all_rows(i, n_out, reason)], False
    segments: Segments = []
    for j in range(cols.shape[1]):
        segments.extend(rows_segments(i, cols[:, j]))
    return segments, True


def n_rows(shape: tuple[int, ...]) -> int:
    """Row count of an array of this shape (a 0-d array is one row)."""
    return shape[0] if shape else 1

