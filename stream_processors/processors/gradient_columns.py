"""A batch's GradientBatch events as columns (pure): the fields each event's decoder read
once (fields.GradientFields) become per-event columns, and the per-row fields concatenated
arrays, so the row builder, the curvature sketch and the batch screen work per batch in
NumPy / Arrow instead of per event in Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, compress

import numpy as np
import pyarrow as pa

from headwater.stream_processors.processors.fields import GradientFields, columns
from headwater.v1 import events_pb2

ITEM_SIZE = {events_pb2.FLOAT16: 2, events_pb2.FLOAT32: 4, events_pb2.FLOAT64: 8}


@dataclass
class GradientColumns:
    """Per-event fields (length E) and per-row fields (length N = Σ n_e) of E events."""

    of: dict[str, tuple]  # GradientFields' field name -> its values over the events
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
        out = np.zeros(len(self.counts) + 1, dtype=np.int64)
        np.cumsum(self.counts, out=out[1:])
        return out

    def per_row(self, values: Sequence, type: pa.DataType | None = None) -> pa.Array:
        """A per-event column repeated over each event's rows (Arrow take)."""
        return pa.array(values, type).take(self.event_of_row)


def lengths(values: Sequence[Sequence]) -> np.ndarray:
    """len() of each item, as int64."""
    return np.fromiter(map(len, values), np.int64, count=len(values))


def floats(values: Sequence[Sequence[float]], counts: np.ndarray, fill: float,
           dtype: type) -> np.ndarray:
    """Concatenate one repeated-float field over events; `fill` for an event that sent none
    (an event sending some but not n values is refused by validation before this)."""
    sent = lengths(values) > 0
    if sent.all():
        return np.fromiter(chain.from_iterable(values), dtype, count=int(counts.sum()))
    out: np.ndarray = np.full(int(counts.sum()), fill, dtype)
    if sent.any():
        out[np.repeat(sent, counts)] = np.fromiter(
            chain.from_iterable(compress(values, sent)), dtype, count=int(counts[sent].sum()))
    return out


def gradient_columns(fields: list[GradientFields]) -> GradientColumns:
    """The columns of the GradientBatch payloads `fields` (all passed validation)."""
    of = columns(fields, GradientFields._fields)
    counts = lengths(of["rows"])
    total = int(counts.sum())
    # Node ids as (the event's offset into one node table + its node_index): one Arrow
    # take builds the column.
    n_nodes = lengths(of["node_ids"])
    base = np.zeros(len(fields), np.int64)
    np.cumsum(n_nodes[:-1], out=base[1:])
    local = np.zeros(total, np.int64)
    indexed = lengths(of["node_index"]) > 0
    if indexed.any():
        local[np.repeat(indexed, counts)] = np.fromiter(
            chain.from_iterable(compress(of["node_index"], indexed)), np.int64,
            count=int(counts[indexed].sum()))
    table = pa.array(list(chain.from_iterable(of["node_ids"])), pa.string())
    return GradientColumns(
        of=of, counts=counts,
        dims=np.fromiter(of["dim"], np.int64, count=len(fields)),
        dtypes=np.fromiter(of["dtype"], np.int64, count=len(fields)),
        rows=np.fromiter(chain.from_iterable(of["rows"]), np.uint64, count=total),
        node_ids=table.take(pa.array(np.repeat(base, counts) + local)),
        loss=floats(of["loss"], counts, float("nan"), np.float32),
        loss_weight=floats(of["loss_weight"], counts, 1.0, np.float32),
        curvature_weight=floats(of["curvature_weight"], counts, 1.0, np.float32),
        targets=floats(of["targets"], counts, float("nan"), np.float64),
        event_of_row=pa.array(np.repeat(np.arange(len(fields), dtype=np.int64), counts)),
    )
