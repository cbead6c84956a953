"""OpenTelemetry traces and metrics for the publish, process and query paths.

Off by default: the OpenTelemetry API hands out no-op tracers until `configure` installs
SDK providers, which it does only when an OTLP endpoint (or a test exporter) is given.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import metrics, trace

_INSTRUMENTATION = "headwater"
_configured = False


def tracer() -> trace.Tracer:
    return trace.get_tracer(_INSTRUMENTATION)


def meter() -> metrics.Meter:
    return metrics.get_meter(_INSTRUMENTATION)


def configure(
    endpoint: str | None,
    service_name: str = "headwater",
    *,
    span_exporter: Any = None,
    metric_reader: Any = None,
) -> bool:
    """Install SDK providers exporting over OTLP/gRPC to `endpoint`; return whether on.

    `span_exporter` / `metric_reader` replace the OTLP ones (tests use in-memory ones).
    """
    global _configured
    if _configured or (endpoint is None and span_exporter is None and metric_reader is None):
        return _configured
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create({"service.name": service_name})
    provider = TracerProvider(resource=resource)
    readers = []
    if endpoint is not None:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint)))
    if span_exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    if metric_reader is not None:
        readers.append(metric_reader)
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
    _configured = True
    return True
