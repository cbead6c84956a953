"""The server's own interceptors: one span and duration sample per call (Telemetry), and request
parsing inside the handler so undecodable bytes get INVALID_ARGUMENT (Decoding). Auth and
stream limits have modules of their own (auth.py, limits.py)."""

from __future__ import annotations

import time
from typing import Any

import grpc
from opentelemetry import propagate, trace

from headwater.producers import telemetry
from headwater.query_service.server.handlers import handler_kind, handler_like
from headwater.query_service.server.limits import HEALTH_PREFIX


class Telemetry(grpc.ServerInterceptor):
    """One SERVER span and one duration sample per call, unary or streaming (no-ops unless
    telemetry is configured). The span continues the caller's trace (W3C `traceparent` in
    the call's metadata) and carries the rpc.* semantic-convention attributes; a streaming
    call's span lasts until its last message. Health checks get neither (probe noise)."""

    def __init__(self) -> None:
        self._tracer = telemetry.tracer()
        self._duration = telemetry.meter().create_histogram(
            telemetry.DURATION_METRIC, unit="s", description="gRPC server call duration")

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        kind = handler_kind(handler)
        inner = getattr(handler, kind)
        call = _Call(self._tracer, self._duration, details)
        if kind.endswith("_unary"):  # one response
            def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
                span = call.start(context)
                try:
                    with trace.use_span(span, end_on_exit=False):
                        return inner(request, context)
                except BaseException as exc:
                    call.failed(span, exc)
                    raise
                finally:
                    call.finish(span, context)
        else:  # a stream of responses: the span covers producing every one
            def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
                span = call.start(context)
                try:
                    with trace.use_span(span, end_on_exit=False):
                        responses = iter(inner(request, context))
                    while True:
                        with trace.use_span(span, end_on_exit=False):
                            item = next(responses, _END)
                        if item is _END:
                            return
                        yield item
                except BaseException as exc:
                    call.failed(span, exc)
                    raise
                finally:
                    call.finish(span, context)
        return handler_like(handler, behaviour, handler.request_deserializer)


_END = object()


class _Call:
    """What one method's spans share: name, attributes, the caller's trace context."""

    def __init__(self, tracer: Any, duration: Any, details: Any) -> None:
        self._tracer, self._duration = tracer, duration
        full = details.method.lstrip("/")
        service, _, method = full.rpartition("/")
        self.name = full  # semantic conventions: {rpc.service}/{rpc.method}
        self.attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        self.parent = propagate.extract(
            {key: value for key, value in (details.invocation_metadata or ())
             if isinstance(value, str)})
        self._started = 0.0
        self._error = False

    def start(self, context: grpc.ServicerContext) -> Any:
        self._started = time.perf_counter()
        attributes: dict[str, Any] = dict(self.attributes)
        peer = context.peer() or ""  # ipv4:127.0.0.1:50000, ipv6:[::1]:50000
        if peer.startswith(("ipv4:", "ipv6:")):
            host, _, port = peer.split(":", 1)[1].rpartition(":")
            attributes["network.peer.address"] = host.strip("[]")
            if port.isdigit():
                attributes["network.peer.port"] = int(port)
        return self._tracer.start_span(self.name, context=self.parent,
                                       kind=trace.SpanKind.SERVER, attributes=attributes)

    def failed(self, span: Any, exc: BaseException) -> None:
        if not isinstance(exc, GeneratorExit):
            span.record_exception(exc)
            self._error = True

    def finish(self, span: Any, context: grpc.ServicerContext) -> None:
        code = context.code() or (  # type: ignore[attr-defined]
            grpc.StatusCode.UNKNOWN if self._error else grpc.StatusCode.OK)
        status = code if isinstance(code, int) else code.value[0]
        span.set_attribute("rpc.grpc.status_code", status)
        if status != 0:
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(code)))
        span.end()
        self._duration.record(time.perf_counter() - self._started,
                              {**self.attributes, "rpc.grpc.status_code": status})


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
