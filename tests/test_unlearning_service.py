"""Streaming unlearning end to end through `headwater serve`: Forget resolves the target
through lineage, the trainer's listener changes the model, the outcome is on the log."""

from __future__ import annotations

import sys

import grpc
import numpy as np
import pytest

from conftest import REPO
from headwater.producers.capture import LinearCapture
from headwater.producers.publisher import Publisher
from headwater.producers.sources import load_csv
from headwater.producers.tracking import Tracker, row_keys
from headwater.producers.transports.grpc import GrpcTransport
from headwater.producers.unlearning_listener import Outcome, UnlearningListener
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

sys.path.insert(0, str(REPO / "benchmarks"))
from attribution_lds import fit_logreg  # noqa: E402

LAM = 1.0


def _csv(path, x, y):
    cols = [f"f{i}" for i in range(x.shape[1])] + ["label"]
    rows = [",".join(f"{v:.6f}" for v in r) + f",{int(t)}" for r, t in zip(x, y, strict=True)]
    path.write_text(",".join(cols) + "\n" + "\n".join(rows) + "\n")
    return path


def _loss(theta, x, y):
    m = (2 * y - 1) * (np.hstack([x, np.ones((len(x), 1))]) @ theta)
    return float(np.mean(np.logaddexp(0, -m)))


def newton_apply(state, x, y):
    """The test's apply callback: one Newton step on the retained objective (the SDK's
    `unlearn` does the same with verification; here the maths is spelt out)."""

    def apply(rows: np.ndarray, request) -> Outcome:
        keep = np.setdiff1d(np.arange(len(x)), np.union1d(rows, state["gone"]))
        theta = state["theta"]
        xb = np.hstack([x, np.ones((len(x), 1))])
        p = 1 / (1 + np.exp(-(xb @ theta)))
        g_forget = xb[rows].T @ (p[rows] - y[rows])
        h = (xb[keep] * (p[keep] * (1 - p[keep]))[:, None]).T @ xb[keep] + LAM * np.eye(len(theta))
        new = theta + np.linalg.solve(h, g_forget)
        v = events_pb2.Verification(forget_loss_before=_loss(theta, x[rows], y[rows]),
                                    forget_loss_after=_loss(new, x[rows], y[rows]),
                                    parameter_distance=float(np.linalg.norm(new - theta)))
        state["theta"], state["gone"] = new, np.union1d(state["gone"], rows)
        return Outcome(v, events_pb2.NEWTON)

    return apply


@pytest.fixture
def run(serve, tmp_path):
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    xa, ya = data.data[:150, :5], data.target[:150]
    xb, yb = data.data[150:260, :5], data.target[150:260]
    publisher = Publisher(GrpcTransport(serve.target), run_id="forget-run")
    tracker = Tracker(publisher.publish)
    a = load_csv(tracker, _csv(tmp_path / "hospital_a.csv", xa, ya), columns=[
        f"f{i}" for i in range(5)])
    b = load_csv(tracker, _csv(tmp_path / "hospital_b.csv", xb, yb), columns=[
        f"f{i}" for i in range(5)])
    x = np.concatenate([a, b])
    x = (x - x.mean(0)) / x.std(0)
    y = np.concatenate([ya, yb]).astype(float)
    xs = np.asarray(x)
    theta = fit_logreg(xs, y, LAM)
    capture = LinearCapture(publisher.publish, "clf", 5)
    capture.set_parameters(theta[:-1], theta[-1])
    capture.record_version(step=1)
    for start in range(0, len(xs), 64):  # gradients keyed by batches of the dataset
        batch = x[start:start + 64]
        capture.capture(np.asarray(batch), y[start:start + 64], row_keys(batch),
                        learning_rate=0.0, featurisation=True)
    capture.record_prediction(xs[0], label=int(y[0]), prediction_id="p0")
    publisher.flush()
    source_b = serve_source_id(serve, "hospital_b.csv")
    return {"publisher": publisher, "capture": capture, "x": x, "xs": xs, "y": y,
            "theta": theta, "source_b": source_b, "n_a": 150, "n_b": 110}


