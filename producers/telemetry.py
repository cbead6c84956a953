"""OpenTelemetry traces and metrics for the publish, process and query paths.

Off by default: the OpenTelemetry API hands out no-op tracers until `configure` installs SDK
providers, which it does when an OTLP endpoint is set — the standard variables
(`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, `OTEL_*`; docs/operations.md) or
HEADWATER_OTLP_ENDPOINT — when a Prometheus port is given, or when a test passes exporters.
A trainer's Publisher calls `configure_from_env` itself, so setting the variables is enough.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import metrics, trace

from headwater.errors import ConfigError

_INSTRUMENTATION = "headwater"
_configured = False
_metrics_port: int | None = None

# Histogram buckets in seconds for call durations (OpenTelemetry's defaults are for ms).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0)
DURATION_METRIC = "rpc.server.call.duration"
PROTOCOLS = ("grpc", "http/protobuf")


def tracer() -> trace.Tracer:
    return trace.get_tracer(_INSTRUMENTATION)


def meter() -> metrics.Meter:
    return metrics.get_meter(_INSTRUMENTATION)


def metrics_port() -> int | None:
    """The port the Prometheus endpoint listens on (None: not serving)."""
    return _metrics_port


# --- trace context across a batch -----------------------------------------------------------

class BatchTraces:
    """The spans that were current when each buffered event was sent (a trainer's step
    spans), so the span of the call that carries the batch continues the first one's trace
    and links the others."""

    MAX_LINKS = 32

    def __init__(self) -> None:
        self._contexts: list[trace.SpanContext] = []

    def add_current(self) -> None:
        context = trace.get_current_span().get_span_context()
        if context.is_valid and len(self._contexts) <= self.MAX_LINKS and (
                not self._contexts or self._contexts[-1] != context):
            self._contexts.append(context)

    def start(self, service: str, method: str, events: int) -> BatchSpan:
        """A CLIENT span for sending the buffered events (then forgotten) in one call."""
        contexts, self._contexts = self._contexts, []
        parent = (trace.set_span_in_context(trace.NonRecordingSpan(contexts[0]))
                  if contexts else None)
        span = tracer().start_span(
            f"{service}/{method}", context=parent, kind=trace.SpanKind.CLIENT,
            links=[trace.Link(c) for c in contexts[1:]],
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method,
                        "headwater.events": events})
        return BatchSpan(span)


class BatchSpan:
    """A sending call's span and the metadata (W3C traceparent) that carries it."""

    def __init__(self, span: trace.Span) -> None:
        from opentelemetry import propagate

        self.span = span
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        self.metadata: tuple[tuple[str, str], ...] | None = tuple(carrier.items()) or None
        self._ended = False

    def failed(self, exc: BaseException) -> None:
        self.span.record_exception(exc)
        self.span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)[:200]))
        self.end()

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self.span.end()


def trace_headers() -> list[tuple[str, bytes]]:
    """The current span as message headers (W3C traceparent), for transports without call
    metadata (Kafka); none when no span is recording."""
    if not trace.get_current_span().get_span_context().is_valid:
        return []
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(name, value.encode()) for name, value in carrier.items()]


def links_from_headers(headers: Iterable[Sequence[tuple[str, bytes]]],
                       limit: int = 128) -> list[trace.Link]:
    """Links to the spans named by the `traceparent` headers of a batch's messages (each
    span once, at most `limit`): a stored batch points at the steps that sent its events."""
    from opentelemetry import propagate

    seen: dict[bytes, trace.Link] = {}
    for message in headers:
        for name, value in message:
            if name != "traceparent" or value in seen or len(seen) >= limit:
                continue
            context = trace.get_current_span(propagate.extract(
                {"traceparent": value.decode(errors="replace")})).get_span_context()
            if context.is_valid:
                seen[value] = trace.Link(context)
    return list(seen.values())


# --- what the environment asks for (pure) ----------------------------------------------------

@dataclass(frozen=True)
class Export:
    """One signal's OTLP export: where, and over which protocol."""

    endpoint: str
    protocol: str


@dataclass(frozen=True)
class Plan:
    traces: Export | None
    metrics: Export | None


def _loopback(host: str | None) -> bool:
    return host is not None and (host == "localhost" or host == "::1"
                                 or host.startswith("127."))


