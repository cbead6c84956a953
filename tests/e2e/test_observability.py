"""What operators plug in, against the real clients: `headwater serve` exporting OTLP to a
receiver built from opentelemetry-proto (set up only through the standard OTEL_* variables,
endpoint without scheme), a trainer whose step span and the server's ingest span join one
trace, and /metrics parsed by prometheus_client's own parser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.otlp_receiver import Receiver

from conftest import free_port, headwater, stop, wait_for_port

TRAINER = r'''
import json, sys
from opentelemetry import trace
from headwater.errors import PublishError
from headwater.producers import GrpcTransport, Publisher
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc
import grpc
publisher = Publisher(GrpcTransport(sys.argv[1], batch_size=100), run_id="otel-run")
steps = trace.get_tracer("trainer")
with steps.start_as_current_span("train.step") as span:
    for i in range(3):
        publisher.publish(events_pb2.SourceRegistered(
            source_id=f"s{i}", uri=f"file:///s{i}", content_sha256="0" * 64))
    publisher.transport.send("otel-run", "garbage", b"\xff\x00 not an event")
    try:
        publisher.flush()
    except PublishError as exc:  # the garbage is dead-lettered, the rest stored
        assert "garbage" in str(exc)
    step = span.get_span_context()
publisher.close()
query_pb2_grpc.LineageStub(grpc.insecure_channel(sys.argv[1])).GetSource(
    query_pb2.GetSourceRequest(source_id="s1"))
print(json.dumps({"trace": f"{step.trace_id:032x}", "span": f"{step.span_id:016x}"}))
'''


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def _otel_env(receiver: Receiver, service: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": f"127.0.0.1:{receiver.port}",  # no scheme
            "OTEL_SERVICE_NAME": service, "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRIC_EXPORT_INTERVAL": "500"}


def test_trainer_and_server_spans_join_one_trace_and_metrics_scrape(
        tmp_path: Path, receiver: Receiver) -> None:
    port, metrics_port = free_port(), free_port()
    target = f"127.0.0.1:{port}"
    proc = headwater("serve", "--data-dir", str(tmp_path / "data"), "--listen", target,
                     env={**_otel_env(receiver, "serve-under-test"),
                          "HEADWATER_METRICS_PORT": str(metrics_port)})
    try:
        wait_for_port(port, timeout=90, proc=proc)
        done = subprocess.run([sys.executable, "-c", TRAINER, target], capture_output=True,
                              text=True, timeout=120, env={**os.environ, **_otel_env(
                                  receiver, "trainer-under-test")})
        assert done.returncode == 0, done.stderr
        step = json.loads(done.stdout.strip().splitlines()[-1])

        def joined(spans: list) -> bool:
            # both server spans: the batch span (the child) ends, and may be exported, a
            # schedule delay before the call's span that holds it
            return {"headwater.process.batch", "headwater.v1.Ingest/PublishBatch"} <= {
                s.name for s in spans
                if s.service == "serve-under-test" and s.trace_id == step["trace"]}

        spans = receiver.wait_for(joined)
        in_trace = [s for s in spans if s.trace_id == step["trace"]]
        by_id = {s.span_id: s for s in in_trace}
        server = next(s for s in in_trace if s.service == "serve-under-test"
                      and s.name == "headwater.v1.Ingest/PublishBatch")
        client = by_id[server.parent_id]  # the server span continues the trainer's call
        assert client.service == "trainer-under-test" and client.parent_id == step["span"]
        assert server.attributes["rpc.system"] == "grpc"
        assert server.attributes["rpc.method"] == "PublishBatch"
        assert server.attributes["rpc.grpc.status_code"] == 0
        batch = next(s for s in in_trace if s.name == "headwater.process.batch")
        assert batch.parent_id == server.span_id  # storing the events, inside the call

        families = _scrape(metrics_port, until=lambda f: _value(
            f, "headwater_store_rows", {"table": "events"}) >= 3)  # gauges: up to 2 s old
        assert {"headwater_process_events", "headwater_store_size_bytes"} <= set(families)
        assert _value(families, "headwater_process_events", {}) >= 3
        assert _value(families, "headwater_process_dead_letters", {}) >= 1
        assert _value(families, "headwater_store_size_bytes", {"table": "events"}) > 0
        assert _value(families, "headwater_store_rows", {"table": "events"}) >= 3
        latency = families["rpc_server_call_duration_seconds"]
        assert latency.type == "histogram"
        assert _value(families, "rpc_server_call_duration_seconds",
                      {"rpc_method": "GetSource"}, suffix="_count") >= 1
        # the OTLP metrics reached the receiver too, under the service name given
        assert receiver.wait_for(lambda _: ("serve-under-test", "headwater.process.events")
                                 in receiver.metric_names) is not None
        assert ("serve-under-test", "headwater.process.events") in receiver.metric_names
    finally:
        stop(proc)
    assert "metrics on http://127.0.0.1:" in (proc.stdout.read() if proc.stdout else "")


def _scrape(port: int, until: Callable[[dict], bool], timeout: float = 15.0) -> dict:
    """The metric families of /metrics, scraped until `until` holds (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        if time.monotonic() > deadline or until(families):
            return families
        time.sleep(0.5)


def _value(families: dict, name: str, labels: dict[str, str], suffix: str = "") -> float:
    """The sum of `name`'s samples (name + suffix) whose labels include `labels`."""
    if name not in families:
        return 0
    samples = [s for s in families[name].samples
               if s.name in (name + suffix, name + "_total") or (not suffix and s.name == name)]
    return sum(s.value for s in samples if labels.items() <= s.labels.items())


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_process_and_query_service_serve_metrics(tmp_path: Path, broker,
                                                 receiver: Receiver) -> None:
    """`process`: events, dead letters and the group's lag, and its batch span linked to the
    span named by a message's traceparent header; then `query-service` on the same store:
    call latency and store size. Metrics parsed by prometheus_client."""
    from confluent_kafka import Producer

    from headwater.producers import KafkaTransport, Publisher
    from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

    topic, group = f"metrics-{tmp_path.name[-10:]}", f"metrics-group-{tmp_path.name[-10:]}"
    broker.create_topic(topic, partitions=2)
    dsn = f"chdb://{tmp_path / 'clickhouse'}"
    metrics_port = free_port()
    proc = headwater("process", "--dsn", dsn, "--kafka-bootstrap", broker.bootstrap,
                     "--topic", topic, "--group", group, "--partitions", "2",
                     env={"HEADWATER_METRICS_PORT": str(metrics_port),
                          **_otel_env(receiver, "process-under-test")})
    try:
        wait_for_port(metrics_port, timeout=90, proc=proc)
        with Publisher(KafkaTransport(broker.bootstrap, topic), run_id="metrics-run") as pub:
            for i in range(5):
                pub.publish(events_pb2.SourceRegistered(
                    source_id=f"m{i}", uri=f"file:///m{i}", content_sha256="0" * 64))
        garbage = Producer({"bootstrap.servers": broker.bootstrap})
        sender = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        garbage.produce(topic, key=b"metrics-run", value=b"\x00\xffnot an event",
                        headers=[("traceparent", sender.encode())])
        garbage.flush(10)

        families = _scrape(metrics_port, until=lambda f: (
            _value(f, "headwater_process_events", {}) >= 5
            and _value(f, "headwater_process_dead_letters", {}) >= 1
            and "headwater_process_lag" in f
            and _value(f, "headwater_process_lag", {}) == 0), timeout=60)
        assert _value(families, "headwater_process_events", {}) >= 5
        assert _value(families, "headwater_process_dead_letters", {}) >= 1
        lag = families["headwater_process_lag"]
        assert {s.labels["partition"] for s in lag.samples} == {f"{topic}/0", f"{topic}/1"}
        assert _value(families, "headwater_process_lag", {}) == 0
        assert _value(families, "headwater_store_rows", {"table": "events"}) >= 5
        spans = receiver.wait_for(lambda found: any("00f067aa0ba902b7" in s.links
                                                    for s in found))
        linked = [s for s in spans if "00f067aa0ba902b7" in s.links]
        assert linked and linked[0].name == "headwater.process.batch"
        assert linked[0].service == "process-under-test"
    finally:
        stop(proc)

    port, metrics_port = free_port(), free_port()
    proc = headwater("query-service", "--dsn", dsn, "--listen", f"127.0.0.1:{port}",
                     env={"HEADWATER_METRICS_PORT": str(metrics_port)})
    try:
        wait_for_port(port, timeout=90, proc=proc)
        import grpc

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            query_pb2_grpc.LineageStub(channel).GetSource(
                query_pb2.GetSourceRequest(source_id="m1"), timeout=30)
        families = _scrape(metrics_port, until=lambda f: _value(
            f, "rpc_server_call_duration_seconds", {"rpc_method": "GetSource"}, "_count") >= 1)
        assert _value(families, "rpc_server_call_duration_seconds",
                      {"rpc_method": "GetSource", "rpc_grpc_status_code": "0"}, "_count") == 1
        buckets = [s for s in families["rpc_server_call_duration_seconds"].samples
                   if s.name.endswith("_bucket") and s.labels["rpc_method"] == "GetSource"]
        assert {s.labels["le"] for s in buckets} >= {"0.001", "0.1", "1.0", "+Inf"}
        assert _value(families, "headwater_store_size_bytes", {"table": "events"}) > 0
    finally:
        stop(proc)


@pytest.mark.kafka
def test_kafka_messages_carry_the_senders_trace(broker) -> None:
    """KafkaTransport puts the current span (a training step) in each message's headers."""
    from confluent_kafka import Consumer
    from opentelemetry.sdk.trace import TracerProvider

    from headwater.producers import KafkaTransport, Publisher
    from headwater.v1 import events_pb2

    topic = f"traced-{time.time_ns()}"
    broker.create_topic(topic)
    step_tracer = TracerProvider().get_tracer("trainer")  # not installed globally
    with Publisher(KafkaTransport(broker.bootstrap, topic), run_id="traced") as pub:
        with step_tracer.start_as_current_span("train.step") as step:
            pub.publish(events_pb2.SourceRegistered(source_id="t", uri="file:///t",
                                                    content_sha256="0" * 64))
        pub.publish(events_pb2.SourceRegistered(source_id="u", uri="file:///u",
                                                content_sha256="0" * 64))  # no span
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": topic,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    try:
        got: list = []
        for _ in range(30):
            got += [m for m in consumer.consume(10, timeout=1.0) if m.error() is None]
            if len(got) >= 2:
                break
    finally:
        consumer.close()
    first, second = sorted(got, key=lambda m: m.offset())
    context = step.get_span_context()
    assert dict(first.headers() or [])["traceparent"] == \
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}".encode()
    assert "traceparent" not in dict(second.headers() or [])
