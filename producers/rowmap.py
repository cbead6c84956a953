"""Row mappings from an op's output rows to its input rows, compressed (pure functions).

A mapping is a list of segments; output row r depends on the union of the input rows of
every segment covering r. Index arrays are stored as ranges (start, step) where they are
arithmetic, and as zstd-compressed int64 differences where they are not, so slices,
reversals, identities and concatenations cost a few bytes whatever the row count.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import pyarrow as pa

from headwater.v1 import events_pb2

MIN_RANGE = 16  # arithmetic runs at least this long become ranges; shorter ones are gathered
MAX_RANGES = 4096  # beyond this many runs one gather is smaller and faster to decode


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


DECODED_CACHE_BYTES = 256 * 2**20  # decoded gathers kept for repeated resolution


class _DecodedGathers:
    """Least-recently-used decoded gathers, keyed by their encoded bytes (row maps never
    change once recorded) and bounded in bytes: a query service resolving keys through the
    same ops again skips the zstd decode and the cumulative sum (~7 ms per 400k rows)."""

    def __init__(self) -> None:
        self._arrays: OrderedDict[tuple[int, int, bytes], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, g: events_pb2.RowGather) -> np.ndarray:
        key = (g.encoding, g.count, g.data)
        with self._lock:
            hit = self._arrays.get(key)
            if hit is not None:
                self._arrays.move_to_end(key)
                return hit
        rows = _decode_gather(g)
        rows.flags.writeable = False  # shared between callers
        if rows.nbytes <= DECODED_CACHE_BYTES // 4:
            with self._lock:
                if key not in self._arrays:
                    self._arrays[key] = rows
                    self._bytes += rows.nbytes
                while self._bytes > DECODED_CACHE_BYTES:
                    _, old = self._arrays.popitem(last=False)
                    self._bytes -= old.nbytes
        return rows


def decode_gather(g: events_pb2.RowGather) -> np.ndarray:
    """The input rows a gather lists (read-only; repeated decodes come from a cache)."""
    return _DECODED.get(g)


def _decode_gather(g: events_pb2.RowGather) -> np.ndarray:
    if g.encoding == events_pb2.RowGather.DELTA_INT64_ZSTD:
        raw = pa.decompress(g.data, decompressed_size=8 * g.count, codec="zstd", asbytes=True)
        return np.cumsum(np.frombuffer(raw, "<i8"))
    if g.encoding == events_pb2.RowGather.UINT64_LE:
        return np.frombuffer(g.data, "<u8").astype(np.int64)
    raise ValueError(f"row gather encoding {g.encoding} is not supported")


_DECODED = _DecodedGathers()


def plan(rows: np.ndarray) -> list[tuple[bool, int, int, int]]:
    """How to cover `rows` in order: (is_range, at, length, step) pieces, computed without
    per-row Python work. Arithmetic runs of at least MIN_RANGE rows become ranges,
    everything between them one gather each; more than MAX_RANGES runs, one gather."""
    n = rows.size
    if n == 0:
        return []
    if n == 1:
        return [(True, 0, 1, 1)]
    steps = np.diff(rows)
    if (steps == steps[0]).all():
        return [(True, 0, n, int(steps[0]))]
    brk = np.flatnonzero(steps[1:] != steps[:-1]) + 1  # where a new run of equal steps starts
    run_start = np.concatenate(([0], brk))
    run_end = np.concatenate((brk, [n - 1]))  # run k covers rows[run_start[k]..run_end[k]]
    long = np.flatnonzero(run_end - run_start + 1 >= MIN_RANGE)
    if long.size == 0 or long.size > MAX_RANGES:
        return [(False, 0, n, 0)]
    pieces: list[tuple[bool, int, int, int]] = []
    cursor = 0
    for k in long.tolist():
        a, b = max(int(run_start[k]), cursor), int(run_end[k])  # adjacent runs share an end
        if a > cursor:
            pieces.append((False, cursor, a - cursor, 0))
        pieces.append((True, a, b - a + 1, int(steps[run_start[k]])))
        cursor = b + 1
    if cursor < n:
        pieces.append((False, cursor, n - cursor, 0))
    return pieces


def from_indices(input_index: int, rows: np.ndarray,
                 out_start: int = 0) -> list[events_pb2.RowSegment]:
    """Segments for `out_start + i <- rows[i]` (see `plan`)."""
    rows = np.asarray(rows, dtype=np.int64).ravel()
    return [
        _range(input_index, out_start, at, length, int(rows[at]), step) if is_range
        else _gather(input_index, out_start, at, rows[at:at + length])
        for is_range, at, length, step in plan(rows)
    ]


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
