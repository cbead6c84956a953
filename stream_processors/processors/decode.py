"""Decoding received records into accepted events or rejections (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from headwater.producers.transports.base import Record
from headwater.stream_processors.processors.validate import (
    DEFAULT_LIMITS,
    InvalidEvent,
    Limits,
    validate_event,
)
from headwater.v1 import events_pb2


@dataclass(frozen=True)
class Accepted:
    index: int
    record: Record
    event: events_pb2.Event


@dataclass(frozen=True)
class Rejected:
    index: int
    record: Record
    error: str
    event: events_pb2.Event | None = None


def decode_record(index: int, record: Record, limits: Limits = DEFAULT_LIMITS
                  ) -> Accepted | Rejected:
    """Parse and validate one encoded Event; never raises."""
    if len(record.value) > limits.event_bytes:
        return Rejected(index, record, f"event is {len(record.value)} bytes; the limit is "
                        f"{limits.event_bytes} (HEADWATER_MAX_EVENT_BYTES)")
    event = events_pb2.Event()
    try:
        event.ParseFromString(record.value)
    except (DecodeError, RuntimeError, ValueError) as exc:
        return Rejected(index, record, f"undecodable: not a headwater.v1.Event ({exc})")
    try:
        validate_event(event, limits)
    except InvalidEvent as exc:
        return Rejected(index, record, f"invalid event: {exc}", event)
    return Accepted(index, record, event)


def decode_batch(records: list[Record], start: int = 0, limits: Limits = DEFAULT_LIMITS
                 ) -> tuple[list[Accepted], list[Rejected]]:
    """Decode every record; indices count from `start`."""
    accepted: list[Accepted] = []
    rejected: list[Rejected] = []
    for i, record in enumerate(records, start):
        result = decode_record(i, record, limits)
        (accepted if isinstance(result, Accepted) else rejected).append(result)  # type: ignore[arg-type]
    return accepted, rejected