def with_scheme(endpoint: str, variable: str, insecure: bool = False) -> str:
    """`endpoint` with its scheme: given, or http:// for a loopback host (or when
    OTEL_EXPORTER_OTLP_INSECURE=true); otherwise a ConfigError, since the exporter would
    silently try TLS."""
    if "://" in endpoint:
        scheme = endpoint.split("://", 1)[0].lower()
        if scheme not in ("http", "https"):
            raise ConfigError(f"{variable}={endpoint!r}: the scheme must be http:// or https://")
        return endpoint
    host = urlsplit(f"//{endpoint}").hostname
    if insecure or _loopback(host):
        return f"http://{endpoint}"
    raise ConfigError(f"{variable}={endpoint!r} has no scheme: write http://{endpoint} "
                      f"(plaintext) or https://{endpoint} (TLS)")


def plan(env: Mapping[str, str], endpoint: str | None = None) -> Plan:
    """The OTLP exports `env` asks for. `endpoint` (HEADWATER_OTLP_ENDPOINT, OTLP/gRPC) wins
    over OTEL_EXPORTER_OTLP_ENDPOINT; the per-signal variables win over both."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Plan(None, None)
    insecure = env.get("OTEL_EXPORTER_OTLP_INSECURE", "").strip().lower() == "true"

    def one(signal: str, path: str) -> Export | None:
        exporter = env.get(f"OTEL_{signal}_EXPORTER", "otlp").strip().lower()
        if exporter == "none":
            return None
        if exporter != "otlp":
            raise ConfigError(f"OTEL_{signal}_EXPORTER={exporter!r}: only otlp and none are "
                              "supported")
        protocol = (env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
                    or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip().lower()
        if protocol not in PROTOCOLS:
            raise ConfigError(f"OTLP protocol {protocol!r} is not supported: use "
                              f"{' or '.join(PROTOCOLS)}")
        own = f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"
        if env.get(own):
            return Export(with_scheme(env[own], own, insecure), protocol)
        if endpoint:
            return Export(with_scheme(endpoint, "HEADWATER_OTLP_ENDPOINT", insecure), "grpc")
        base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if not base:
            return None
        url = with_scheme(base, "OTEL_EXPORTER_OTLP_ENDPOINT", insecure)
        if protocol == "http/protobuf":  # the base URL gets the signal's path (OTLP spec)
            url = url.rstrip("/") + path
        return Export(url, protocol)

    return Plan(one("TRACES", "/v1/traces"), one("METRICS", "/v1/metrics"))


# --- installing the providers (I/O) ----------------------------------------------------------

def configure_from_env(service_name: str = "headwater") -> bool:
    """Configure from the OTEL_* variables alone, unless telemetry is already on or the
    application installed a tracer provider of its own (then spans go to it)."""
    if _configured or not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return _configured
    return configure(None, service_name)


def configure(
    endpoint: str | None,
    service_name: str = "headwater",
    *,
    span_exporter: Any = None,
    metric_reader: Any = None,
    metrics_address: tuple[str, int] | None = None,
    env: Mapping[str, str] | None = None,
) -> bool:
    """Install SDK providers exporting what `plan` finds (OTLP), serving Prometheus text on
    `metrics_address` (HOST, PORT; port 0: any free one) and/or into the given test
    exporters; return whether telemetry is on. `service_name` applies unless
    OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES) names the service."""
    global _configured
    if _configured:
        return True
    wanted = plan(os.environ if env is None else env, endpoint)
    if wanted.traces is None and wanted.metrics is None and span_exporter is None \
            and metric_reader is None and metrics_address is None:
        return False
    from opentelemetry.sdk.metrics import Histogram, MeterProvider
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service_name}))
    provider = TracerProvider(resource=resource)
    if wanted.traces is not None:
        provider.add_span_processor(BatchSpanProcessor(_span_exporter(wanted.traces)))
    if span_exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    readers = [] if metric_reader is None else [metric_reader]
    if wanted.metrics is not None:
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(PeriodicExportingMetricReader(_metric_exporter(wanted.metrics)))
    if metrics_address is not None:
        readers.append(_prometheus(*metrics_address))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers, views=[
        View(instrument_type=Histogram, instrument_name=DURATION_METRIC,
             aggregation=ExplicitBucketHistogramAggregation(DURATION_BUCKETS))]))
    _configured = True
    return True


def _span_exporter(export: Export) -> Any:
    if export.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore
            OTLPSpanExporter,
        )
    return OTLPSpanExporter(endpoint=export.endpoint)


def _metric_exporter(export: Export) -> Any:
    if export.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore
            OTLPMetricExporter,
        )
    return OTLPMetricExporter(endpoint=export.endpoint)


def _prometheus(host: str, port: int) -> Any:
    """A reader whose metrics prometheus_client serves as text on http://HOST:PORT/metrics."""
    global _metrics_port
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    try:
        server, _ = start_http_server(port, addr=host)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc}") from None
    _metrics_port = server.server_port
    return PrometheusMetricReader()
