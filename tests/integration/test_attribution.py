"""Attribution: capture -> events -> ClickHouse -> scores, checked against exact maths and
against retraining (never against our own estimates)."""

from __future__ import annotations

import sys

import grpc
import numpy as np
import pytest
import torch

from conftest import REPO
from headwater.errors import AttributionError, NotFound
from headwater.producers.capture import LinearCapture
from headwater.producers.publisher import Publisher
from headwater.producers.tracking import Tracker, row_keys
from headwater.producers.transports.local import LocalTransport
from headwater.query_service.attribution.engine import AttributionEngine
from headwater.stream_processors.sink import EventSink
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

LAM = 1.0


def _fit(x: np.ndarray, y: np.ndarray, lam: float = LAM) -> np.ndarray:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from attribution_lds import fit_logreg

    return fit_logreg(x, y, lam)


@pytest.fixture
def trained(store):
    """A tracked breast-cancer pipeline, a logistic regression trained on it, featurised,
    and two recorded predictions; everything through the real sink into chDB."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    events: list = []
    publisher = Publisher(LocalTransport(EventSink(store, "local")), run_id="attr-test")

    def emit(payload):
        events.append(payload)
        return publisher.publish(payload)

    tracker = Tracker(emit)
    x = tracker.array(data.data[:200])
    x = (x - x.mean(0)) / x.std(0)
    train = x[20:]
    xtr, y = np.asarray(train), data.target[20:200].astype(float)
    theta = _fit(xtr, y)
    capture = LinearCapture(emit, "logreg", xtr.shape[1])
    capture.set_parameters(theta[:-1], theta[-1])
    capture.record_version(step=1)
    capture.capture(xtr, y, row_keys(train), learning_rate=0.0, featurisation=True)
    xte = np.asarray(x[:20])
    capture.record_prediction(xte[0], label=int(data.target[0]), prediction_id="p0")
    capture.record_prediction(xte[1], prediction_id="p1")
    publisher.flush()
    return {"store": store, "xtr": xtr, "y": y, "xte": xte, "theta": theta,
            "labels": data.target[:20], "events": events, "publisher": publisher}


def _by_row(result) -> np.ndarray:
    """Scores ordered by training row (each example here is one row of `train`)."""
    out = np.zeros(len(result.scores))
    out[[e.row for e in result.model.examples]] = result.scores
    return out


def test_influence_equals_exact_formula(trained):
    xtr, y, theta = trained["xtr"], trained["y"], trained["theta"]
    engine = AttributionEngine(trained["store"], damping=LAM)
    scores = _by_row(engine.attribute("p0", method="influence"))
    xb = np.hstack([xtr, np.ones((len(xtr), 1))])
    p = 1 / (1 + np.exp(-(xb @ theta)))
    h = (xb * (p * (1 - p))[:, None]).T @ xb + LAM * np.eye(xb.shape[1])
    s = 2 * y - 1  # margin gradients of each row's own label
    q = 1 - 1 / (1 + np.exp(-(s * (xb @ theta))))
    label = trained["labels"][0]
    test = (2 * label - 1) * np.append(trained["xte"][0], 1.0)
    exact = q * ((xb * s[:, None]) @ np.linalg.solve(h, test))
    np.testing.assert_allclose(scores, exact, rtol=2e-3, atol=1e-6)


def test_sign_convention_matches_leave_one_out_retraining(trained):
    """Positive = including the row raised the explained output: removing a top row moves
    the retrained margin by about -score."""
    xtr, y = trained["xtr"], trained["y"]
    engine = AttributionEngine(trained["store"], damping=LAM)
    result = engine.attribute("p0")
    label = trained["labels"][0]
    test = (2 * label - 1) * np.append(trained["xte"][0], 1.0)
    base = test @ trained["theta"]
    top = result.top(5)
    rest = [(e, float(sc)) for e, sc in zip(result.model.examples, result.scores, strict=True)]
    picked = top + [rest[i] for i in np.random.default_rng(1).choice(len(rest), 25, False)]
    loo = []
    for example, _ in picked:
        keep = np.arange(len(xtr)) != example.row
        loo.append(base - test @ _fit(xtr[keep], y[keep]))  # what including the row did
    scores = np.array([score for _, score in picked])
    assert (np.sign(loo[:5]) == np.sign(scores[:5])).all(), (loo[:5], scores[:5])
    assert np.corrcoef(loo, scores)[0, 1] > 0.9


def test_top_rows_trace_to_source_rows_and_ops(trained):
    result = AttributionEngine(trained["store"]).attribute("p0")
    (example, _), *_ = result.top(3)
    assert len(example.sources) == 1  # the standardisation's mean/std is not "the" row
    assert example.sources[0].row == example.row + 20  # train = x[20:]
    assert len(example.op_ids) >= 3


def test_replayed_events_are_not_counted_twice(trained):
    store = trained["store"]
    before = AttributionEngine(store, damping=LAM).attribute("p0").scores
    replay = EventSink(store, "local")
    from headwater.producers.transports.base import Record

    stored = store.query_arrow("SELECT raw FROM events FINAL")["raw"].to_pylist()
    acks = replay.ingest([Record(value=v) for v in stored])
    assert all(a.accepted for a in acks)
    rows = store.query("SELECT sum(rows) FROM curvature_parts")[0][0]
    assert rows == len(trained["xtr"])
    after = AttributionEngine(store, damping=LAM).attribute("p0").scores
    np.testing.assert_allclose(after, before)


def test_tracin_and_self_influence(store):
    """TracIn sums lr·q·φ·φ' over the steps that used a row; self-influence is largest
    for a flipped label."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = (x[:, 0] > 0).astype(float)
    y[7] = 1 - y[7]  # one mislabelled row
    publisher = Publisher(LocalTransport(EventSink(store, "local")), run_id="tracin")
    tracker = Tracker(publisher.publish)
    data = tracker.array(x)
    capture = LinearCapture(publisher.publish, "sgd", 3, k=16)
    coef, b, lr, step = np.zeros(3), 0.0, 0.5, 0
    steps: list[tuple[np.ndarray, np.ndarray, float]] = []  # (rows, q·φ, per-sample lr)
    for epoch in range(3):
        for batch in tracker.batches(data, 20, seed=epoch):
            rows = np.asarray(batch)
            idx = np.array([int(np.flatnonzero((x == r).all(1))[0]) for r in rows])
            capture.set_parameters(coef, b)
            capture.capture(rows, y[idx], row_keys(batch), learning_rate=lr / len(rows),
                            step=step)
            sign = 2 * y[idx] - 1
            margin = sign * (rows @ coef + b)
            q = 1 - 1 / (1 + np.exp(-margin))
            phi = np.hstack([rows, np.ones((len(rows), 1))]) * sign[:, None]
            steps.append((idx, q[:, None] * phi, lr / len(rows)))
            p = 1 / (1 + np.exp(-(rows @ coef + b)))
            coef = coef - lr * ((p - y[idx]) @ rows) / len(rows)
            b -= lr * float(np.mean(p - y[idx]))
            step += 1
    capture.set_parameters(coef, b)
    event = capture.record_prediction(np.array([1.0, 0.2, -0.3]), label=1, prediction_id="t")
    publisher.flush()
    engine = AttributionEngine(store)
    result = engine.attribute("t", method="tracin")
    # reference: Σ_t lr_t q φ_t · φ' over the steps that used each row (identity projection)
    phi_test = np.frombuffer(event.test_gradients, np.float32).astype(float)
    expected = np.zeros(len(x))
    for idx, qphi, rate in steps:
        np.add.at(expected, idx, rate * (qphi @ phi_test))
    got = np.zeros(len(x))
    for ex, score in zip(result.model.examples, result.scores, strict=True):
        got[ex.sources[0].row] = score
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-7)
    assert len(result.model.examples) == 60  # three epochs of batches: one example per row
    flagged = engine.self_influence("sgd").top(3)
    assert 7 in [e.sources[0].row for e, _ in flagged]


