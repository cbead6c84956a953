"""Parts of the online curvature sketch, summed from a batch's `gradients` rows (pure).

A part is Σ w φφᵀ over the rows of one (run, model, version, kind, projection): the sink
already holds those rows as an Arrow table (gradients.gradient_rows), so the sum reads the
gradient bytes and weights from its columns instead of walking the events again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from headwater.stream_processors.processors.decode import Accepted
from headwater.stream_processors.processors.gradients import (
    CURVATURE_SCHEMA,
    NP_DTYPE,
    arrow_table,
    gradient_rows,
    upper_indices,
)
from headwater.stream_processors.processors.rows import ts_column

# Rows per float64 block of a part's sum: bounds the float64 copy of float16/32 gradients
# (4096 x 512 x 8 B = 16 MiB) while each matrix product stays large enough for BLAS.
BLOCK_ROWS = 4096


def curvature_parts(batch: list[Accepted], counted: set[str], now_us: int) -> pa.Table:
    """The parts of the batch's GradientBatch events not yet `counted`."""
    return sketch_parts(gradient_rows([a for a in batch if a.event.event_id not in counted]),
                        now_us)


def sketch_parts(grads: pa.Table, now_us: int) -> pa.Table:
    """Σ w φφᵀ over the rows of `grads` (a `gradients` table, each event's rows together
    and in order, as gradient_rows builds it), one part per (run, model, version, kind,
    projection), summed in large blocks in event order. float64 accumulation: parts are
    summed later. Pure and total: it never raises on rows gradient_rows built."""
    if grads.num_rows == 0:
        return arrow_table(CURVATURE_SCHEMA, {f.name: [] for f in CURVATURE_SCHEMA})
    grads = grads.combine_chunks()
    first = np.flatnonzero(grads.column("idx").to_numpy() == 0)  # each event's first row
    ends = np.append(first[1:], grads.num_rows)
    head = grads.take(pa.array(first))
    columns = ("model_id", "model_version", "kind", "projection_id", "dim", "run_id")
    keys_of = list(zip(*(head.column(c).to_pylist() for c in columns), strict=True))
    groups: dict[tuple, list[int]] = {}
    for event, key in enumerate(keys_of):
        groups.setdefault(key, []).append(event)
    events = _Events(grads, first, ends, head)
    keys = list(groups)
    stored = [events.part(groups[k], k[4]) for k in keys]
    steps = [events.steps[groups[k]] for k in keys]
    ids = [[events.ids[e] for e in groups[k]] for k in keys]
    return arrow_table(CURVATURE_SCHEMA, {
        "model_id": [k[0] for k in keys], "model_version": [k[1] for k in keys],
        "kind": [k[2] for k in keys], "projection_id": [k[3] for k in keys],
        "dim": [k[4] for k in keys], "rows": [s[2] for s in stored],
        "min_step": [int(s.min()) for s in steps], "max_step": [int(s.max()) for s in steps],
        "matrix": [s[1] for s in stored], "layout": [s[0] for s in stored],
        "event_ids": ids,
        "part_id": [hashlib.sha256("\0".join(sorted(i)).encode()).hexdigest()[:32]
                    for i in ids],
        "created_at": ts_column([now_us] * len(keys)), "run_id": [k[5] for k in keys],
    })


