"""Two CSV files -> normalise -> concat -> shuffle -> split -> batches, recorded by tracked
arrays, published to `headwater serve`, and every batch row resolved back to its file row."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np

from conftest import Serve
from headwater.producers import GrpcTransport, Publisher
from headwater.producers.sources import describe_csv
from headwater.producers.tracking import Tracker, row_keys
from headwater.v1 import query_pb2, query_pb2_grpc


def _csv(path: Path, rows: int, seed: int) -> Path:
    values = np.random.default_rng(seed).normal(size=(rows, 3))
    path.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.6f}" for v in r) for r in values)
                    + "\n")
    return path


def test_two_file_pipeline_resolves_through_serve(serve: Serve, tmp_path: Path) -> None:
    files = [_csv(tmp_path / "clinic_a.csv", 30, 1), _csv(tmp_path / "clinic_b.csv", 20, 2)]
    with Publisher(GrpcTransport(serve.target), run_id="pipeline") as pub:
        tracker = Tracker(pub.publish)
        parts, ids = [], []
        for path in files:
            src = pub.publish(describe_csv(path)).source_registered
            x = tracker.array(np.loadtxt(path, delimiter=",", skiprows=1), source=src)
            parts.append((x - x.mean(0)) / x.std(0))  # normalise within each file
            ids += [(src.source_id, path.as_uri(), r) for r in range(len(x))]
        data = np.concatenate(parts)
        order = np.random.default_rng(5).permutation(len(data))
        shuffled = data[order]
        train, _test = tracker.split(shuffled, test_size=0.2, seed=7)
        batches = list(tracker.batches(train, 8, seed=3))
    # the reference: carry explicit row ids through the same steps
    perm = np.random.default_rng(7).permutation(len(data))
    train_ids = [ids[i] for i in order[perm[10:]]]
    batch_order = np.random.default_rng(3).permutation(len(train_ids))

    lineage = query_pb2_grpc.LineageStub(grpc.insecure_channel(serve.target))
    for b, batch in enumerate(batches[:3]):
        traced = lineage.TraceRows(query_pb2.TraceRowsRequest(rows=row_keys(batch))).traces
        for t in traced:
            want = train_ids[batch_order[b * 8 + t.row]]
            own = [(s.source_id, s.uri, s.row) for s in t.sources if s.row == want[2]
                   and s.source_id == want[0]]
            assert own == [want]
            # normalising by the file's mean/std makes a row depend on its whole file
            assert {(s.source_id, s.row) for s in t.sources} == {
                (want[0], r) for r in range(30 if want[1].endswith("clinic_a.csv") else 20)}
        ops = lineage.Ops(query_pb2.NodeRequest(node_id=batch.node_id)).ops
        names = [o.op_name for o in ops]
        assert names[-3:] == ["ndarray.__getitem__", "headwater.split", "headwater.batch"]
        assert "numpy.concatenate" in names and "numpy.subtract" in names
