"""Closed-form per-sample gradients of a NumPy linear model (binary logistic or squared
error): LinearCapture, a Recorder (recorder.py) whose gradients need no autograd."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from headwater.producers.capture.recorder import (
    Publish,
    Recorder,
    Weights,
    margin_weights,
    regression_weights,
)
from headwater.v1 import events_pb2


class LinearCapture(Recorder):
    """Closed-form gradients for a NumPy linear model f(x) = x·coef + intercept.

    Classification is binary (labels 0/1, f = the logit): the margin of label y is
    s·f with s = ±1, so ∇_θ margin = s·[x, 1]. Regression: ∇_θ f = [x, 1].
    Parameters are (coef..., intercept) in that order.
    """

    def __init__(self, publish: Publish, model_id: str, n_features: int,
                 **kwargs: Any) -> None:
        super().__init__(publish, model_id, n_features + 1,
                         parameters=kwargs.pop("parameters", ("coef", "intercept")), **kwargs)
        self.n_features = n_features
        self.coef = np.zeros(n_features)
        self.intercept = 0.0

    def set_parameters(self, coef: np.ndarray, intercept: float) -> None:
        coef = np.asarray(coef, dtype=np.float64).ravel()
        if coef.shape != (self.n_features,):
            raise ValueError(f"coef has {coef.size} values; the model has {self.n_features} "
                             "features")
        self.coef, self.intercept = coef, float(intercept)

    def parameter_hash(self) -> str:
        return hashlib.sha256(np.append(self.coef, self.intercept).astype("<f8").tobytes()
                              ).hexdigest()

    def features(self, x: np.ndarray, y: np.ndarray | None = None
                 ) -> tuple[np.ndarray, Weights, np.ndarray]:
        """(φ [n, k], weights, f) at the current parameters; y=None: the predicted label."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"x must be [n, {self.n_features}]; got shape {x.shape}")
        f = x @ self.coef + self.intercept
        grad = np.hstack([x, np.ones((len(x), 1))])
        if self.task == "classification":
            label = (f > 0).astype(np.int64) if y is None else np.asarray(y).astype(np.int64)
            if not np.isin(label, (0, 1)).all():
                raise ValueError("LinearCapture classification labels must be 0 or 1")
            sign = 2.0 * label - 1.0
            weights = margin_weights(sign * f)
            grad = grad * sign[:, None]
        else:
            if y is None:
                raise ValueError("regression needs targets y")
            weights = regression_weights(f, y)
        return self.projection.project(grad), weights, f

    def capture(self, x: np.ndarray, y: np.ndarray, keys: events_pb2.RowKeys, *,
                learning_rate: float, step: int = 0, featurisation: bool = False
                ) -> events_pb2.GradientBatch:
        """Publish the per-sample gradients of rows (x, y) at the current parameters."""
        phi, weights, _ = self.features(x, y)
        return self.publish_gradients(phi, weights, keys, learning_rate=learning_rate,
                                      step=step, targets=y, featurisation=featurisation)

    def record_prediction(self, x: np.ndarray, *, label: int | None = None,
                          prediction_id: str | None = None,
                          input_rows: events_pb2.RowKeys | None = None
                          ) -> events_pb2.PredictionRecorded:
        x = np.asarray(x, dtype=np.float64).reshape(1, -1)
        phi, _, f = self.features(x, None if label is None else np.array([label]))
        shown = (int(f[0] > 0) if label is None else label) if self.task == "classification" \
            else 0
        return self.publish_prediction(phi, f, shown, prediction_id=prediction_id,
                                       input_rows=input_rows)
