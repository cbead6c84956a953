"""Reassembly of events that a producer split into EventChunk messages (pure parts)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from headwater.producers.transports.base import Record
from headwater.producers.transports.chunking import CHUNK_HEADER
from headwater.v1 import events_pb2


def is_chunk(record: Record) -> bool:
    return any(name == CHUNK_HEADER for name, _ in record.headers)


def parse_chunk(record: Record) -> events_pb2.EventChunk:
    """Decode and check one chunk; ValueError names what is wrong."""
    chunk = events_pb2.EventChunk()
    try:
        chunk.ParseFromString(record.value)
    except DecodeError as exc:
        raise ValueError(f"undecodable chunk: not a headwater.v1.EventChunk ({exc})") from None
    if not chunk.event_id:
        raise ValueError("chunk.event_id is empty")
    if chunk.count == 0 or chunk.index >= chunk.count:
        raise ValueError(f"chunk.index {chunk.index} is not below chunk.count {chunk.count}")
    return chunk


@dataclass(frozen=True)
class StoredChunk:
    event_id: str
    idx: int
    count: int
    sha256: str
    data: bytes


def assemble(pieces: list[StoredChunk]) -> bytes:
    """Join all pieces of one event in order; ValueError if any is missing or corrupt."""
    pieces = sorted({p.idx: p for p in pieces}.values(), key=lambda p: p.idx)
    count = pieces[0].count
    if [p.idx for p in pieces] != list(range(count)):
        raise ValueError(f"event {pieces[0].event_id}: have pieces "
                         f"{[p.idx for p in pieces]} of {count}")
    value = b"".join(p.data for p in pieces)
    if hashlib.sha256(value).hexdigest() != pieces[0].sha256:
        raise ValueError(f"event {pieces[0].event_id}: reassembled bytes fail their sha256")
    return value
