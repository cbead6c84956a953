"""Influence over training-step rows uses the curvature of one count per example (issue 25):
a row used in each of 3 epochs is in the sketch 3 times, and the engine divides C by that
before solving. Checked through AttributionEngine.attribute against the formula written out
here, with a fixed damping so the rescale cannot hide in λ (a spectrum-rule λ scales with C,
leaving ranks, and so LDS, unchanged: no LDS threshold can catch a dropped rescale)."""

from __future__ import annotations

import numpy as np

from headwater.producers.capture import LinearCapture
from headwater.producers.publisher import Publisher
from headwater.producers.tracking import Tracker, row_keys
from headwater.producers.transports.local import LocalTransport
from headwater.query_service.attribution.engine import AttributionEngine
from headwater.stream_processors.sink import EventSink

EPOCHS = 3
LAM = 0.05


def test_influence_divides_the_curvature_by_the_uses_of_each_example(store) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3))
    y = (x @ np.array([1.0, -1.0, 0.5]) + 0.3 * rng.normal(size=40) > 0).astype(float)
    publisher = Publisher(LocalTransport(EventSink(store, "local")), run_id="curv")
    tracker = Tracker(publisher.publish)
    data = tracker.array(x)
    capture = LinearCapture(publisher.publish, "sgd-curv", 3, k=16)  # identity projection
    coef, b, lr, step = np.zeros(3), 0.0, 0.5, 0
    for epoch in range(EPOCHS):
        for batch in tracker.batches(data, 10, seed=epoch):
            rows = np.asarray(batch)
            idx = np.array([int(np.flatnonzero((x == r).all(1))[0]) for r in rows])
            capture.set_parameters(coef, b)
            capture.capture(rows, y[idx], row_keys(batch), learning_rate=lr / len(rows),
                            step=step)
            p = 1 / (1 + np.exp(-(rows @ coef + b)))
            coef = coef - lr * ((p - y[idx]) @ rows) / len(rows)
            b -= lr * float(np.mean(p - y[idx]))
            step += 1
    capture.set_parameters(coef, b)
    event = capture.record_prediction(np.array([0.4, -1.0, 0.2]), label=1, prediction_id="c")
    publisher.flush()

    result = AttributionEngine(store).attribute("c", method="influence", damping=LAM)
    (block,) = [bl for bl in result.model.blocks if bl.kind == "TRAINING_STEP"]
    assert len(block.example) == EPOCHS * 40 and len(result.model.examples) == 40
    phi = block.phi.astype(np.float64)
    c = (phi * block.w[:, None]).T @ phi / EPOCHS  # Σ w φφᵀ over every use, per example
    test = np.frombuffer(event.test_gradients, np.float32).astype(np.float64)
    u = np.linalg.solve(c + LAM * np.eye(len(c)), test)
    expected = np.zeros(40)
    for ex in range(40):
        latest = np.flatnonzero(block.example == ex)[np.argmax(block.step[block.example == ex])]
        expected[ex] = block.q[latest] * phi[latest] @ u
    np.testing.assert_allclose(result.scores, expected, rtol=2e-3, atol=1e-9)
    # the check has teeth: the curvature counted per use gives other scores
    unscaled = np.linalg.solve(c * EPOCHS + LAM * np.eye(len(c)), test)
    wrong = np.array([block.q[i] * phi[i] @ unscaled for i in
                      [np.flatnonzero(block.example == ex)[
                          np.argmax(block.step[block.example == ex])] for ex in range(40)]])
    assert not np.allclose(wrong, expected, rtol=2e-3, atol=1e-9)
