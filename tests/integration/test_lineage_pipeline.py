"""Two CSV files -> normalise -> concat -> shuffle -> split -> batches, recorded by tracked
arrays, delivered through `headwater serve` and through Kafka, and every batch row
resolved back to its file row over gRPC."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from e2e.test_kafka_path import Processor, _process, _uid

from conftest import Broker, Serve, free_port, headwater, stop, wait_for_port
from headwater.producers import GrpcTransport, KafkaTransport, Publisher
from headwater.producers.tracking import Tracker, row_keys
from headwater.producers.tracking.sources import describe_csv
from headwater.v1 import query_pb2, query_pb2_grpc

ROWS = {"clinic_a.csv": 30, "clinic_b.csv": 20}


def _csv(path: Path, rows: int, seed: int) -> Path:
    values = np.random.default_rng(seed).normal(size=(rows, 3))
    path.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.6f}" for v in r) for r in values)
                    + "\n")
    return path


def publish_pipeline(pub: Publisher, folder: Path) -> tuple[list, list[tuple[str, str, int]]]:
    """Run the tracked pipeline; return its batches and, per batch row, the expected
    (source id, file URI, file row) computed by carrying explicit row ids."""
    tracker = Tracker(pub.publish)
    parts, ids = [], []
    for seed, (name, rows) in enumerate(ROWS.items()):
        path = _csv(folder / name, rows, seed)
        src = pub.publish(describe_csv(path)).source_registered
        x = tracker.array(np.loadtxt(path, delimiter=",", skiprows=1), source=src)
        parts.append((x - x.mean(0)) / x.std(0))  # normalised within each file
        ids += [(src.source_id, path.as_uri(), r) for r in range(rows)]
    data = np.concatenate(parts)
    order = np.random.default_rng(5).permutation(len(data))
    train, _test = tracker.split(data[order], test_size=0.2, seed=7)
    batches = list(tracker.batches(train, 8, seed=3))
    split_perm = np.random.default_rng(7).permutation(len(data))
    train_ids = [ids[i] for i in order[split_perm[10:]]]
    batch_order = np.random.default_rng(3).permutation(len(train_ids))
    expected = [train_ids[i] for i in batch_order]
    return batches, expected


def check_batches(target: str, batches: list, expected: list[tuple[str, str, int]]) -> None:
    with grpc.insecure_channel(target) as channel:
        lineage = query_pb2_grpc.LineageStub(channel)
        for b, batch in enumerate(batches[:3]):
            reply = lineage.TraceRows(query_pb2.TraceRowsRequest(rows=row_keys(batch)))
            traced = reply.traces
            assert len(traced) == len(batch)
            for t in traced:
                source_id, uri, row = expected[b * 8 + t.row]
                # its own file row, and its whole file through the mean and the std
                assert [(s.source_id, s.uri, s.row) for s in t.sources] == [(source_id, uri, row)]
                whole = [(a.op_name, [(c.source_id, c.rows) for c in a.sources])
                         for a in (reply.aggregates[k] for k in t.aggregate_refs)]
                n_file = ROWS[uri.rsplit("/", 1)[1]]
                assert sorted(whole) == [("numpy.mean", [(source_id, n_file)]),
                                         ("numpy.std", [(source_id, n_file)])]
            expanded = lineage.TraceRows(query_pb2.TraceRowsRequest(
                rows=row_keys(batch), expand_aggregates=True)).traces
            for t in expanded:
                source_id, uri, row = expected[b * 8 + t.row]
                refs = {(s.source_id, s.uri, s.row) for s in t.sources}
                # normalising by its file's mean and std makes a row depend on its whole file
                assert refs == {(source_id, uri, r) for r in range(ROWS[uri.rsplit("/", 1)[1]])}
            names = [o.op_name for o in lineage.Ops(
                query_pb2.NodeRequest(node_id=batch.node_id)).ops]
            assert names[-3:] == ["ndarray.__getitem__", "headwater.split", "headwater.batch"]
            assert "numpy.concatenate" in names and "numpy.subtract" in names


def test_two_file_pipeline_through_serve(serve: Serve, tmp_path: Path) -> None:
    with Publisher(GrpcTransport(serve.target), run_id="pipeline") as pub:
        batches, expected = publish_pipeline(pub, tmp_path)
    check_batches(serve.target, batches, expected)


@pytest.mark.kafka
def test_two_file_pipeline_through_kafka(broker: Broker, tmp_path: Path) -> None:
    processors: list[Processor] = []
    try:
        _pipeline_through_kafka(broker, tmp_path, processors)
    finally:
        for p in processors:
            p.kill()


def _pipeline_through_kafka(broker: Broker, tmp_path: Path,
                            processors: list[Processor]) -> None:
    topic = f"hw-pipeline-{_uid()}"
    broker.create_topic(topic)
    data = tmp_path / "clickhouse"
    transport = KafkaTransport(broker.bootstrap, topic)
    with Publisher(transport, run_id="pipeline") as pub:
        batches, expected = publish_pipeline(pub, tmp_path)
        pub.flush(timeout=30)
    proc = _process(processors, broker.bootstrap, topic, data)
    proc.wait_committed(transport.messages_delivered)
    proc.stop()
    port = free_port()
    qs = headwater("query-service", "--dsn", f"chdb://{data}", "--listen", f"127.0.0.1:{port}")
    try:
        wait_for_port(port, timeout=60, proc=qs)
        check_batches(f"127.0.0.1:{port}", batches, expected)
    finally:
        stop(qs)
