"""Forget across Kafka, end to end in one process: a Tansu broker, the Kafka runner storing
the topic (what `headwater process` runs), the query service publishing forget requests to
the topic, and the trainer's listener applying them with its outcomes sent over Kafka too.

The request is published before any processor stores it: Status says "pending" (not
NOT_FOUND), a repeat is answered without publishing a duplicate, and once stored the state
follows requested -> applied."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import Broker
from headwater.cli import cli
from headwater.producers import KafkaTransport, Publisher
from headwater.producers.capture import LinearCapture
from headwater.producers.tracking import Tracker, row_keys
from headwater.producers.tracking.sources import load_csv
from headwater.producers.unlearning import LinearModel
from headwater.producers.unlearning.listener import (
    Unlearner,
    UnlearningListener,
    outcomes_producer_id,
)
from headwater.query_service.server.app import build_server
from headwater.query_service.services.unlearning import LogPublishers
from headwater.stream_processors.kafka_runner import KafkaRunner
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]


class Processor:
    """The Kafka runner on a thread, as `headwater process` runs it, into `store`."""

    def __init__(self, store: Store, bootstrap: str, topic: str, group: str) -> None:
        self.runner = KafkaRunner(EventSink(store, "kafka"), bootstrap, topic, group,
                                  batch_size=200, within=0.2)
        self.thread = threading.Thread(target=self.runner.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.runner.stop()
        self.thread.join(30)
        assert not self.thread.is_alive()


def _wait(what: str, check, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"{what}: not within {timeout:.0f}s")


def _count(store: Store, payload: str, run_id: str) -> int:
    return store.query("SELECT count() FROM events FINAL WHERE payload_type = {p:String} "
                       "AND run_id = {r:String}", {"p": payload, "r": run_id})[0][0]


@pytest.fixture
def topic(broker: Broker) -> str:
    name = f"hw-forget-{uuid.uuid4().hex[:8]}"
    broker.create_topic(name, partitions=2)
    return name


def _query_server(store: Store, broker: Broker, topic: str) -> tuple[Any, str]:
    log = LogPublishers(lambda: KafkaTransport(broker.bootstrap, topic))
    server, port = build_server(store, "127.0.0.1:0", log=log)
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def query_side(store: Store, broker: Broker, topic: str) -> Iterator[str]:
    """A query service over the store that records forget requests on the topic."""
    server, address = _query_server(store, broker, topic)
    yield address
    server.stop(grace=2).wait()


def test_forget_is_pending_then_stored_then_applied_through_kafka(
    store: Store, broker: Broker, topic: str, query_side: str, tmp_path
) -> None:
    run_id, group = f"run-{uuid.uuid4().hex[:6]}", f"g-{uuid.uuid4().hex[:6]}"
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(120, 4))
    labels = (raw[:, 0] + 0.3 * rng.normal(size=120) > 0).astype(float)

    # the trainer: a tracked dataset, a model version, gradients, all over Kafka
    trainer = Publisher(KafkaTransport(broker.bootstrap, topic), run_id=run_id)
    tracker = Tracker(trainer.publish)
    csv = tmp_path / "patients.csv"
    csv.write_text("a,b,c,d\n" + "\n".join(",".join(f"{v:.6f}" for v in r) for r in raw) + "\n")
    x = load_csv(tracker, csv, columns=["a", "b", "c", "d"])
    raw = np.asarray(x)
    model = LinearModel.fit(raw, labels, l2=1.0)
    capture = LinearCapture(trainer.publish, "clf", 4)
    capture.set_parameters(model.coef, model.intercept)
    capture.record_version(step=1)
    for start in range(0, 120, 40):
        batch = x[start:start + 40]
        capture.capture(np.asarray(batch), labels[start:start + 40], row_keys(batch),
                        learning_rate=0.0, featurisation=True)
    trainer.flush(timeout=30)

    processor = Processor(store, broker.bootstrap, topic, group)
    _wait("the trainer's events stored", lambda: _count(store, "gradient_batch", run_id) == 3)
    processor.stop()  # nothing stores the topic now: the request stays unstored

    stub = query_pb2_grpc.UnlearningStub(grpc.insecure_channel(query_side))
    request = query_pb2.ForgetRequest(
        run_id=run_id, model_id="clf", reason="consent withdrawn",
        target=events_pb2.ForgetTarget(row_keys=events_pb2.RowKeys(
            node_ids=[x.node_id], node_index=[0] * 10, rows=list(range(10)))))
    first = stub.Forget(request, timeout=60)
    assert first.rows == 10
    stream = stub.Status(query_pb2.UnlearningStatusRequest(request_id=first.request_id),
                         timeout=30)
    assert next(stream).state == "pending"  # not NOT_FOUND
    stream.cancel()
    again = stub.Forget(request, timeout=60)  # before it is stored: not published again
    assert (again.request_id, again.rows) == (first.request_id, 10)

    # `headwater forget --wait` for the same request (the same id), followed to the end
    waited: list[Any] = []
    follow = threading.Thread(target=lambda: waited.append(CliRunner().invoke(cli, [
        "forget", "--run", run_id, "--model", "clf", "--rows", f"{x.node_id}:0-9",
        "--reason", "consent withdrawn", "--wait", "--timeout", "120", "--json",
        "--listen", query_side])), daemon=True)
    follow.start()
    processor = Processor(store, broker.bootstrap, topic, group)
    try:
        _wait("the request stored", lambda: _count(store, "forget_requested", run_id) == 1)
        outcomes = Publisher(KafkaTransport(broker.bootstrap, topic), run_id=run_id,
                             producer_id=outcomes_producer_id(trainer.producer_id))
        listener = UnlearningListener(trainer, query_side, model_id="clf", dataset=x,
                                      apply=Unlearner(model, raw, labels), capture=capture,
                                      outcomes=outcomes)
        with listener:
            (applied,) = listener.poll(force=True)
        assert applied.status == applied.APPLIED and applied.rows_forgotten == 10
        follow.join(120)
        assert not follow.is_alive()
    finally:
        processor.stop()
    (done,) = waited
    assert done.exit_code == 0, done.output
    lines = [json.loads(line) for line in done.output.splitlines() if line.startswith("{")]
    assert lines[0]["request_id"] == first.request_id
    states = [line["state"] for line in lines[1:]]
    # (it began "pending" unless the processor stored the request before the CLI asked)
    assert states[-2:] == ["requested", "applied"] and set(states) <= {
        "pending", "requested", "applied"}, states
    assert _count(store, "forget_requested", run_id) == 1  # the repeat published nothing
    assert _count(store, "unlearning_applied", run_id) == 1


def test_pending_and_dedupe_hold_across_replicas_and_a_restart(
    store: Store, broker: Broker, topic: str, query_side: str, tmp_path
) -> None:
    """Two query services on one store and one broker: a request published by one is
    "pending" on the other (and on a restarted first one), and a repeat sent to either is
    not published again, before any processor has stored it (forget_published)."""
    run_id, group = f"run-{uuid.uuid4().hex[:6]}", f"g-{uuid.uuid4().hex[:6]}"
    trainer = Publisher(KafkaTransport(broker.bootstrap, topic), run_id=run_id)
    csv = tmp_path / "rows.csv"
    csv.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.6f}" for v in r) for r in
                                         np.random.default_rng(1).normal(size=(30, 3))) + "\n")
    x = load_csv(Tracker(trainer.publish), csv, columns=["a", "b", "c"])
    capture = LinearCapture(trainer.publish, "clf", 3)
    capture.set_parameters(np.zeros(3), 0.0)
    capture.record_version(step=1)
    capture.capture(np.asarray(x), np.ones(30), row_keys(x), learning_rate=0.0,
                    featurisation=True)
    trainer.flush(timeout=30)
    processor = Processor(store, broker.bootstrap, topic, group)
    _wait("the trainer's events stored", lambda: _count(store, "gradient_batch", run_id) == 1)
    processor.stop()

    request = query_pb2.ForgetRequest(
        run_id=run_id, model_id="clf", reason="erasure",
        target=events_pb2.ForgetTarget(row_keys=events_pb2.RowKeys(
            node_ids=[x.node_id], node_index=[0] * 4, rows=[0, 1, 2, 3])))

    def stub(address: str) -> Any:
        return query_pb2_grpc.UnlearningStub(grpc.insecure_channel(address))

    def state(address: str, rid: str) -> str:
        stream = stub(address).Status(query_pb2.UnlearningStatusRequest(request_id=rid),
                                      timeout=30)
        try:
            return next(stream).state
        finally:
            stream.cancel()

    first = stub(query_side).Forget(request, timeout=60)
    other, other_address = _query_server(store, broker, topic)
    try:
        assert state(other_address, first.request_id) == "pending"  # not NOT_FOUND
        again = stub(other_address).Forget(request, timeout=60)  # not published again
        assert (again.request_id, again.rows) == (first.request_id, 4)
    finally:
        other.stop(grace=2).wait()
    restarted, restarted_address = _query_server(store, broker, topic)  # a fresh process
    try:
        assert state(restarted_address, first.request_id) == "pending"
        assert stub(restarted_address).Forget(request, timeout=60).rows == 4
        processor = Processor(store, broker.bootstrap, topic, group)
        try:
            _wait("the request stored",
                  lambda: _count(store, "forget_requested", run_id) >= 1)
            time.sleep(1.0)  # a duplicate, had one been sent, lands right behind it
        finally:
            processor.stop()
        assert state(restarted_address, first.request_id) == "requested"
    finally:
        restarted.stop(grace=2).wait()
    assert _count(store, "forget_requested", run_id) == 1  # three Forget calls, one event