def serve_source_id(serve, name):
    stub = query_pb2_grpc.LineageStub(grpc.insecure_channel(serve.target))
    sources = stub.Sources(query_pb2.SourcesRequest(), timeout=30).sources
    return next(s.source_id for s in sources if s.uri.endswith(name))


def test_forget_a_source_while_training(serve, run):
    channel = grpc.insecure_channel(serve.target)
    unlearning = query_pb2_grpc.UnlearningStub(channel)
    request = query_pb2.ForgetRequest(
        run_id="forget-run", model_id="clf", reason="hospital_b withdrew consent",
        target=events_pb2.ForgetTarget(source_ids=[run["source_b"]]))
    response = unlearning.Forget(request, timeout=60)
    via = {a.via: len(a.rows.rows) for a in response.affected}
    assert via["row"] == run["n_b"]  # every training row built from hospital_b
    assert via["aggregation"] == run["n_a"]  # hospital_a rows saw b only through mean/std
    assert unlearning.Forget(request, timeout=60).request_id == response.request_id

    state = {"theta": run["theta"].copy(), "gone": np.zeros(0, dtype=np.int64)}
    listener = UnlearningListener(run["publisher"], serve.target, model_id="clf",
                                  dataset=run["x"], capture=run["capture"],
                                  apply=newton_apply(state, run["xs"], run["y"]))
    assert listener.keep(np.arange(5)).tolist() == list(range(5))
    (applied,) = listener.poll(force=True)
    assert applied.status == applied.APPLIED and applied.rows_forgotten == run["n_b"]
    forgotten = np.arange(run["n_a"], run["n_a"] + run["n_b"])
    assert listener.forgotten.tolist() == forgotten.tolist()
    assert listener.keep([0, 149, 150, 200]).tolist() == [0, 149]
    v = applied.verification
    assert v.forget_loss_after > v.forget_loss_before and v.parameter_distance > 0
    assert applied.new_version == "v2" and applied.previous_version == "v1"
    assert listener.poll(force=True) == []  # nothing new

    states = list(unlearning.Status(query_pb2.UnlearningStatusRequest(
        request_id=response.request_id), timeout=60))
    assert states[-1].state == "applied"
    assert states[-1].applied.verification.forget_loss_after == v.forget_loss_after

    # attribution no longer returns hospital_b rows
    attribution = query_pb2_grpc.AttributionStub(channel)
    groups = attribution.Attribute(query_pb2.AttributeRequest(
        prediction_id="p0", aggregation=query_pb2.BY_SOURCE), timeout=60).groups
    assert run["source_b"] not in [g.key for g in groups]

    # a restarted trainer: knows what is gone, applies nothing again
    again = UnlearningListener(run["publisher"], serve.target, model_id="clf",
                               dataset=run["x"], apply=newton_apply(state, run["xs"], run["y"]))
    assert again.forgotten.tolist() == forgotten.tolist()
    assert again.poll(force=True) == []


def test_forget_rejects_bad_targets(serve, run):
    unlearning = query_pb2_grpc.UnlearningStub(grpc.insecure_channel(serve.target))
    cases = [
        (query_pb2.ForgetRequest(run_id="forget-run", model_id="clf"), "target names no"),
        (query_pb2.ForgetRequest(run_id="forget-run", model_id="clf", target=events_pb2.
                                 ForgetTarget(source_ids=["src-nope"])), "unknown source id"),
        (query_pb2.ForgetRequest(model_id="clf", target=events_pb2.ForgetTarget(
            source_ids=[run["source_b"]])), "run_id is empty"),
    ]
    for request, message in cases:
        with pytest.raises(grpc.RpcError) as err:
            unlearning.Forget(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        list(unlearning.Status(query_pb2.UnlearningStatusRequest(request_id="fr-x"),
                               timeout=30))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
