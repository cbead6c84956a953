"""LinearCapture for C > 2 classes: the margin gradient against finite differences, the
CURVATURE factors against the full softmax Gauss-Newton, bad input named; and the default
method the service picks per kind of model."""

from __future__ import annotations

import numpy as np
import pytest

from headwater.producers.capture import LinearCapture
from headwater.query_service.attribution import scoring as sc
from headwater.v1 import events_pb2

C, D = 4, 3


def capture(events: list | None = None, **kwargs) -> LinearCapture:
    cap = LinearCapture((events if events is not None else []).append, "m", D, classes=C,
                        **kwargs)
    rng = np.random.default_rng(1)
    cap.set_parameters(rng.normal(size=(C, D)), rng.normal(size=C))
    return cap


def margin(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: int) -> float:
    z = w @ x + b
    others = np.delete(z, y)
    return float(z[y] - (others.max() + np.log(np.exp(others - others.max()).sum())))


def test_margin_gradient_matches_finite_differences() -> None:
    cap = capture()
    x = np.random.default_rng(2).normal(size=(5, D))
    y = np.array([0, 3, 1, 2, 3])
    phi, weights, f = cap.features(x, y)  # identity projection: d = C(D+1) <= k
    theta = np.append(cap.coef.ravel(), cap.intercept)
    for i in range(len(x)):
        def m(t: np.ndarray, i: int = i) -> float:
            return margin(t[:C * D].reshape(C, D), t[C * D:], x[i], int(y[i]))
        assert f[i] == pytest.approx(m(theta))
        eps = 1e-6
        fd = [(m(theta + eps * e) - m(theta - eps * e)) / (2 * eps) for e in np.eye(len(theta))]
        np.testing.assert_allclose(phi[i], fd, rtol=1e-4, atol=1e-6)
        assert weights.q[i] == pytest.approx(1 - 1 / (1 + np.exp(-f[i])))


def test_curvature_factors_sum_to_the_full_softmax_gauss_newton() -> None:
    cap = capture()
    x = np.random.default_rng(3).normal(size=(6, D))
    phi, w = cap.curvature_factors(x)
    got = (phi * w[:, None]).T @ phi
    xb = np.hstack([x, np.ones((len(x), 1))])
    z = xb @ np.hstack([cap.coef, cap.intercept[:, None]]).T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want = np.zeros((C * (D + 1), C * (D + 1)))
    for i in range(len(x)):
        jac = np.kron(np.eye(C), xb[i])  # ∂z/∂(W, b) in (row-major W..., b...) order below
        order = [c * (D + 1) + j for c in range(C) for j in range(D)] + \
            [c * (D + 1) + D for c in range(C)]
        jac = jac[:, order]
        want += jac.T @ (np.diag(p[i]) - np.outer(p[i], p[i])) @ jac
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_featurisation_publishes_curvature_rows_in_bounded_batches() -> None:
    events: list = []
    cap = capture(events)
    keys = events_pb2.RowKeys(node_ids=["n"], rows=list(range(7)))
    cap.capture(np.ones((7, D)), np.arange(7) % C, keys, learning_rate=0.0,
                featurisation=True)
    batches = [e for e in events if isinstance(e, events_pb2.GradientBatch)]
    assert [b.kind for b in batches] == [events_pb2.GradientBatch.FEATURISATION,
                                         events_pb2.GradientBatch.CURVATURE]
    assert list(batches[1].row_keys.rows) == list(np.repeat(np.arange(7), C))
    assert sum(batches[1].curvature_weight) == pytest.approx(7.0)  # Σ_c p_c = 1 per row
    events.clear()
    phi, w = cap.curvature_factors(np.ones((7, D)))
    cap.publish_curvature(phi, w, keys, C, max_rows=2 * C)
    assert [len(e.row_keys.rows) for e in events] == [2 * C, 2 * C, 2 * C, C]
    # training steps publish no curvature rows
    events.clear()
    cap.capture(np.ones((7, D)), np.arange(7) % C, keys, learning_rate=0.1, step=1)
    assert [e.kind for e in events if isinstance(e, events_pb2.GradientBatch)] == [
        events_pb2.GradientBatch.TRAINING_STEP]


def test_bad_input_is_named() -> None:
    cap = capture()
    with pytest.raises(ValueError, match="labels must be 0..3"):
        cap.features(np.ones((2, D)), np.array([0, 4]))
    with pytest.raises(ValueError, match=r"coef must be \[4, 3\]"):
        cap.set_parameters(np.ones(D), 0.0)
    with pytest.raises(ValueError, match="classes must be >= 2"):
        LinearCapture([].append, "m", D, classes=1)
    with pytest.raises(ValueError, match="classification"):
        LinearCapture([].append, "m", D, classes=3, task="regression")
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="l2_penalty"):
            cap.record_version(1, l2_penalty=bad)
    assert cap.framework == "numpy-multiclass"
    assert LinearCapture([].append, "b", D).framework == "numpy"


def test_prediction_explains_the_predicted_class_by_default() -> None:
    events: list = []
    cap = capture(events)
    x = np.array([0.5, -1.0, 2.0])
    event = cap.record_prediction(x, prediction_id="p")
    z = cap.coef @ x + cap.intercept
    assert event.predicted_label == int(z.argmax()) and event.gradient_labels == [
        str(int(z.argmax()))]
    np.testing.assert_allclose(event.output, z)


def _model(uses: int, lr: float, kind: str = "TRAINING_STEP") -> sc.Model:
    n = 10
    example = np.tile(np.arange(n), uses)
    block = sc.Block("v1", kind, "p", np.zeros((len(example), 2), np.float32),
                     np.ones(len(example)), np.ones(len(example)),
                     np.full(len(example), lr), np.arange(len(example)),
                     np.zeros(len(example)), example)
    return sc.Model("m", 1, [block], [sc.Example("n", i, [], []) for i in range(n)], ["v1"])


def test_default_method_is_tracin_for_one_pass_learners_only() -> None:
    assert sc.default_method(_model(1, 0.1)) == "tracin"  # a stream: each row once
    assert sc.default_method(_model(20, 0.1)) == "influence"  # 20 epochs
    assert sc.default_method(_model(1, 0.0)) == "influence"  # steps without a learning rate
    assert sc.default_method(_model(1, 0.0, "FEATURISATION")) == "influence"
