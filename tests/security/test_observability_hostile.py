"""Hostile input to what issue 19 added: reflection v1 behind token auth, forged or oversized
trace context (gRPC metadata, Kafka headers), the metrics endpoint's exposure, and secrets
in the new log formats (tests/unit/test_logs.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2
from support.secure_serve import TOKENS, tls_channel

from headwater.producers.telemetry import links_from_headers
from headwater.query_service.server.app import build_server
from headwater.query_service.server.auth import Role
from headwater.query_service.server.transport_security import ServerSecurity
from headwater.query_service.settings import Settings
from headwater.stream_processors.store import Store
from headwater.v1 import query_pb2, query_pb2_grpc

V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


@pytest.fixture
def secured(store: Store, pki, tokens_file: Path) -> Iterator[str]:
    security = ServerSecurity(tokens_file=tokens_file, cert_file=pki.cert, key_file=pki.key)
    server, port = build_server(store, "127.0.0.1:0", security=security)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def _list_services(channel: grpc.Channel) -> set[str]:
    call = channel.stream_stream(
        V1, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    answer = next(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                       timeout=10))
    return {s.name for s in answer.list_services_response.service}


def test_reflection_v1_needs_a_valid_token(secured: str, pki) -> None:
    for token in (None, "tok-forged-Zq8x2VbN4kLp9mRt7wYc3"):
        with pytest.raises(grpc.RpcError) as err:
            _list_services(tls_channel(pki, token, secured))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "headwater.v1.Lineage" in _list_services(tls_channel(pki, TOKENS[Role.READER],
                                                                secured))


@pytest.mark.parametrize("traceparent", [
    "00-zzzz-not-hex-01", "00-" + "0" * 32 + "-" + "0" * 16 + "-01",  # all-zero ids: invalid
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # forbidden version
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" + "x" * 6000,
])
def test_forged_or_oversized_traceparent_never_breaks_a_call(store: Store,
                                                             traceparent: str) -> None:
    server, port = build_server(store, "127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as err:
                query_pb2_grpc.LineageStub(channel).GetSource(
                    query_pb2.GetSourceRequest(source_id="none"),
                    metadata=[("traceparent", traceparent), ("tracestate", "k=" + "v" * 600)],
                    timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND  # answered as without it
    finally:
        server.stop(0)


def test_kafka_trace_headers_are_checked_before_linking() -> None:
    good = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    links = links_from_headers([
        [("traceparent", good)], [("traceparent", good)],  # the same span once
        [("traceparent", b"\xff\xfe garbage")], [("traceparent", b"00-" + b"0" * 52)],
        [("traceparent", good + b"x" * 5000)], [("other", good)],
        [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-" + b"1" * 16 + b"-01")],
    ])
    assert sorted(f"{link.context.span_id:016x}" for link in links) == \
        ["1111111111111111", "b7ad6b7169203331"]
    many = [[("traceparent", f"00-0af7651916cd43dd8448eb211c80319c-{i + 1:016x}-01".encode())]
            for i in range(1000)]
    assert len(links_from_headers(many)) == 128  # a batch cannot make a span unbounded


def test_metrics_are_off_and_loopback_by_default() -> None:
    settings = Settings()
    assert settings.metrics_port is None and settings.metrics_host == "127.0.0.1"


def test_metrics_endpoint_binds_only_the_address_given() -> None:
    """On 127.0.0.1 it answers there and nowhere else; a port in use is a clear error."""
    script = r'''
import socket, urllib.request
from headwater.errors import ConfigError
from headwater.producers import telemetry
assert telemetry.configure(None, metrics_address=("127.0.0.1", 0), env={})
port = telemetry.metrics_port()
assert urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").status == 200
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
probe.connect(("10.255.255.255", 1))  # no packet sent: finds this host's outward address
outward = probe.getsockname()[0]
refused = False
if not outward.startswith("127."):
    try:
        socket.create_connection((outward, port), timeout=2).close()
    except OSError:
        refused = True
else:
    refused = True
busy = socket.socket(); busy.bind(("127.0.0.1", 0)); busy.listen()
try:
    telemetry._prometheus("127.0.0.1", busy.getsockname()[1])
    print("no error")
except ConfigError as exc:
    print("refused" if refused else "reachable", exc)
'''
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused cannot serve metrics on 127.0.0.1:"), done.stdout
