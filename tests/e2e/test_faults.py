"""Fault tests: real processes killed and restarted, real chDB, real Tansu broker.

After each fault: every event the producer was told was delivered is stored exactly once,
the hash chains verify, and a replay of the log equals the incremental derived tables
(tests/support/faults.py). Processes are stopped by pid, never by name.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
from confluent_kafka import Consumer, TopicPartition
from support.faults import Workload, assert_recovered, workload

from conftest import Broker, Serve, free_port, headwater, run_headwater, stop, wait_for_port
from headwater.cli.status import consumer_lag
from headwater.producers import GrpcTransport, KafkaTransport, Publisher, PublishError
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

pytestmark = pytest.mark.timeout(600)


def _uid() -> str:
    return uuid.uuid4().hex[:10]


def _sql(target: str, sql: str, **params: str) -> list[list]:
    """Rows of a read-only query over a running server's gRPC Query.Sql."""
    stub = query_pb2_grpc.QueryStub(grpc.insecure_channel(target))
    response = stub.Sql(query_pb2.SqlRequest(sql=sql, parameters=params), timeout=20)
    return json.loads(response.rows_json)


def _publish_all(pub: Publisher, w: Workload) -> list[events_pb2.Event]:
    return [pub.publish(p) for p in w.payloads]


# -- serve ------------------------------------------------------------------------------------


def test_serve_killed_during_ingestion_restarts_and_stores_each_event_once(
    tmp_path: Path,
) -> None:
    serve = Serve(tmp_path / "data")
    serve.start()
    w = workload(_uid(), rows=320, batch=4)  # ~90 events, ~10 per PublishBatch
    transport = GrpcTransport(serve.target, batch_size=10, max_in_flight=1, retry_for=60)
    pub = Publisher(transport, run_id=f"run-{_uid()}")
    events: list[events_pb2.Event] = []
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for p in w.payloads:
                events.append(pub.publish(p))
                time.sleep(0.005)
            pub.flush()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=produce)
    try:
        thread.start()
        deadline = time.monotonic() + 120
        while _sql(serve.target, "SELECT count() FROM events")[0][0] < 20:
            assert time.monotonic() < deadline, "serve stored nothing in 120s"
            time.sleep(0.05)
        assert thread.is_alive(), "the producer finished before the kill: not mid-stream"
        serve.stop(signal.SIGKILL)  # no clean shutdown: whatever was in flight is lost
        time.sleep(0.5)
        serve.start()  # same data dir, same port; the transport retries meanwhile
        thread.join(60)
        assert not thread.is_alive() and not errors, errors
        assert len(events) == len(w.payloads)
        pub.close()
    finally:
        serve.stop()
    result = assert_recovered(f"chdb://{serve.data_dir / 'clickhouse'}",
                              [e.event_id for e in events])
    assert result["stored"] == len(events)


def test_store_write_failure_acks_nothing_and_recovers(tmp_path: Path) -> None:
    """Disk full, simulated: chDB keeps its data files open, and a root test process ignores
    chmod, so a full or read-only disk is injected at Store.insert (HEADWATER_TEST_FAIL_INSERTS,
    the engine's own NOT_ENOUGH_SPACE text) rather than produced for real."""
    flag = tmp_path / "disk-full"
    flag.write_text("Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space. "
                    "(NOT_ENOUGH_SPACE)")
    serve = Serve(tmp_path / "data")
    serve.proc = headwater("serve", "--data-dir", str(serve.data_dir), "--listen", serve.target,
                           env={"HEADWATER_TEST_FAIL_INSERTS": str(flag)})
    try:
        wait_for_port(serve.port, timeout=60, proc=serve.proc)
        w = workload(_uid(), rows=64, batch=8)
        transport = GrpcTransport(serve.target, batch_size=1000, retry_for=1.5)
        pub = Publisher(transport, run_id=f"run-{_uid()}")
        events = _publish_all(pub, w)
        with pytest.raises(PublishError) as failed:
            pub.flush()
        message = str(failed.value)
        assert "UNAVAILABLE" in message and "NOT_ENOUGH_SPACE" in message, message
        assert set(failed.value.failed_event_ids) == {e.event_id for e in events}
        # Nothing it did not store was acknowledged, and nothing was stored.
        assert _sql(serve.target, "SELECT count() FROM events")[0][0] == 0
        flag.unlink()  # space freed: the same transport resends the batch it kept
        pub.flush()
        pub.close()
    finally:
        serve.stop()
    assert_recovered(f"chdb://{serve.data_dir / 'clickhouse'}", [e.event_id for e in events])


