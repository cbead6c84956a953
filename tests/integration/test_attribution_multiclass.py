"""Multiclass influence through the store is the exact influence function: a multinomial
logistic regression (L2, trained to convergence) captured with LinearCapture(classes=3),
its full softmax Gauss-Newton published as CURVATURE rows and its L2 recorded with the
version, so the default damping is the penalty; checked against the closed form."""

from __future__ import annotations

import numpy as np
import pytest

from headwater.producers.capture import LinearCapture
from headwater.producers.publisher import Publisher
from headwater.producers.tracking import Tracker, row_keys
from headwater.producers.transports.local import LocalTransport
from headwater.query_service.attribution.engine import AttributionEngine
from headwater.stream_processors.sink import EventSink
from headwater.v1 import events_pb2

LAM = 2.0


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def fit_multinomial(xb: np.ndarray, y: np.ndarray, classes: int, lam: float) -> np.ndarray:
    """argmin Σ ℓ_i + λ/2 |W|² over W [C, D+1] (Newton's method)."""
    n, d = xb.shape
    w = np.zeros((classes, d))
    onehot = np.eye(classes)[y]
    for _ in range(50):
        p = softmax(xb @ w.T)
        g = ((p - onehot).T @ xb + lam * w).ravel()
        h = hessian(xb, p, lam)
        step = np.linalg.solve(h, g).reshape(classes, d)
        w -= step
        if np.abs(step).max() < 1e-11:
            break
    return w


def hessian(xb: np.ndarray, p: np.ndarray, lam: float) -> np.ndarray:
    """Σ_i (diag p_i − p_i p_iᵀ) ⊗ x_i x_iᵀ + λI in the [C, D+1] row-major order."""
    c, d = p.shape[1], xb.shape[1]
    h = np.zeros((c * d, c * d))
    for a in range(c):
        for b in range(c):
            coeff = p[:, a] * ((a == b) - p[:, b])
            h[a * d:(a + 1) * d, b * d:(b + 1) * d] = (xb * coeff[:, None]).T @ xb
    return h + lam * np.eye(c * d)


def margin_grad(xb: np.ndarray, w: np.ndarray, y: np.ndarray) -> np.ndarray:
    """∇_W of the margin z_y − logsumexp_{c≠y} z_c, [n, C·(D+1)] row-major."""
    z = xb @ w.T
    others = z.copy()
    others[np.arange(len(y)), y] = -np.inf
    coeff = -softmax(others)
    coeff[np.arange(len(y)), y] += 1.0
    return (coeff[:, :, None] * xb[:, None, :]).reshape(len(y), -1)


@pytest.fixture
def wine(store):
    from sklearn.datasets import load_wine

    data = load_wine()
    publisher = Publisher(LocalTransport(EventSink(store, "local")), run_id="mc")
    tracker = Tracker(publisher.publish)
    x = tracker.array(data.data)
    x = (x - x.mean(0)) / x.std(0)
    train, test = x[20:], x[:20]
    xtr, ytr = np.asarray(train), data.target[20:]
    xb = np.hstack([xtr, np.ones((len(xtr), 1))])
    w = fit_multinomial(xb, ytr, 3, LAM)
    capture = LinearCapture(publisher.publish, "wine", xtr.shape[1], classes=3)
    capture.set_parameters(w[:, :-1], w[:, -1])
    capture.record_version(step=1, l2_penalty=LAM)
    capture.capture(xtr, ytr, row_keys(train), learning_rate=0.0, featurisation=True)
    xte, yte = np.asarray(test), data.target[:20]
    for j in range(len(xte)):
        capture.record_prediction(xte[j], label=int(yte[j]), prediction_id=f"w{j}")
    publisher.flush()
    return {"store": store, "xb": xb, "y": ytr, "w": w, "xte": xte, "yte": yte}


def test_multiclass_influence_is_exact_if(wine):
    xb, y, w = wine["xb"], wine["y"], wine["w"]
    p = softmax(xb @ w.T)
    h_inv = np.linalg.inv(hessian(xb, p, LAM))
    q = 1.0 - p[np.arange(len(y)), y]
    grads = margin_grad(xb, w, y)
    engine = AttributionEngine(wine["store"])  # defaults: the recorded L2 is the damping
    for j in range(len(wine["xte"])):
        xt = np.append(wine["xte"][j], 1.0)[None, :]
        exact = q * (grads @ h_inv @ margin_grad(xt, w, wine["yte"][j:j + 1])[0])
        result = engine.attribute(f"w{j}")
        assert result.damping == LAM and result.damping_source == "recorded l2"
        got = result.scores[np.argsort([e.row for e in result.model.examples])]
        assert np.corrcoef(got, exact)[0, 1] >= 0.98
        np.testing.assert_allclose(got, exact, rtol=1e-3, atol=1e-4 * np.abs(exact).max())


