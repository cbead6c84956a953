"""Ways to deliver encoded events: Kafka, gRPC to `headwater serve`, or in-process."""

from headwater.producers.transports.base import Ack, Record, Sink, Transport
from headwater.producers.transports.grpc import GrpcTransport
from headwater.producers.transports.kafka import KafkaTransport
from headwater.producers.transports.local import LocalTransport

__all__ = [
    "Ack",
    "GrpcTransport",
    "KafkaTransport",
    "LocalTransport",
    "Record",
    "Sink",
    "Transport",
]
