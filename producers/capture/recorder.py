"""Per-sample gradient capture in the trainer: GradientBatch, ModelVersionRecorded and
PredictionRecorded events for attribution.

    background = BackgroundPublisher(publisher)        # encoding off the trainer's thread
    capture = TorchCapture(background, model, "clf", k=512)
    for step, (x, y) in enumerate(loader):
        with capture.step(x, y, row_keys(x), learning_rate=lr, step=step):
            loss_fn(model(x), y).backward()                 # hooks read this backward
        opt.step(); opt.zero_grad()
        if step % 100 == 0:
            capture.record_version(step)
    capture.record_prediction(x_test[:1], prediction_id="p-1")
    background.flush()                                      # errors of the worker surface here

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
from typing import Any, Protocol

import numpy as np
from google.protobuf.message import Message

from headwater.producers.capture.kronecker import KroneckerProjection
from headwater.producers.capture.projection import Projection, make_projection
from headwater.v1 import events_pb2


class Submit(Protocol):
    """A publisher that builds payloads itself, later, off the caller's thread
    (headwater.producers.publisher.BackgroundPublisher)."""

    def submit(self, build: Callable[[], Message]) -> None: ...

    def __call__(self, payload: Message) -> None: ...


Publish = Callable[[Any], object] | Submit
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


def _encoded(phi: Any, dtype: type) -> np.ndarray:
    """φ (NumPy array or torch tensor, any device) as a C-contiguous array of `dtype`."""
    if hasattr(phi, "detach"):  # torch converts to float16 far faster than NumPy does
        import torch

        phi = phi.detach().to(torch.float16 if dtype is np.float16 else torch.float32)
        return np.ascontiguousarray(phi.cpu().numpy())
    return np.ascontiguousarray(phi, dtype=dtype)


def _bytes(phi: Any, dtype: type) -> bytes:
    """Row-major little-endian bytes of φ."""
    return _encoded(phi, dtype).tobytes()


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
                 dtype: str = "float32",
                 projection_spec: Projection | KroneckerProjection | None = None) -> None:
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
        self.projection: Projection | KroneckerProjection = (
            make_projection(parameter_count, k=k, seed=seed, kind=projection,
                            parameters=tuple(parameters))
            if projection_spec is None else projection_spec)
        if self.projection.input_dim != parameter_count:
            raise ValueError(f"the projection takes {self.projection.input_dim} parameters, "
                             f"the model has {parameter_count}")
        self._proto_projection = self.projection.to_proto()
        self.version = ""
        self.version_hash = ""  # the parameter hash `version` recorded
        self._versions = 0
        self.last_step = 0  # the latest training step seen: a version recorded without a step

    @property
    def output_function(self) -> str:
        return "margin" if self.task == "classification" else "output"

    # -- versions --------------------------------------------------------------------------

    def parameter_hash(self) -> str:
        raise NotImplementedError

    def record_version(self, step: int | None = None, config: dict[str, Any] | None = None,
                       checkpoint_uri: str = "", l2_penalty: float = 0.0) -> str:
        """Emit ModelVersionRecorded for the current parameters; later events carry it.
        `step` defaults to the latest step seen (e.g. a version made by unlearning between
        steps belongs after them, not at step 0). `l2_penalty`: λ of the objective
        Σ_i ℓ_i + (λ/2)|θ|² (weight decay wd on a mean loss over n rows: wd · n); the
        service uses it as this version's influence damping."""
        if not (np.isfinite(l2_penalty) and l2_penalty >= 0):
            raise ValueError(f"l2_penalty must be a finite number >= 0; got {l2_penalty}")
        step = self.last_step if step is None else step
        self.last_step = max(self.last_step, step)
        self._versions += 1
        parent, self.version = self.version, f"v{self._versions}"
        self.version_hash = self.parameter_hash()
        event = events_pb2.ModelVersionRecorded(
            model_id=self.model_id, version=self.version, parent_version=parent,
            parameter_hash=self.version_hash, step=step,
            config_json=json.dumps(config or {}, sort_keys=True, default=str),
            framework=self.framework, parameter_count=self.projection.input_dim,
            checkpoint_uri=checkpoint_uri, l2_penalty=l2_penalty)
        self._emit(lambda: event)
        return self.version

    def _require_version(self) -> str:
        if not self.version:
            self.record_version()
        return self.version

    # -- events ----------------------------------------------------------------------------

    def _emit(self, build: Callable[[], Message]) -> Message | None:
        """Publish build()'s payload: on a BackgroundPublisher's worker (returns None), or
        here and now through a plain publish callable (returns the payload)."""
        submit = getattr(self.publish, "submit", None)
        if submit is not None:
            submit(build)
            return None
        payload = build()
        self.publish(payload)
        return payload

    def publish_gradients(self, phi: Any, weights: Weights, keys: events_pb2.RowKeys,
                          *, learning_rate: float, step: int, targets: Any = None,
                          featurisation: bool = False) -> events_pb2.GradientBatch | None:
        """One GradientBatch of projected per-sample gradients φ [n, k] (a NumPy array or a
        torch tensor, read when the event is built; it must not change after this call).
        Returns the payload, or None when a BackgroundPublisher builds it later."""
        keys = _keys(keys, phi.shape[0])
        version = self._require_version()
        self.last_step = max(self.last_step, step)
        return self._emit(lambda: self.gradient_batch(  # type: ignore[return-value]
            phi, weights, keys, learning_rate=learning_rate, step=step, targets=targets,
            featurisation=featurisation, version=version))

    def encoded(self, phi: Any) -> np.ndarray:
        """φ converted once to the stored dtype (gradient_batch takes row slices of it)."""
        return _encoded(phi, _DTYPES[self.dtype][1])

    def gradient_batch(self, phi: Any, weights: Weights, keys: events_pb2.RowKeys, *,
                       learning_rate: float, step: int, version: str, targets: Any = None,
                       featurisation: bool = False) -> events_pb2.GradientBatch:
        """The GradientBatch payload itself (pure: no version recorded, nothing sent)."""
        kind = (events_pb2.GradientBatch.FEATURISATION if featurisation
                else events_pb2.GradientBatch.TRAINING_STEP)
        proto_dtype, np_dtype = _DTYPES[self.dtype]
        return events_pb2.GradientBatch(
            model_id=self.model_id, model_version=version, step=step,
            learning_rate=learning_rate, row_keys=_keys(keys, phi.shape[0]), dim=phi.shape[1],
            dtype=proto_dtype, gradients=_bytes(phi, np_dtype),
            loss=weights.loss.tolist(), loss_weight=weights.q.tolist(),
            curvature_weight=weights.w.tolist(), projection=self._proto_projection, kind=kind,
            output_function=self.output_function,
            targets=[] if targets is None else np.asarray(targets, np.float64).ravel().tolist())

    def publish_curvature(self, phi: np.ndarray, w: np.ndarray, keys: events_pb2.RowKeys,
                          per_row: int, *, step: int = 0, max_rows: int = 65_536) -> None:
        """CURVATURE GradientBatches: factors φ [n·per_row, k] with weights w whose Σ w φφᵀ
        is the version's curvature (per_row factors per row of `keys`, row-major); the
        service never scores them as training rows."""
        keys = _keys(keys, len(phi) // per_row)
        proto_dtype, np_dtype = _DTYPES[self.dtype]
        version = self._require_version()
        index = list(keys.node_index) or [0] * len(keys.rows)
        rows = list(keys.rows)
        chunk = max(1, max_rows // per_row)
        for a in range(0, len(rows), chunk):
            b = min(a + chunk, len(rows))
            part = events_pb2.RowKeys(node_ids=keys.node_ids,
                                      node_index=np.repeat(index[a:b], per_row).tolist(),
                                      rows=np.repeat(rows[a:b], per_row).tolist())
            block = phi[a * per_row:b * per_row]
            weights = w[a * per_row:b * per_row]

            def build(block: np.ndarray = block, part: events_pb2.RowKeys = part,
                      weights: Any = weights) -> Message:
                return events_pb2.GradientBatch(
                    model_id=self.model_id, model_version=version, step=step,
                    learning_rate=0.0, row_keys=part, dim=phi.shape[1], dtype=proto_dtype,
                    gradients=np.ascontiguousarray(block, dtype=np_dtype).tobytes(),
                    curvature_weight=np.asarray(weights, np.float64).tolist(),
                    projection=self._proto_projection,
                    kind=events_pb2.GradientBatch.CURVATURE,
                    output_function=self.output_function)
            self._emit(build)

    def publish_prediction(self, phi: np.ndarray, output: Iterable[float], label: Any, *,
                           prediction_id: str | None = None,
                           input_rows: events_pb2.RowKeys | None = None
                           ) -> events_pb2.PredictionRecorded:
        """PredictionRecorded carrying the projected test gradient φ' [1, k] of the margin
        of `label` (classification) or of the output (regression). Built now, whatever
        the publisher: the caller gets the event (and its prediction id) back."""
        proto_dtype, np_dtype = _DTYPES[self.dtype]
        event = events_pb2.PredictionRecorded(
            prediction_id=prediction_id or str(uuid.uuid4()), model_id=self.model_id,
            model_version=self._require_version(),
            output=[float(v) for v in np.ravel(np.asarray(output, dtype=np.float64))],
            predicted_label=int(label) if self.task == "classification" else 0,
            dim=phi.shape[1], dtype=proto_dtype,
            test_gradients=_bytes(phi, np_dtype),
            gradient_labels=[str(label) if self.task == "classification" else "output"],
            projection=self._proto_projection)
        if input_rows is not None:
            event.input_rows.CopyFrom(input_rows)
        self._emit(lambda: event)
        return event
