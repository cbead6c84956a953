"""Events larger than a Kafka message travel as EventChunk pieces (pure: the wire format
shared by the Kafka transport, which splits, and the sink, which reassembles)."""

from __future__ import annotations

import hashlib

from headwater.v1 import events_pb2

CHUNK_HEADER = "headwater-chunk"  # Kafka header marking a record as one EventChunk


def split_into_chunks(event_id: str, value: bytes, max_bytes: int) -> list[bytes]:
    """Encode `value` as EventChunk messages each well under `max_bytes`."""
    room = max_bytes - 512  # EventChunk framing: id, counters, digest
    if room <= 0:
        raise ValueError(f"max_message_bytes={max_bytes} leaves no room for chunk framing")
    digest = hashlib.sha256(value).hexdigest()
    pieces = [value[i : i + room] for i in range(0, len(value), room)]
    return [
        events_pb2.EventChunk(
            event_id=event_id, index=i, count=len(pieces), data=p, sha256=digest
        ).SerializeToString()
        for i, p in enumerate(pieces)
    ]
