"""The events topic is managed: `headwater topics create|check`, producers that never
auto-create it, and processors that refuse a partition count other than the configured one
(against a real Tansu broker)."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka.admin import AdminClient

from conftest import Broker, run_headwater
from headwater.cli import main
from headwater.producers import KafkaTransport, PublishError
from headwater.stream_processors.kafka_topics import describe_topic


def _cli(capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`headwater ARGS` in this process: (exit code, stdout + stderr)."""
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    got = capfd.readouterr()
    return code, got.out + got.err


def _topic() -> str:
    return f"hw-managed-{uuid.uuid4().hex[:8]}"


def test_topics_create_then_check_with_the_configured_shape(
    broker: Broker, capfd: pytest.CaptureFixture[str]
) -> None:
    topic = _topic()
    at = ("--kafka-bootstrap", broker.bootstrap, "--topic", topic)
    code, text = _cli(capfd, "topics", "check", *at, "--partitions", "3")
    assert code == 2 and f"topic '{topic}' does not exist" in text, text
    assert "headwater topics create" in text

    code, text = _cli(capfd, "topics", "create", *at, "--partitions", "3")
    assert code == 0 and f"topic {topic} created 3 partitions, replication 1" in text, text
    shape = describe_topic(broker.bootstrap, topic, {})
    assert shape is not None and (shape.partitions, shape.replication) == (3, 1)

    code, text = _cli(capfd, "topics", "check", *at, "--partitions", "3")
    assert code == 0 and "3 partitions, replication 1" in text and "as configured" in text
    code, text = _cli(capfd, "topics", "create", *at, "--partitions", "3")
    assert code == 0 and "exists, as configured" in text, text

    # another configured count: both numbers named, by check and by a second create
    code, text = _cli(capfd, "topics", "check", *at, "--partitions", "6")
    assert code == 2 and "has 3 partitions, the configuration says 6" in text, text
    code, text = _cli(capfd, "topics", "create", *at, "--partitions", "6")
    assert code == 2 and "has 3 partitions, the configuration says 6" in text, text
    code, text = _cli(capfd, "topics", "check", *at, "--partitions", "3",
                      "--replication", "2")
    assert code == 2 and "has replication 1, the configuration says 2" in text, text


def test_topics_need_a_broker(capfd: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADWATER_KAFKA_BOOTSTRAP", raising=False)
    code, text = _cli(capfd, "topics", "check")
    assert code == 2 and "no Kafka broker: pass --kafka-bootstrap" in text, text


def test_a_producer_never_creates_the_topic(broker: Broker) -> None:
    """A broker that lost the topic must not get it back with its own default partition
    count because a trainer published: the send fails, and no topic appears."""
    topic = _topic()
    transport = KafkaTransport(broker.bootstrap, topic, send_timeout=4.0, stall_timeout=1.0,
                               max_attempts=2)
    transport.send("run-a", "event-1", b"payload")
    with pytest.raises(PublishError) as failed:
        transport.flush(timeout=6.0)
    assert failed.value.failed_event_ids == ["event-1"]
    with pytest.raises(PublishError):
        transport.close()  # flushes (fails again), then releases the producer
    topics = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics
    assert topic not in topics


def test_process_refuses_a_topic_with_another_partition_count(
    broker: Broker, tmp_path
) -> None:
    topic = _topic()
    broker.create_topic(topic, partitions=2)
    r = run_headwater("process", "--dsn", f"chdb://{tmp_path / 'clickhouse'}",
                      "--kafka-bootstrap", broker.bootstrap, "--topic", topic,
                      "--group", "g", "--partitions", "6", timeout=120)
    output = (r.stdout + r.stderr).strip()
    assert r.returncode == 2, output
    assert f"topic '{topic}' on {broker.bootstrap} has 2 partitions, the configuration " \
           "says 6" in output, output
    assert not (tmp_path / "clickhouse").exists()  # refused before opening the store

    missing = _topic()
    r = run_headwater("process", "--dsn", f"chdb://{tmp_path / 'clickhouse'}",
                      "--kafka-bootstrap", broker.bootstrap, "--topic", missing,
                      "--group", "g", timeout=120)
    output = (r.stdout + r.stderr).strip()
    assert r.returncode == 2 and f"topic '{missing}' does not exist" in output, output
