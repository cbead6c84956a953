"""The distributed path end to end: KafkaTransport -> Tansu -> `headwater process` -> chDB.

Read back with `headwater sql` and a `headwater query-service` over gRPC. chDB allows one
process per data directory, so the processor is stopped (SIGTERM: it finishes and commits
its batch, exit 0) once its consumer group has committed everything, and only then is the
directory read.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import grpc
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import Broker, free_port, headwater, run_headwater, stop, wait_for_port
from headwater.cli.status import consumer_lag
from headwater.producers import KafkaTransport, Publisher, PublishError
from headwater.producers.envelope import EnvelopeBuilder, event_hash
from headwater.producers.transports.chunking import split_into_chunks
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]


# -- helpers ------------------------------------------------------------------------------


def _uid() -> str:
    return uuid.uuid4().hex[:10]


def _source(tag: str, i: int, origin: str | None = None) -> events_pb2.SourceRegistered:
    return events_pb2.SourceRegistered(
        source_id=f"src-{tag}-{i}", uri=f"s3://bucket/{tag}/part-{i:04d}.parquet",
        content_sha256=hashlib.sha256(f"{tag}/{i}".encode()).hexdigest(),
        row_count=1000 + i, format="parquet", size_bytes=4096 * (i + 1),
        origin=origin if origin is not None else f"export {i} of the {tag} registry",
        licence="CC-BY-4.0", node_id=f"node-{tag}-{i}",
        schema=[events_pb2.Column(name="age", dtype="int64", personal=True),
                events_pb2.Column(name="label", dtype="float32")],
        labels={"tag": tag, "i": str(i)},
    )


def _committed(bootstrap: str, topic: str, group: str) -> int:
    """Sum over partitions of the group's committed offsets (0 where none)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=5)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            return 0
        parts = [TopicPartition(topic, p) for p in meta.topics[topic].partitions]
        return sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=5))
    finally:
        consumer.close()


def _end_offsets(bootstrap: str, topic: str) -> int:
    """Messages on the topic: the sum of its partitions' end offsets."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"end-{_uid()}"})
    try:
        meta = consumer.list_topics(topic, timeout=5)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            return 0
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
                   for p in meta.topics[topic].partitions)
    finally:
        consumer.close()


class Processor:
    """`headwater process` as a child process; its output is drained by a thread."""

    def __init__(self, bootstrap: str, topic: str, group: str, data_dir: Path,
                 partitions: int = 1) -> None:
        self.bootstrap, self.topic, self.group, self.data_dir = bootstrap, topic, group, data_dir
        self.partitions = partitions  # the topic's, as configured: process checks it
        self.lines: list[str] = []
        self.proc: subprocess.Popen | None = None

    def start(self) -> Processor:
        self.proc = headwater("process", "--dsn", f"chdb://{self.data_dir}",
                              "--kafka-bootstrap", self.bootstrap, "--topic", self.topic,
                              "--group", self.group, "--partitions", str(self.partitions))
        out = self.proc.stdout
        threading.Thread(target=lambda: self.lines.extend(out), daemon=True).start()
        return self

    @property
    def output(self) -> str:
        return "".join(self.lines[-60:])

    def wait_committed(self, messages: int, timeout: float = 45.0) -> None:
        """Until the group committed `messages` offsets (Kafka messages: with bundles one
        may carry many events; a transport counts its own in `messages_delivered`) and its
        lag is 0 (all stored)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        done, lag = 0, None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"headwater process exited with {self.proc.returncode}:\n"
                            f"{self.output}")
            try:
                done = _committed(self.bootstrap, self.topic, self.group)
                lag = consumer_lag(self.bootstrap, self.topic, self.group, {})
            except Exception as exc:  # broker briefly unavailable: ask again
                lag = repr(exc)
            if done >= messages and isinstance(lag, dict) and sum(lag.values()) == 0:
                return
            time.sleep(0.3)
        pytest.fail(f"group {self.group} committed {done} of {messages} message(s) "
                    f"(lag {lag}) after {timeout:.0f}s:\n{self.output}")

    def stop(self) -> None:
        """SIGTERM; the worker must stop cleanly (exit 0) so its offsets are committed."""
        if self.proc is not None and self.proc.poll() is None:
            stop(self.proc, timeout=30)
            assert self.proc.returncode == 0, f"process exited {self.proc.returncode}:\n" \
                                              f"{self.output}"
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop(self.proc, timeout=30)
        self.proc = None


