"""Availability under slow or idle clients (see docs/security.md, "Availability").

Three lanes of worker threads, so that no kind of call can starve another:

- health checks (`grpc.health.v1.Health/Check`) run on a small pool of their own: a probe
  never waits behind a query or a stream;
- streaming calls (`Ingest.Publish`, `Unlearning.Status`, reflection) run on a pool sized for
  their caps: at most `per_role` at once for each role (one shared cap without token auth);
  one more is refused at once with RESOURCE_EXHAUSTED naming the cap and its setting;
- unary calls keep the server's main pool to themselves.

A client stream that sends nothing for `idle_seconds` is ended with DEADLINE_EXCEEDED, and
a server stream is ended after `max_seconds` (DEADLINE_EXCEEDED): an idle or forgotten
stream cannot hold its slot forever.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from headwater.query_service.server.auth import Role, TokenFile, bearer_token, short_name
from headwater.query_service.server.handlers import handler_kind, handler_like

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
ANONYMOUS = "anonymous"  # the one bucket when the server has no token auth
UNAUTHENTICATED = "unauthenticated"  # no valid token: refused by auth, briefly counted here
_END = object()


@dataclass(frozen=True)
class StreamLimits:
    """Caps and timeouts of streaming calls; Settings fields of the same meaning."""

    per_role: int = 8              # HEADWATER_STREAMS_PER_ROLE
    idle_seconds: float = 60.0     # HEADWATER_STREAM_IDLE_SECONDS
    max_seconds: float = 3600.0    # HEADWATER_STREAM_MAX_SECONDS
    health_workers: int = 2

    @classmethod
    def from_settings(cls, settings: Any) -> StreamLimits:
        return cls(per_role=settings.streams_per_role,
                   idle_seconds=settings.stream_idle_seconds,
                   max_seconds=settings.stream_max_seconds)


class _IdleWatch:
    """The request iterator of a client stream, ended with DEADLINE_EXCEEDED when no message
    arrives for `idle` seconds. A helper thread reads grpc's (blocking) iterator; the handler
    waits on a queue with a timeout, so the handler's thread is never stuck in grpc."""

    def __init__(self, requests: Any, context: grpc.ServicerContext, idle: float,
                 method: str) -> None:
        self._context, self._idle, self._method = context, idle, method
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._done = threading.Event()
        self._pump = threading.Thread(target=self._read, args=(requests,), daemon=True,
                                      name="headwater-stream-reader")
        self._pump.start()

    def _read(self, requests: Any) -> None:
        try:
            for item in requests:
                while not self._done.is_set():
                    try:
                        self._queue.put((item, None), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if self._done.is_set():
                    return
            self._put((_END, None))
        except Exception as exc:  # noqa: BLE001 - the client cancelled or the call ended
            self._put((_END, exc))

    def _put(self, item: tuple[Any, BaseException | None]) -> None:
        while not self._done.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def __iter__(self) -> _IdleWatch:
        return self

    def __next__(self) -> Any:
        try:
            item, error = self._queue.get(timeout=self._idle)
        except queue.Empty:
            self.close()
            message = (f"{self._method}: no message for {self._idle:g} s; the idle stream is "
                       "ended (HEADWATER_STREAM_IDLE_SECONDS)")
            log.warning("ended %s", message)
            self._context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, message)
            raise AssertionError("unreachable: abort raises") from None
        if item is _END:
            self.close()
            if error is not None:
                raise error
            raise StopIteration
        return item

    def close(self) -> None:
        self._done.set()


