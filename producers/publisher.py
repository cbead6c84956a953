"""The one object a trainer holds: wraps payloads in chained envelopes and publishes them."""

from __future__ import annotations

from types import TracebackType

from google.protobuf.message import Message

from headwater.producers import telemetry
from headwater.producers.envelope import EnvelopeBuilder
from headwater.producers.transports.base import Transport
from headwater.v1 import events_pb2


class Publisher:
    """Publishes events of one run through one transport; use as a context manager."""

    def __init__(self, transport: Transport, run_id: str, producer_id: str | None = None):
        self.transport = transport
        self.envelopes = EnvelopeBuilder(run_id, producer_id)
        self._tracer = telemetry.tracer()
        self._counter = telemetry.meter().create_counter(
            "headwater.publish.events", description="events handed to a transport"
        )

    @property
    def run_id(self) -> str:
        return self.envelopes.run_id

    @property
    def producer_id(self) -> str:
        return self.envelopes.producer_id

    def publish(self, payload: Message) -> events_pb2.Event:
        """Wrap `payload` in the next envelope, hand it to the transport, return the event."""
        event = self.envelopes.wrap(payload)
        self.transport.send(
            event.run_id, event.event_id, event.SerializeToString(deterministic=True)
        )
        self._counter.add(1, {"payload": event.WhichOneof("payload") or ""})
        return event

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything published so far is stored; raise PublishError if not."""
        with self._tracer.start_as_current_span("headwater.publish.flush"):
            self.transport.flush(timeout)

    def close(self) -> None:
        with self._tracer.start_as_current_span("headwater.publish.close"):
            self.transport.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
