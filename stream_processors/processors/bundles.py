"""Expansion of Kafka messages that carry many events (producers/transports/bundling.py):
one record per event, each then decoded, validated, stored or dead-lettered on its own."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from headwater.producers.transports.base import Record
from headwater.producers.transports.bundling import BUNDLE_HEADER
from headwater.producers.transports.chunking import CHUNK_HEADER
from headwater.stream_processors.processors.chunks import is_chunk
from headwater.stream_processors.processors.decode import Rejected
from headwater.v1 import query_pb2

# Events one bundle may carry: a message is at most ~1 MB, so a producer's bundle holds a
# few thousand small events; far more is a forged message that would fan out into as many
# dead letters, and is refused whole.
MAX_BUNDLE_EVENTS = 10_000


def is_bundle(record: Record) -> bool:
    return any(name == BUNDLE_HEADER for name, _ in record.headers)


def _unpack(record: Record) -> list[bytes]:
    """The bundle's events; ValueError names what is wrong with the message."""
    if is_chunk(record):
        raise ValueError(f"a record cannot be both a bundle ({BUNDLE_HEADER}) and a chunk "
                         f"({CHUNK_HEADER})")
    batch = query_pb2.EventBatch()
    try:
        batch.ParseFromString(record.value)
    except DecodeError as exc:
        raise ValueError(f"undecodable bundle: not a headwater.v1.EventBatch ({exc})"
                         ) from None
    if not batch.events:
        raise ValueError("empty bundle: an EventBatch with no events")
    if len(batch.events) > MAX_BUNDLE_EVENTS:
        raise ValueError(f"bundle of {len(batch.events)} events; at most "
                         f"{MAX_BUNDLE_EVENTS} are taken from one message")
    return list(batch.events)


def expand(records: list[Record]) -> tuple[list[Record], list[Rejected]]:
    """Each bundle replaced by its events, in place and in order (each with the message's
    topic, partition, offset, key and other headers); bundles that cannot be read are
    returned as rejected, whole."""
    if not any(r.headers for r in records):  # no bundle among them
        return records, []
    out: list[Record] = []
    rejected: list[Rejected] = []
    for record in records:
        if not is_bundle(record):
            out.append(record)
            continue
        try:
            values = _unpack(record)
        except ValueError as exc:
            rejected.append(Rejected(-1, record, str(exc)))
            continue
        headers = tuple(h for h in record.headers if h[0] != BUNDLE_HEADER)
        out.extend(Record(value, record.topic, record.partition, record.offset, headers,
                          record.principal, record.key) for value in values)
    return out, rejected