def test_errors_name_what_is_wrong(trained):
    engine = AttributionEngine(trained["store"])
    with pytest.raises(NotFound, match="no prediction with id 'nope'"):
        engine.attribute("nope")
    with pytest.raises(AttributionError, match="method must be one of"):
        engine.attribute("p0", method="shapley")
    with pytest.raises(NotFound, match="no stored gradient rows"):
        engine.model("unknown-model")


def test_torch_capture_matches_per_row_autograd(store):
    from headwater.producers.capture.torch import TorchCapture

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x = torch.randn(5, 4)
    y = torch.tensor([0, 2, 1, 1, 0])
    sent: list = []
    capture = TorchCapture(sent.append, model, "mlp", k=1000)  # 67 params <= k: identity
    phi, weights, f = capture.features(x, y)
    for i in range(5):
        model.zero_grad()
        out = model(x[i:i + 1])[0]
        others = torch.cat([out[:y[i]], out[y[i] + 1:]])
        margin = out[y[i]] - torch.logsumexp(others, 0)
        margin.backward()
        manual = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        np.testing.assert_allclose(phi[i], manual.numpy(), rtol=1e-4, atol=1e-6)
        p_y = torch.softmax(out, 0)[y[i]].item()
        assert weights.q[i] == pytest.approx(1 - p_y, rel=1e-4)
        assert weights.w[i] == pytest.approx(p_y * (1 - p_y), rel=1e-4)
    last = TorchCapture(sent.append, model, "mlp", parameters="last_layer", k=8, seed=3)
    assert last.names == ["2.weight", "2.bias"]
    phi_last, _, _ = last.features(x, y)
    # k is a budget, not an exact size: the 3 logit rows stay whole and take 8 // 3 = 2 of
    # the 9 input columns (8 + bias), so 6 values (plan_factors; docs/attribution.md)
    assert phi_last.shape == (5, 6)
    with pytest.raises(ValueError, match="no trainable parameter or module named 'head'"):
        TorchCapture(sent.append, model, "mlp", parameters=["head"])


