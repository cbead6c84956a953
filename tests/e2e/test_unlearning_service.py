"""Streaming unlearning end to end through `headwater serve`: Forget resolves the target
through lineage, the trainer's listener changes the model, the outcome is on the log."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from conftest import run_headwater
from headwater.producers.capture import LinearCapture
from headwater.producers.publisher import Publisher
from headwater.producers.tracking import Tracker, row_keys
from headwater.producers.tracking.sources import load_csv
from headwater.producers.transports.grpc import GrpcTransport
from headwater.producers.unlearning import LinearModel
from headwater.producers.unlearning.listener import Unlearner, UnlearningListener
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

LAM = 1.0


def _csv(path, x, y):
    cols = [f"f{i}" for i in range(x.shape[1])] + ["label"]
    rows = [",".join(f"{v:.6f}" for v in r) + f",{int(t)}" for r, t in zip(x, y, strict=True)]
    path.write_text(",".join(cols) + "\n" + "\n".join(rows) + "\n")
    return path


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
    model = LinearModel.fit(xs, y, l2=LAM)
    capture = LinearCapture(publisher.publish, "clf", 5)
    capture.set_parameters(model.coef, model.intercept)
    capture.record_version(step=1)
    model_hash = capture.parameter_hash()
    for start in range(0, len(xs), 64):  # gradients keyed by batches of the dataset
        batch = x[start:start + 64]
        capture.capture(np.asarray(batch), y[start:start + 64], row_keys(batch),
                        learning_rate=0.0, featurisation=True)
    capture.record_prediction(xs[0], label=int(y[0]), prediction_id="p0")
    publisher.flush()
    source_b = serve_source_id(serve, "hospital_b.csv")
    return {"publisher": publisher, "capture": capture, "x": x, "xs": xs, "y": y,
            "model": model, "model_hash": model_hash, "source_b": source_b, "n_a": 150, "n_b": 110}


def serve_source_id(serve, name):
    stub = query_pb2_grpc.LineageStub(grpc.insecure_channel(serve.target))
    sources = stub.Sources(query_pb2.SourcesRequest(), timeout=30).sources
    return next(s.source_id for s in sources if s.uri.endswith(name))


def test_forget_a_source_while_training(serve, run):
    channel = grpc.insecure_channel(serve.target)
    unlearning = query_pb2_grpc.UnlearningStub(channel)
    request = query_pb2.ForgetRequest(
        run_id="forget-run", model_id="clf", reason="hospital_b withdrew consent",
        verify_with_retrain=True, target=events_pb2.ForgetTarget(source_ids=[run["source_b"]]))
    response = unlearning.Forget(request, timeout=60)
    via = {a.via: len(a.rows.rows) for a in response.affected}
    assert via["row"] == run["n_b"]  # every training row built from hospital_b
    assert via["aggregation"] == run["n_a"]  # hospital_a rows saw b only through mean/std
    assert unlearning.Forget(request, timeout=60).request_id == response.request_id

    unlearner = Unlearner(run["model"], run["x"], run["y"])
    listener = UnlearningListener(run["publisher"], serve.target, model_id="clf",
                                  dataset=run["x"], capture=run["capture"], apply=unlearner)
    assert listener.keep(np.arange(5)).tolist() == list(range(5))
    (applied,) = listener.poll(force=True)
    assert applied.status == applied.APPLIED and applied.rows_forgotten == run["n_b"]
    forgotten = np.arange(run["n_a"], run["n_a"] + run["n_b"])
    assert listener.forgotten.tolist() == forgotten.tolist()
    assert listener.keep([0, 149, 150, 200]).tolist() == [0, 149]
    v = applied.verification
    assert v.forget_loss_after > v.forget_loss_before and v.parameter_distance > 0
    # the model itself changed, to (nearly) the model retrained without hospital_b
    assert applied.method == events_pb2.NEWTON and v.retrained
    assert 0.9 <= v.gap_closed <= 1.1
    retrained = LinearModel.fit(run["xs"][:run["n_a"]], run["y"][:run["n_a"]], l2=LAM)
    assert np.linalg.norm(unlearner.model.params - retrained.params) <= 0.1 * np.linalg.norm(
        run["model"].params - retrained.params)
    assert applied.new_version == "v2" and applied.previous_version == "v1"
    # the new version carries the unlearned parameters (its hash is theirs, not v1's)
    assert run["capture"].parameter_hash() != run["model_hash"]
    np.testing.assert_array_equal(run["capture"].coef, unlearner.model.coef)
    assert listener.poll(force=True) == []  # nothing new

    states = list(unlearning.Status(query_pb2.UnlearningStatusRequest(
        request_id=response.request_id), timeout=60))
    assert states[-1].state == "applied"
    assert states[-1].applied.verification.forget_loss_after == v.forget_loss_after

    # the auditors' query in docs/sql.md
    done = serve.cli("sql", "SELECT r.request_id, r.reason, r.affected_rows, a.status, a.method, "
                     "a.rows_forgotten, a.forget_loss_before, a.forget_loss_after, "
                     "a.gap_closed, a.new_version FROM forget_requests AS r FINAL "
                     "LEFT JOIN unlearning_applied AS a FINAL ON a.request_id = r.request_id "
                     "WHERE r.model_id = {model:String} ORDER BY r.requested_at",
                     "--param", "model=clf", "--format", "json")
    assert done.returncode == 0, done.stderr
    (audit,) = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert audit["request_id"] == response.request_id and audit["status"] == "APPLIED"
    assert audit["rows_forgotten"] == run["n_b"] and audit["new_version"] == "v2"

    # attribution no longer returns hospital_b rows
    attribution = query_pb2_grpc.AttributionStub(channel)
    groups = attribution.Attribute(query_pb2.AttributeRequest(
        prediction_id="p0", aggregation=query_pb2.BY_SOURCE), timeout=60).groups
    assert run["source_b"] not in [g.key for g in groups]

    # a restarted trainer: knows what is gone, applies nothing again
    again = UnlearningListener(run["publisher"], serve.target, model_id="clf",
                               dataset=run["x"],
                               apply=Unlearner(unlearner.model, run["x"], run["y"]))
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


def test_forget_cli(serve, run):
    def forget(*args: str):
        return run_headwater("forget", "--run", "forget-run", "--model", "clf",
                             "--listen", serve.target, *args)

    ten = ("--source-rows", f"{run['source_b']}:0-4,5,6-9")
    done = forget(*ten, "--reason", "ten rows withdrawn", "--json")
    assert done.returncode == 0, done.stderr
    first = json.loads(done.stdout)
    assert first["removed"] == 10 and first["affected"]["row"] == 10
    assert first["rows"] == 260 and first["affected"]["aggregation"] == 250  # mean/std
    assert first["request_id"].startswith("fr-")

    # nobody is applying it yet: --wait gives up with a message naming the request
    waited = forget(*ten, "--reason", "ten rows withdrawn", "--wait", "--timeout", "2")
    assert waited.returncode != 0 and first["request_id"] in waited.stderr
    assert "not applied within 2 s" in waited.stderr

    unlearner = Unlearner(run["model"], run["x"], run["y"])
    listener = UnlearningListener(run["publisher"], serve.target, model_id="clf",
                                  dataset=run["x"], capture=run["capture"], apply=unlearner)
    (applied,) = listener.poll(force=True)
    assert applied.rows_forgotten == 10
    assert listener.forgotten.tolist() == list(range(run["n_a"], run["n_a"] + 10))

    # the same request again is the same request; --wait now shows the outcome
    shown = forget(*ten, "--reason", "ten rows withdrawn", "--wait")
    assert shown.returncode == 0, shown.stderr
    assert first["request_id"] in shown.stdout and "applied" in shown.stdout
    assert "forget-set loss" in shown.stdout and "v1 -> v2" in shown.stdout

    for args, message in [((), "name what to forget"),
                          (("--source-rows", "nocolon"), "expected ID:ROWS"),
                          (("--rows", "n-1:3-1"), "is not a range"),
                          (("--source", "src-nope"), "unknown source id")]:
        bad = forget(*args)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr)


def test_forget_by_replay_through_the_listener(serve, run, tmp_path):
    """A torch trainer with the checkpoint hook: the request is applied exactly by replay
    (auto, within budget), and the method, its reason and cost are on the log."""
    import torch

    from headwater.producers.checkpoints import Checkpoints
    from headwater.producers.unlearning.recipe import Recipe
    from headwater.producers.unlearning.replay import train_step

    torch.set_num_threads(1)
    xt = torch.tensor(run["xs"], dtype=torch.float32)
    yt = torch.tensor(run["y"]).long()
    recipe = Recipe(weight_decay=1e-3)
    rng = np.random.default_rng(0)
    n_a = run["n_a"]  # hospital_a rows only for 20 steps, then every row
    schedule = [rng.choice(n_a, 16, replace=False) for _ in range(20)] + \
        [rng.choice(len(xt), 16, replace=False) for _ in range(20)]

    def train(gone, directory=None):
        torch.manual_seed(0)
        model = torch.nn.Linear(5, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        hook = Checkpoints(directory, model, opt, every=10, recipe=recipe) \
            if directory else None
        for step, rows in enumerate(schedule):
            rows = rows[~np.isin(rows, gone)]
            if hook:
                hook.before_step(step)
            train_step(model, opt, xt[rows], yt[rows], recipe=recipe)
            if hook:
                hook.after_step(step, rows)
        return model, hook

    model, hook = train(np.zeros(0, np.int64), tmp_path / "ckpt")
    unlearning = query_pb2_grpc.UnlearningStub(grpc.insecure_channel(serve.target))
    response = unlearning.Forget(query_pb2.ForgetRequest(
        run_id="forget-run", model_id="clf", reason="hospital_b withdrew consent",
        target=events_pb2.ForgetTarget(source_ids=[run["source_b"]])), timeout=60)
    unlearner = Unlearner(model, xt, yt, checkpoints=hook, replay_budget=600.0,
                          held_out=(xt[:40], yt[:40]))
    listener = UnlearningListener(run["publisher"], serve.target, model_id="clf",
                                  dataset=run["x"], apply=unlearner)
    (applied,) = listener.poll(force=True)
    assert applied.status == applied.APPLIED and applied.method == events_pb2.REPLAY
    assert applied.method_reason.startswith("replay: ") and "within the budget" in \
        applied.method_reason
    assert applied.steps_replayed == 20 and applied.estimated_replay_steps == 20
    assert applied.checkpoint_uri.endswith("step-20.pt")
    retrained, _ = train(np.arange(n_a, n_a + run["n_b"]))
    for p, q in zip(model.parameters(), retrained.parameters(), strict=True):
        assert torch.equal(p, q)  # exact: the run that never saw hospital_b
    done = serve.cli("sql", "SELECT method, method_reason, steps_replayed, "
                     "estimated_replay_steps, checkpoint_uri FROM unlearning_applied FINAL "
                     "WHERE request_id = {r:String}", "--param",
                     f"r={response.request_id}", "--format", "json")
    assert done.returncode == 0, done.stderr
    (row,) = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert row["method"] == "REPLAY" and row["steps_replayed"] == 20
    assert row["method_reason"] == applied.method_reason
    listener.close()
    # the audit report's erasure log says which method ran, why, and what it cost
    out = tmp_path / "report.json"
    done = serve.cli("audit", "report", "--model", "clf", "--out", str(out))
    assert done.returncode == 0, done.stderr
    (erasure,) = [e for e in json.loads(out.read_text())["erasure_log"]
                  if e["request_id"] == response.request_id]
    (outcome,) = erasure["outcomes"]
    assert outcome["method"] == "REPLAY" and outcome["method_reason"] == applied.method_reason
    assert outcome["steps_replayed"] == 20 and outcome["estimated_replay_steps"] == 20
    assert outcome["verification"]["membership_auc_before"] is not None
