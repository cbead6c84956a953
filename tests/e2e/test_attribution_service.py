"""Attribution through `headwater serve` as a user meets it: the default damping is the L2
recorded with the version, every row's score streams (AttributeAll, no top_k cap), top
lists come as most helpful / most harmful, tracin without training steps is refused
naming what to capture, and the CLI's --damping / --method / --versions / --all."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import run_headwater
from headwater.producers.capture import LinearCapture
from headwater.producers.publisher import Publisher
from headwater.producers.tracking import Tracker, row_keys
from headwater.producers.tracking.sources import load_csv
from headwater.producers.transports.grpc import GrpcTransport
from headwater.producers.unlearning import LinearModel
from headwater.query_service.server.auth import Role, roles_for
from headwater.query_service.services.attribution import CHUNK_ROWS
from headwater.v1 import query_pb2, query_pb2_grpc

N = CHUNK_ROWS + 300  # more rows than one chunk
L2 = 3.0


@pytest.fixture
def published(serve, tmp_path):
    """A logistic regression on N synthetic rows of a CSV source: its L2 recorded with the
    version, featurisation gradients only (no training steps), one prediction."""
    rng = np.random.default_rng(0)
    x_raw = np.round(rng.normal(size=(N, 4)), 6)
    y = (x_raw @ np.array([1.0, -2.0, 0.5, 0.0]) + rng.normal(size=N) > 0).astype(float)
    path = tmp_path / "rows.csv"
    path.write_text("a,b,c,d\n" + "\n".join(",".join(f"{v:.6f}" for v in r) for r in x_raw)
                    + "\n")
    with Publisher(GrpcTransport(serve.target), run_id="attr-e2e") as publisher:
        tracker = Tracker(publisher.publish)
        x = load_csv(tracker, path, columns=["a", "b", "c", "d"]) * 1.0
        model = LinearModel.fit(np.asarray(x), y, l2=L2)
        capture = LinearCapture(publisher.publish, "clf", 4)
        capture.set_parameters(model.coef, model.intercept)
        capture.record_version(step=1, l2_penalty=L2)
        capture.capture(np.asarray(x), y, row_keys(x), learning_rate=0.0, featurisation=True)
        capture.record_prediction(x_raw[0], label=int(y[0]), prediction_id="p0")
        publisher.flush()
    return query_pb2_grpc.AttributionStub(grpc.insecure_channel(serve.target))


def _all(stub, **fields) -> tuple[dict[int, float], list]:
    chunks = list(stub.AttributeAll(query_pb2.AttributeRequest(prediction_id="p0", **fields),
                                    timeout=60))
    return {r.row: r.score for c in chunks for r in c.rows}, chunks


def test_default_damping_all_scores_and_signed_lists(published):
    stub = published
    top = stub.Attribute(query_pb2.AttributeRequest(prediction_id="p0", top_k=20), timeout=60)
    assert top.method == "influence"
    assert top.damping == L2 and top.damping_source == "recorded l2"
    scores, chunks = _all(stub)
    assert len(chunks) == 2 and {c.total for c in chunks} == {N} and len(scores) == N
    assert sorted(scores) == list(range(N))
    assert all(r.sources[0].row == r.row and r.sources[0].uri.endswith("rows.csv")
               and r.ops[0].op_name for c in chunks for r in c.rows)
    ranked = sorted(scores.values())
    assert [r.score for r in top.helpful] == pytest.approx(ranked[::-1][:20])
    assert [r.score for r in top.harmful] == pytest.approx(ranked[:20])
    assert all(r.score > 0 for r in top.helpful) and all(r.score < 0 for r in top.harmful)
    # a damping in the request wins over the recorded one, and changes the scores
    other, _ = _all(stub, damping=100 * L2)
    assert other.keys() == scores.keys() and other != scores
    # by source: one group holding every row
    (chunk,) = stub.AttributeAll(query_pb2.AttributeRequest(
        prediction_id="p0", aggregation=query_pb2.BY_SOURCE), timeout=60)
    (group,) = chunk.groups
    assert group.rows == N and group.score == pytest.approx(sum(scores.values()), rel=1e-6)


def test_tracin_without_training_steps_is_refused_naming_what_to_capture(published):
    for call in (published.Attribute, lambda r, timeout: list(published.AttributeAll(
            r, timeout=timeout))):
        with pytest.raises(grpc.RpcError) as err:
            call(query_pb2.AttributeRequest(prediction_id="p0", method=query_pb2.TRACIN),
                 timeout=60)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "training-step" in err.value.details()
        assert "learning_rate" in err.value.details()
    # a prediction that does not exist; the largest `versions` is just "all of them"
    with pytest.raises(grpc.RpcError) as err:
        list(published.AttributeAll(query_pb2.AttributeRequest(prediction_id="missing"),
                                    timeout=60))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    widest = published.Attribute(query_pb2.AttributeRequest(
        prediction_id="p0", versions=2**32 - 1, top_k=3), timeout=60)
    assert widest.model_version == "v1" and len(widest.helpful) == 3


@pytest.mark.parametrize("damping", [-1.0, float("nan"), float("inf")])
def test_bad_damping_is_refused_naming_it(published, damping):
    with pytest.raises(grpc.RpcError) as err:
        published.Attribute(query_pb2.AttributeRequest(prediction_id="p0", damping=damping),
                            timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "damping" in err.value.details()


def test_every_score_is_for_readers_not_for_producers():
    roles = roles_for("/headwater.v1.Attribution/AttributeAll")
    assert Role.READER in roles and Role.PRODUCER not in roles
    assert Role.UNLEARNER not in roles


def test_cli_flags_and_parquet_export(published, serve, tmp_path):
    path = tmp_path / "scores.parquet"
    done = run_headwater("attribute", "p0", "--all", str(path), "--listen", serve.target)
    assert done.returncode == 0, done.stderr
    table = pq.read_table(path)
    assert table.num_rows == N and set(table.column_names) >= {"node_id", "row", "score",
                                                              "source_id", "ops"}
    scores, _ = _all(published)
    got = dict(zip(table["row"].to_pylist(), table["score"].to_pylist(), strict=True))
    assert got == pytest.approx(scores)

    shown = run_headwater("attribute", "p0", "--top-k", "3", "--damping", "7.5",
                          "--versions", "1", "--listen", serve.target)
    assert shown.returncode == 0, shown.stderr
    assert "damping 7.5 (request)" in shown.stdout
    assert "most helpful" in shown.stdout and "most harmful" in shown.stdout
    assert "raised" in shown.stdout  # the sign is explained
    lines = [json.loads(x) for x in run_headwater(
        "attribute", "p0", "--top-k", "3", "--json", "--listen", serve.target
    ).stdout.splitlines() if x.strip()]
    assert [x["list"] for x in lines] == ["most helpful"] * 3 + ["most harmful"] * 3
    refused = run_headwater("attribute", "p0", "--method", "tracin", "--listen", serve.target)
    assert refused.returncode != 0 and "training-step" in refused.stderr
    assert run_headwater("attribute", "p0", "--damping", "-1").returncode == 2
