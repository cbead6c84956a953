"""Factored capture (issue 16) through the real path: capture.step -> BackgroundPublisher ->
LocalTransport -> EventSink -> chDB -> AttributionEngine, with the processors and the query
service unchanged; TracIn equals Σ_t lr_t q φ_t · φ' recomputed from exact per-sample
gradients projected with the recorded Kronecker projection."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from headwater.producers.capture.kronecker import KroneckerProjection
from headwater.producers.capture.torch import TorchCapture
from headwater.producers.publisher import BackgroundPublisher, Publisher
from headwater.producers.tracking import Tracker, row_keys
from headwater.producers.transports.local import LocalTransport
from headwater.query_service.attribution.engine import AttributionEngine
from headwater.stream_processors.sink import EventSink
from headwater.v1 import events_pb2


def _exact(model: torch.nn.Module, capture: TorchCapture, x: torch.Tensor,
           y: torch.Tensor) -> np.ndarray:
    """Per-sample margin gradients in float64, one row at a time."""
    twin = copy.deepcopy(model).double()
    named = dict(twin.named_parameters())
    rows = []
    for i in range(len(x)):
        twin.zero_grad()
        capture._margin(twin(x[i:i + 1].double()), y[i:i + 1]).sum().backward()
        rows.append(torch.cat([named[n].grad.reshape(-1) for n in capture.names]).numpy())
    return np.stack(rows)


def test_factored_events_are_read_unchanged_by_the_service(store) -> None:
    rng = np.random.default_rng(0)
    x_all = rng.normal(size=(48, 6)).astype(np.float32)
    y_all = (x_all[:, 0] + x_all[:, 1] > 0).astype(np.int64) + (x_all[:, 2] > 1)
    publisher = Publisher(LocalTransport(EventSink(store, "local")), run_id="factored")
    background = BackgroundPublisher(publisher, max_pending=4)
    tracker = Tracker(background)
    data = tracker.array(x_all)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    capture = TorchCapture(background, model, "fac", k=40, seed=2)
    assert capture.mode == "factored" and capture.projection.kind == "kronecker"
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    expected = np.zeros(len(x_all))
    steps: list[tuple[np.ndarray, np.ndarray, float]] = []  # (rows, exact q·g, lr)
    for epoch in range(2):
        for s, batch in enumerate(tracker.batches(data, 16, seed=epoch)):
            rows = np.asarray(batch)
            idx = np.array([int(np.flatnonzero((x_all == r).all(1))[0]) for r in rows])
            xb, yb = torch.as_tensor(rows), torch.as_tensor(y_all[idx])
            g = _exact(model, capture, xb, yb)
            with torch.no_grad():
                p = torch.softmax(model(xb).double(), 1)[torch.arange(len(idx)), yb].numpy()
            steps.append((idx, (1 - p)[:, None] * g, 0.3 / len(idx)))
            opt.zero_grad()
            with capture.step(xb, yb, row_keys(batch), learning_rate=0.3, step=epoch * 3 + s):
                F.cross_entropy(model(xb), yb).backward()
            opt.step()
    capture.record_version()
    (whole,) = tracker.batches(data, len(x_all), seed=9)  # every row, through the lineage
    rows = np.asarray(whole)
    idx = np.array([int(np.flatnonzero((x_all == r).all(1))[0]) for r in rows])
    capture.featurise([(torch.as_tensor(rows), torch.as_tensor(y_all[idx]), row_keys(whole))])
    x_test = torch.as_tensor(rng.normal(size=(1, 6)).astype(np.float32))
    event = capture.record_prediction(x_test, label=2, prediction_id="fac-p")
    background.flush()
    background.close()

    # the service rebuilds the same projection from what was stored
    raw = store.query_arrow("SELECT raw FROM events FINAL")["raw"].to_pylist()
    stored = [events_pb2.Event.FromString(r) for r in raw]
    batches = [e.gradient_batch for e in stored if e.HasField("gradient_batch")]
    kinds = [b.kind for b in batches]
    assert kinds.count(events_pb2.GradientBatch.TRAINING_STEP) == 6
    assert kinds.count(events_pb2.GradientBatch.FEATURISATION) == 1
    spec = KroneckerProjection.from_proto(batches[0].projection)
    assert spec == capture.projection
    assert event.projection.projection_id == spec.projection_id

    result = AttributionEngine(store).attribute("fac-p", method="tracin")
    phi_test = spec.project(_exact(model, capture, x_test, torch.tensor([2])))[0]
    for idx, qg, rate in steps:
        np.add.at(expected, idx, rate * (spec.project(qg).astype(float) @ phi_test))
    got = np.zeros(len(x_all))
    for ex, score in zip(result.model.examples, result.scores, strict=True):
        got[ex.sources[0].row] = score
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-6 * np.abs(expected).max())
    assert len(result.model.examples) == len(x_all)
    influence = AttributionEngine(store).attribute("fac-p", method="influence")
    assert np.isfinite(influence.scores).all() and np.abs(influence.scores).max() > 0
