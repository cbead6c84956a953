"""Server reflection in both versions clients speak: `grpc.reflection.v1` (grpcurl, Postman,
current grpc tooling) and `grpc.reflection.v1alpha` (older clients).

grpcio-reflection ships v1alpha only. v1 is the same protocol under another package name
(identical messages and field numbers), so one servicer answers both: the v1 file
descriptor is v1alpha's renamed, added to the default pool so reflection can describe itself.
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
V1 = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _add_v1_descriptor() -> None:
    """Put grpc/reflection/v1/reflection.proto in the default pool (once), so a v1 client
    asking for the file that defines grpc.reflection.v1.ServerReflection gets it."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    proto.name, proto.package = _V1_FILE, "grpc.reflection.v1"
    proto.options.Clear()
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(old, new)
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace(old, new)
        method.output_type = method.output_type.replace(old, new)
    pool.Add(proto)


def enable(service_names: list[str], server: grpc.Server) -> None:
    """Serve reflection for `service_names` (plus both reflection services) under v1 and
    v1alpha."""
    _add_v1_descriptor()
    servicer = reflection.ReflectionServicer([*service_names, V1, V1ALPHA])
    method = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers([
        grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": method})
        for name in (V1, V1ALPHA)])
