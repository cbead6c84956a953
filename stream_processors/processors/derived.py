"""The derived tables and the pure processor that fills each from a batch of events."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from headwater.stream_processors.processors.decode import Accepted
from headwater.stream_processors.processors.gradients import (
    gradient_rows,
    model_version_rows,
    prediction_rows,
)
from headwater.stream_processors.processors.rows import (
    lineage_node_rows,
    lineage_op_rows,
    source_rows,
)
from headwater.stream_processors.processors.unlearning import (
    forget_request_rows,
    forgotten_rows,
    unlearning_applied_rows,
)

Processor = Callable[[list[Accepted]], pa.Table]

# Written before `events` (in this order), so a crash in between is repaired by redelivery.
DERIVED: dict[str, Processor] = {
    "sources": source_rows,
    "lineage_nodes": lineage_node_rows,
    "lineage_ops": lineage_op_rows,
    "model_versions": model_version_rows,
    "gradients": gradient_rows,
    "predictions": prediction_rows,
    "forget_requests": forget_request_rows,
    "forgotten_rows": forgotten_rows,
    "unlearning_applied": unlearning_applied_rows,
}

# The payload kinds each processor reads: the sink hands it those events alone, so a batch
# is not scanned once per table (each processor still skips any other kind it is given).
PAYLOADS: dict[str, tuple[str, ...]] = {
    "sources": ("source_registered",),
    "lineage_nodes": ("source_registered", "op_recorded"),
    "lineage_ops": ("op_recorded",),
    "model_versions": ("model_version_recorded",),
    "gradients": ("gradient_batch",),
    "predictions": ("prediction_recorded",),
    "forget_requests": ("forget_requested",),
    "forgotten_rows": ("forget_requested",),
    "unlearning_applied": ("unlearning_applied",),
}
