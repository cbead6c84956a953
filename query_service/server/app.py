"""Builds the gRPC server: every v1 service, health checking and reflection, 127.0.0.1 only
by default."""

from __future__ import annotations

import time
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from headwater.producers import telemetry
from headwater.producers.transports.base import Sink
from headwater.producers.transports.grpc import MAX_MESSAGE_BYTES
from headwater.producers.transports.local import LocalTransport
from headwater.query_service.attribution import AttributionEngine
from headwater.query_service.auth import AuthInterceptor
from headwater.query_service.handlers import handler_kind, handler_like
from headwater.query_service.limits import StreamLimiter, StreamLimits
from headwater.query_service.services.attribution import AttributionService
from headwater.query_service.services.compliance import ComplianceService
from headwater.query_service.services.ingest import IngestService
from headwater.query_service.services.lineage import LineageService
from headwater.query_service.services.query import QueryService
from headwater.query_service.services.unlearning import (
    LogPublishers,
    PublisherFor,
    UnlearningService,
)
from headwater.query_service.sql_policy import SqlLimits
from headwater.query_service.sql_reader import SqlReader
from headwater.query_service.transport_security import (
    ServerSecurity,
    check_exposure,
    server_credentials,
    token_file,
)
from headwater.stream_processors.errors import ConfigError
from headwater.stream_processors.store import Store
from headwater.v1 import query_pb2, query_pb2_grpc


class _Telemetry(grpc.ServerInterceptor):
    """One span and one latency sample per RPC (no-ops unless telemetry is configured)."""

    def __init__(self) -> None:
        self._tracer = telemetry.tracer()
        self._latency = telemetry.meter().create_histogram(
            "headwater.rpc.duration", unit="s", description="gRPC handler time"
        )

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method
        inner = handler.unary_unary

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            with self._tracer.start_as_current_span(f"headwater.rpc {method}"):
                try:
                    return inner(request, context)
                finally:
                    self._latency.record(time.perf_counter() - start, {"method": method})

        return handler_like(handler, wrapped, handler.request_deserializer)


class _Decoding(grpc.ServerInterceptor):
    """Parses requests inside the handler, so undecodable bytes get INVALID_ARGUMENT naming
    the message type (grpc's own deserializer answers INTERNAL before any servicer runs)."""

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer
        method = details.method

        def decode(data: bytes, context: grpc.ServicerContext) -> Any:
            try:
                return parse(data)
            except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"{method}: the request bytes are not a valid message "
                              f"({type(exc).__name__}: {exc})")

        def decode_all(requests: Any, context: grpc.ServicerContext) -> Any:
            for data in requests:
                yield decode(data, context)

        kind = handler_kind(handler)
        inner = getattr(handler, kind)
        if kind.startswith("unary"):  # one request message
            def behaviour(data: Any, context: grpc.ServicerContext) -> Any:
                return inner(decode(data, context), context)
        else:  # a stream of request messages
            def behaviour(data: Any, context: grpc.ServicerContext) -> Any:
                return inner(decode_all(data, context), context)
        return handler_like(handler, behaviour, None)


def build_server(store: Store, listen: str, sink: Sink | None = None,
                 max_workers: int = 8, damping: float = 0.0, decay: float = 1.0,
                 log: PublisherFor | None = None,
                 security: ServerSecurity | None = None,
                 limits: StreamLimits | None = None,
                 sql: SqlLimits | None = None) -> tuple[grpc.Server, int]:
    """Create (not start) the server; `sink` enables Ingest. Forget requests are recorded
    through `log` (default: into `sink`); without either, Forget is refused. `security`:
    TLS and token auth, required for a non-loopback `listen`. `max_workers`: threads for unary
    calls; health checks and streams have pools of their own (`limits`, query_service/limits.py).
    `sql`: the bounds of Query.Sql statements. Returns (server, bound port)."""
    security = security or ServerSecurity()
    check_exposure(listen, security)
    credentials = server_credentials(security) if security.tls else None
    tokens = token_file(security)
    if log is None and sink is not None:
        log = LogPublishers(lambda: LocalTransport(sink))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="headwater-rpc"),
        interceptors=[StreamLimiter(limits or StreamLimits(), tokens),  # outermost
                      *([AuthInterceptor(tokens)] if tokens else []), _Telemetry(),
                      _Decoding()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    names = []
    if sink is not None:
        query_pb2_grpc.add_IngestServicer_to_server(IngestService(sink), server)
        names.append("Ingest")
    query_pb2_grpc.add_LineageServicer_to_server(LineageService(store), server)
    engine = AttributionEngine(store, damping=damping, decay=decay)
    query_pb2_grpc.add_ComplianceServicer_to_server(ComplianceService(store, engine), server)
    query_pb2_grpc.add_QueryServicer_to_server(QueryService(SqlReader(store, sql)), server)
    query_pb2_grpc.add_AttributionServicer_to_server(AttributionService(store, engine), server)
    query_pb2_grpc.add_UnlearningServicer_to_server(UnlearningService(store, log), server)
    names += ["Lineage", "Compliance", "Query", "Attribution", "Unlearning"]

    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    full_names = [query_pb2.DESCRIPTOR.services_by_name[n].full_name for n in names]
    for name in ["", *full_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*full_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME], server)

    try:
        port = (server.add_secure_port(listen, credentials) if credentials
                else server.add_insecure_port(listen))
    except RuntimeError:
        port = 0
    if port == 0:
        raise ConfigError(f"cannot listen on {listen} (address in use or not local)")
    return server, port
