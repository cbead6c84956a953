"""Builds the gRPC server: every v1 service (the SERVICES table), health checking and
reflection, 127.0.0.1 only by default."""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from headwater.errors import ConfigError
from headwater.producers.transports.base import Sink
from headwater.producers.transports.grpc import MAX_MESSAGE_BYTES
from headwater.producers.transports.local import LocalTransport
from headwater.query_service.attribution.engine import AttributionEngine
from headwater.query_service.server import reflection
from headwater.query_service.server.auth import AuthInterceptor
from headwater.query_service.server.interceptors import Decoding, Telemetry
from headwater.query_service.server.limits import StreamLimiter, StreamLimits
from headwater.query_service.server.transport_security import (
    ServerSecurity,
    check_exposure,
    server_credentials,
    token_file,
)
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
from headwater.query_service.sql.policy import SqlLimits
from headwater.query_service.sql.reader import SqlReader
from headwater.stream_processors.store import Store
from headwater.v1 import query_pb2, query_pb2_grpc


@dataclass(frozen=True)
class ServiceParts:
    """What the servicers are built from (one engine shared by Attribution and Compliance)."""

    store: Store
    engine: AttributionEngine
    sink: Sink | None
    log: PublisherFor | None
    sql: SqlLimits | None


@dataclass(frozen=True)
class Service:
    """One gRPC service of headwater.v1: its servicer, built from the parts (None: not
    served), and the generated function that adds it to a server."""

    servicer: Callable[[ServiceParts], Any | None]
    add: Callable[[Any, grpc.Server], None]

    def register(self, parts: ServiceParts, server: grpc.Server) -> bool:
        servicer = self.servicer(parts)
        if servicer is None:
            return False
        self.add(servicer, server)
        return True


# Every service the server offers, by its name in query.proto: registration, health and
# reflection all derive from this one table (a new service is one line here).
SERVICES: dict[str, Service] = {
    "Ingest": Service(lambda p: IngestService(p.sink) if p.sink is not None else None,
                      query_pb2_grpc.add_IngestServicer_to_server),
    "Lineage": Service(lambda p: LineageService(p.store),
                       query_pb2_grpc.add_LineageServicer_to_server),
    "Compliance": Service(lambda p: ComplianceService(p.store, p.engine),
                          query_pb2_grpc.add_ComplianceServicer_to_server),
    "Query": Service(lambda p: QueryService(SqlReader(p.store, p.sql)),
                     query_pb2_grpc.add_QueryServicer_to_server),
    "Attribution": Service(lambda p: AttributionService(p.store, p.engine),
                           query_pb2_grpc.add_AttributionServicer_to_server),
    "Unlearning": Service(lambda p: UnlearningService(p.store, p.log),
                          query_pb2_grpc.add_UnlearningServicer_to_server),
}


def build_server(store: Store, listen: str, sink: Sink | None = None,
                 max_workers: int = 8, damping: float = 0.0, decay: float = 1.0,
                 log: PublisherFor | None = None,
                 security: ServerSecurity | None = None,
                 limits: StreamLimits | None = None,
                 sql: SqlLimits | None = None) -> tuple[grpc.Server, int]:
    """Create (not start) the server; `sink` enables Ingest. Forget requests are recorded
    through `log` (default: into `sink`); without either, Forget is refused. `security`:
    TLS and token auth, required for a non-loopback `listen`. `max_workers`: threads for unary
    calls; health checks and streams have pools of their own (`limits`,
    query_service/server/limits.py).
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
                      *([AuthInterceptor(tokens)] if tokens else []), Telemetry(),
                      Decoding()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    engine = AttributionEngine(store, damping=damping, decay=decay)
    parts = ServiceParts(store, engine, sink, log, sql)
    names = [name for name, service in SERVICES.items() if service.register(parts, server)]

    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    full_names = [query_pb2.DESCRIPTOR.services_by_name[n].full_name for n in names]
    for name in ["", *full_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable([*full_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name],
                      server)

    try:
        port = (server.add_secure_port(listen, credentials) if credentials
                else server.add_insecure_port(listen))
    except RuntimeError:
        port = 0
    if port == 0:
        raise ConfigError(f"cannot listen on {listen} (address in use or not local)")
    return server, port
