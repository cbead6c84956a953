"""Ways to deliver encoded events: Kafka, gRPC to `headwater serve`, or in-process.

Each transport is imported on first use, so `base` and `chunking` stay free of Kafka and
gRPC for the pure code that needs only the record types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headwater.lazy import lazy_exports

_EXPORTS = {
    "Ack": "headwater.producers.transports.base",
    "Record": "headwater.producers.transports.base",
    "Sink": "headwater.producers.transports.base",
    "Transport": "headwater.producers.transports.base",
    "GrpcTransport": "headwater.producers.transports.grpc",
    "KafkaTransport": "headwater.producers.transports.kafka",
    "LocalTransport": "headwater.producers.transports.local",
}
__all__ = [
    "Ack",
    "GrpcTransport",
    "KafkaTransport",
    "LocalTransport",
    "Record",
    "Sink",
    "Transport",
]

if TYPE_CHECKING:
    from headwater.producers.transports.base import Ack, Record, Sink, Transport
    from headwater.producers.transports.grpc import GrpcTransport
    from headwater.producers.transports.kafka import KafkaTransport
    from headwater.producers.transports.local import LocalTransport


__getattr__ = lazy_exports(__name__, _EXPORTS)