# -- query service ------------------------------------------------------------------------------


def test_query_service_restarted_during_queries_answers_unavailable_never_wrong(
    tmp_path: Path,
) -> None:
    serve = Serve(tmp_path / "data")
    serve.start()
    w = workload(_uid(), rows=64, batch=8)
    try:
        with Publisher(GrpcTransport(serve.target), run_id=f"run-{_uid()}") as pub:
            _publish_all(pub, w)
    finally:
        serve.stop()
    port = free_port()
    target = f"127.0.0.1:{port}"
    args = ("query-service", "--dsn", f"chdb://{serve.data_dir / 'clickhouse'}",
            "--listen", target)
    proc = headwater(*args)
    channel = grpc.insecure_channel(target)
    attribution = query_pb2_grpc.AttributionStub(channel)
    lineage = query_pb2_grpc.LineageStub(channel)
    attribute = query_pb2.AttributeRequest(prediction_id=w.prediction_ids[0], top_k=5)
    trace = query_pb2.TraceRowsRequest(rows=events_pb2.RowKeys(node_ids=[w.train_node],
                                                               rows=[0, 7, 33]))
    calls = [("attribute", lambda: attribution.Attribute(attribute, timeout=10)),
             ("trace", lambda: lineage.TraceRows(trace, timeout=10))]
    try:
        wait_for_port(port, timeout=60, proc=proc)
        expected = {name: call() for name, call in calls}
        assert expected["attribute"].rows and len(expected["trace"].traces) == 3
        seen: list[tuple[str, float, object]] = []  # (call, time, response or status code)
        halt = threading.Event()

        def client(name: str, call) -> None:
            while not halt.is_set():
                try:
                    seen.append((name, time.monotonic(), call()))
                except grpc.RpcError as exc:
                    seen.append((name, time.monotonic(), exc.code()))
                    time.sleep(0.05)

        def until(what: str, done) -> None:  # a deadline, not a fixed pause
            deadline = time.monotonic() + 120
            while not done():
                assert time.monotonic() < deadline, f"{what}: not seen in 120s"
                time.sleep(0.05)

        def answered_since(t0: float) -> bool:
            return all(any(n == name and at > t0 and not isinstance(r, grpc.StatusCode)
                           for n, at, r in list(seen)) for name, _ in calls)

        threads = [threading.Thread(target=client, args=c) for c in calls for _ in range(2)]
        for t in threads:
            t.start()
        until("every call answered before the kill", lambda: answered_since(0.0))
        stop(proc, signal.SIGKILL)
        killed_at = time.monotonic()
        until("a call refused while the service is down", lambda: any(
            at > killed_at and r == grpc.StatusCode.UNAVAILABLE for _, at, r in list(seen)))
        proc = headwater(*args)
        wait_for_port(port, timeout=120, proc=proc)
        restarted_at = time.monotonic()
        until("every call answered after the restart", lambda: answered_since(restarted_at))
        halt.set()
        for t in threads:
            t.join(20)
    finally:
        stop(proc)
        channel.close()
    codes = {r for _, _, r in seen if isinstance(r, grpc.StatusCode)}
    assert codes <= {grpc.StatusCode.UNAVAILABLE}, f"clients got {codes}"
    assert grpc.StatusCode.UNAVAILABLE in codes, "no call saw the service down"
    answers = [(n, at, r) for n, at, r in seen if not isinstance(r, grpc.StatusCode)]
    wrong = [n for n, _, r in answers if r != expected[n]]
    assert not wrong, f"{len(wrong)} answer(s) differ from the answer before the restart"
    for name, _ in calls:
        assert any(n == name and at < killed_at for n, at, _ in answers), name
        assert any(n == name and at > restarted_at for n, at, _ in answers), \
            f"{name} never succeeded after the restart"


# -- Kafka ------------------------------------------------------------------------------------


