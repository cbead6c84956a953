"""Row mappings from an op's output rows to its input rows, compressed (pure functions).

A mapping is a list of segments; output row r depends on the union of the input rows of
every segment covering r. Index arrays are stored as ranges (start, step) where they are
arithmetic, and as zstd-compressed int64 differences where they are not, so slices,
reversals, identities and concatenations cost a few bytes whatever the row count.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from headwater.v1 import events_pb2

MIN_RANGE = 16  # arithmetic runs at least this long become ranges; shorter ones are gathered


def identity(input_index: int, n: int, out_start: int = 0) -> events_pb2.RowSegment:
    return events_pb2.RowSegment(input=input_index, out_start=out_start, length=n,
                                 range=events_pb2.RowRange(start=0, step=1))


def all_rows(input_index: int, n_out: int, reason: str,
             out_start: int = 0) -> events_pb2.RowSegment:
    return events_pb2.RowSegment(input=input_index, out_start=out_start, length=n_out,
                                 all_rows=events_pb2.AllRows(reason=reason))


def encode_gather(rows: np.ndarray) -> events_pb2.RowGather:
    rows = np.asarray(rows, dtype=np.int64)
    deltas = np.diff(rows, prepend=np.int64(0)).astype("<i8")
    data = pa.compress(deltas.tobytes(), codec="zstd", asbytes=True)
    return events_pb2.RowGather(encoding=events_pb2.RowGather.DELTA_INT64_ZSTD, data=data,
                                count=len(rows))


def decode_gather(g: events_pb2.RowGather) -> np.ndarray:
    if g.encoding == events_pb2.RowGather.DELTA_INT64_ZSTD:
        raw = pa.decompress(g.data, decompressed_size=8 * g.count, codec="zstd", asbytes=True)
        return np.cumsum(np.frombuffer(raw, "<i8"))
    if g.encoding == events_pb2.RowGather.UINT64_LE:
        return np.frombuffer(g.data, "<u8").astype(np.int64)
    raise ValueError(f"row gather encoding {g.encoding} is not supported")


def from_indices(input_index: int, rows: np.ndarray,
                 out_start: int = 0) -> list[events_pb2.RowSegment]:
    """Segments for `out_start + i <- rows[i]`: long arithmetic runs as ranges, the rest
    gathered (consecutive short runs merged into one gather)."""
    rows = np.asarray(rows, dtype=np.int64).ravel()
    n = len(rows)
    if n == 0:
        return []
    if n == 1:
        return [_range(input_index, out_start, 0, 1, int(rows[0]), 1)]
    steps = np.diff(rows)
    # run boundaries: where the step changes
    change = np.flatnonzero(steps[1:] != steps[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [n - 1]])  # run k covers rows[starts[k] .. ends[k]]
    segments: list[events_pb2.RowSegment] = []
    pending = -1  # start of rows not yet emitted (gathered)
    i = 0
    for s, e in zip(starts, ends, strict=True):
        s = max(int(s), i)
        e = int(e)
        if e - s + 1 >= MIN_RANGE:
            if pending >= 0:
                segments.append(_gather(input_index, out_start, pending, rows[pending:s]))
                pending = -1
            segments.append(_range(input_index, out_start, s, e - s + 1, int(rows[s]),
                                   int(rows[s + 1] - rows[s])))
            i = e + 1
        elif pending < 0:
            pending = s
    if pending >= 0 or i < n:
        begin = pending if pending >= 0 else i
        if begin < n:
            segments.append(_gather(input_index, out_start, begin, rows[begin:]))
    return segments


def _range(inp: int, base: int, at: int, length: int, start: int,
           step: int) -> events_pb2.RowSegment:
    return events_pb2.RowSegment(input=inp, out_start=base + at, length=length,
                                 range=events_pb2.RowRange(start=start, step=step))


def _gather(inp: int, base: int, at: int, rows: np.ndarray) -> events_pb2.RowSegment:
    return events_pb2.RowSegment(input=inp, out_start=base + at, length=len(rows),
                                 gather=encode_gather(rows))


def segment_inputs(seg: events_pb2.RowSegment, out_rows: np.ndarray,
                   input_rows: int) -> np.ndarray:
    """Input rows that the given output rows (all covered by `seg`) depend on."""
    offset = np.asarray(out_rows, dtype=np.int64) - seg.out_start
    kind = seg.WhichOneof("kind")
    if kind == "range":
        return seg.range.start + offset * seg.range.step
    if kind == "gather":
        return decode_gather(seg.gather)[offset]
    return np.arange(input_rows, dtype=np.int64)  # all_rows
