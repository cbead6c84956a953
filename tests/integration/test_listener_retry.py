"""The unlearning listener against an in-process server (embedded store, gRPC): it takes a
tracked torch tensor, frame or array as `dataset`, and a request whose `apply` fails is
published FAILED, retried after a back-off that doubles, `max_attempts` times, then left."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from headwater.producers import GrpcTransport, Publisher
from headwater.producers.capture import LinearCapture
from headwater.producers.tracking import Tracker, row_keys
from headwater.producers.tracking.sources import track_array
from headwater.producers.unlearning.listener import UnlearningListener
from headwater.query_service.server.app import build_server
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc


@pytest.fixture
def target(store: Store) -> Iterator[str]:
    server, port = build_server(store, "127.0.0.1:0", sink=EventSink(store, "grpc"))
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=2).wait()


def _trainer(target: str, run_id: str):
    """A run with a tracked 40-row dataset, a model version and its gradients."""
    publisher = Publisher(GrpcTransport(target), run_id=run_id)
    tracker = Tracker(publisher.publish)
    rng = np.random.default_rng(1)
    x = track_array(tracker, rng.normal(size=(40, 3)), uri=f"memory://{run_id}/data")
    y = (np.asarray(x)[:, 0] > 0).astype(float)
    capture = LinearCapture(publisher.publish, "clf", 3)
    capture.set_parameters(np.zeros(3), 0.0)
    capture.record_version(step=1)
    capture.capture(np.asarray(x), y, row_keys(x), learning_rate=0.0, featurisation=True)
    publisher.flush()
    return publisher, tracker, x


def _forget(target: str, run_id: str, node_id: str, rows: list[int]) -> str:
    stub = query_pb2_grpc.UnlearningStub(grpc.insecure_channel(target))
    return stub.Forget(query_pb2.ForgetRequest(
        run_id=run_id, model_id="clf", reason="test",
        target=events_pb2.ForgetTarget(row_keys=events_pb2.RowKeys(
            node_ids=[node_id], rows=rows))), timeout=60).request_id


def test_tracked_tensor_frame_and_array_are_datasets(target: str) -> None:
    torch = pytest.importorskip("torch")
    import pandas as pd

    from headwater.producers.tracking.sources import track_dataframe
    from headwater.producers.tracking.torch.data import track_tensor

    publisher, tracker, x = _trainer(target, "run-datasets")
    tensor = track_tensor(tracker, x)  # a TrackedTensor at the array's node
    assert type(tensor).__name__ == "TrackedTensor"
    frame = track_dataframe(tracker, pd.DataFrame({"a": [1.0, 2.0]}), uri="file:///f.csv")
    publisher.flush()  # the frame's source registered
    for dataset, node in ((tensor, x.node_id), (frame, frame.node_id), (x, x.node_id),
                          (x.node_id, x.node_id)):
        with UnlearningListener(publisher, target, model_id="clf", dataset=dataset,
                                apply=lambda rows, request: None) as listener:
            assert listener.node_id == node
    with pytest.raises(TypeError, match="dataset must be a tracked array/tensor/frame"):
        UnlearningListener(publisher, target, model_id="clf", dataset=np.zeros((3, 2)),
                           apply=lambda rows, request: None)
    with pytest.raises(TypeError, match="dataset must be a tracked array/tensor/frame"):
        UnlearningListener(publisher, target, model_id="clf", dataset=torch.zeros(3, 2),
                           apply=lambda rows, request: None)


def test_a_failing_request_is_retried_with_backoff_then_left(store: Store, target: str) -> None:
    publisher, _, x = _trainer(target, "run-retry")
    rid = _forget(target, "run-retry", x.node_id, [0, 1, 2])
    calls: list[float] = []

    def apply(rows, request):
        calls.append(time.monotonic())
        raise RuntimeError("the model is locked")

    with UnlearningListener(publisher, target, model_id="clf", dataset=x, apply=apply,
                            min_interval=0.0, max_attempts=3, retry_after=0.5) as listener:
        with pytest.raises(RuntimeError, match="locked"):
            listener.poll(force=True)
        assert listener.poll(force=True) == []  # backing off: not applied again at once
        assert len(calls) == 1
        deadline = time.monotonic() + 30
        while len(calls) < 3 and time.monotonic() < deadline:
            try:
                listener.poll(force=True)
            except RuntimeError:
                pass
            time.sleep(0.05)
        assert len(calls) == 3
        for _ in range(5):  # given up: never applied again
            assert listener.poll(force=True) == []
        time.sleep(2.5)
        assert listener.poll(force=True) == []
        assert len(calls) == 3
    # the waits doubled: 0.5 s, then 1 s (at least; the machine may be slower)
    assert calls[1] - calls[0] >= 0.5 and calls[2] - calls[1] >= 1.0
    errors = [e for (e,) in store.query(
        "SELECT error FROM unlearning_applied FINAL WHERE request_id = {r:String} "
        "ORDER BY applied_at", {"r": rid})]
    assert len(errors) == 3, errors
    assert errors[0].endswith("(attempt 1 of 3; next in 0.5 s)")
    assert errors[1].endswith("(attempt 2 of 3; next in 1 s)")
    assert errors[2].endswith("(attempt 3 of 3; not tried again)")
