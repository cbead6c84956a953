"""Pure processors for attribution events: model versions, gradient rows, predictions,
and the stored layout of the online curvature sketch's parts (summed in sketch.py).

Gradient vectors stay the exact bytes the trainer sent (one row per training row); the
curvature part of a batch is Σ w φφᵀ over its rows, per (model, version, kind).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np
import pyarrow as pa

from headwater.stream_processors.processors.decode import Accepted
from headwater.stream_processors.processors.fields import Envelope, columns
from headwater.stream_processors.processors.gradient_columns import (
    ITEM_SIZE,
    gradient_columns,
)
from headwater.stream_processors.processors.rows import TS, micros, ts_column
from headwater.v1 import events_pb2

DTYPES = {events_pb2.FLOAT16: ("float16", "<f2"), events_pb2.FLOAT32: ("float32", "<f4"),
          events_pb2.FLOAT64: ("float64", "<f8")}
NP_DTYPE = {name: np_type for name, np_type in DTYPES.values()}
KIND = {events_pb2.GradientBatch.TRAINING_STEP: "TRAINING_STEP",
        events_pb2.GradientBatch.FEATURISATION: "FEATURISATION",
        events_pb2.GradientBatch.CURVATURE: "CURVATURE",
        events_pb2.GradientBatch.KIND_UNSPECIFIED: "TRAINING_STEP"}

MODEL_VERSIONS_SCHEMA = pa.schema([
    ("model_id", pa.string()), ("version", pa.string()), ("parent_version", pa.string()),
    ("parameter_hash", pa.string()), ("step", pa.uint64()), ("config_json", pa.string()),
    ("framework", pa.string()), ("parameter_count", pa.uint64()),
    ("checkpoint_uri", pa.string()), ("run_id", pa.string()), ("event_id", pa.string()),
    ("recorded_at", TS), ("run_key", pa.string()), ("l2_penalty", pa.float64()),
])

GRADIENTS_SCHEMA = pa.schema([
    ("model_id", pa.string()), ("model_version", pa.string()), ("kind", pa.string()),
    ("node_id", pa.string()), ("row", pa.uint64()), ("step", pa.uint64()),
    ("learning_rate", pa.float64()), ("loss", pa.float32()), ("loss_weight", pa.float32()),
    ("curvature_weight", pa.float32()), ("target", pa.float64()),
    ("output_function", pa.string()), ("projection_id", pa.string()), ("dim", pa.uint32()),
    ("dtype", pa.string()), ("gradient", pa.binary()), ("run_id", pa.string()),
    ("event_id", pa.string()), ("idx", pa.uint32()), ("recorded_at", TS),
])

PREDICTIONS_SCHEMA = pa.schema([
    ("prediction_id", pa.string()), ("model_id", pa.string()), ("model_version", pa.string()),
    ("output", pa.list_(pa.float64())), ("predicted_label", pa.int64()),
    ("projection_id", pa.string()), ("dim", pa.uint32()), ("dtype", pa.string()),
    ("test_gradients", pa.binary()), ("gradient_labels", pa.list_(pa.string())),
    ("input_node_ids", pa.list_(pa.string())), ("input_rows", pa.list_(pa.uint64())),
    ("run_id", pa.string()), ("event_id", pa.string()), ("recorded_at", TS),
    ("run_key", pa.string()),  # run_id again, in the sorting key (migration 0013)
])

CURVATURE_SCHEMA = pa.schema([
    ("model_id", pa.string()), ("model_version", pa.string()), ("kind", pa.string()),
    ("projection_id", pa.string()), ("dim", pa.uint32()), ("rows", pa.uint64()),
    ("min_step", pa.uint64()), ("max_step", pa.uint64()), ("matrix", pa.binary()),
    ("event_ids", pa.list_(pa.string())), ("part_id", pa.string()), ("created_at", TS),
    ("layout", pa.string()), ("run_id", pa.string()),
])


def of_payload(batch: list[Accepted], payload: str) -> list[events_pb2.Event]:
    return [a.event for a in batch if a.envelope.kind == payload]


def arrow_table(schema: pa.Schema, columns: Mapping[str, object]) -> pa.Table:
    return pa.Table.from_arrays(
        [c if isinstance(c, pa.Array) else pa.array(c, f.type)
         for c, f in zip((columns[f.name] for f in schema), schema, strict=True)],
        schema=schema)


def row_nodes(keys: events_pb2.RowKeys) -> list[str]:
    """The node id of every row key (RowKeys is columnar: node_index into node_ids)."""
    if keys.node_index:
        return [keys.node_ids[i] for i in keys.node_index]
    return [keys.node_ids[0]] * len(keys.rows) if keys.rows else []


def model_version_rows(batch: list[Accepted]) -> pa.Table:
    """One `model_versions` row per ModelVersionRecorded."""
    found = of_payload(batch, "model_version_recorded")
    ps = [e.model_version_recorded for e in found]
    return arrow_table(MODEL_VERSIONS_SCHEMA, {
        "model_id": [p.model_id for p in ps], "version": [p.version for p in ps],
        "parent_version": [p.parent_version for p in ps],
        "parameter_hash": [p.parameter_hash for p in ps], "step": [p.step for p in ps],
        "config_json": [p.config_json for p in ps], "framework": [p.framework for p in ps],
        "parameter_count": [p.parameter_count for p in ps],
        "checkpoint_uri": [p.checkpoint_uri for p in ps],
        "run_id": [e.run_id for e in found], "event_id": [e.event_id for e in found],
        "recorded_at": ts_column([micros(e.emitted_at) for e in found]),
        "run_key": [e.run_id for e in found],
        "l2_penalty": [p.l2_penalty for p in ps],
    })


def _binary_rows(data: Sequence[bytes], row_bytes: np.ndarray, counts: np.ndarray) -> pa.Array:
    """Split each event's n x k matrix into per-row binary values without copying rows."""
    buffer = b"".join(data)
    sizes = np.repeat(np.asarray(row_bytes, dtype=np.int64), counts)
    offsets = np.zeros(len(sizes) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    return pa.BinaryArray.from_buffers(pa.binary(), len(sizes),
                                       [None, pa.py_buffer(offsets), pa.py_buffer(buffer)])


def gradient_rows(batch: list[Accepted]) -> pa.Table:
    """One `gradients` row per training row of every GradientBatch, built per batch from the
    fields decode read once: the per-row fields are concatenated arrays, the per-event ones
    repeated by an Arrow take."""
    found = [a for a in batch if a.gradient is not None]
    c = gradient_columns([a.gradient for a in found])  # type: ignore[misc]
    p, env = c.of, columns([a.envelope for a in found], Envelope._fields)
    e = len(found)
    item = np.fromiter((ITEM_SIZE[d] for d in p["dtype"]), np.int64, count=e)
    return arrow_table(GRADIENTS_SCHEMA, {
        "model_id": c.per_row(p["model_id"], pa.string()),
        "model_version": c.per_row(p["model_version"], pa.string()),
        "kind": c.per_row([KIND[k] for k in p["kind"]], pa.string()),
        "node_id": c.node_ids, "row": c.rows,
        "step": np.repeat(np.fromiter(p["step"], np.uint64, count=e), c.counts),
        "learning_rate": np.repeat(np.fromiter(p["learning_rate"], np.float64, count=e),
                                   c.counts),
        "loss": c.loss, "loss_weight": c.loss_weight, "curvature_weight": c.curvature_weight,
        "target": c.targets,
        "output_function": c.per_row([f or "margin" for f in p["output_function"]],
                                     pa.string()),
        "projection_id": c.per_row(p["projection_id"], pa.string()),
        "dim": np.repeat(c.dims.astype(np.uint32), c.counts),
        "dtype": c.per_row([DTYPES[d][0] for d in p["dtype"]], pa.string()),
        "gradient": _binary_rows(p["gradients"], c.dims * item, c.counts),
        "run_id": c.per_row(env["run_id"], pa.string()),
        "event_id": c.per_row(env["event_id"], pa.string()),
        "idx": (np.arange(len(c.rows), dtype=np.int64)
                - np.repeat(c.starts[:-1], c.counts)).astype(np.uint32),
        "recorded_at": c.per_row(env["emitted_us"], pa.int64()).cast(TS),
    })


def prediction_rows(batch: list[Accepted]) -> pa.Table:
    """One `predictions` row per PredictionRecorded."""
    found = of_payload(batch, "prediction_recorded")
    ps = [e.prediction_recorded for e in found]
    return arrow_table(PREDICTIONS_SCHEMA, {
        "prediction_id": [p.prediction_id for p in ps], "model_id": [p.model_id for p in ps],
        "model_version": [p.model_version for p in ps], "output": [list(p.output) for p in ps],
        "predicted_label": [p.predicted_label for p in ps],
        "projection_id": [p.projection.projection_id for p in ps],
        "dim": [p.dim for p in ps],
        "dtype": [DTYPES[p.dtype][0] if p.test_gradients else "" for p in ps],
        "test_gradients": [p.test_gradients for p in ps],
        "gradient_labels": [list(p.gradient_labels) for p in ps],
        "input_node_ids": [row_nodes(p.input_rows) for p in ps],
        "input_rows": [list(p.input_rows.rows) for p in ps],
        "run_id": [e.run_id for e in found], "event_id": [e.event_id for e in found],
        "recorded_at": ts_column([micros(e.emitted_at) for e in found]),
        "run_key": [e.run_id for e in found],
    })


@lru_cache(maxsize=8)
def upper_indices(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) of a k x k matrix's entries on and above the diagonal, row by row: the order
    of an 'upper' curvature part's values (cached, so read-only)."""
    i, j = np.triu_indices(dim)
    i.flags.writeable = j.flags.writeable = False
    return i, j


def part_matrix(data: bytes, rows: int, dim: int, layout: str) -> np.ndarray:
    """The k x k matrix Σ w φφᵀ of one stored curvature part, whatever its layout: 'rows'
    (weights and gradient rows), 'upper' (the triangle on and above the diagonal) or
    'dense' (every entry; parts written before issue 18's fourth wave)."""
    values = np.frombuffer(data, "<f8")
    if layout == "rows":
        w, phi = values[:rows], values[rows:].reshape(rows, dim)
        return (phi * w[:, None]).T @ phi
    if layout == "upper":
        i, j = upper_indices(dim)
        matrix = np.empty((dim, dim))
        matrix[i, j] = values
        matrix[j, i] = values
        return matrix
    return values.reshape(dim, dim)