class _Processor:
    """`headwater process` as a child (small batches), its output drained by a thread."""

    def __init__(self, bootstrap: str, topic: str, group: str, dsn: str,
                 env: dict[str, str] | None = None, partitions: int = 1) -> None:
        self.bootstrap, self.topic, self.group = bootstrap, topic, group
        self.lines: list[str] = []
        self.proc = headwater("process", "--dsn", dsn, "--kafka-bootstrap", bootstrap,
                              "--topic", topic, "--group", group, "--batch-size", "25",
                              "--partitions", str(partitions), env=env)
        out = self.proc.stdout
        threading.Thread(target=lambda: self.lines.extend(out), daemon=True).start()

    @property
    def output(self) -> str:
        return "".join(self.lines[-40:])

    def caught_up(self, messages: int, timeout: float = 45.0) -> None:
        """Until the group committed >= `messages` offsets (Kafka messages: a bundle carries
        several events) and has no lag."""
        deadline = time.monotonic() + timeout
        done, lag = 0, None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"process exited:\n{self.output}"
            try:
                done = sum(_committed(self.bootstrap, self.topic, self.group).values())
                lag = consumer_lag(self.bootstrap, self.topic, self.group, {})
            except Exception as exc:  # broker briefly unavailable: ask again
                lag = repr(exc)
            if done >= messages and isinstance(lag, dict) and sum(lag.values()) == 0:
                return
            time.sleep(0.3)
        pytest.fail(f"committed {done} (< {messages}?), lag {lag}:\n{self.output}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop(self.proc, timeout=30)
            assert self.proc.returncode == 0, f"exit {self.proc.returncode}:\n{self.output}"


def _committed(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=5)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            return {}
        parts = [TopicPartition(topic, p) for p in meta.topics[topic].partitions]
        return {tp.partition: max(tp.offset, 0) for tp in consumer.committed(parts, timeout=5)}
    finally:
        consumer.close()


# The crashed member stays in the group until its session times out; a short session lets
# the restarted member take its partition in seconds rather than the default 10 s.
_QUICK_GROUP = {"HEADWATER_KAFKA_CONFIG": json.dumps({"session.timeout.ms": 3000,
                                                      "heartbeat.interval.ms": 500})}


@pytest.mark.kafka
@pytest.mark.parametrize("per_message", [1, 4])
def test_processor_killed_between_insert_and_commit_stores_the_batch_once(
    broker: Broker, tmp_path: Path, per_message: int
) -> None:
    """`per_message`: events per Kafka message (4: bundles, each full: the linger is long
    and one key sends them all in order)."""
    topic, group = f"hw-crash-{_uid()}", f"g-{_uid()}"
    broker.create_topic(topic)
    dsn = f"chdb://{tmp_path / 'clickhouse'}"
    w = workload(_uid(), rows=160 * per_message, batch=8)  # batches of 25 messages: several
    transport = KafkaTransport(broker.bootstrap, topic, bundle_events=per_message,
                               bundle_linger=60.0)
    with Publisher(transport, run_id=f"run-{_uid()}") as pub:
        events = _publish_all(pub, w)

    crashing = _Processor(broker.bootstrap, topic, group, dsn,
                          env={"HEADWATER_TEST_CRASH_AFTER_INSERT": "2", **_QUICK_GROUP})
    try:
        assert crashing.proc.wait(60) == 70, crashing.output
    finally:  # a processor that never crashed is not left running
        if crashing.proc.poll() is None:
            stop(crashing.proc, timeout=30)
    assert "before the offset commit" in crashing.output
    messages = sum(_committed(broker.bootstrap, topic, group).values())
    committed = min(messages * per_message, len(events))  # the events of those messages
    assert 0 < committed < len(events), committed  # batch 1 committed, batch 2 not
    stored = run_headwater("sql", "SELECT count() FROM events FINAL", "--dsn", dsn,
                           "--format", "json", timeout=60)
    assert stored.returncode == 0, stored.stderr
    in_store = int(next(iter(json.loads(stored.stdout).values())))
    assert in_store > committed, (in_store, committed)  # batch 2: stored, not committed

    proc = _Processor(broker.bootstrap, topic, group, dsn, env=_QUICK_GROUP)
    try:
        proc.caught_up(transport.messages_delivered)
    finally:
        proc.stop()
    assert_recovered(dsn, [e.event_id for e in events])


@pytest.mark.kafka
def test_processor_store_failing_commits_nothing_unstored(broker: Broker,
                                                          tmp_path: Path) -> None:
    """The store fails (disk full, injected at Store.insert): the runner retries and commits
    nothing it did not store; once the store recovers it goes on by itself. Failing again,
    then stopped (SIGTERM) mid-retry: it exits 75 before faust could acknowledge the batch,
    nothing of it committed, and a restart stores every event once."""
    topic, group = f"hw-full-{_uid()}", f"g-{_uid()}"
    broker.create_topic(topic)
    dsn = f"chdb://{tmp_path / 'clickhouse'}"
    flag = tmp_path / "disk-full"
    flag.write_text("Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space. "
                    "(NOT_ENOUGH_SPACE)")
    transport = KafkaTransport(broker.bootstrap, topic, bundle_events=4, bundle_linger=60.0)
    pub = Publisher(transport, run_id=f"run-{_uid()}")
    events = _publish_all(pub, workload(_uid(), rows=64, batch=8))
    pub.flush()
    env = {"HEADWATER_TEST_FAIL_INSERTS": str(flag), **_QUICK_GROUP}

    def retries(proc: _Processor) -> int:
        return "".join(proc.lines).count("store write failed")

    def failing(proc: _Processor, times: int) -> None:
        deadline = time.monotonic() + 60
        while retries(proc) < times:
            assert time.monotonic() < deadline, proc.output
            assert proc.proc.poll() is None, proc.output
            time.sleep(0.2)

    proc = _Processor(broker.bootstrap, topic, group, dsn, env=env)
    try:
        failing(proc, 2)
        assert sum(_committed(broker.bootstrap, topic, group).values()) == 0
        flag.unlink()  # space freed: the batch in hand is stored, then the rest
        proc.caught_up(transport.messages_delivered)
        first = sum(_committed(broker.bootstrap, topic, group).values())
        flag.write_text("Code: 243. DB::Exception: not enough space. (NOT_ENOUGH_SPACE)")
        events += _publish_all(pub, workload(_uid(), rows=64, batch=8))
        pub.flush()
        failing(proc, 2 + retries(proc))
    finally:
        stop(proc.proc, timeout=30)
    assert proc.proc.returncode == 75, proc.output
    assert "not committing them" in proc.output
    assert sum(_committed(broker.bootstrap, topic, group).values()) == first
    flag.unlink()
    again = _Processor(broker.bootstrap, topic, group, dsn, env=_QUICK_GROUP)
    try:
        again.caught_up(transport.messages_delivered)
    finally:
        again.stop()
        pub.close()
    assert_recovered(dsn, [e.event_id for e in events])


@pytest.mark.kafka
def test_broker_restarted_mid_stream_loses_nothing_acknowledged(
    own_broker: Broker, tmp_path: Path
) -> None:
    """Tansu runs on memory:// here (the build has no durable engine: sqlite/turso/slatedb
    are not compiled in, file:// is unsupported), so a restart loses the topic and the
    group's offsets. What is tested: events stored before the restart stay stored; events
    published while the broker is down are reported failed (or delivered later), never
    silently dropped; republishing the failed ones after the restart gives exactly once."""
    topic = f"hw-bounce-{_uid()}"
    own_broker.create_topic(topic, partitions=4)
    dsn = f"chdb://{tmp_path / 'clickhouse'}"
    w = workload(_uid(), rows=160, batch=8)
    transport = KafkaTransport(own_broker.bootstrap, topic, stall_timeout=4.0, send_timeout=8.0)
    # Envelopes built up front (what Publisher.publish does), so the bytes of an event whose
    # send raised are at hand to publish again.
    pub = Publisher(transport, run_id=f"run-{_uid()}")
    events = [pub.envelopes.wrap(p) for p in w.payloads]
    half = len(events) // 2

    def send(e: events_pb2.Event) -> None:
        transport.send(e.run_id, e.event_id, e.SerializeToString(deterministic=True))

    for e in events[:half]:
        send(e)
    transport.flush(timeout=30)
    proc = _Processor(own_broker.bootstrap, topic, f"g-{_uid()}", dsn, partitions=4)
    try:
        proc.caught_up(transport.messages_delivered)
        before_restart = transport.messages_delivered
        own_broker.stop()
        failed: set[str] = set()
        for e in events[half:]:
            try:
                send(e)
            except PublishError as exc:  # names earlier events; this one was not sent
                failed.update(exc.failed_event_ids)
                failed.add(e.event_id)
        time.sleep(1.0)
        own_broker.start()
        # memory storage lost the topic; producers never auto-create it, the operator does
        # (`headwater topics create`), with the same partition count
        own_broker.create_topic(topic, partitions=4)
        try:
            transport.flush(timeout=30)
        except PublishError as exc:  # allowed, if it names what was not delivered
            assert exc.failed_event_ids, str(exc)
            failed.update(exc.failed_event_ids)
        by_id = {e.event_id: e for e in events}
        assert failed <= by_id.keys(), failed - by_id.keys()
        for event_id in sorted(failed, key=lambda i: by_id[i].seq):
            send(by_id[event_id])  # the same bytes again
        transport.flush(timeout=30)
        assert transport.pending == 0
        transport.close()
        proc.caught_up(transport.messages_delivered - before_restart)
    finally:
        proc.stop()
    assert_recovered(dsn, [e.event_id for e in events])