def test_margin_curvature_alone_is_not_exact(wine):
    """Without the CURVATURE rows (the margin Gauss-Newton only) the scores differ from the
    exact influence: the factors are what makes it exact."""
    store = wine["store"]
    store.command("ALTER TABLE curvature_parts DELETE WHERE kind = 'CURVATURE' "
                  "SETTINGS mutations_sync = 1")
    xb, y, w = wine["xb"], wine["y"], wine["w"]
    p = softmax(xb @ w.T)
    h_inv = np.linalg.inv(hessian(xb, p, LAM))
    q = 1.0 - p[np.arange(len(y)), y]
    xt = np.append(wine["xte"][0], 1.0)[None, :]
    exact = q * (margin_grad(xb, w, y) @ h_inv @ margin_grad(xt, w, wine["yte"][:1])[0])
    result = AttributionEngine(store).attribute("w0")
    got = result.scores[np.argsort([e.row for e in result.model.examples])]
    assert np.abs(got - exact).max() > 0.05 * np.abs(exact).max()


def test_versions_keeps_the_latest_n_of_the_ensemble(store):
    """versions=1 scores with the prediction's latest version alone: the same as a
    prediction recorded at that version only; versions=0 averages both."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 3))
    y = rng.integers(0, 3, 60)
    publisher = Publisher(LocalTransport(EventSink(store, "local")), run_id="ens")
    capture = LinearCapture(publisher.publish, "ens", 3, classes=3)
    keys = events_pb2.RowKeys(node_ids=["n"], rows=list(range(60)))
    for v in range(2):
        capture.set_parameters(rng.normal(size=(3, 3)), rng.normal(size=3))
        capture.record_version(step=v, l2_penalty=1.0)
        capture.capture(x, y, keys, learning_rate=0.0, featurisation=True)
        capture.record_prediction(x[0], label=0, prediction_id="both")
    capture.record_prediction(x[0], label=0, prediction_id="last")
    publisher.flush()
    engine = AttributionEngine(store)
    latest = engine.attribute("both", versions=1)
    assert latest.model_version == "v2"
    np.testing.assert_allclose(latest.scores, engine.attribute("last").scores)
    both = engine.attribute("both")
    assert both.model_version == "v1,v2"
    assert not np.allclose(both.scores, latest.scores)


def test_curvature_rows_are_never_scored_and_count_once(wine):
    """Hostile CURVATURE rows (keys of rows that were never trained on, a replayed event)
    change no result row, and a replayed event changes no curvature."""
    store = wine["store"]
    engine = AttributionEngine(store)
    before = engine.attribute("w0")
    publisher = Publisher(LocalTransport(EventSink(store, "local")), run_id="mc")
    forged = events_pb2.GradientBatch(
        model_id="wine", model_version="v1", dim=42, dtype=events_pb2.FLOAT32,
        row_keys=events_pb2.RowKeys(node_ids=["forged"], rows=list(range(5))),
        gradients=np.zeros((5, 42), np.float32).tobytes(), curvature_weight=[0.0] * 5,
        projection=events_pb2.Projection(projection_id=before.model.blocks[0].projection_id),
        kind=events_pb2.GradientBatch.CURVATURE)
    event = publisher.publish(forged)
    publisher.flush()
    after = AttributionEngine(store).attribute("w0")
    assert len(after.model.examples) == len(before.model.examples)
    assert all(e.node_id != "forged" for e in after.model.examples)
    np.testing.assert_allclose(after.scores, before.scores)  # zero weights add nothing
    parts = store.query("SELECT count() FROM curvature_parts WHERE kind = 'CURVATURE'")[0][0]
    publisher.transport.send(event.run_id, event.event_id,  # the same event again
                             event.SerializeToString(deterministic=True))
    publisher.flush()
    assert store.query("SELECT count() FROM curvature_parts WHERE kind = 'CURVATURE'"
                       )[0][0] == parts
