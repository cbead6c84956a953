"""Small GradientBatch records (rows × k float32 gradients) for the sink and insert tests."""

from __future__ import annotations

import numpy as np

from headwater.producers.envelope import EnvelopeBuilder
from headwater.producers.transports.base import Record
from headwater.v1 import events_pb2


def gradient_records(n: int, *, run_id: str, seed: int, rows: int = 3, k: int = 4,
                     curvature: bool = True) -> list[Record]:
    """`n` chained events of one run, step i holding rows i·rows … i·rows + rows − 1;
    `curvature` adds a random per-row curvature weight (drawn after each step's gradients)."""
    b = EnvelopeBuilder(run_id)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        batch = events_pb2.GradientBatch(
            model_id="m", model_version="v1", step=i, learning_rate=0.1, dim=k,
            dtype=events_pb2.FLOAT32,
            row_keys=events_pb2.RowKeys(node_ids=["train"],
                                        rows=[i * rows + r for r in range(rows)]),
            gradients=rng.standard_normal((rows, k)).astype("<f4").tobytes())
        if curvature:
            batch.curvature_weight.extend(rng.random(rows).tolist())
        records.append(Record(b.wrap(batch).SerializeToString(deterministic=True), "t", 0, i))
    return records