def test_attribution_over_grpc(trained, serve):
    """The same store contents through `headwater serve`: rows, groups, errors."""
    publisher = Publisher(__import__("headwater.producers.transports.grpc",
                                     fromlist=["GrpcTransport"]).GrpcTransport(serve.target),
                          run_id="attr-test")
    for payload in trained["events"]:
        publisher.publish(payload)
    publisher.flush()
    stub = query_pb2_grpc.AttributionStub(grpc.insecure_channel(serve.target))
    rows = stub.Attribute(query_pb2.AttributeRequest(prediction_id="p0", top_k=5), timeout=60)
    assert len(rows.rows) == 5 and rows.method == "influence"
    assert rows.rows[0].sources[0].row == rows.rows[0].row + 20
    assert [o.op_name for o in rows.rows[0].ops][-1] == "ndarray.__getitem__"
    by_source = stub.Attribute(query_pb2.AttributeRequest(
        prediction_id="p0", aggregation=query_pb2.BY_SOURCE), timeout=60)
    assert by_source.method == "influence" and by_source.groups
    # featurisation rows only: tracin would be all zeros, so it is refused, naming the fix
    with pytest.raises(grpc.RpcError) as err:
        stub.Attribute(query_pb2.AttributeRequest(prediction_id="p0",
                                                  method=query_pb2.TRACIN), timeout=60)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "training-step gradients" in err.value.details()
    batch = stub.AttributeBatch(query_pb2.AttributeBatchRequest(requests=[
        query_pb2.AttributeRequest(prediction_id="p0"),
        query_pb2.AttributeRequest(prediction_id="p1", aggregation=query_pb2.BY_OP)]),
        timeout=60)
    assert len(batch.responses) == 2 and batch.responses[1].groups
    value = stub.Value(query_pb2.ValueRequest(prediction_id="p0", k_neighbours=5, top_k=3),
                       timeout=60)
    assert len(value.rows) == 3
    for request, code in (
        (query_pb2.AttributeRequest(prediction_id="missing"), grpc.StatusCode.NOT_FOUND),
        (query_pb2.AttributeRequest(raw_features=query_pb2.RawFeatures(model_id="nope",
                                                                       features=b"\0" * 4)),
         grpc.StatusCode.NOT_FOUND),
        (query_pb2.AttributeRequest(raw_features=query_pb2.RawFeatures(model_id="logreg")),
         grpc.StatusCode.INVALID_ARGUMENT),
        (query_pb2.AttributeRequest(test_gradient=query_pb2.TestGradient(
            model_id="logreg", dim=3, dtype=2, gradient=b"\0" * 5)),
         grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stub.Attribute(request, timeout=60)
        assert err.value.code() == code, err.value.details()


def test_raw_features_for_a_linear_model(trained):
    """∇f = [x, 1] needs no parameters: raw features of p0's input give p0's scores up to the
    sign of its label's margin (raw features explain the logit of class 1)."""
    from headwater.query_service.attribution.raw_features import raw_features_gradient

    store = trained["store"]
    x0 = trained["xte"][0].astype(np.float32)
    msg = query_pb2.RawFeatures(model_id="logreg", features=x0.tobytes(), shape=[1, len(x0)])
    model_id, test = raw_features_gradient(store, msg)
    engine = AttributionEngine(store, damping=LAM)
    raw = _by_row(engine.attribute(model_id=model_id, test=test))
    recorded = _by_row(engine.attribute("p0"))
    sign = 1.0 if trained["labels"][0] == 1 else -1.0
    np.testing.assert_allclose(raw, sign * recorded, rtol=1e-4, atol=1e-6 * np.abs(raw).max())
    for bad, message in (
            (query_pb2.RawFeatures(model_id="logreg", features=x0[:5].tobytes()),
             "has 5 features; model 'logreg' takes 30"),
            (query_pb2.RawFeatures(model_id="logreg", features=b"\0" * 6), "6 bytes"),
            (query_pb2.RawFeatures(model_id="logreg", features=x0.tobytes(), shape=[2, 15]),
             "must be one row"),
            (query_pb2.RawFeatures(model_id="nope", features=x0.tobytes()),
             "no model 'nope' recorded")):
        with pytest.raises(AttributionError, match=message):
            raw_features_gradient(store, bad)


def test_a_version_recorded_without_a_step_follows_the_latest_step():
    """Unlearning records a new version between steps: it belongs after them, not at 0."""
    sent: list = []
    capture = LinearCapture(sent.append, "m", 2)
    capture.record_version(step=3)
    keys = events_pb2.RowKeys(node_ids=["n"], rows=[0, 1])
    capture.capture(np.ones((2, 2)), np.array([0.0, 1.0]), keys, learning_rate=0.1,
                    step=7)
    capture.record_version(config={"unlearned": "fr-1"})
    versions = [e for e in sent if isinstance(e, events_pb2.ModelVersionRecorded)]
    assert [(v.version, v.step, v.parent_version) for v in versions] == [
        ("v1", 3, ""), ("v2", 7, "v1")]
