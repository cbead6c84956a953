"""Runs kept apart (issue 24, item 1): two training runs that share a model id, the source
file (same content, same source id) and even a prediction id, published to one
`headwater serve`. Attribution of one run's prediction, a forget for one run and lineage
queries scoped to a run must not see the other run — through the SDK, gRPC and the CLI."""

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
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

N = 120  # rows of the shared source file
VERSIONS = 2  # model versions per run
KEYS = 2 * VERSIONS  # training-row keys per source row in a run: a batch node per pass
COLUMNS = [f"f{i}" for i in range(4)]


def _csv(path):
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x, y = data.data[:N, :4], data.target[:N]
    rows = [",".join(f"{v:.6f}" for v in r) + f",{int(t)}" for r, t in zip(x, y, strict=True)]
    path.write_text(",".join([*COLUMNS, "label"]) + "\n" + "\n".join(rows) + "\n")
    return path, y.astype(float)


class Run:
    """One run: the shared CSV, normalised, and a linear model "clf" (see `version`)."""

    def __init__(self, target, path, y, run_id, *, l2):
        self.publisher = Publisher(GrpcTransport(target), run_id=run_id)
        self.tracker = Tracker(self.publisher.publish)
        self.x = load_csv(self.tracker, path, columns=COLUMNS)
        self.x = (self.x - self.x.mean(0)) / self.x.std(0)
        self.xs, self.y, self.l2 = np.asarray(self.x), y, l2
        self.capture = LinearCapture(self.publisher.publish, "clf", len(COLUMNS))
        self.versions = 0

    def version(self):
        """A new version (v1, v2, ...): training-step gradients of every row in batches of
        40 (TracIn), then the version's featurisation gradients (influence)."""
        self.versions += 1
        v = self.versions
        model = LinearModel.fit(self.xs, self.y, l2=self.l2 * v)
        self.capture.set_parameters(model.coef, model.intercept)
        self.capture.record_version(step=v)
        for featurisation in (False, True):
            for start in range(0, N, 40):
                batch = self.x[start:start + 40]
                self.capture.capture(np.asarray(batch), self.y[start:start + 40],
                                     row_keys(batch), learning_rate=0.1, step=v,
                                     featurisation=featurisation)

    def predict(self, prediction_id):
        self.capture.record_prediction(self.xs[3], label=int(self.y[3]),
                                       prediction_id=prediction_id)
        self.publisher.flush()


def publish_run(target, path, y, run_id, *, l2, versions=VERSIONS, shared_prediction=True):
    """One run of `versions` versions with its predictions (p-RUN, p-shared) at the last;
    returns the training node of the run's featurisation rows (its normalised data)."""
    run = Run(target, path, y, run_id, l2=l2)
    with run.publisher as publisher:
        tracker, capture, xs, x = run.tracker, run.capture, run.xs, run.x
        for _ in range(versions):
            run.version()
        capture.record_prediction(xs[3], label=int(y[3]), prediction_id=f"p-{run_id}")
        if shared_prediction:
            capture.record_prediction(xs[3], label=int(y[3]), prediction_id="p-shared")
        publisher.flush()
        return tracker.node_of(x)


def _attribute(stub, prediction_id, run_id="", *, method=query_pb2.INFLUENCE,
               aggregation=query_pb2.BY_ROW):
    scope = {"run_id": run_id} if run_id else {}
    response = stub.Attribute(query_pb2.AttributeRequest(
        prediction_id=prediction_id, method=method, aggregation=aggregation, top_k=10_000,
        **scope), timeout=60)
    if aggregation == query_pb2.BY_ROW:
        return {(tuple((s.source_id, s.row) for s in r.sources)): r.score
                for r in response.rows}, len(response.rows)
    return {g.key: (g.score, g.rows) for g in response.groups}, len(response.groups)


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(np.asarray(a[k], float), np.asarray(b[k], float),
                                   rtol=1e-6, atol=1e-9)


def source_id(target):
    stub = query_pb2_grpc.LineageStub(grpc.insecure_channel(target))
    (source,) = stub.Sources(query_pb2.SourcesRequest(), timeout=30).sources
    return source.source_id


