"""The SDK a trainer imports: build chained events and publish them.

Rooms: envelope.py, publisher.py, transports/ (build and send events), worker/ (the
publishing worker process, ProcessPublisher), rowmap.py (the
row-map wire codec, shared with the stream processors), tracking/ (tracked arrays and
tensors, the op registry, frames, sources), capture/ (per-sample gradients, projection),
unlearning/ (Newton, fine-tune, verification, the listener).

Names are imported on first use (PEP 562), so importing one pure module of the SDK (the
envelope, row maps) does not load Kafka, gRPC or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headwater.lazy import lazy_exports

_EXPORTS = {
    "rowmap": "headwater.producers.rowmap",
    "EnvelopeBuilder": "headwater.producers.envelope",
    "event_hash": "headwater.producers.envelope",
    "PublishError": "headwater.errors",
    "Publisher": "headwater.producers.publisher",
    "BackgroundPublisher": "headwater.producers.publisher",
    "ProcessPublisher": "headwater.producers.worker.process",
    "publishing_worker": "headwater.producers.worker.process",
    "GrpcTransport": "headwater.producers.transports.grpc",
    "KafkaTransport": "headwater.producers.transports.kafka",
    "LocalTransport": "headwater.producers.transports.local",
    "LinearModel": "headwater.producers.unlearning.linear",
    "unlearn": "headwater.producers.unlearning.api",
    "verify": "headwater.producers.unlearning.api",
    "Outcome": "headwater.producers.unlearning.listener",
    "Unlearner": "headwater.producers.unlearning.listener",
    "UnlearningListener": "headwater.producers.unlearning.listener",
}
__all__ = [
    "BackgroundPublisher",
    "EnvelopeBuilder",
    "GrpcTransport",
    "KafkaTransport",
    "LinearModel",
    "LocalTransport",
    "Outcome",
    "ProcessPublisher",
    "PublishError",
    "Publisher",
    "Unlearner",
    "UnlearningListener",
    "event_hash",
    "publishing_worker",
    "rowmap",
    "unlearn",
    "verify",
]

if TYPE_CHECKING:
    from headwater.errors import PublishError
    from headwater.producers import rowmap
    from headwater.producers.envelope import EnvelopeBuilder, event_hash
    from headwater.producers.publisher import BackgroundPublisher, Publisher
    from headwater.producers.transports.grpc import GrpcTransport
    from headwater.producers.transports.kafka import KafkaTransport
    from headwater.producers.transports.local import LocalTransport
    from headwater.producers.unlearning.api import unlearn, verify
    from headwater.producers.unlearning.linear import LinearModel
    from headwater.producers.unlearning.listener import Outcome, Unlearner, UnlearningListener
    from headwater.producers.worker.process import ProcessPublisher, publishing_worker


__getattr__ = lazy_exports(__name__, _EXPORTS)
