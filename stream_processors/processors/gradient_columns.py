"""A batch's GradientBatch events as columns (pure): one pass over the events collects the
per-event fields into arrays and the per-row fields into concatenated arrays, so the row
builder, the curvature sketch and the batch validator work per batch in NumPy / Arrow
instead of per event in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain, repeat

import numpy as np
import pyarrow as pa

from headwater.v1 import events_pb2

ITEM_SIZE = {events_pb2.FLOAT16: 2, events_pb2.FLOAT32: 4, events_pb2.FLOAT64: 8}


@dataclass
class GradientColumns:
    """Per-event fields (length E) and per-row fields (length N = Σ n_e) of E events."""

    events: list[events_pb2.Event]
    payloads: list[events_pb2.GradientBatch]
    counts: np.ndarray  # n_e, int64
    dims: np.ndarray  # k_e, int64
    dtypes: np.ndarray  # FloatDType number per event, int64
    rows: np.ndarray  # uint64, N
    node_ids: pa.Array  # string, N
    loss: np.ndarray  # float32, N (NaN where the event sent none)
    loss_weight: np.ndarray  # float32, N (1 where none)
    curvature_weight: np.ndarray  # float32, N (1 where none)
    targets: np.ndarray  # float64, N (NaN where none)
    event_of_row: pa.Array  # int64, N: the index (0..E-1) of each row's event

    @property
    def starts(self) -> np.ndarray:
        """First row of each event in the per-row arrays (E + 1 entries, the last is N)."""
        out = np.zeros(len(self.events) + 1, dtype=np.int64)
        np.cumsum(self.counts, out=out[1:])
        return out

    def per_row(self, values: list) -> pa.Array:
        """A per-event Python column repeated over each event's rows (Arrow take)."""
        return pa.array(values).take(self.event_of_row)


def floats(columns: list, counts: list[int], fill: float, dtype: type) -> np.ndarray:
    """Concatenate one repeated-float field over events; `fill` for an event that sent none
    (an event sending some but not n values is refused by validation before this)."""
    total = sum(counts)
    values = chain.from_iterable(c if len(c) else repeat(fill, n)
                                 for c, n in zip(columns, counts, strict=True))
    return np.fromiter(values, dtype=dtype, count=total)


def gradient_columns(events: list[events_pb2.Event]) -> GradientColumns:
    """The columns of `events` (all GradientBatch events that passed validation)."""
    ps = [e.gradient_batch for e in events]
    keys = [p.row_keys for p in ps]
    counts = [len(k.rows) for k in keys]
    total = sum(counts)
    # Node ids as (per-event table offset + node_index): one Arrow take builds the column.
    table: list[str] = []
    index = np.empty(total, dtype=np.int64)
    at = 0
    for k, n in zip(keys, counts, strict=True):
        base = len(table)
        table.extend(k.node_ids)
        if k.node_index:
            index[at:at + n] = np.asarray(k.node_index, np.int64) + base
        else:
            index[at:at + n] = base
        at += n
    rows = np.fromiter(chain.from_iterable(k.rows for k in keys), np.uint64, count=total)
    n_e = np.asarray(counts, dtype=np.int64)
    return GradientColumns(
        events=events, payloads=ps, counts=n_e,
        dims=np.fromiter((p.dim for p in ps), np.int64, count=len(ps)),
        dtypes=np.fromiter((p.dtype for p in ps), np.int64, count=len(ps)),
        rows=rows,
        node_ids=pa.array(table, pa.string()).take(pa.array(index)) if total else
        pa.array([], pa.string()),
        loss=floats([p.loss for p in ps], counts, float("nan"), np.float32),
        loss_weight=floats([p.loss_weight for p in ps], counts, 1.0, np.float32),
        curvature_weight=floats([p.curvature_weight for p in ps], counts, 1.0, np.float32),
        targets=floats([p.targets for p in ps], counts, float("nan"), np.float64),
        event_of_row=pa.array(np.repeat(np.arange(len(ps), dtype=np.int64), n_e)),
    )
