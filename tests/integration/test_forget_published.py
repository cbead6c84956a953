"""The shared record of published forget requests (forget_published, migration 0024): a
send that fails leaves nothing pending and a repeat publishes again; a request held by the
log (not stored yet) is pending on every query service of the store; a "publishing" row
whose publisher died counts as never sent once older than the publish timeout."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from headwater.errors import PublishError
from headwater.producers import GrpcTransport, Publisher
from headwater.producers.capture import LinearCapture
from headwater.producers.tracking import Tracker, row_keys
from headwater.producers.tracking.sources import track_array
from headwater.query_service.server.app import build_server
from headwater.query_service.services.unlearning import (
    PUBLISH_SECONDS,
    LogPublishers,
    published,
)
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc


class HeldLog:
    """A transport that accepts events and delivers none (a broker no processor reads), or
    refuses them all (`fail`)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.sent = fail, 0

    def send(self, key: str, event_id: str, value: bytes) -> None:
        if self.fail:
            raise PublishError("broker unreachable")
        self.sent += 1

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def ingest(store: Store) -> Iterator[str]:
    server, port = build_server(store, "127.0.0.1:0", sink=EventSink(store, "grpc"))
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=2).wait()


def _query_side(store: Store, transport: HeldLog) -> tuple[Any, Any]:
    server, port = build_server(store, "127.0.0.1:0", log=LogPublishers(lambda: transport))
    server.start()
    return server, query_pb2_grpc.UnlearningStub(grpc.insecure_channel(f"127.0.0.1:{port}"))


def _request(ingest: str) -> query_pb2.ForgetRequest:
    publisher = Publisher(GrpcTransport(ingest), run_id="run-fp")
    x = track_array(Tracker(publisher.publish), np.random.default_rng(3).normal(size=(12, 2)),
                    uri="memory://run-fp/data")
    capture = LinearCapture(publisher.publish, "clf", 2)
    capture.set_parameters(np.zeros(2), 0.0)
    capture.record_version(step=1)
    capture.capture(np.asarray(x), np.ones(12), row_keys(x), learning_rate=0.0,
                    featurisation=True)
    publisher.flush()
    return query_pb2.ForgetRequest(run_id="run-fp", model_id="clf", reason="r",
                                   target=events_pb2.ForgetTarget(row_keys=events_pb2.RowKeys(
                                       node_ids=[x.node_id], rows=[0, 1])))


def _status(stub: Any, rid: str) -> str:
    stream = stub.Status(query_pb2.UnlearningStatusRequest(request_id=rid), timeout=30)
    try:
        return next(stream).state
    except grpc.RpcError as exc:
        return exc.code().name
    finally:
        stream.cancel()


def test_failed_send_then_held_request_then_a_second_replica(store: Store, ingest: str
                                                             ) -> None:
    request = _request(ingest)
    down = HeldLog(fail=True)
    server, stub = _query_side(store, down)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            stub.Forget(request, timeout=60)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "broker unreachable" in (refused.value.details() or "")
        rid = store.query("SELECT request_id FROM forget_published FINAL")[0][0]
        assert published(store, rid) is None  # recorded 'failed': not pending
        assert _status(stub, rid) == "NOT_FOUND"
    finally:
        server.stop(grace=2).wait()

    held, other = HeldLog(), HeldLog()
    server, stub = _query_side(store, held)
    second, stub2 = _query_side(store, other)
    try:
        first = stub.Forget(request, timeout=60)  # the repeat after a failure is sent
        assert (first.request_id, first.rows, held.sent) == (rid, 2, 1)
        assert _status(stub, rid) == _status(stub2, rid) == "pending"
        # a well-formed id nobody published is not pending: only Forget writes the record
        assert _status(stub2, "fr-" + "0" * 24) == "NOT_FOUND"
        assert stub2.Forget(request, timeout=60).rows == 2
        assert (held.sent, other.sent) == (1, 0)  # deduplicated across the two
    finally:
        server.stop(grace=2).wait()
        second.stop(grace=2).wait()


def test_a_stale_publishing_row_counts_as_never_sent(store: Store) -> None:
    response = query_pb2.ForgetResponse(request_id="fr-stale", rows=3)
    for rid, age in (("fr-stale", PUBLISH_SECONDS + 30), ("fr-fresh", 5)):
        response.request_id = rid
        store.command(
            "INSERT INTO forget_published (request_id, run_id, model_id, state, response, "
            "updated_at) VALUES ({r:String}, 'run', 'm', 'publishing', {b:String}, "
            "now64(6) - toIntervalSecond({age:UInt32}))",
            {"r": rid, "b": response.SerializeToString().hex(), "age": age})
    assert published(store, "fr-stale") is None
    fresh = published(store, "fr-fresh")
    assert fresh is not None and fresh.rows == 3
    assert published(store, "fr-never") is None
