"""An event's fields read once (pure): the envelope of every event and the payload of a
GradientBatch, as tuples the decoder fills once per event and every check and row builder
then reads as columns (`zip(*tuples)`), instead of each walking the protobuf objects again.

A read through upb costs ~60–140 ns per field; the validator, the batch screen, the first-
write screen and four row builders each read the same fields, so reading them once is what
keeps a small event's Python cost down (issue 18, docs/design-decisions.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from headwater.v1 import events_pb2


class Envelope(NamedTuple):
    """The envelope fields of one Event (and its payload's oneof name)."""

    event_id: str
    schema_version: int
    producer_id: str
    run_id: str
    seq: int
    emitted_s: int  # emitted_at.seconds
    emitted_us: int  # emitted_at as microseconds since the epoch (rows' DateTime64(6))
    prev_hash: bytes
    hash: bytes
    kind: str | None  # the payload's oneof field name; None when no payload is set


def read_envelope(event: events_pb2.Event) -> Envelope:
    """The envelope of `event`, each field read once."""
    at = event.emitted_at
    seconds = at.seconds
    return Envelope(event.event_id, event.schema_version, event.producer_id, event.run_id,
                    event.seq, seconds, seconds * 1_000_000 + at.nanos // 1000,
                    event.prev_hash, event.hash, event.WhichOneof("payload"))


class GradientFields(NamedTuple):
    """The fields of one GradientBatch payload. Repeated fields stay the message's own
    containers (no copy); `gradients` is the bytes, read once (each read copies them)."""

    model_id: str
    model_version: str
    kind: int
    projection_kind: int
    projection_id: str
    node_ids: Sequence[str]
    node_index: Sequence[int]
    rows: Sequence[int]
    dim: int
    dtype: int
    gradients: bytes
    loss: Sequence[float]
    loss_weight: Sequence[float]
    curvature_weight: Sequence[float]
    targets: Sequence[float]
    learning_rate: float
    step: int
    output_function: str


def read_gradient(p: events_pb2.GradientBatch) -> GradientFields:
    """The fields of a GradientBatch payload, each read once."""
    keys, projection = p.row_keys, p.projection
    return GradientFields(
        p.model_id, p.model_version, p.kind, projection.kind, projection.projection_id,
        keys.node_ids, keys.node_index, keys.rows, p.dim, p.dtype, p.gradients, p.loss,
        p.loss_weight, p.curvature_weight, p.targets, p.learning_rate, p.step,
        p.output_function)


def columns(rows: Sequence[tuple], fields: tuple[str, ...]) -> dict[str, tuple]:
    """Tuples of `fields` (Envelope or GradientFields) as one tuple per field, by name."""
    if not rows:
        return {name: () for name in fields}
    return dict(zip(fields, zip(*rows, strict=True), strict=True))
