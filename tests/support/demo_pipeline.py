"""The demo's own preparation of its two hospital files, published through the real sink
with a linear model's version, its training gradients and a few predictions: the store the
evidence report's governance sections (leakage, bias) are read from."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from headwater.demo.data import write_hospital_files
from headwater.demo.train import Recipe, code_version, prepare
from headwater.producers import LocalTransport, Publisher
from headwater.producers.capture import LinearCapture
from headwater.producers.tracking import Tracker, row_keys
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2


def publish_demo_pipeline(store: Store, folder: Path, run_id: str, predictions: int,
                          leaky: bool = False) -> tuple[Path, Path]:
    """Publish run `run_id` (model "clf") into `store`; the hospital files written."""
    paths = write_hospital_files(folder)
    with Publisher(LocalTransport(EventSink(store, "local")), run_id=run_id) as pub:
        data = prepare(Tracker(pub.publish, code_version=code_version()), paths,
                       Recipe.of(fast=True), leaky=leaky)
        x = np.asarray(data.x_train)
        capture = LinearCapture(pub.publish, "clf", x.shape[1])
        capture.set_parameters(np.zeros(x.shape[1]), 0.0)
        capture.record_version(step=1)
        capture.capture(x, data.y_train, row_keys(data.x_train), learning_rate=0.1, step=1)
        for i in range(predictions):
            capture.record_prediction(np.asarray(data.x_test)[i], prediction_id=f"p{i}",
                                      input_rows=events_pb2.RowKeys(
                                          node_ids=[data.x_test.node_id], rows=[i]))
        pub.flush()
    return paths
