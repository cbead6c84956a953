"""The query service's forget publishers (one per run) end with the service: `close` flushes
and releases each Kafka producer, and a publisher asked for afterwards is a new one."""

from __future__ import annotations

import uuid

import pytest

from conftest import Broker
from headwater.producers.transports.kafka import KafkaTransport
from headwater.query_service.services.unlearning import LogPublishers


@pytest.mark.kafka
def test_close_releases_every_runs_producer(broker: Broker) -> None:
    topic = f"hw-close-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic)
    made: list[KafkaTransport] = []

    def transport() -> KafkaTransport:
        made.append(KafkaTransport(broker.bootstrap, topic))
        return made[-1]

    log = LogPublishers(transport)
    first = {run: log(run) for run in ("run-a", "run-b")}
    assert log("run-a") is first["run-a"] and len(made) == 2  # one per run, built once
    log.close()
    for t in made:  # a closed librdkafka producer refuses further work
        with pytest.raises(RuntimeError):
            t.send("k", "e", b"x")
    assert log("run-a") is not first["run-a"] and len(made) == 3
    log.close()
