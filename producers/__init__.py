"""The SDK a trainer imports: build chained events and publish them."""

from headwater.producers import rowmap
from headwater.producers.envelope import EnvelopeBuilder, event_hash
from headwater.producers.errors import PublishError
from headwater.producers.publisher import Publisher
from headwater.producers.transports import GrpcTransport, KafkaTransport, LocalTransport

__all__ = [
    "EnvelopeBuilder",
    "GrpcTransport",
    "KafkaTransport",
    "LocalTransport",
    "PublishError",
    "Publisher",
    "event_hash",
    "rowmap",
]
