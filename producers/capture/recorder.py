"""Per-sample gradient capture in the trainer: GradientBatch, ModelVersionRecorded and
PredictionRecorded events for attribution.

    capture = TorchCapture(publisher.publish, model, "clf", k=512, parameters="last_layer")
    for step, (x, y) in enumerate(loader):
        capture.capture(x, y, row_keys(x), learning_rate=lr, step=step)   # before .step()
        loss = loss_fn(model(x), y); loss.backward(); opt.step(); opt.zero_grad()
        if step % 100 == 0:
            capture.record_version(step)
    capture.record_prediction(x_test[:1], prediction_id="p-1")

What is captured (DESIGN.md, Attribution): f is the model output being explained — the
margin log(p_y / (1 - p_y)) of the row's label for classification, the output itself for
regression; φ = P ∇_θ f (P: the seeded projection, identity when d ≤ k); q = -dℓ/df, the
loss weight (1 - p_y; for squared error y - f) and w = d²ℓ/df², the curvature weight
(p_y (1 - p_y); 1). With these, ∇ℓ = -q ∇f and the Gauss-Newton Hessian is Σ w ∇f ∇fᵀ,
so "including row i raised f' by score_i" has a positive sign (see the query side).
`learning_rate` on a GradientBatch is per sample: lr / batch size for a mean-reduced loss.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from headwater.producers.capture.projection import Projection, make_projection
from headwater.v1 import events_pb2

Publish = Callable[[Any], object]
TASKS = ("classification", "regression")
_DTYPES = {"float16": (events_pb2.FLOAT16, np.float16), "float32": (events_pb2.FLOAT32, np.float32)}


@dataclass(frozen=True)
class Weights:
    """Per-sample output-function statistics: loss, q (loss weight), w (curvature weight)."""

    loss: np.ndarray
    q: np.ndarray
    w: np.ndarray


def margin_weights(margin: np.ndarray) -> Weights:
    """Classification: p = σ(margin) of the row's label; ℓ = -log p, q = 1 - p, w = p(1-p)."""
    m = np.asarray(margin, dtype=np.float64)
    p = 1.0 / (1.0 + np.exp(-m))
    loss = np.logaddexp(0.0, -m)  # -log σ(m), stable for large |m|
    return Weights(loss, 1.0 - p, p * (1.0 - p))


def regression_weights(output: np.ndarray, target: np.ndarray) -> Weights:
    """Squared error ½(f - y)²: q = y - f, w = 1."""
    r = np.asarray(target, dtype=np.float64) - np.asarray(output, dtype=np.float64)
    return Weights(0.5 * r * r, r, np.ones_like(r))


def _keys(keys: events_pb2.RowKeys, n: int) -> events_pb2.RowKeys:
    if not isinstance(keys, events_pb2.RowKeys):
        raise TypeError(f"keys must be headwater.v1.RowKeys (see tracking.row_keys); "
                        f"got {type(keys).__name__}")
    if len(keys.rows) != n:
        raise ValueError(f"keys name {len(keys.rows)} rows but the batch has {n}")
    return keys


class Recorder:
    """Publishes attribution events for one model: versions, gradients, predictions.

    Subclasses compute φ and the weights for their kind of model; this class owns the
    projection, the version chain and the event encoding.
    """

    framework = "numpy"

    def __init__(self, publish: Publish, model_id: str, parameter_count: int, *,
                 task: str = "classification", k: int = 512, seed: int = 0,
                 projection: str = "rademacher", parameters: Sequence[str] = (),
                 dtype: str = "float32") -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be float16 or float32; got {dtype!r}")
        if not model_id:
            raise ValueError("model_id must be a non-empty string")
        self.publish = publish
        self.model_id = model_id
        self.task = task
        self.dtype = dtype
        self.projection: Projection = make_projection(parameter_count, k=k, seed=seed,
                                                      kind=projection,
                                                      parameters=tuple(parameters))
        self._proto_projection = self.projection.to_proto()
        self.version = ""
        self._versions = 0
        self.last_step = 0  # the latest training step seen: a version recorded without a step

    @property
    def output_function(self) -> str:
        return "margin" if self.task == "classification" else "output"

    # -- versions --------------------------------------------------------------------------

    def parameter_hash(self) -> str:
        raise NotImplementedError

    def record_version(self, step: int | None = None, config: dict[str, Any] | None = None,
                       checkpoint_uri: str = "") -> str:
        """Emit ModelVersionRecorded for the current parameters; later events carry it.
        `step` defaults to the latest step seen (e.g. a version made by unlearning between
        steps belongs after them, not at step 0)."""
        step = self.last_step if step is None else step
        self.last_step = max(self.last_step, step)
        self._versions += 1
        parent, self.version = self.version, f"v{self._versions}"
        self.publish(events_pb2.ModelVersionRecorded(
            model_id=self.model_id, version=self.version, parent_version=parent,
            parameter_hash=self.parameter_hash(), step=step,
            config_json=json.dumps(config or {}, sort_keys=True, default=str),
            framework=self.framework, parameter_count=self.projection.input_dim,
            checkpoint_uri=checkpoint_uri))
        return self.version

    def _require_version(self) -> str:
        if not self.version:
            self.record_version()
        return self.version

    # -- events ----------------------------------------------------------------------------

    def publish_gradients(self, phi: np.ndarray, weights: Weights, keys: events_pb2.RowKeys,
                          *, learning_rate: float, step: int, targets: Any = None,
                          featurisation: bool = False) -> events_pb2.GradientBatch:
        """One GradientBatch of projected per-sample gradients φ [n, k]."""
        self.last_step = max(self.last_step, step)
        n = phi.shape[0]
        kind = (events_pb2.GradientBatch.FEATURISATION if featurisation
                else events_pb2.GradientBatch.TRAINING_STEP)
        proto_dtype, np_dtype = _DTYPES[self.dtype]
        batch = events_pb2.GradientBatch(
            model_id=self.model_id, model_version=self._require_version(), step=step,
            learning_rate=learning_rate, row_keys=_keys(keys, n), dim=phi.shape[1],
            dtype=proto_dtype, gradients=np.ascontiguousarray(phi, dtype=np_dtype).tobytes(),
            loss=weights.loss.tolist(), loss_weight=weights.q.tolist(),
            curvature_weight=weights.w.tolist(), projection=self._proto_projection, kind=kind,
            output_function=self.output_function,
            targets=[] if targets is None else np.asarray(targets, np.float64).ravel().tolist())
        self.publish(batch)
        return batch

    def publish_prediction(self, phi: np.ndarray, output: Iterable[float], label: Any, *,
                           prediction_id: str | None = None,
                           input_rows: events_pb2.RowKeys | None = None
                           ) -> events_pb2.PredictionRecorded:
        """PredictionRecorded carrying the projected test gradient φ' [1, k] of the margin
        of `label` (classification) or of the output (regression)."""
        proto_dtype, np_dtype = _DTYPES[self.dtype]
        event = events_pb2.PredictionRecorded(
            prediction_id=prediction_id or str(uuid.uuid4()), model_id=self.model_id,
            model_version=self._require_version(),
            output=[float(v) for v in np.ravel(np.asarray(output, dtype=np.float64))],
            predicted_label=int(label) if self.task == "classification" else 0,
            dim=phi.shape[1], dtype=proto_dtype,
            test_gradients=np.ascontiguousarray(phi, dtype=np_dtype).tobytes(),
            gradient_labels=[str(label) if self.task == "classification" else "output"],
            projection=self._proto_projection)
        if input_rows is not None:
            event.input_rows.CopyFrom(input_rows)
        self.publish(event)
        return event
