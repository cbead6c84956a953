"""Lineage through `headwater serve`: ops recorded as events, rows traced over gRPC."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from conftest import Serve, run_headwater
from headwater.producers import GrpcTransport, Publisher, rowmap
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc


def _op(op_id: str, name: str, inputs: list[str], output: str, n_out: int,
        segments: list[events_pb2.RowSegment], understood: bool = True) -> events_pb2.OpRecorded:
    return events_pb2.OpRecorded(
        op_id=op_id, op_name=name, input_node_ids=inputs, output_node_id=output,
        output_shape=[n_out, 3], understood=understood, params_json=json.dumps({}),
        row_map=events_pb2.RowMap(output_rows=n_out, segments=segments),
        granularity=events_pb2.OpRecorded.EVERY_OP)


@pytest.fixture
def pipeline(serve: Serve) -> tuple[Serve, np.ndarray]:
    """a.csv (6 rows) + b.csv (4 rows) -> concat -> shuffle -> first 7 rows (train);
    plus a mean over the concat broadcast into a normalised copy."""
    perm = np.random.default_rng(3).permutation(10)
    with Publisher(GrpcTransport(serve.target), run_id="lin") as pub:
        for name, rows in (("a", 6), ("b", 4)):
            pub.publish(events_pb2.SourceRegistered(
                source_id=f"src-{name}", uri=f"file:///data/{name}.csv",
                content_sha256=f"{rows:064x}", row_count=rows, format="csv",
                schema=[events_pb2.Column(name=c, dtype="float64") for c in "xyz"]))
        pub.publish(_op("op-concat", "numpy.concatenate", ["src-a", "src-b"], "n-cat", 10,
                        [rowmap.identity(0, 6), rowmap.identity(1, 4, out_start=6)]))
        pub.publish(_op("op-shuffle", "ndarray.__getitem__", ["n-cat"], "n-shuf", 10,
                        rowmap.from_indices(0, perm)))
        pub.publish(_op("op-train", "ndarray.__getitem__", ["n-shuf"], "n-train", 7,
                        rowmap.from_indices(0, np.arange(7))))
        pub.publish(_op("op-mean", "numpy.mean", ["n-cat"], "n-mean", 1,
                        [rowmap.all_rows(0, 1, "reduction over rows")]))
        pub.publish(_op("op-norm", "numpy.subtract", ["n-cat", "n-mean"], "n-norm", 10,
                        [rowmap.identity(0, 10),
                         events_pb2.RowSegment(input=1, out_start=0, length=10,
                                               range=events_pb2.RowRange(start=0, step=0))]))
    return serve, perm


def _stub(serve: Serve) -> query_pb2_grpc.LineageStub:
    return query_pb2_grpc.LineageStub(grpc.insecure_channel(serve.target))


def _expected(perm: np.ndarray, row: int) -> tuple[str, str, int]:
    cat_row = int(perm[row])
    return ("src-a", "file:///data/a.csv", cat_row) if cat_row < 6 else \
        ("src-b", "file:///data/b.csv", cat_row - 6)


def test_training_rows_trace_to_their_file_rows(pipeline) -> None:
    serve, perm = pipeline
    response = _stub(serve).TraceRows(query_pb2.TraceRowsRequest(
        rows=events_pb2.RowKeys(node_ids=["n-train"], rows=list(range(7)))))
    assert [t.row for t in response.traces] == list(range(7))
    for t in response.traces:
        assert [(s.source_id, s.uri, s.row) for s in t.sources] == [_expected(perm, t.row)]
        assert list(t.op_ids) == ["op-concat", "op-shuffle", "op-train"]


def test_a_broadcast_aggregate_is_one_reference_not_every_row(pipeline) -> None:
    serve, _ = pipeline
    response = _stub(serve).TraceRows(query_pb2.TraceRowsRequest(
        rows=events_pb2.RowKeys(node_ids=["n-norm"], rows=[2, 7])))
    t2, t7 = response.traces
    # direct rows first: row 2 of the concat is a.csv row 2, row 7 is b.csv row 1
    assert [(s.source_id, s.row) for s in t2.sources] == [("src-a", 2)]
    assert [(s.source_id, s.row) for s in t7.sources] == [("src-b", 1)]
    (agg,) = response.aggregates  # named once, referenced by both rows
    assert list(t2.aggregate_refs) == list(t7.aggregate_refs) == [0]
    assert (agg.op_id, agg.op_name, agg.node_id, agg.node_rows, agg.reason) == (
        "op-mean", "numpy.mean", "n-cat", 10, "reduction over rows")
    assert [(c.source_id, c.uri, c.rows) for c in agg.sources] == [
        ("src-a", "file:///data/a.csv", 6), ("src-b", "file:///data/b.csv", 4)]
    assert list(t2.op_ids) == ["op-concat", "op-mean", "op-norm"]
    assert {o.op_id: o.op_name for o in response.ops} == {
        "op-concat": "numpy.concatenate", "op-mean": "numpy.mean", "op-norm": "numpy.subtract"}


def test_expanded_aggregates_list_every_row(pipeline) -> None:
    serve, _ = pipeline
    (t,) = _stub(serve).TraceRows(query_pb2.TraceRowsRequest(
        rows=events_pb2.RowKeys(node_ids=["n-norm"], rows=[2]), expand_aggregates=True)).traces
    assert {(s.source_id, s.row) for s in t.sources} == \
        {("src-a", r) for r in range(6)} | {("src-b", r) for r in range(4)}
    assert list(t.op_ids) == ["op-concat", "op-mean", "op-norm"]


def test_trace_rows_pages(pipeline) -> None:
    serve, perm = pipeline
    stub = _stub(serve)
    keys = events_pb2.RowKeys(node_ids=["n-train"], rows=list(range(7)))
    seen, token, pages = [], "", 0
    while True:
        page = stub.TraceRows(query_pb2.TraceRowsRequest(rows=keys, page_size=3,
                                                         page_token=token))
        pages += 1
        assert len(page.traces) <= 3
        seen += [(t.row, [(s.source_id, s.uri, s.row) for s in t.sources])
                 for t in page.traces]
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == [(r, [_expected(perm, r)]) for r in range(7)]
    for bad in ("x", "0", "8", "-1"):
        with pytest.raises(grpc.RpcError) as err:
            stub.TraceRows(query_pb2.TraceRowsRequest(rows=keys, page_size=3, page_token=bad))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in err.value.details()


def test_ops_ancestors_and_description(pipeline) -> None:
    serve, _ = pipeline
    lineage = _stub(serve)
    ops = lineage.Ops(query_pb2.NodeRequest(node_id="n-train")).ops
    assert [(o.op_id, o.op_name) for o in ops] == [
        ("op-concat", "numpy.concatenate"), ("op-shuffle", "ndarray.__getitem__"),
        ("op-train", "ndarray.__getitem__")]
    ancestors = lineage.Ancestors(query_pb2.NodeRequest(node_id="n-train")).nodes
    assert {n.node_id for n in ancestors} == {"n-shuf", "n-cat", "src-a", "src-b"}
    node = lineage.DescribeNode(query_pb2.NodeRequest(node_id="src-b"))
    assert (node.kind, node.source_id, list(node.shape), list(node.columns)) == (
        "source", "src-b", [4, 3], ["x", "y", "z"])
    assert lineage.DescribeNode(query_pb2.NodeRequest(node_id="n-train")).produced_by_op == \
        "op-train"


def test_auditor_sql_views(pipeline) -> None:
    serve, _ = pipeline
    done = serve.cli("sql", "SELECT op_name, input_node_id FROM lineage_edges WHERE "
                     "output_node_id = 'n-norm' ORDER BY input_node_id", "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == ["numpy.subtract,n-cat", "numpy.subtract,n-mean"]


@pytest.mark.parametrize(
    ("keys", "code", "message"),
    [
        (events_pb2.RowKeys(node_ids=["nope"], rows=[0]), grpc.StatusCode.NOT_FOUND,
         "no lineage node 'nope'"),
        (events_pb2.RowKeys(node_ids=["n-train"], rows=[7]), grpc.StatusCode.INVALID_ARGUMENT,
         "row 7 of node n-train is out of range"),
        (events_pb2.RowKeys(node_ids=["n-train"], node_index=[0, 1], rows=[0, 1]),
         grpc.StatusCode.INVALID_ARGUMENT, "node_index points past node_ids"),
        (events_pb2.RowKeys(rows=[0]), grpc.StatusCode.INVALID_ARGUMENT, "node_ids is empty"),
    ],
)
def test_bad_row_keys_are_named(pipeline, keys, code, message: str) -> None:
    serve, _ = pipeline
    with pytest.raises(grpc.RpcError) as err:
        _stub(serve).TraceRows(query_pb2.TraceRowsRequest(rows=keys))
    assert err.value.code() == code and message in err.value.details()


def test_lineage_cli(pipeline) -> None:
    serve, perm = pipeline

    def cli(*args: str):
        return run_headwater("lineage", *args, "--listen", serve.target)

    done = cli("trace", "n-train", "0", "1", "--json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(s["source_id"], s["uri"], s["row"]) for s in lines[1]["sources"]] == [
        _expected(perm, 1)]
    assert lines[0]["ops"] == ["op-concat", "op-shuffle", "op-train"]
    agg = cli("trace", "n-norm", "7")
    assert agg.returncode == 0, agg.stderr
    text = agg.stdout.splitlines()
    assert "via numpy.concatenate -> numpy.mean -> numpy.subtract" in text[0]
    assert text[1].strip() == "file:///data/b.csv: 1 row(s): 1"  # direct rows first
    assert text[2].strip().startswith("depends on all 10 rows of node n-cat via numpy.mean "
                                      "(reduction over rows)")
    assert len(text) == 3
    as_json = json.loads(cli("trace", "n-norm", "7", "--json").stdout)
    assert as_json["op_names"] == ["numpy.concatenate", "numpy.mean", "numpy.subtract"]
    assert [a["node_rows"] for a in as_json["aggregates"]] == [10]
    ops = cli("ops", "n-norm")
    assert ops.returncode == 0 and "numpy.subtract" in ops.stdout and "op-mean" in ops.stdout
    described = cli("describe", "n-train")
    assert described.returncode == 0 and "ancestor src-a (source, src-a)" in described.stdout
    missing = cli("trace", "nope", "0")
    assert missing.returncode == 2 and "no lineage node 'nope'" in missing.stderr


def test_shared_run_cache_sees_later_ops(store) -> None:
    """Requests share a run's ops and nodes; an op recorded later in the same run must be
    seen by the next request (the change signature), never a stale graph."""
    from headwater.producers import LocalTransport
    from headwater.query_service.lineage.graph import LineageGraph
    from headwater.stream_processors import EventSink

    def op(i: int, inp: str, rows: list[int]) -> events_pb2.OpRecorded:
        return events_pb2.OpRecorded(
            op_id=f"cache-op-{i}", op_name="ndarray.__getitem__", input_node_ids=[inp],
            output_node_id=f"cache-n{i}", output_shape=[len(rows), 1], understood=True,
            row_map=events_pb2.RowMap(output_rows=len(rows),
                                      segments=rowmap.from_indices(0, np.array(rows))))

    def trace(node: str, row: int) -> list[int]:
        ((_, _, t),) = LineageGraph(store).trace_rows(events_pb2.RowKeys(node_ids=[node],
                                                                        rows=[row]))
        return [int(r) for rows in t.rows.values() for r in rows]

    with Publisher(LocalTransport(EventSink(store, "local")), run_id="cache-run") as pub:
        pub.publish(events_pb2.SourceRegistered(source_id="cache-src", uri="file:///c.csv",
                                                content_sha256="0" * 64, row_count=10))
        pub.publish(op(1, "cache-src", [9, 8, 7]))
    assert trace("cache-n1", 0) == [9]
    with Publisher(LocalTransport(EventSink(store, "local")), run_id="cache-run") as pub:
        pub.publish(op(2, "cache-n1", [2, 1]))  # a later op of the same run
    assert trace("cache-n2", 0) == [7] and trace("cache-n1", 1) == [8]
