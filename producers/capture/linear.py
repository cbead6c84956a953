"""Closed-form per-sample gradients of a NumPy linear model (binary or multiclass logistic,
or squared error): LinearCapture, a Recorder (recorder.py) whose gradients need no autograd."""

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


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class LinearCapture(Recorder):
    """Closed-form gradients for a NumPy linear model.

    - classes=2 (default): f(x) = x·coef + intercept is the logit of label 1; the margin of
      label y is s·f with s = ±1, so ∇_θ margin = s·[x, 1]. Parameters (coef..., intercept).
    - classes=C > 2: logits z = coef @ x + intercept (coef [C, D], intercept [C]); the margin
      of label y is z_y − logsumexp_{c≠y} z_c, so ∇ margin = (e_y − π) ⊗ [x, 1] with π the
      softmax over the other classes. Parameters (coef row-major, intercept). Featurisation
      also publishes the full softmax Gauss-Newton factors (CURVATURE rows, see
      `curvature_factors`), so the service's curvature is exact, not the margin's alone.
    - task="regression": ∇_θ f = [x, 1].
    """

    def __init__(self, publish: Publish, model_id: str, n_features: int, *,
                 classes: int = 2, **kwargs: Any) -> None:
        if classes < 2:
            raise ValueError(f"classes must be >= 2; got {classes}")
        if classes > 2 and kwargs.get("task", "classification") != "classification":
            raise ValueError("classes > 2 needs task='classification'")
        self.classes = classes
        self.n_features = n_features
        outputs = 1 if classes == 2 else classes
        super().__init__(publish, model_id, outputs * (n_features + 1),
                         parameters=kwargs.pop("parameters", ("coef", "intercept")), **kwargs)
        self.coef = np.zeros(n_features) if outputs == 1 else np.zeros((classes, n_features))
        self.intercept: Any = 0.0 if outputs == 1 else np.zeros(classes)

    @property
    def multiclass(self) -> bool:
        return self.classes > 2

    @property
    def framework(self) -> str:  # type: ignore[override]
        """"numpy" (∇f = [x, 1] needs no parameters: RawFeatures queries work) or
        "numpy-multiclass" (the margin gradient needs the parameters)."""
        return "numpy-multiclass" if self.multiclass else "numpy"

    def set_parameters(self, coef: np.ndarray, intercept: Any) -> None:
        """coef [D] and a float intercept (binary, regression); coef [C, D] and intercept
        [C] (multiclass)."""
        if self.multiclass:
            coef = np.asarray(coef, dtype=np.float64)
            intercept = np.asarray(intercept, dtype=np.float64).ravel()
            if coef.shape != (self.classes, self.n_features) or intercept.shape != (
                    self.classes,):
                raise ValueError(f"coef must be [{self.classes}, {self.n_features}] and "
                                 f"intercept [{self.classes}]; got {coef.shape} and "
                                 f"{intercept.shape}")
            self.coef, self.intercept = coef, intercept
            return
        coef = np.asarray(coef, dtype=np.float64).ravel()
        if coef.shape != (self.n_features,):
            raise ValueError(f"coef has {coef.size} values; the model has {self.n_features} "
                             "features")
        self.coef, self.intercept = coef, float(intercept)

    def parameter_hash(self) -> str:
        values = np.append(np.ravel(self.coef), self.intercept).astype("<f8")
        return hashlib.sha256(values.tobytes()).hexdigest()

    def _inputs(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"x must be [n, {self.n_features}]; got shape {x.shape}")
        return x

    def _labels(self, y: Any, n: int) -> np.ndarray:
        label = np.asarray(y).astype(np.int64).ravel()
        if label.shape != (n,) or not np.isin(label, np.arange(self.classes)).all():
            raise ValueError(f"LinearCapture classification labels must be 0..{self.classes - 1}"
                             f" (one per row)")
        return label

    def logits(self, x: np.ndarray) -> np.ndarray:
        """[n, C] class logits (multiclass), or the [n] logit / output."""
        x = self._inputs(x)
        return x @ self.coef.T + self.intercept

    def features(self, x: np.ndarray, y: np.ndarray | None = None
                 ) -> tuple[np.ndarray, Weights, np.ndarray]:
        """(φ [n, k], weights, f) at the current parameters; y=None: the predicted label."""
        x = self._inputs(x)
        xb = np.hstack([x, np.ones((len(x), 1))])
        if self.multiclass:
            z = self.logits(x)
            label = z.argmax(1) if y is None else self._labels(y, len(x))
            others = z.copy()
            others[np.arange(len(x)), label] = -np.inf
            pi = _softmax(others)  # softmax over the other classes (0 at the label)
            own = z[np.arange(len(x)), label]
            f = own - (np.log(np.exp(others - others.max(1, keepdims=True)).sum(1))
                       + others.max(1))
            coeff = -pi
            coeff[np.arange(len(x)), label] += 1.0  # e_y − π
            grad = (coeff[:, :, None] * xb[:, None, :]).reshape(len(x), -1)
            return self.projection.project(self._order(grad)), margin_weights(f), f
        f = x @ self.coef + self.intercept
        grad = xb
        if self.task == "classification":
            label = (f > 0).astype(np.int64) if y is None else self._labels(y, len(x))
            sign = 2.0 * label - 1.0
            weights = margin_weights(sign * f)
            grad = grad * sign[:, None]
        else:
            if y is None:
                raise ValueError("regression needs targets y")
            weights = regression_weights(f, y)
        return self.projection.project(grad), weights, f

    def _order(self, grad: np.ndarray) -> np.ndarray:
        """[n, C·(D+1)] per-class blocks (w_c, b_c) as parameters (coef row-major, then
        intercept)."""
        n, d = len(grad), self.n_features
        g = grad.reshape(n, self.classes, d + 1)
        return np.hstack([g[:, :, :d].reshape(n, -1), g[:, :, d]])

    def curvature_factors(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(φ [n·C, k], w [n·C]) with Σ w φφᵀ = the full softmax Gauss-Newton Σ_i Jᵢᵀ(diag p −
        ppᵀ)Jᵢ: diag p − ppᵀ = Σ_c p_c (e_c − p)(e_c − p)ᵀ, so row (i, c) is
        ∇ log p_c = (e_c − p) ⊗ [x, 1] with weight p_c (row-major: row i's C rows together)."""
        x = self._inputs(x)
        n, c = len(x), self.classes
        p = _softmax(self.logits(x))
        xb = np.hstack([x, np.ones((n, 1))])
        diff = np.eye(c)[None, :, :] - p[:, None, :]  # [n, c (factor), c (class)]
        grad = (diff[:, :, :, None] * xb[:, None, None, :]).reshape(n * c, -1)
        return self.projection.project(self._order(grad)), p.reshape(-1)

    def capture(self, x: np.ndarray, y: np.ndarray, keys: events_pb2.RowKeys, *,
                learning_rate: float, step: int = 0, featurisation: bool = False
                ) -> events_pb2.GradientBatch:
        """Publish the per-sample gradients of rows (x, y) at the current parameters (a
        multiclass featurisation also publishes the curvature factors of the rows)."""
        phi, weights, _ = self.features(x, y)
        batch = self.publish_gradients(phi, weights, keys, learning_rate=learning_rate,
                                       step=step, targets=y, featurisation=featurisation)
        if self.multiclass and featurisation:
            factors, w = self.curvature_factors(x)
            self.publish_curvature(factors, w, keys, self.classes, step=step)
        return batch

    def record_prediction(self, x: np.ndarray, *, label: int | None = None,
                          prediction_id: str | None = None,
                          input_rows: events_pb2.RowKeys | None = None
                          ) -> events_pb2.PredictionRecorded:
        x = np.asarray(x, dtype=np.float64).reshape(1, -1)
        phi, _, f = self.features(x, None if label is None else np.array([label]))
        if self.multiclass:
            z = self.logits(x)[0]
            shown = int(z.argmax()) if label is None else label
            return self.publish_prediction(phi, z, shown, prediction_id=prediction_id,
                                           input_rows=input_rows)
        shown = (int(f[0] > 0) if label is None else label) if self.task == "classification" \
            else 0
        return self.publish_prediction(phi, f, shown, prediction_id=prediction_id,
                                       input_rows=input_rows)
