"""Readiness / liveness probes of the Kubernetes pods, run as exec probes.

    python -m headwater.query_service.server.probe                  # a `process` pod
    python -m headwater.query_service.server.probe grpc [HOST:PORT] # `query-service`, `serve`

The first exits 0 when the pod's Kafka and ClickHouse answer, 1 with one line per
unreachable dependency. The second asks the pod's own gRPC server for grpc.health.v1 over
the transport it serves: TLS when HEADWATER_TLS_CERT_FILE is set (the kubelet's `grpc:`
probe speaks plaintext only). Settings come from the pod's HEADWATER_* variables, so each
probe checks exactly what its process uses.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from headwater.errors import HeadwaterError
from headwater.query_service.settings import Settings
from headwater.stream_processors.dsn import parse_dsn


def clickhouse_ping_url(dsn: str) -> str | None:
    """The server's /ping URL for an http(s) DSN; None for embedded chDB (nothing to ask)."""
    parsed = parse_dsn(dsn)
    if parsed.embedded:
        return None
    parts = urlsplit(parsed.raw)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/ping"


def problems(settings: Settings, timeout: float = 4.0) -> list[str]:
    """What this pod cannot reach, one line each (empty: ready)."""
    from headwater.stream_processors.kafka_runner import check_reachable

    found = []
    if not settings.kafka_bootstrap:
        found.append("no Kafka configured: set HEADWATER_KAFKA_BOOTSTRAP")
    else:
        try:
            check_reachable(settings.kafka_bootstrap, settings.kafka_config, timeout=timeout)
        except HeadwaterError as exc:
            found.append(str(exc))
    url = clickhouse_ping_url(settings.resolved_dsn)
    if url is not None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310
                body = reply.read(64)
            if body.strip() != b"Ok.":
                found.append(f"ClickHouse at {url} answered {body[:32]!r}, not Ok.")
        except (urllib.error.URLError, OSError) as exc:
            found.append(f"cannot reach ClickHouse at {url}: {exc}")
    return found


# -- the gRPC server's own health, over its TLS -------------------------------------------


def local_target(listen: str) -> str:
    """Where a probe in the pod dials a server listening on `listen`: a wildcard host
    (0.0.0.0, [::]) becomes 127.0.0.1, any other address is dialled as it is."""
    host, _, port = listen.rpartition(":")
    return f"127.0.0.1:{port}" if host.strip("[]") in ("0.0.0.0", "::", "") else listen


def tls_server_name(cert_pem: bytes) -> str | None:
    """The first DNS subject alternative name of the server's certificate: the name the probe
    verifies while dialling 127.0.0.1 (None: no DNS name, verify the address itself)."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificates(cert_pem)[0]
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    names = sans.get_values_for_type(x509.DNSName)
    return names[0] if names else None


def grpc_problems(settings: Settings, target: str | None = None,
                  timeout: float = 4.0) -> list[str]:
    """Why the server at `target` (default: this pod's listen address) does not answer
    grpc.health.v1 SERVING; empty when it does. TLS when the server has a certificate
    (HEADWATER_TLS_CERT_FILE) or a CA is given (HEADWATER_TLS_CA_FILE): the server is
    verified against that CA, else against its own certificate (self-signed); a client
    certificate (HEADWATER_TLS_CLIENT_CERT_FILE/_KEY_FILE) is presented for mutual TLS.
    Health checks need no token, so none is sent."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from headwater.producers.transports.channel import (
        NO_PROXY,
        ChannelConfigError,
        ClientSecurity,
        channel_credentials,
    )

    target = target or local_target(settings.listen)
    roots = settings.tls_ca_file or settings.tls_cert_file
    try:
        if roots is None:
            channel = grpc.insecure_channel(target, [NO_PROXY])  # the server, not a proxy
        else:
            name = (tls_server_name(settings.tls_cert_file.read_bytes())
                    if settings.tls_cert_file else None)
            options = [("grpc.ssl_target_name_override", name)] if name else []
            creds = channel_credentials(ClientSecurity(
                tls=True, tls_ca_file=roots, client_cert_file=settings.tls_client_cert_file,
                client_key_file=settings.tls_client_key_file))
            channel = grpc.secure_channel(target, creds, options)
    except (ChannelConfigError, OSError, ValueError) as exc:
        return [f"cannot set up TLS to probe {target}: {exc}"]
    transport = "TLS" if roots is not None else "plaintext"
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as exc:
            return [f"gRPC health check of {target} ({transport}) failed: "
                    f"{exc.code().name}: {exc.details()}"]
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return [f"gRPC server at {target} answers {status}, not SERVING"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m headwater.query_service.server.probe",
                                     description="Exit 0 when the pod is ready, 1 with the "
                                     "reasons on stderr. Without a mode: Kafka and "
                                     "ClickHouse (a `process` pod).")
    modes = parser.add_subparsers(dest="mode")
    grpc_mode = modes.add_parser("grpc", help="the pod's own gRPC server answers "
                                 "grpc.health.v1 SERVING, over TLS when it serves TLS")
    grpc_mode.add_argument("target", nargs="?", default=None,
                           help="HOST:PORT to dial [HEADWATER_LISTEN, wildcard -> 127.0.0.1]")
    args = parser.parse_args(argv)
    settings = Settings()
    found = grpc_problems(settings, args.target) if args.mode == "grpc" else problems(settings)
    for line in found:
        print(f"headwater probe: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
