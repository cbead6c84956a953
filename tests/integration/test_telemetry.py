"""OpenTelemetry: off by default; when configured, spans and metrics on publish, process
and query paths. Runs in a child process because providers are process-global."""

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
telemetry.configure(None, span_exporter=spans, metric_reader=reader)
from headwater.producers import LocalTransport, Publisher
from headwater.query_service.server.app import build_server
from headwater.stream_processors import EventSink, Store
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc
store = Store("chdb://" + tempfile.mkdtemp()); store.migrate()
with Publisher(LocalTransport(EventSink(store, "local")), run_id="r") as pub:
    pub.publish(events_pb2.SourceRegistered(source_id="s", uri="file:///s",
                                            content_sha256="0" * 64))
server, port = build_server(store, "127.0.0.1:0")
server.start()
query_pb2_grpc.LineageStub(grpc.insecure_channel(f"127.0.0.1:{port}")).GetSource(
    query_pb2.GetSourceRequest(source_id="s"))
server.stop(0)
metrics = {m.name for rm in reader.get_metrics_data().resource_metrics
           for sm in rm.scope_metrics for m in sm.metrics}
print(json.dumps({"off": off, "spans": sorted({s.name for s in spans.get_finished_spans()}),
                  "metrics": sorted(metrics)}))
'''


def test_spans_and_metrics_when_configured() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["off"] == "ProxyTracerProvider"  # nothing exported unless configured
    assert {"headwater.publish.close", "headwater.process.batch",
            "headwater.rpc /headwater.v1.Lineage/GetSource"} <= set(seen["spans"])
    assert {"headwater.publish.events", "headwater.process.events",
            "headwater.rpc.duration"} <= set(seen["metrics"])
