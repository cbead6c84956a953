"""Decoding received records into accepted events or rejections (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from headwater.producers.transports.base import Record
from headwater.stream_processors.processors.fields import (
    Envelope,
    GradientFields,
    read_envelope,
    read_gradient,
)
from headwater.stream_processors.processors.gradient_screen import flag_gradient_batches
from headwater.stream_processors.processors.validate import (
    DEFAULT_LIMITS,
    InvalidEvent,
    Limits,
    check_envelope,
    validate_payload,
)
from headwater.v1 import events_pb2


@dataclass(slots=True)
class Accepted:
    """An event whose envelope passed, with its fields read once (fields.py): the envelope
    always, a GradientBatch's payload too. Left out, they are read from `event`."""

    index: int
    record: Record
    event: events_pb2.Event
    envelope: Envelope = None  # type: ignore[assignment]  # filled by __post_init__
    gradient: GradientFields | None = None

    def __post_init__(self) -> None:
        if self.envelope is None:
            self.envelope = read_envelope(self.event)
        if self.gradient is None and self.envelope.kind == "gradient_batch":
            self.gradient = read_gradient(self.event.gradient_batch)


@dataclass(frozen=True)
class Rejected:
    index: int
    record: Record
    error: str
    event: events_pb2.Event | None = None


def _parse(index: int, record: Record, limits: Limits) -> Accepted | Rejected:
    """Parse one encoded Event and check its envelope; never raises."""
    if not record.value:
        return Rejected(index, record, "empty message: no bytes to decode (a headwater.v1.Event "
                        "is never empty)")
    if len(record.value) > limits.event_bytes:
        return Rejected(index, record, f"event is {len(record.value)} bytes; the limit is "
                        f"{limits.event_bytes} (HEADWATER_MAX_EVENT_BYTES)")
    event = record.parsed
    if not isinstance(event, events_pb2.Event):
        event = events_pb2.Event()
        try:
            event.ParseFromString(record.value)
        except (DecodeError, RuntimeError, ValueError) as exc:
            return Rejected(index, record, f"undecodable: not a headwater.v1.Event ({exc})")
    envelope = read_envelope(event)
    try:
        check_envelope(envelope, event)
    except InvalidEvent as exc:
        return Rejected(index, record, f"invalid event: {exc}", event)
    return Accepted(index, record, event, envelope)


def _checked(a: Accepted, limits: Limits) -> Accepted | Rejected:
    """The per-event payload checks of an event whose envelope passed."""
    try:
        validate_payload(a.event, a.envelope.kind, limits)  # type: ignore[arg-type]
    except InvalidEvent as exc:
        return Rejected(a.index, a.record, f"invalid event: {exc}", a.event)
    return a


def decode_record(index: int, record: Record, limits: Limits = DEFAULT_LIMITS
                  ) -> Accepted | Rejected:
    """Parse and validate one encoded Event; never raises."""
    parsed = _parse(index, record, limits)
    return _checked(parsed, limits) if isinstance(parsed, Accepted) else parsed


def decode_batch(records: list[Record], start: int = 0, limits: Limits = DEFAULT_LIMITS
                 ) -> tuple[list[Accepted], list[Rejected]]:
    """Decode every record; indices count from `start`. The same verdicts as decode_record
    one by one, but GradientBatch payloads are checked per batch (gradient_screen): only
    those the screen flags get the per-event checks, which name the field."""
    parsed = [_parse(i, record, limits) for i, record in enumerate(records, start)]
    grads = [i for i, r in enumerate(parsed) if isinstance(r, Accepted)
             and r.gradient is not None]
    flagged = flag_gradient_batches(
        [parsed[i].gradient for i in grads], limits)  # type: ignore[union-attr,misc]
    screened = {i for i, flag in zip(grads, flagged, strict=True) if not flag}
    accepted: list[Accepted] = []
    rejected: list[Rejected] = []
    for i, result in enumerate(parsed):
        if isinstance(result, Accepted) and i not in screened:
            result = _checked(result, limits)
        (accepted if isinstance(result, Accepted) else rejected).append(result)  # type: ignore[arg-type]
    return accepted, rejected