def test_attribution_of_one_run_ignores_another_run_with_the_same_ids(serve, tmp_path):
    path, y = _csv(tmp_path / "shared.csv")
    stub = query_pb2_grpc.AttributionStub(grpc.insecure_channel(serve.target))
    publish_run(serve.target, path, y, "run-a", l2=1.0)
    alone = {}
    for method in (query_pb2.INFLUENCE, query_pb2.TRACIN):
        for aggregation in (query_pb2.BY_ROW, query_pb2.BY_SOURCE):
            alone[method, aggregation] = _attribute(stub, "p-run-a", method=method,
                                                    aggregation=aggregation)
    assert alone[query_pb2.INFLUENCE, query_pb2.BY_ROW][1] == N
    (source_score, source_rows), = alone[query_pb2.TRACIN, query_pb2.BY_SOURCE][0].values()
    assert source_rows == N and source_score != 0

    # a second run: same model id, same file (same source id), same versions' names,
    # another model, and the same prediction id "p-shared"
    publish_run(serve.target, path, y, "run-b", l2=3.0)
    for key, (scores, count) in alone.items():
        again, again_count = _attribute(stub, "p-run-a", method=key[0], aggregation=key[1])
        assert again_count == count, (key, count, again_count)
        _same(again, scores)
        scoped, _ = _attribute(stub, "p-run-a", "run-a", method=key[0], aggregation=key[1])
        _same(scoped, scores)
        # the shared prediction id, named with its run, is that run's prediction
        shared, _ = _attribute(stub, "p-shared", "run-a", method=key[0], aggregation=key[1])
        _same(shared, scores)

    # run B's own answer is its own: N rows, not 2N, and other scores than run A's
    b_rows, b_count = _attribute(stub, "p-run-b")
    assert b_count == N
    b_shared, _ = _attribute(stub, "p-shared", "run-b")
    _same(b_shared, b_rows)
    assert b_rows != alone[query_pb2.INFLUENCE, query_pb2.BY_ROW][0]

    # a prediction id in two runs without a run: refused, naming both runs
    with pytest.raises(grpc.RpcError) as err:
        stub.Attribute(query_pb2.AttributeRequest(prediction_id="p-shared"), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "run-a" in err.value.details() and "run-b" in err.value.details()
    # a prediction named with a run it is not in
    with pytest.raises(grpc.RpcError) as err:
        stub.Attribute(query_pb2.AttributeRequest(prediction_id="p-run-a", run_id="run-b"),
                       timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    # the CLI: --run picks the run; by source the score is run A's alone, not 2x
    done = run_headwater("attribute", "p-shared", "--run", "run-a", "--by", "source",
                         "--method", "tracin", "--json", "--listen", serve.target)
    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(x) for x in done.stdout.splitlines() if x.strip()]
    assert line["rows"] == N
    np.testing.assert_allclose(line["score"], source_score, rtol=1e-6)
    ambiguous = run_headwater("attribute", "p-shared", "--listen", serve.target)
    assert ambiguous.returncode != 0 and "--run" in ambiguous.stderr
    assert "--run" in run_headwater("attribute", "--help").stdout


def test_tracin_counts_only_the_versions_on_the_predictions_lineage(serve, tmp_path):
    """A prediction made at v1 is not explained by v2's training steps, made after it."""
    path, y = _csv(tmp_path / "shared.csv")
    stub = query_pb2_grpc.AttributionStub(grpc.insecure_channel(serve.target))
    run = Run(serve.target, path, y, "run-a", l2=1.0)
    run.version()
    run.predict("p-at-v1")
    before = {agg: _attribute(stub, "p-at-v1", method=query_pb2.TRACIN, aggregation=agg)
              for agg in (query_pb2.BY_ROW, query_pb2.BY_SOURCE)}
    run.version()
    run.predict("p-at-v2")
    for agg, (scores, count) in before.items():
        again, again_count = _attribute(stub, "p-at-v1", method=query_pb2.TRACIN,
                                        aggregation=agg)
        assert again_count == count
        _same(again, scores)
    # the later prediction's lineage holds both versions: v1's steps and v2's
    (at_v1, _), = before[query_pb2.BY_SOURCE][0].values()
    (at_v2, _), = _attribute(stub, "p-at-v2", method=query_pb2.TRACIN,
                             aggregation=query_pb2.BY_SOURCE)[0].values()
    assert not np.isclose(at_v1, at_v2)
    run.publisher.close()


def test_forget_in_one_run_leaves_the_other_run_alone(serve, tmp_path):
    path, y = _csv(tmp_path / "shared.csv")
    publish_run(serve.target, path, y, "run-a", l2=1.0, shared_prediction=False)
    node_b = publish_run(serve.target, path, y, "run-b", l2=3.0, shared_prediction=False)
    channel = grpc.insecure_channel(serve.target)
    attribution = query_pb2_grpc.AttributionStub(channel)
    before_b, count_b = _attribute(attribution, "p-run-b", aggregation=query_pb2.BY_SOURCE)
    src = source_id(serve.target)

    unlearning = query_pb2_grpc.UnlearningStub(channel)
    response = unlearning.Forget(query_pb2.ForgetRequest(
        run_id="run-a", model_id="clf", reason="withdrawn",
        target=events_pb2.ForgetTarget(source_rows=[events_pb2.SourceRows(
            source_id=src, rows=list(range(10)))])), timeout=60)
    via = {a.via: len(a.rows.rows) for a in response.affected}
    assert via["row"] == 10 * KEYS  # run A's keys of the ten rows, not run B's
    assert via["aggregation"] == (N - 10) * KEYS  # through run A's own mean/std
    assert response.rows == N * KEYS
    nodes = {n for a in response.affected for n in a.rows.node_ids}
    assert node_b not in nodes

    # run B's listener has nothing to do; run A's has the request
    pending_b = unlearning.Pending(query_pb2.PendingRequest(run_id="run-b", model_id="clf",
                                                            node_ids=[node_b]), timeout=30)
    assert list(pending_b.requests) == []
    # run B's attribution is unchanged (run A's tombstones are not run B's rows)
    after_b, _ = _attribute(attribution, "p-run-b", aggregation=query_pb2.BY_SOURCE)
    _same(after_b, before_b)
    after_a, _ = _attribute(attribution, "p-run-a")
    assert len(after_a) == N - 10

    # the CLI: forget resolves in the named run, and says so
    done = run_headwater("forget", "--run", "run-b", "--model", "clf", "--source-rows",
                         f"{src}:0-4", "--json", "--listen", serve.target)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["affected"]["row"] == 5 * KEYS and shown["rows"] == N * KEYS
    # a run that has not trained the model: recorded (its trainer keeps the rows out of the
    # training to come), and never resolved in another run's training rows
    done = run_headwater("forget", "--run", "run-c", "--model", "clf", "--source-rows",
                         f"{src}:0-4", "--json", "--listen", serve.target)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == 0


def test_lineage_scoped_to_a_run(serve, tmp_path):
    path, y = _csv(tmp_path / "shared.csv")
    node_a = publish_run(serve.target, path, y, "run-a", l2=1.0, shared_prediction=False)
    node_b = publish_run(serve.target, path, y, "run-b", l2=3.0, shared_prediction=False)
    stub = query_pb2_grpc.LineageStub(grpc.insecure_channel(serve.target))
    traced = stub.TraceRows(query_pb2.TraceRowsRequest(
        run_id="run-a", rows=events_pb2.RowKeys(node_ids=[node_a], rows=[0, 1])), timeout=30)
    assert [t.row for t in traced.traces] == [0, 1]
    with pytest.raises(grpc.RpcError) as err:
        stub.TraceRows(query_pb2.TraceRowsRequest(
            run_id="run-a", rows=events_pb2.RowKeys(node_ids=[node_b], rows=[0])), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "run-b" in err.value.details()
    # the shared source node belongs to every run that registered it
    src = source_id(serve.target)
    assert stub.DescribeNode(query_pb2.NodeRequest(node_id=src, run_id="run-b"),
                             timeout=30).node_id == src

    def cli(*args):
        return run_headwater("lineage", *args, "--listen", serve.target)

    assert cli("trace", node_a, "0", "--run", "run-a").returncode == 0
    wrong = cli("trace", node_b, "0", "--run", "run-a")
    assert wrong.returncode != 0 and "run-b" in wrong.stderr
    for command in ("trace", "ops", "describe"):
        assert "--run" in cli(command, "--help").stdout
    wrong = cli("describe", node_b, "--run", "run-a")
    assert wrong.returncode != 0 and "run-b" in wrong.stderr
