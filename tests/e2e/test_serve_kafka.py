"""The one-machine distributed recipe: two `headwater serve --consume-kafka` members of one
consumer group, each with its own chDB directory, consume the topic and answer queries
from their own stores; `status` shows the group's lag from Kafka through a serve holding its
directory, and only lag plus the right error where `process` holds it; the lock messages
name who holds a directory."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import Broker, free_port, headwater, run_headwater, stop, wait_for_port
from headwater.cli.status import consumer_lag
from headwater.producers import KafkaTransport, Publisher
from headwater.v1 import events_pb2

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]


class Member:
    """`headwater serve --consume-kafka` on a free port with its own directory."""

    def __init__(self, broker: Broker, topic: str, group: str, data: Path) -> None:
        self.port, self.data = free_port(), data
        self.listen = f"127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self.proc = headwater("serve", "--data-dir", str(data), "--listen", self.listen,
                              "--consume-kafka", "--kafka-bootstrap", broker.bootstrap,
                              "--topic", topic, "--group", group, "--partitions", "2")
        out = self.proc.stdout
        threading.Thread(target=lambda: self.lines.extend(out), daemon=True).start()
        wait_for_port(self.port, timeout=120, proc=self.proc)

    def count(self, run_id: str) -> int:
        r = run_headwater("sql", "SELECT count() AS n FROM events FINAL WHERE run_id = "
                          "{r:String}", "--param", f"r={run_id}", "--listen", self.listen,
                          "--format", "json", timeout=90)
        assert r.returncode == 0, r.stdout + r.stderr
        return int(json.loads(r.stdout.strip())["n"])


def _source(tag: str, i: int) -> events_pb2.SourceRegistered:
    return events_pb2.SourceRegistered(source_id=f"src-{tag}-{i}", uri=f"file:///{tag}/{i}",
                                       content_sha256="0" * 64, row_count=i, format="csv")


def test_two_serve_members_consume_the_topic_and_answer_from_their_stores(
    broker: Broker, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    topic, group = f"hw-serve-{tag}", f"g-serve-{tag}"
    broker.create_topic(topic, partitions=2)
    members: list[Member] = []
    try:
        members = [Member(broker, topic, group, tmp_path / f"m{i}") for i in range(2)]
        runs = [f"run-{tag}-{r}" for r in range(6)]
        for run_id in runs:
            with Publisher(KafkaTransport(broker.bootstrap, topic), run_id=run_id) as pub:
                for i in range(20):
                    pub.publish(_source(run_id, i))
        deadline, lag = time.monotonic() + 180, None
        while time.monotonic() < deadline:
            for m in members:
                assert m.proc.poll() is None, "".join(m.lines[-30:])
            try:
                lag = consumer_lag(broker.bootstrap, topic, group, {})
            except RuntimeError:
                lag = None
            if lag is not None and sum(lag.values()) == 0 and sum(
                    m.count(r) for m in members for r in runs) == 120:
                break
            time.sleep(1)
        assert lag is not None and sum(lag.values()) == 0, lag
        # every run whole in exactly one member's store (keyed by run: one partition)
        for run_id in runs:
            counts = sorted(m.count(run_id) for m in members)
            assert counts == [0, 20], (run_id, counts)

        # status through the serve holding m0, with the group's lag asked of Kafka
        r = run_headwater("status", "--data-dir", str(members[0].data), "--kafka-bootstrap",
                          broker.bootstrap, "--topic", topic, "--group", group, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        st = json.loads(r.stdout)
        assert st["lag"] == {f"{topic}/0": 0, f"{topic}/1": 0}, st

        # a process pointed at a serve's directory is told who holds it and what to do
        r = run_headwater("process", "--dsn", f"chdb://{members[0].data / 'clickhouse'}",
                          "--kafka-bootstrap",
                          broker.bootstrap, "--topic", topic, "--group", group,
                          "--partitions", "2")
        text = r.stdout + r.stderr
        assert r.returncode == 2, text
        assert f"in use by headwater serve (pid {members[0].proc.pid}, gRPC at " \
               f"{members[0].listen})" in text, text
        assert f"--listen {members[0].listen}" in text, text
    finally:
        for m in members:
            stop(m.proc)
    for m in members:
        assert m.proc.returncode == 0, "".join(m.lines[-30:])
        assert any("the Kafka member stored" in line for line in m.lines), m.lines[-10:]


def test_serve_refuses_kafka_flags_without_consume_kafka(tmp_path: Path) -> None:
    r = run_headwater("serve", "--data-dir", str(tmp_path / "d"), "--kafka-bootstrap",
                      "127.0.0.1:1", "--topic", "t")
    assert r.returncode == 2
    assert "--kafka-bootstrap, --topic without --consume-kafka" in r.stdout + r.stderr


def test_status_shows_the_lag_where_process_holds_the_directory(
    broker: Broker, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    topic, group, data = f"hw-held-{tag}", f"g-held-{tag}", tmp_path / "clickhouse"
    broker.create_topic(topic)
    with Publisher(KafkaTransport(broker.bootstrap, topic), run_id=f"run-{tag}") as pub:
        for i in range(5):
            pub.publish(_source(tag, i))
    proc = headwater("process", "--dsn", f"chdb://{data}", "--kafka-bootstrap",
                     broker.bootstrap, "--topic", topic, "--group", group, "--partitions", "1")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None
            try:
                if sum(consumer_lag(broker.bootstrap, topic, group, {}).values()) == 0:
                    break
            except RuntimeError:
                pass
            time.sleep(0.5)
        r = run_headwater("status", "--dsn", f"chdb://{data}", "--kafka-bootstrap",
                          broker.bootstrap, "--topic", topic, "--group", group)
        text = r.stdout + r.stderr
        assert r.returncode == 2, text
        assert f"consumer lag ({group}): 0" in text, text
        assert "records no gRPC address" in text, text
    finally:
        stop(proc)
