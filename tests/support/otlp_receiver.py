"""An OTLP/gRPC receiver on loopback, built from opentelemetry-proto's service definitions:
what a collector would receive, kept for tests to read (spans flattened with their service)."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    links: tuple[str, ...]  # linked span ids


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer,
               metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.metric_names: set[tuple[str, str]] = set()  # (service, metric)
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            found = []
            for rs in request.resource_spans:
                service = {a.key: _value(a.value) for a in rs.resource.attributes}.get(
                    "service.name", "")
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        found.append(Span(service, s.name, s.trace_id.hex(), s.span_id.hex(),
                                          s.parent_span_id.hex(), s.kind,
                                          {a.key: _value(a.value) for a in s.attributes},
                                          tuple(link.span_id.hex() for link in s.links)))
            with self._lock:
                self.spans += found
            return trace_service_pb2.ExportTraceServiceResponse()
        with self._lock:
            for rm in request.resource_metrics:
                service = {a.key: _value(a.value) for a in rm.resource.attributes}.get(
                    "service.name", "")
                for sm in rm.scope_metrics:
                    self.metric_names |= {(service, m.name) for m in sm.metrics}
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> list[Span]:
        """The spans once `predicate(spans)` holds (or whatever arrived by the timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            time.sleep(0.1)
        return spans

    def stop(self) -> None:
        self._server.stop(0)
