"""Rebuilding a gRPC method handler around new behaviour, whatever its kind (unary or
streaming request and response): what the server's interceptors share."""

from __future__ import annotations

from typing import Any

import grpc

_MAKERS = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def handler_kind(handler: Any) -> str:
    """"unary_unary", "unary_stream", "stream_unary" or "stream_stream"."""
    return next(kind for kind in _MAKERS if getattr(handler, kind) is not None)


def handler_like(handler: Any, behaviour: Any, request_deserializer: Any) -> Any:
    """A handler of `handler`'s kind and response serializer running `behaviour`."""
    return _MAKERS[handler_kind(handler)](behaviour, request_deserializer,
                                          handler.response_serializer)
