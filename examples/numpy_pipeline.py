"""A plain NumPy pipeline, tracked: a CSV file -> standardise -> split -> logistic regression
with LinearCapture -> the lineage of a training row printed back to its file row.

Runs embedded (no server): events go straight into a chDB store in --data-dir.

    python examples/numpy_pipeline.py --data-dir ./.headwater-example
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from headwater.producers import LocalTransport, Publisher
from headwater.producers.capture import LinearCapture
from headwater.producers.tracking import Tracker
from headwater.producers.tracking.sources import load_csv
from headwater.producers.unlearning import LinearModel
from headwater.query_service.lineage.graph import LineageGraph
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2


def write_csv(path: Path, rows: int = 200, seed: int = 0) -> Path:
    """A small synthetic CSV: three features and a label that depends on them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    y = (x @ np.array([1.5, -1.0, 0.5]) + 0.3 * rng.normal(size=rows) > 0).astype(int)
    lines = ["f0,f1,f2,label"] + [",".join(f"{v:.5f}" for v in r) + f",{t}"
                                  for r, t in zip(x, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(".headwater-example"),
                        help="embedded store directory (created)")
    parser.add_argument("--csv", type=Path, default=None,
                        help="a CSV with numeric columns and a last 'label' column "
                             "[a synthetic one is written into --data-dir]")
    parser.add_argument("--row", type=int, default=0, help="training row to trace")
    args = parser.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    path = args.csv or write_csv(args.data_dir / "measurements.csv")

    with Store(f"chdb://{args.data_dir / 'clickhouse'}") as store:
        store.migrate()
        with Publisher(LocalTransport(EventSink(store, "local")), run_id="numpy-example") as pub:
            tracker = Tracker(pub.publish)
            table = load_csv(tracker, path, origin="example data")       # SourceRegistered
            x, y = table[:, :-1], np.asarray(table[:, -1])
            x = (x - x.mean(axis=0)) / x.std(axis=0)                      # tracked ops
            train, _ = tracker.split(x, test_size=0.25, seed=0)
            y_train = y[np.random.default_rng(0).permutation(len(y))[len(y) - len(train):]]
            model = LinearModel.fit(np.asarray(train), y_train, l2=1.0)
            capture = LinearCapture(pub.publish, "numpy-clf", train.shape[1])
            capture.set_parameters(model.coef, model.intercept)
            capture.record_version(step=1, config={"l2": 1.0})
            capture.capture(np.asarray(train), y_train, events_pb2.RowKeys(
                node_ids=[train.node_id], rows=range(len(train))), learning_rate=0.0,
                featurisation=True)
        ((node, row, trace),) = LineageGraph(store).trace_rows(events_pb2.RowKeys(
            node_ids=[train.node_id], rows=[args.row]))
        graph = LineageGraph(store)
        ops = [graph.op(o).op_name for o in trace.op_ids]
        direct = {graph.source(s).uri: [int(r) for r in rows] for s, rows in trace.direct.items()}
        accuracy = float((model.predict(np.asarray(train)) == y_train).mean())
    print(f"trained on {len(train)} rows of {path.name}; training accuracy {accuracy:.3f}")
    print(f"training row {row} of node {node}")
    print(f"  via {' -> '.join(ops)}")
    for uri, rows in direct.items():
        print(f"  comes from {uri} row(s) {rows}")
    return {"node": node, "row": row, "ops": ops, "sources": direct, "accuracy": accuracy,
            "csv": str(path)}


if __name__ == "__main__":
    main()