class _Deadline:
    """The servicer context of a server stream, inactive once `max_seconds` have passed
    (handlers that poll `is_active()` stop); everything else is the real context."""

    def __init__(self, context: grpc.ServicerContext, max_seconds: float) -> None:
        self._context = context
        self._until = time.monotonic() + max_seconds

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self._until

    def is_active(self) -> bool:
        return not self.expired and self._context.is_active()

    def time_remaining(self) -> float | None:
        own = max(0.0, self._until - time.monotonic())
        theirs = self._context.time_remaining()
        return own if theirs is None else min(own, theirs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class StreamLimiter(grpc.ServerInterceptor):
    """The outermost interceptor: routes health checks and streams to their own pools, caps
    concurrent streams per role, ends idle and overlong streams."""

    def __init__(self, limits: StreamLimits, tokens: TokenFile | None) -> None:
        self.limits = limits
        self._tokens = tokens
        self._buckets = ([r.value for r in Role] + [UNAUTHENTICATED] if tokens is not None
                         else [ANONYMOUS])
        self._slots = {b: threading.BoundedSemaphore(limits.per_role) for b in self._buckets}
        self.health_pool = futures.ThreadPoolExecutor(limits.health_workers,
                                                      thread_name_prefix="headwater-health")
        # every stream at its cap still leaves two threads to refuse the next one at once
        self.stream_pool = futures.ThreadPoolExecutor(
            limits.per_role * len(self._buckets) + 2, thread_name_prefix="headwater-stream")

    def shutdown(self) -> None:
        self.health_pool.shutdown(wait=False)
        self.stream_pool.shutdown(wait=False)

    def _bucket(self, metadata: Any) -> str:
        if self._tokens is None:
            return ANONYMOUS
        token = bearer_token(metadata)
        principal = self._tokens.lookup(token) if token else None
        return principal.role.value if principal else UNAUTHENTICATED

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        kind = handler_kind(handler)
        inner = getattr(handler, kind)
        if method.startswith(HEALTH_PREFIX):
            if kind == "unary_unary":  # Watch is non-blocking already: it holds no thread
                return _on_pool(handler, inner, self.health_pool)
            return handler
        if kind == "unary_unary":
            return handler
        return self._stream(handler, kind, inner, method, self._bucket(
            details.invocation_metadata))

    def _stream(self, handler: Any, kind: str, inner: Any, method: str, bucket: str) -> Any:
        limits, slots = self.limits, self._slots[bucket]
        name = short_name(method)

        def acquire(context: grpc.ServicerContext) -> None:
            if not slots.acquire(blocking=False):
                message = (f"{name}: too many concurrent streams for role {bucket} (cap "
                           f"{limits.per_role}, HEADWATER_STREAMS_PER_ROLE); retry later")
                log.warning("refused RESOURCE_EXHAUSTED: %s", message)
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

        def requests_of(request: Any, context: grpc.ServicerContext) -> tuple[Any, Any]:
            if kind.startswith("stream"):
                watch = _IdleWatch(request, context, limits.idle_seconds, name)
                return watch, watch
            return request, None

        if kind.endswith("unary"):  # a client stream, one response
            def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
                acquire(context)
                watch = None
                try:
                    request, watch = requests_of(request, context)
                    return inner(request, context)
                finally:
                    if watch is not None:
                        watch.close()
                    slots.release()
        else:  # server stream (maybe bidirectional): a maximum duration
            def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
                acquire(context)
                watch = None
                try:
                    request, watch = requests_of(request, context)
                    bounded = _Deadline(context, limits.max_seconds)
                    yield from inner(request, bounded)
                    if bounded.expired and context.is_active():
                        message = (f"{name}: stream open for {limits.max_seconds:g} s, the "
                                   "maximum (HEADWATER_STREAM_MAX_SECONDS); call again")
                        log.info("ended %s", message)
                        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, message)
                finally:
                    if watch is not None:
                        watch.close()
                    slots.release()
        return _on_pool(handler, behaviour, self.stream_pool)


def _on_pool(handler: Any, behaviour: Any, pool: futures.ThreadPoolExecutor) -> Any:
    """`handler` running `behaviour` on `pool` instead of the server's main pool (grpc's
    `experimental_thread_pool` attribute of a behaviour)."""

    def on_pool(*args: Any) -> Any:  # a function of our own to carry the attribute
        return behaviour(*args)

    on_pool.experimental_thread_pool = pool  # type: ignore[attr-defined]
    return handler_like(handler, on_pool, handler.request_deserializer)
