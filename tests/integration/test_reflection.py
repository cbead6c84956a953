"""Server reflection answers v1 clients (grpcurl, current tooling) and v1alpha clients alike,
listing and describing every service."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2

from headwater.query_service.server.app import build_server
from headwater.stream_processors.store import Store


@pytest.fixture
def target(store: Store) -> Iterator[str]:
    server, port = build_server(store, "127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def _v1_messages() -> tuple[type, type]:
    """The v1 request/response classes, as a v1-only client knows them (by name)."""
    pool = descriptor_pool.Default()
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName(
                "grpc.reflection.v1.ServerReflectionRequest")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName(
                "grpc.reflection.v1.ServerReflectionResponse")))


def _ask(target: str, version: str, **request: str) -> reflection_pb2.ServerReflectionResponse:
    request_type, response_type = (_v1_messages() if version == "v1" else
                                   (reflection_pb2.ServerReflectionRequest,
                                    reflection_pb2.ServerReflectionResponse))
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString)
        answer = next(call(iter([request_type(**request)]), timeout=10))
    return reflection_pb2.ServerReflectionResponse.FromString(answer.SerializeToString())


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_and_describes_services(target: str, version: str) -> None:
    names = {s.name for s in _ask(target, version, list_services="")
             .list_services_response.service}
    assert {"headwater.v1.Lineage", "headwater.v1.Query", "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    files = _ask(target, version, file_containing_symbol="headwater.v1.Lineage")
    described = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                 for raw in files.file_descriptor_response.file_descriptor_proto]
    services = {s.name for f in described for s in f.service}
    assert "Lineage" in services
    own = _ask(target, version, file_containing_symbol=f"grpc.reflection.{version}."
               "ServerReflection").file_descriptor_response.file_descriptor_proto
    assert descriptor_pb2.FileDescriptorProto.FromString(own[0]).package == \
        f"grpc.reflection.{version}"


def test_unknown_symbol_is_not_found(target: str) -> None:
    answer = _ask(target, "v1", file_containing_symbol="no.such.Service")
    assert answer.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