class _Events:
    """Per-event views of a gradients table: row ranges, dtype, step, id, and the gradient
    bytes of any run of events (slices of the binary column's one data buffer)."""

    def __init__(self, grads: pa.Table, first: np.ndarray, ends: np.ndarray,
                 head: pa.Table) -> None:
        self.first, self.ends = first, ends
        self.counts = ends - first
        self.dtypes = head.column("dtype").to_pylist()
        self.steps = head.column("step").to_numpy()
        self.ids = head.column("event_id").to_pylist()
        self.weights = grads.column("curvature_weight").to_numpy().astype(np.float64)
        gradient = grads.column("gradient").chunk(0)  # one chunk: combined by the caller
        offsets_buffer, data_buffer = gradient.buffers()[1:3]
        offsets = np.frombuffer(offsets_buffer, np.int32)[gradient.offset:]
        self.starts, self.stops = offsets[first], offsets[ends]
        self.data = np.frombuffer(data_buffer, np.uint8)

    def _bytes(self, events: list[int]) -> np.ndarray:
        """The events' gradient bytes: a view of the buffer where they lie back to back in
        it (one group's events in a steady stream), else a copy joining them."""
        first, last = events[0], events[-1]
        if last - first == len(events) - 1:  # consecutive events: consecutive bytes
            return self.data[self.starts[first]:self.stops[last]]
        return np.concatenate([self.data[self.starts[e]:self.stops[e]] for e in events])

    def _blocks(self, events: list[int], dim: int) -> Iterator[np.ndarray]:
        """The events' rows as (rows, dim) blocks of their own dtype, in event order: a block
        joins consecutive events of one dtype up to BLOCK_ROWS rows (one event may exceed
        it)."""
        run: list[int] = []
        rows = 0
        for e in events:
            n = int(self.counts[e])
            if run and (rows + n > BLOCK_ROWS or self.dtypes[e] != self.dtypes[run[0]]):
                yield self._block(run, dim)
                run, rows = [], 0
            run.append(e)
            rows += n
        if run:
            yield self._block(run, dim)

    def _block(self, run: list[int], dim: int) -> np.ndarray:
        values = self._bytes(run).view(NP_DTYPE[self.dtypes[run[0]]])
        return values.reshape(-1, dim)

    def part(self, events: list[int], dim: int) -> tuple[str, bytes, int]:
        """(layout, bytes, rows) of Σ w φφᵀ over the events' rows: 'rows' (the n weights,
        then the n x k rows, float64 little-endian) while they are smaller than the matrix's
        upper triangle, so a part never costs more than the events it sums; else 'upper',
        one matrix product per block of rows, stored as the k(k+1)/2 entries on and above
        the diagonal, row by row (gradients.part_matrix). The sum is exactly symmetric
        (weighted_gram), so the triangle loses nothing and writes half of the k x k bytes."""
        w = np.concatenate([self.weights[self.first[e]:self.ends[e]] for e in events])
        n = len(w)
        if n * (dim + 1) < dim * (dim + 1) // 2:
            phi = np.concatenate([b.astype("<f8") for b in self._blocks(events, dim)])
            return "rows", w.astype("<f8").tobytes() + phi.tobytes(), n
        matrix = np.zeros((dim, dim))
        at = 0
        for phi in self._blocks(events, dim):
            matrix += weighted_gram(phi, w[at:at + len(phi)])
            at += len(phi)
        return "upper", matrix[upper_indices(dim)].astype("<f8").tobytes(), n


def weighted_gram(phi: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Σ_i w_i φ_i φ_iᵀ over the rows of `phi` (any float dtype; w float64), in float64, as
    XᵀX − YᵀY with X = √w φ over the rows of positive weight and Y = √−w φ over the negative
    ones: NumPy computes a matrix times its own transpose with the symmetric kernel (BLAS
    syrk), half the multiply-adds of the general product (φ w)ᵀφ, and the result is exactly
    symmetric. √w² differs from w by one rounding (relative 1e-16), far inside the sketch's
    1e-9 tolerance. X is made in one pass: the multiply widens φ to float64 as it reads it
    (exactly, as astype would), with no float64 copy of φ first."""
    if not (w < 0).any():
        x = np.multiply(phi, np.sqrt(w)[:, None], dtype=np.float64)
        return x.T @ x
    out = np.zeros((phi.shape[1], phi.shape[1]))
    for sign, rows in ((1.0, w > 0), (-1.0, w < 0)):
        if rows.any():
            x = np.multiply(phi[rows], np.sqrt(sign * w[rows])[:, None], dtype=np.float64)
            out += sign * (x.T @ x)
    return out
