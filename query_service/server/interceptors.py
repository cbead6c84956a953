"""The server's own interceptors: one span and latency sample per RPC (Telemetry), and request
parsing inside the handler so undecodable bytes get INVALID_ARGUMENT (Decoding). Auth and
stream limits have modules of their own (auth.py, limits.py)."""

from __future__ import annotations

import time
from typing import Any

import grpc

from headwater.producers import telemetry
from headwater.query_service.server.handlers import handler_kind, handler_like


class Telemetry(grpc.ServerInterceptor):
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


class Decoding(grpc.ServerInterceptor):
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
