"""OpenTelemetry: off by default; when configured, spans and metrics on publish, process
and query paths; server spans continue the caller's trace (traceparent), streaming calls get
spans, and spans carry the rpc.* semantic-convention attributes. Runs in a child process
because providers are process-global."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r'''
import json, sys, tempfile
import grpc
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from headwater.producers import telemetry
from opentelemetry import trace
off = type(trace.get_tracer_provider()).__name__
spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
telemetry.configure(None, span_exporter=spans, metric_reader=reader, env={})
from headwater.producers import EnvelopeBuilder, LocalTransport, Publisher
from headwater.query_service.server.app import build_server
from headwater.stream_processors import EventSink, Store
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc
store = Store("chdb://" + tempfile.mkdtemp()); store.migrate()
sink = EventSink(store, "local")
with Publisher(LocalTransport(sink), run_id="r") as pub:
    pub.publish(events_pb2.SourceRegistered(source_id="s", uri="file:///s",
                                            content_sha256="0" * 64))
server, port = build_server(store, "127.0.0.1:0", sink=sink)
server.start()
channel = grpc.insecure_channel(f"127.0.0.1:{port}")
parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
query_pb2_grpc.LineageStub(channel).GetSource(
    query_pb2.GetSourceRequest(source_id="s"), metadata=[("traceparent", parent)])
try:
    query_pb2_grpc.LineageStub(channel).GetSource(query_pb2.GetSourceRequest(source_id="no"))
except grpc.RpcError as exc:
    missing = exc.code().value[0]
event = EnvelopeBuilder("r2").wrap(events_pb2.SourceRegistered(
    source_id="s2", uri="file:///s2", content_sha256="0" * 64))
batch = query_pb2.EventBatch(events=[event.SerializeToString()])
query_pb2_grpc.IngestStub(channel).Publish(iter([batch]), metadata=[("traceparent", parent)])
try:  # a server stream
    list(query_pb2_grpc.UnlearningStub(channel).Status(
        query_pb2.UnlearningStatusRequest(request_id="nothing"), timeout=5))
    status_code = 0
except grpc.RpcError as exc:
    status_code = exc.code().value[0]
server.stop(0)
metrics = {m.name for rm in reader.get_metrics_data().resource_metrics
           for sm in rm.scope_metrics for m in sm.metrics}
finished = [{"name": s.name, "kind": s.kind.name, "trace": f"{s.context.trace_id:032x}",
             "span": f"{s.context.span_id:016x}",
             "parent": f"{s.parent.span_id:016x}" if s.parent else None,
             "attributes": dict(s.attributes)} for s in spans.get_finished_spans()]
print(json.dumps({"off": off, "spans": finished, "metrics": sorted(metrics),
                  "missing": missing, "status_code": status_code}))
'''


def _run() -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_spans_and_metrics_when_configured() -> None:
    seen = _run()
    names = {s["name"] for s in seen["spans"]}
    assert seen["off"] == "ProxyTracerProvider"  # nothing exported unless configured
    assert {"headwater.publish.close", "headwater.process.batch",
            "headwater.v1.Lineage/GetSource", "headwater.v1.Ingest/Publish"} <= names
    assert {"headwater.publish.events", "headwater.process.events",
            "rpc.server.call.duration"} <= set(seen["metrics"])

    by_name: dict[str, list[dict]] = {}
    for span in seen["spans"]:
        by_name.setdefault(span["name"], []).append(span)
    get_source, not_found = by_name["headwater.v1.Lineage/GetSource"]
    # the caller's traceparent is the parent; rpc.* attributes per the semantic conventions
    assert get_source["trace"] == "0af7651916cd43dd8448eb211c80319c"
    assert get_source["parent"] == "b7ad6b7169203331" and get_source["kind"] == "SERVER"
    assert get_source["attributes"] == {
        "rpc.system": "grpc", "rpc.service": "headwater.v1.Lineage", "rpc.method": "GetSource",
        "network.peer.address": "127.0.0.1",
        "network.peer.port": get_source["attributes"]["network.peer.port"],
        "rpc.grpc.status_code": 0}
    assert not_found["parent"] is None
    assert not_found["attributes"]["rpc.grpc.status_code"] == seen["missing"] == 5

    # the client-streaming Ingest.Publish gets a span, and the store's batch span is its child
    (publish,) = by_name["headwater.v1.Ingest/Publish"]
    assert publish["trace"] == "0af7651916cd43dd8448eb211c80319c"
    assert publish["attributes"]["rpc.method"] == "Publish"
    assert any(b["parent"] == publish["span"] for b in by_name["headwater.process.batch"])
    (status,) = by_name["headwater.v1.Unlearning/Status"]  # a server stream, to its end
    assert status["attributes"]["rpc.grpc.status_code"] == seen["status_code"]
