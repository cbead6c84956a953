"""Stopping the Kafka runner while a batch is being stored: the member waits for the store,
and nothing is committed before it (faust's take_events acknowledges a batch on its way out,
so the runner must not let the app's stop cut in between taking a batch and storing it)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import Broker
from headwater.producers.transports.base import Ack, Record
from headwater.stream_processors.kafka_runner import KafkaRunner

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


class SlowSink:
    """Acknowledges every record, but each ingest waits until the test releases it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.stored: list[int] = []  # offsets, once "stored"

    def ingest(self, records: list[Record]) -> list[Ack]:
        self.entered.set()
        assert self.release.wait(60)
        self.stored += [r.offset for r in records]
        return [Ack(index=i, event_id=f"e{r.offset}", accepted=True)
                for i, r in enumerate(records)]


def _committed(bootstrap: str, topic: str, group: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        return max(c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset, 0)
    finally:
        c.close()


def test_a_stop_mid_store_waits_for_the_store_and_commits_nothing_before(
        broker: Broker) -> None:
    topic, group = f"hw-stop-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:6]}"
    broker.create_topic(topic)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for i in range(20):
        producer.produce(topic, value=b"event %d" % i, key=b"run", partition=0)
    assert producer.flush(30) == 0
    sink = SlowSink()
    runner = KafkaRunner(sink, broker.bootstrap, topic, group, batch_size=8,  # type: ignore[arg-type]
                         within=0.2)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    assert sink.entered.wait(60), "no batch reached the sink"
    runner.stop()
    time.sleep(2.0)  # the app's stop is under way: it must wait for the batch in hand
    assert thread.is_alive(), "the member left with a batch still being stored"
    assert _committed(broker.bootstrap, topic, group) == 0
    sink.release.set()
    thread.join(60)
    assert not thread.is_alive()
    committed = _committed(broker.bootstrap, topic, group)
    assert sink.stored[:8] == list(range(8))
    assert committed <= len(sink.stored), (committed, sink.stored)
