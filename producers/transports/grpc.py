"""Delivery to `headwater serve` over gRPC, in batches, retrying while the server restarts.

An ack from the server means the event is stored in ClickHouse; a retried batch that
was in fact stored collapses downstream (events are keyed by id), so retrying is safe.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import grpc

from headwater.errors import PublishError
from headwater.producers import telemetry
from headwater.producers.transports.base import Ack, raise_for_rejects
from headwater.producers.transports.channel import (
    open_channel,
    security_from_env,
    with_token,
)
from headwater.producers.transports.spec import TransportSpec
from headwater.v1 import query_pb2, query_pb2_grpc

_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class GrpcTransport:
    """Buffers events and sends them with `Ingest.PublishBatch` when a batch fills.

    Up to `max_in_flight` batches are sent without waiting, so building the next batch
    overlaps the server storing the previous one; `flush` waits for all of them.
    TLS: `tls_ca_file` (default HEADWATER_TLS_CA_FILE) or explicit `credentials`; `token`
    (default HEADWATER_TOKEN / HEADWATER_TOKEN_FILE) is sent as a bearer token (role producer).
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        batch_size: int = 2000,
        max_batch_bytes: int = 8 * 1024 * 1024,
        timeout: float = 60.0,
        retry_for: float = 60.0,
        max_in_flight: int = 2,
        credentials: grpc.ChannelCredentials | None = None,
        tls_ca_file: str | None = None,
        token: str | None = None,
    ) -> None:
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        self.target = target
        # rebuilt as it is in a publishing worker process; credentials objects do not travel
        self.rebuild_spec = None if credentials is not None else TransportSpec(
            "headwater.producers.transports.grpc:GrpcTransport", (target,), {
                "batch_size": batch_size, "max_batch_bytes": max_batch_bytes,
                "timeout": timeout, "retry_for": retry_for, "max_in_flight": max_in_flight,
                "tls_ca_file": tls_ca_file, "token": token})
        if credentials is not None:
            self._channel = with_token(grpc.secure_channel(target, credentials, options),
                                       security_from_env(token=token).token)
        else:
            self._channel = open_channel(
                target, security_from_env(tls_ca_file=tls_ca_file, token=token), options)
        self._stub = query_pb2_grpc.IngestStub(self._channel)
        self._batch_size = batch_size
        self._max_batch_bytes = max_batch_bytes
        self._timeout = timeout
        self._retry_for = retry_for
        self._max_in_flight = max_in_flight
        self._in_flight: deque[tuple[query_pb2.EventBatch, list[str], Any]] = deque()
        self._spans: deque[telemetry.BatchSpan] = deque()  # one per batch in flight
        self._traces = telemetry.BatchTraces()  # the spans the buffered events came from
        self._buffer: list[bytes] = []
        self._ids: list[str] = []
        self._bytes = 0
        self._lock = threading.Lock()

    def send(self, key: str, event_id: str, value: bytes) -> None:
        if len(value) > MAX_MESSAGE_BYTES - 1024:
            raise PublishError(
                f"event {event_id} is {len(value)} bytes; the gRPC limit is "
                f"{MAX_MESSAGE_BYTES - 1024} bytes per event (split the payload)",
                [event_id],
            )
        with self._lock:
            if self._buffer and self._bytes + len(value) > self._max_batch_bytes:
                self._dispatch()
            self._buffer.append(value)
            self._traces.add_current()
            self._ids.append(event_id)
            self._bytes += len(value)
            if len(self._buffer) >= self._batch_size:
                self._dispatch()

    def attest_head(self, request: query_pb2.AttestHeadRequest) -> None:
        """Send a signed chain head (Compliance.AttestHead) over this channel and token."""
        query_pb2_grpc.ComplianceStub(self._channel).AttestHead(request, timeout=self._timeout)

    def flush(self, timeout: float | None = None) -> None:
        with self._lock:
            self._dispatch()
            while self._in_flight:
                self._settle_oldest()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._channel.close()

    def _dispatch(self) -> None:
        """Start sending the buffered batch; keep at most `max_in_flight` unanswered."""
        if not self._buffer:
            return
        batch = query_pb2.EventBatch(events=self._buffer)
        ids = self._ids
        self._buffer, self._ids, self._bytes = [], [], 0
        span = self._traces.start("headwater.v1.Ingest", "PublishBatch", len(ids))
        self._spans.append(span)
        future = self._stub.PublishBatch.future(batch, timeout=self._timeout,
                                                metadata=span.metadata)
        self._in_flight.append((batch, ids, future))
        while len(self._in_flight) > self._max_in_flight:
            self._settle_oldest()

    def _settle_oldest(self) -> None:
        """Wait for the oldest batch; retry it while the server is unavailable."""
        batch, ids, future = self._in_flight.popleft()
        span = self._spans.popleft()
        try:
            self._settle(batch, ids, future, span)
        except BaseException as exc:
            span.failed(exc)
            if len(self._spans) < len(self._in_flight):  # the batch is kept for the next flush
                self._spans.appendleft(span)
            raise
        span.end()

    def _settle(self, batch: query_pb2.EventBatch, ids: list[str], future: Any,
                span: telemetry.BatchSpan) -> None:
        if future is None:  # a batch that failed before: send it again
            future = self._stub.PublishBatch.future(batch, timeout=self._timeout,
                                                    metadata=span.metadata)
        deadline = time.monotonic() + self._retry_for
        delay = 0.1
        while True:
            try:
                response = future.result()
                break
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                if code not in _RETRYABLE or time.monotonic() + delay > deadline:
                    self._in_flight.appendleft((batch, ids, None))  # kept for the next flush
                    raise PublishError(
                        f"{len(ids)} event(s) not stored: headwater serve at {self.target} "
                        f"answered {code.name}: {exc.details()}",  # type: ignore[attr-defined]
                        list(ids),
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                future = self._stub.PublishBatch.future(batch, timeout=self._timeout,
                                                        metadata=span.metadata)
        if len(response.acks) != len(ids):
            raise PublishError(
                f"server acknowledged {len(response.acks)} of {len(ids)} events", list(ids)
            )
        raise_for_rejects(
            [Ack(a.index, a.event_id, a.status == query_pb2.EventAck.ACCEPTED, a.error)
             for a in response.acks],
            ids,
        )