@pytest.fixture
def processors() -> Iterable[list[Processor]]:
    """Processors a test starts; whatever is still running at the end is stopped."""
    started: list[Processor] = []
    yield started
    for p in started:
        p.kill()


def _process(started: list[Processor], bootstrap: str, topic: str, data_dir: Path,
             group: str | None = None, partitions: int = 1) -> Processor:
    p = Processor(bootstrap, topic, group or f"g-{_uid()}", data_dir, partitions).start()
    started.append(p)
    return p


def sql(data_dir: Path, query: str) -> list[dict]:
    """Rows of one read-only statement, through `headwater sql --format json`."""
    r = run_headwater("sql", query, "--dsn", f"chdb://{data_dir}", "--format", "json",
                      timeout=60)
    assert r.returncode == 0, f"headwater sql failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def scalar(data_dir: Path, query: str):
    rows = sql(data_dir, query)
    assert len(rows) == 1 and len(rows[0]) == 1, rows
    return next(iter(rows[0].values()))


def store_command(data_dir: Path, statement: str) -> None:
    """A write statement (e.g. OPTIMIZE) in a child process: chDB opens one data path per
    process, and this test process must not hold one."""
    code = ("import sys; from headwater.stream_processors.store import Store\n"
            "s = Store(sys.argv[1]); s.command(sys.argv[2]); s.close()")
    r = subprocess.run([sys.executable, "-c", code, f"chdb://{data_dir}", statement],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def _events_by_id(data_dir: Path) -> dict[str, int]:
    rows = sql(data_dir, "SELECT event_id, count() AS n FROM events FINAL GROUP BY event_id")
    return {r["event_id"]: int(r["n"]) for r in rows}


def _setup(broker: Broker, name: str, tmp_path: Path) -> tuple[str, str, Path]:
    """A fresh topic on the session broker, a tag for ids, and a chDB directory."""
    topic, tag = f"hw-{name}-{_uid()}", _uid()
    broker.create_topic(topic)
    return topic, tag, tmp_path / "clickhouse"


def _publish_sources(broker: Broker, topic: str, tag: str,
                     n: int) -> tuple[Publisher, list[events_pb2.Event]]:
    """Publish n SourceRegistered events through KafkaTransport; closed (all acked)."""
    with Publisher(KafkaTransport(broker.bootstrap, topic), run_id=f"run-{tag}") as pub:
        events = [pub.publish(_source(tag, i)) for i in range(n)]
    return pub, events


# -- tests --------------------------------------------------------------------------------


def test_sources_published_through_kafka_are_stored_and_served(
    broker: Broker, tmp_path: Path, processors: list[Processor]
) -> None:
    topic, tag, data = _setup(broker, "sources", tmp_path)
    pub, events = _publish_sources(broker, topic, tag, 200)

    proc = _process(processors, broker.bootstrap, topic, data)
    proc.wait_committed(pub.transport.messages_delivered)
    proc.stop()
    status = run_headwater("status", "--dsn", f"chdb://{data}", "--kafka-bootstrap",
                           broker.bootstrap, "--json",
                           env={"HEADWATER_KAFKA_TOPIC": topic,
                                "HEADWATER_KAFKA_GROUP": proc.group})
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["log_ok"] and report["events_by_type"] == {"source_registered": 200}
    assert report["lag"] == {f"{topic}/0": 0}

    assert scalar(data, "SELECT count() FROM sources FINAL") == 200
    assert scalar(data, "SELECT count() FROM events FINAL") == 200
    assert scalar(data, "SELECT count() FROM dead_letters FINAL") == 0
    stored = sql(data, "SELECT event_id, seq, payload_type, run_id, producer_id, lower(hex(hash))"
                       " AS h, transport, topic FROM events FINAL ORDER BY seq")
    assert [r["event_id"] for r in stored] == [e.event_id for e in events]
    assert [r["seq"] for r in stored] == list(range(1, 201))
    assert {(r["payload_type"], r["run_id"], r["producer_id"], r["transport"], r["topic"])
            for r in stored} == {("source_registered", f"run-{tag}", pub.producer_id,
                                  "kafka", topic)}
    assert [r["h"] for r in stored] == [e.hash.hex() for e in events]

    port = free_port()
    qs = headwater("query-service", "--dsn", f"chdb://{data}", "--listen", f"127.0.0.1:{port}")
    try:
        wait_for_port(port, timeout=60, proc=qs)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            lineage = query_pb2_grpc.LineageStub(channel)
            for i in (0, 57, 199):
                got = lineage.GetSource(query_pb2.GetSourceRequest(
                    source_id=f"src-{tag}-{i}"), timeout=10)
                want = events[i].source_registered
                assert (got.source_id, got.uri, got.content_sha256, got.row_count, got.format,
                        got.size_bytes, got.origin, got.licence, got.node_id) == (
                    want.source_id, want.uri, want.content_sha256, want.row_count,
                    want.format, want.size_bytes, want.origin, want.licence, want.node_id)
                assert [(c.name, c.dtype, c.personal) for c in got.schema] == [
                    (c.name, c.dtype, c.personal) for c in want.schema]
                assert dict(got.labels) == dict(want.labels)
                assert (got.run_id, got.producer_id, got.event_id) == (
                    f"run-{tag}", pub.producer_id, events[i].event_id)
            with pytest.raises(grpc.RpcError) as missing:
                lineage.GetSource(query_pb2.GetSourceRequest(source_id=f"src-{tag}-200"),
                                  timeout=10)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            listed = lineage.Sources(query_pb2.SourcesRequest(run_id=f"run-{tag}"), timeout=10)
            assert sorted(s.source_id for s in listed.sources) == sorted(
                f"src-{tag}-{i}" for i in range(200))
    finally:
        stop(qs)


def test_every_producer_compression_is_read_and_a_bad_one_is_named(
    broker: Broker, tmp_path: Path, processors: list[Processor]
) -> None:
    """KafkaTransport(compression=...) for consumers without zstd: process reads each."""
    topic, tag, data = _setup(broker, "codecs", tmp_path)
    published, messages = [], 0
    for codec in ("zstd", "lz4", "snappy", "gzip", "none"):
        with Publisher(KafkaTransport(broker.bootstrap, topic, compression=codec),
                       run_id=f"run-{tag}-{codec}") as pub:
            published += [pub.publish(_source(f"{tag}-{codec}", i)).event_id for i in range(3)]
        messages += pub.transport.messages_delivered
    with pytest.raises(ValueError, match="compression 'brotli' is not one of zstd, lz4"):
        KafkaTransport(broker.bootstrap, topic, compression="brotli")
    proc = _process(processors, broker.bootstrap, topic, data)
    proc.wait_committed(messages)
    proc.stop()
    assert _events_by_id(data) == dict.fromkeys(published, 1)
    bad = run_headwater("process", "--dsn", f"chdb://{tmp_path / 'unused'}",
                        env={"HEADWATER_KAFKA_COMPRESSION": "brotli"}, timeout=60)
    assert bad.returncode != 0 and "kafka_compression" in (bad.stdout + bad.stderr).lower()


def test_redelivered_events_are_stored_once(
    broker: Broker, tmp_path: Path, processors: list[Processor]
) -> None:
    topic, tag, data = _setup(broker, "redeliver", tmp_path)
    pub, events = _publish_sources(broker, topic, tag, 60)

    first = _process(processors, broker.bootstrap, topic, data)
    first.wait_committed(pub.transport.messages_delivered)
    first.stop()
    assert scalar(data, "SELECT count() FROM events FINAL") == 60

    # The same bytes once more on the topic (a producer re-sending after a lost ack), and
    # the whole topic consumed again by a new group into the same store.
    raw = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for e in events:
        raw.produce(topic, key=e.run_id.encode(), value=e.SerializeToString(deterministic=True))
    assert raw.flush(30) == 0
    second = _process(processors, broker.bootstrap, topic, data)
    second.wait_committed(pub.transport.messages_delivered + len(events))
    second.stop()

    assert _events_by_id(data) == {e.event_id: 1 for e in events}
    assert scalar(data, "SELECT count() FROM events FINAL") == 60
    assert scalar(data, "SELECT count() FROM sources FINAL") == 60
    store_command(data, "OPTIMIZE TABLE events FINAL")
    store_command(data, "OPTIMIZE TABLE sources FINAL")
    assert scalar(data, "SELECT count() FROM events") == 60
    assert scalar(data, "SELECT count() FROM sources") == 60


def test_malformed_messages_go_to_dead_letters_and_the_events_around_them_are_stored(
    broker: Broker, tmp_path: Path, processors: list[Processor]
) -> None:
    topic, tag = f"hw-poison-{_uid()}", _uid()
    broker.create_topic(topic)
    data = tmp_path / "clickhouse"
    # 1. bytes that are no protobuf at all
    garbage = b"\x00\xffthis is not a protobuf message"
    with pytest.raises(Exception):  # noqa: B017 - the premise: it really does not decode
        events_pb2.Event.FromString(garbage)
    # 2. a well-formed event breaking the contract (content_sha256 is not 64 hex digits)
    other = EnvelopeBuilder(f"run-{tag}")
    invalid = other.wrap(
        events_pb2.SourceRegistered(source_id="src-bad", uri="file:///x", content_sha256="xyz"))
    # 3. an event whose emitted_at (year ~1.5e11) no timestamp column can hold, correctly
    #    hashed: whatever rejects it, it must not take the events of its batch down with it
    far = other.wrap(_source(tag, 99))
    far.emitted_at.seconds = 2**62
    far.hash = event_hash(far)

    def produce_raw(value: bytes | None, headers: list[tuple[str, bytes]] | None = None
                    ) -> int:
        offsets: list[int] = []
        raw = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
        raw.produce(topic, key=f"run-{tag}".encode(), value=value, partition=0,
                    headers=headers,
                    on_delivery=lambda err, msg: offsets.append(-1 if err else msg.offset()))
        assert raw.flush(30) == 0 and offsets and offsets[0] >= 0
        return offsets[0]

    pub = Publisher(KafkaTransport(broker.bootstrap, topic), run_id=f"run-{tag}")
    before = pub.publish(_source(tag, 0))
    pub.flush(timeout=30)
    garbage_headers = [("origin", b"legacy-app"), ("trace", b"\x00\x01"), ("origin", b"2")]
    garbage_offset = produce_raw(garbage, garbage_headers)
    invalid_offset = produce_raw(invalid.SerializeToString(deterministic=True))
    far_offset = produce_raw(far.SerializeToString(deterministic=True))
    tombstone_offset = produce_raw(None)  # 4. a message with no value at all
    after = pub.publish(_source(tag, 1))
    pub.close()

    proc = _process(processors, broker.bootstrap, topic, data)
    proc.wait_committed(pub.transport.messages_delivered + 4)
    proc.stop()

    assert _events_by_id(data) == {before.event_id: 1, after.event_id: 1}
    assert sorted(r["source_id"] for r in sql(data, "SELECT source_id FROM sources FINAL")) == [
        f"src-{tag}-0", f"src-{tag}-1"]
    dead = sql(data, "SELECT topic, partition, offset, error, hex(raw) AS raw, event_id, "
                     "transport FROM dead_letters FINAL ORDER BY offset")
    assert [(d["topic"], d["partition"], int(d["offset"]), d["transport"]) for d in dead] == [
        (topic, 0, garbage_offset, "kafka"), (topic, 0, invalid_offset, "kafka"),
        (topic, 0, far_offset, "kafka"), (topic, 0, tombstone_offset, "kafka")]
    assert "undecodable" in dead[0]["error"] and "headwater.v1.Event" in dead[0]["error"]
    assert bytes.fromhex(dead[0]["raw"]) == garbage
    assert "source_registered.content_sha256" in dead[1]["error"]
    assert dead[1]["event_id"] == invalid.event_id
    assert dead[2]["error"] and bytes.fromhex(dead[2]["raw"]) == far.SerializeToString(
        deterministic=True)
    assert dead[3]["error"] and dead[3]["raw"] == ""
    # issue 19 item 7: the whole Kafka message is kept (key, headers in order, repeats
    # included); an empty message is called empty; the processed count leaves them out
    assert "empty message" in dead[3]["error"]
    kept = sql(data, "SELECT offset, key, arrayMap(h -> h.1, headers) AS names, "
                     "arrayMap(h -> hex(h.2), headers) AS vals FROM dead_letters FINAL "
                     "ORDER BY offset")
    assert {k["key"] for k in kept} == {f"run-{tag}"}
    assert kept[0]["names"] == [n for n, _ in garbage_headers]
    assert [bytes.fromhex(v) for v in kept[0]["vals"]] == [v for _, v in garbage_headers]
    assert all(k["names"] == [] for k in kept[1:])
    line = "stopped after storing 2 events (4 records dead-lettered)"
    deadline = time.monotonic() + 10  # the drain thread reads the last lines after exit
    while line not in proc.output and time.monotonic() < deadline:
        time.sleep(0.1)
    assert line in proc.output, proc.output


def test_broker_restart_while_publishing_loses_no_acknowledged_event(
    own_broker: Broker, tmp_path: Path, processors: list[Processor]
) -> None:
    topic, tag = f"hw-restart-{_uid()}", _uid()
    own_broker.create_topic(topic, partitions=4)
    data = tmp_path / "clickhouse"
    transport = KafkaTransport(own_broker.bootstrap, topic, stall_timeout=4.0,
                               send_timeout=20.0)
    pub = Publisher(transport, run_id=f"run-{tag}")
    batch_a = [pub.publish(_source(tag, i)) for i in range(100)]
    pub.flush(timeout=30)

    # A is stored before the broker goes (its memory storage forgets everything on
    # restart); the processor keeps running through the restart.
    proc = _process(processors, own_broker.bootstrap, topic, data, partitions=4)
    proc.wait_committed(transport.messages_delivered)

    before_restart = transport.messages_delivered
    own_broker.stop()
    batch_b: list[events_pb2.Event] = []
    failed: set[str] = set()
    try:
        for i in range(100, 200):
            batch_b.append(pub.publish(_source(tag, i)))
    except PublishError as exc:  # allowed: the event it names was not sent
        failed.update(exc.failed_event_ids)
    time.sleep(1.0)
    own_broker.start()
    # memory storage lost the topic; producers never auto-create it, the operator does
    # (`headwater topics create`), with the same partition count
    own_broker.create_topic(topic, partitions=4)
    try:
        pub.flush(timeout=40)
    except PublishError as exc:  # allowed, if it names what was not delivered
        assert exc.failed_event_ids, str(exc)
        failed.update(exc.failed_event_ids)
    else:
        assert transport.pending == 0
    transport.close()
    delivered = [e for e in batch_b if e.event_id not in failed]
    assert delivered, f"nothing of batch B was delivered after the restart: {failed}"

    # The restarted broker holds only what was delivered after the restart (batch B).
    proc.wait_committed(transport.messages_delivered - before_restart)
    proc.stop()

    stored = _events_by_id(data)
    assert {e.event_id for e in batch_a} <= stored.keys()
    missing = [e.event_id for e in delivered if e.event_id not in stored]
    assert not missing, f"{len(missing)} acknowledged event(s) are not stored: {missing[:5]}"
    assert set(stored.values()) == {1}
    assert scalar(data, "SELECT count() FROM sources FINAL") == len(stored)


def test_event_larger_than_a_message_is_chunked_and_reassembled(
    broker: Broker, tmp_path: Path, processors: list[Processor]
) -> None:
    topic, tag = f"hw-chunks-{_uid()}", _uid()
    broker.create_topic(topic)
    data = tmp_path / "clickhouse"
    # ~200 KB of text that does not compress away (hex digests), in one field.
    origin = "".join(hashlib.sha256(f"{tag}{i}".encode()).hexdigest() for i in range(3200))
    assert len(origin) > 200_000
    transport = KafkaTransport(broker.bootstrap, topic, max_message_bytes=50_000)
    pub = Publisher(transport, run_id=f"run-{tag}")
    big = pub.publish(_source(tag, 0, origin=origin))
    small = pub.publish(_source(tag, 1))
    pub.close()
    encoded = big.SerializeToString(deterministic=True)
    pieces = len(split_into_chunks(big.event_id, encoded, 50_000))
    assert pieces >= 4

    proc = _process(processors, broker.bootstrap, topic, data)
    proc.wait_committed(transport.messages_delivered)  # the pieces and the small event
    proc.stop()

    assert _events_by_id(data) == {big.event_id: 1, small.event_id: 1}
    row = sql(data, "SELECT hex(raw) AS raw, size_bytes FROM events FINAL WHERE event_id = "
                    f"'{big.event_id}'")[0]
    assert bytes.fromhex(row["raw"]) == encoded
    assert int(row["size_bytes"]) == len(encoded)
    src = sql(data, f"SELECT origin, content_sha256 FROM sources FINAL "
                    f"WHERE source_id = 'src-{tag}-0'")
    assert src == [{"origin": origin, "content_sha256": big.source_registered.content_sha256}]
    assert scalar(data, "SELECT count() FROM event_chunks FINAL "
                        f"WHERE event_id = '{big.event_id}'") == pieces
    assert scalar(data, "SELECT count() FROM dead_letters FINAL") == 0


def test_process_with_unreachable_kafka_fails_with_one_line(tmp_path: Path) -> None:
    port = free_port()  # bound once, then closed: nothing listens there
    # it must give up by itself: a hang is cut off (TimeoutExpired) after a generous ceiling
    r = run_headwater("process", "--dsn", f"chdb://{tmp_path / 'clickhouse'}",
                      "--kafka-bootstrap", f"127.0.0.1:{port}", "--topic", "t",
                      "--group", "g", timeout=120)
    assert r.returncode != 0
    output = (r.stdout + r.stderr).strip()
    assert output.startswith(f"headwater: error: cannot reach Kafka at 127.0.0.1:{port}"), output
    assert len(output.splitlines()) == 1, output
    assert "Traceback" not in output
    assert not (tmp_path / "clickhouse").exists() or not os.listdir(tmp_path / "clickhouse")



def test_small_events_travel_many_per_message_and_a_quiet_producer_s_go_unflushed(
    broker: Broker, tmp_path: Path, processors: list[Processor]
) -> None:
    """Bundling, on by default: 300 small events take a handful of Kafka messages and are
    all stored, each once; events sent and then left without a flush still go out once
    their linger is over (the transport's own thread sends them)."""
    topic, tag, data = _setup(broker, "bundles", tmp_path)
    # a linger long enough that a loaded machine's slow publishes still share messages
    with Publisher(KafkaTransport(broker.bootstrap, topic, bundle_linger=0.5),
                   run_id=f"run-{tag}") as pub:
        events = [pub.publish(_source(tag, i)) for i in range(300)]
    messages = pub.transport.messages_delivered
    assert 1 <= messages <= 30, f"{messages} messages for 300 small events"

    transport = KafkaTransport(broker.bootstrap, topic, bundle_linger=0.5)
    quiet = Publisher(transport, run_id=f"run-{tag}-quiet")
    late = [quiet.publish(_source(tag, 1000 + i)) for i in range(3)]
    deadline = time.monotonic() + 20
    while _end_offsets(broker.bootstrap, topic) <= messages:  # no flush, no further send
        assert time.monotonic() < deadline, "the lingering bundle was never sent"
        time.sleep(0.05)
    assert _end_offsets(broker.bootstrap, topic) == messages + 1  # the three, one message
    transport.close()
    assert transport.messages_delivered == 1

    proc = _process(processors, broker.bootstrap, topic, data)
    proc.wait_committed(messages + 1)
    proc.stop()
    assert _events_by_id(data) == {e.event_id: 1 for e in [*events, *late]}
    assert scalar(data, "SELECT count() FROM dead_letters FINAL") == 0


def test_forged_and_poisoned_bundles_are_dead_lettered_and_the_rest_stored(
    broker: Broker, tmp_path: Path, processors: list[Processor]
) -> None:
    """A message with the bundle header whose value is no EventBatch is refused whole; a
    poison event inside a real bundle only itself; the events around both are stored."""
    from headwater.producers.transports.bundling import BUNDLE_HEADER, encode_bundle

    topic, tag, data = _setup(broker, "hostile-bundles", tmp_path)
    builder = EnvelopeBuilder(f"run-{tag}")
    good = [builder.wrap(_source(tag, i)) for i in range(4)]
    raw = [e.SerializeToString(deterministic=True) for e in good]
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    mark = [(BUNDLE_HEADER, b"1")]
    producer.produce(topic, key=b"k", value=b"\xff\xfe forged", headers=mark)
    producer.produce(topic, key=b"k", value=encode_bundle([raw[0], b"\x08\x96\x01 poison",
                                                           raw[1]]), headers=mark)
    producer.produce(topic, key=b"k", value=encode_bundle([]), headers=mark)
    producer.produce(topic, key=b"k", value=encode_bundle(raw[2:]), headers=mark)
    assert producer.flush(30) == 0

    proc = _process(processors, broker.bootstrap, topic, data)
    proc.wait_committed(4)
    proc.stop()
    assert _events_by_id(data) == {e.event_id: 1 for e in good}
    errors = sorted(r["error"] for r in sql(data, "SELECT error FROM dead_letters FINAL"))
    assert [e.split(":")[0] for e in errors] == [
        "empty bundle", "undecodable bundle", "undecodable"], errors
