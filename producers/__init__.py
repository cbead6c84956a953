"""The SDK a trainer imports: build chained events and publish them."""

from headwater.producers import rowmap
from headwater.producers.envelope import EnvelopeBuilder, event_hash
from headwater.producers.errors import PublishError
from headwater.producers.publisher import Publisher
from headwater.producers.transports import GrpcTransport, KafkaTransport, LocalTransport
from headwater.producers.unlearning import LinearModel, unlearn, verify
from headwater.producers.unlearning_listener import Outcome, Unlearner, UnlearningListener

__all__ = [
    "EnvelopeBuilder",
    "GrpcTransport",
    "KafkaTransport",
    "LinearModel",
    "LocalTransport",
    "Outcome",
    "PublishError",
    "Publisher",
    "Unlearner",
    "UnlearningListener",
    "event_hash",
    "rowmap",
    "unlearn",
    "verify",
]
