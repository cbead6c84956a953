"""Pure processors for attribution events: model versions, gradient rows, predictions,
and parts of the online curvature sketch.

Gradient vectors stay the exact bytes the trainer sent (one row per training row); the
curvature part of a batch is Σ w φφᵀ over its rows, per (model, version, kind).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from headwater.stream_processors.processors.decode import Accepted
from headwater.stream_processors.processors.rows import TS, micros, ts_column
from headwater.v1 import events_pb2

DTYPES = {events_pb2.FLOAT16: ("float16", "<f2"), events_pb2.FLOAT32: ("float32", "<f4"),
          events_pb2.FLOAT64: ("float64", "<f8")}
NP_DTYPE = {name: np_type for name, np_type in DTYPES.values()}
KIND = {events_pb2.GradientBatch.TRAINING_STEP: "TRAINING_STEP",
        events_pb2.GradientBatch.FEATURISATION: "FEATURISATION",
        events_pb2.GradientBatch.KIND_UNSPECIFIED: "TRAINING_STEP"}

MODEL_VERSIONS_SCHEMA = pa.schema([
    ("model_id", pa.string()), ("version", pa.string()), ("parent_version", pa.string()),
    ("parameter_hash", pa.string()), ("step", pa.uint64()), ("config_json", pa.string()),
    ("framework", pa.string()), ("parameter_count", pa.uint64()),
    ("checkpoint_uri", pa.string()), ("run_id", pa.string()), ("event_id", pa.string()),
    ("recorded_at", TS), ("run_key", pa.string()),
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
    return [a.event for a in batch if a.event.WhichOneof("payload") == payload]


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
    })


def _binary_rows(data: list[bytes], row_bytes: list[int], counts: list[int]) -> pa.Array:
    """Split each event's n x k matrix into per-row binary values without copying rows."""
    buffer = b"".join(data)
    sizes = np.repeat(np.asarray(row_bytes, dtype=np.int64), counts)
    offsets = np.zeros(len(sizes) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    return pa.BinaryArray.from_buffers(pa.binary(), len(sizes),
                                       [None, pa.py_buffer(offsets), pa.py_buffer(buffer)])


def gradient_rows(batch: list[Accepted]) -> pa.Table:
    """One `gradients` row per training row of every GradientBatch."""
    found = of_payload(batch, "gradient_batch")
    cols: dict[str, list] = {f.name: [] for f in GRADIENTS_SCHEMA}
    data, row_bytes, counts = [], [], []
    for e in found:
        p = e.gradient_batch
        n = len(p.row_keys.rows)
        dtype_name, np_type = DTYPES[p.dtype]
        data.append(p.gradients)
        row_bytes.append(p.dim * np.dtype(np_type).itemsize)
        counts.append(n)
        cols["node_id"] += row_nodes(p.row_keys)
        cols["row"] += list(p.row_keys.rows)
        cols["idx"] += range(n)
        cols["loss"] += list(p.loss) if p.loss else [float("nan")] * n
        cols["loss_weight"] += list(p.loss_weight) if p.loss_weight else [1.0] * n
        cols["curvature_weight"] += (list(p.curvature_weight) if p.curvature_weight
                                     else [1.0] * n)
        cols["target"] += list(p.targets) if p.targets else [float("nan")] * n
        for name, value in (
            ("model_id", p.model_id), ("model_version", p.model_version),
            ("kind", KIND[p.kind]), ("step", p.step), ("learning_rate", p.learning_rate),
            ("output_function", p.output_function or "margin"),
            ("projection_id", p.projection.projection_id), ("dim", p.dim),
            ("dtype", dtype_name), ("run_id", e.run_id), ("event_id", e.event_id),
            ("recorded_at", micros(e.emitted_at)),
        ):
            cols[name] += [value] * n
    cols["gradient"] = _binary_rows(data, row_bytes, counts)  # type: ignore[assignment]
    cols["recorded_at"] = ts_column(cols["recorded_at"])  # type: ignore[assignment]
    return arrow_table(GRADIENTS_SCHEMA, cols)


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


@dataclass
class _Part:
    """Σ w φφᵀ of one key: kept as its rows (w, φ) while they are smaller than the k x k
    matrix, so a part never costs more than the events it sums."""

    projection_id: str
    dim: int
    rows: int
    min_step: int
    max_step: int
    event_ids: list[str]
    blocks: list[tuple[np.ndarray, np.ndarray]]
    matrix: np.ndarray | None = None

    def add(self, w: np.ndarray, phi: np.ndarray) -> None:
        if self.matrix is None and (self.rows + len(phi)) * (self.dim + 1) < self.dim ** 2:
            self.blocks.append((w, phi))
        else:
            if self.matrix is None:
                self.matrix = np.zeros((self.dim, self.dim))
                for bw, bphi in self.blocks:
                    self.matrix += (bphi * bw[:, None]).T @ bphi
                self.blocks = []
            self.matrix += (phi * w[:, None]).T @ phi
        self.rows += len(phi)

    def stored(self) -> tuple[str, bytes]:
        """(layout, bytes): 'dense', the k x k matrix; or 'rows', the n weights then the
        n x k rows (float64, little-endian)."""
        if self.matrix is not None:
            return "dense", self.matrix.astype("<f8").tobytes()
        w = np.concatenate([b[0] for b in self.blocks])
        phi = np.concatenate([b[1] for b in self.blocks])
        return "rows", w.astype("<f8").tobytes() + phi.astype("<f8").tobytes()


def part_matrix(data: bytes, rows: int, dim: int, layout: str) -> np.ndarray:
    """The k x k matrix Σ w φφᵀ of one stored curvature part, whatever its layout."""
    values = np.frombuffer(data, "<f8")
    if layout == "rows":
        w, phi = values[:rows], values[rows:].reshape(rows, dim)
        return (phi * w[:, None]).T @ phi
    return values.reshape(dim, dim)


def curvature_parts(batch: list[Accepted], counted: set[str], now_us: int) -> pa.Table:
    """Σ w φφᵀ over the rows of the batch's GradientBatch events not yet `counted`, one
    part per (run, model, version, kind, projection). float64 accumulation: parts are summed
    later. Pure and total: it never raises on a validated event."""
    parts: dict[tuple[str, str, str, str, int, str], _Part] = {}
    for e in of_payload(batch, "gradient_batch"):
        if e.event_id in counted:
            continue
        p = e.gradient_batch
        n = len(p.row_keys.rows)
        key = (p.model_id, p.model_version, KIND[p.kind], p.projection.projection_id, p.dim,
               e.run_id)
        phi = np.frombuffer(p.gradients, DTYPES[p.dtype][1]).reshape(n, p.dim)
        phi = phi.astype(np.float64)
        w = (np.asarray(p.curvature_weight, dtype=np.float64) if p.curvature_weight
             else np.ones(n))
        part = parts.get(key)
        if part is None:
            part = parts[key] = _Part(p.projection.projection_id, p.dim, 0, p.step, p.step,
                                      [], [])
        part.add(w, phi)
        part.min_step = min(part.min_step, p.step)
        part.max_step = max(part.max_step, p.step)
        part.event_ids.append(e.event_id)
    keys = list(parts)
    ps = [parts[k] for k in keys]
    layouts = [p.stored() for p in ps]
    return arrow_table(CURVATURE_SCHEMA, {
        "model_id": [k[0] for k in keys], "model_version": [k[1] for k in keys],
        "kind": [k[2] for k in keys], "projection_id": [p.projection_id for p in ps],
        "dim": [p.dim for p in ps], "rows": [p.rows for p in ps],
        "min_step": [p.min_step for p in ps], "max_step": [p.max_step for p in ps],
        "matrix": [stored[1] for stored in layouts],
        "layout": [stored[0] for stored in layouts],
        "event_ids": [p.event_ids for p in ps],
        "part_id": [hashlib.sha256("\0".join(sorted(p.event_ids)).encode()).hexdigest()[:32]
                    for p in ps],
        "created_at": ts_column([now_us] * len(ps)), "run_id": [k[5] for k in keys],
    })
