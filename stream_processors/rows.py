"""Pure processors: batches of accepted events -> Arrow tables for ClickHouse.

Each processor reads only the events it cares about and returns rows keyed so that
inserting the same batch twice leaves the same result (ReplacingMergeTree keys).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timezone

import pyarrow as pa

from headwater.stream_processors.decode import Accepted, Rejected

TS = pa.timestamp("us", tz="UTC")

EVENTS_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("schema_version", pa.uint32()), ("producer_id", pa.string()),
    ("run_id", pa.string()), ("seq", pa.uint64()), ("emitted_at", TS),
    ("payload_type", pa.string()), ("prev_hash", pa.binary(32)), ("hash", pa.binary(32)),
    ("raw", pa.binary()), ("size_bytes", pa.uint32()), ("transport", pa.string()),
    ("topic", pa.string()), ("partition", pa.int32()), ("offset", pa.int64()),
    ("ingested_at", TS),
])

SOURCES_SCHEMA = pa.schema([
    ("source_id", pa.string()), ("uri", pa.string()), ("content_sha256", pa.string()),
    ("row_count", pa.uint64()), ("schema_json", pa.string()), ("format", pa.string()),
    ("size_bytes", pa.uint64()), ("origin", pa.string()), ("licence", pa.string()),
    ("node_id", pa.string()), ("labels", pa.map_(pa.string(), pa.string())),
    ("run_id", pa.string()), ("producer_id", pa.string()), ("event_id", pa.string()),
    ("registered_at", TS),
])

DEAD_LETTERS_SCHEMA = pa.schema([
    ("received_at", TS), ("raw", pa.binary()), ("raw_sha256", pa.string()),
    ("error", pa.string()), ("transport", pa.string()), ("topic", pa.string()),
    ("partition", pa.int32()), ("offset", pa.int64()), ("event_id", pa.string()),
    ("producer_id", pa.string()), ("run_id", pa.string()), ("seq", pa.uint64()),
])


def _ts(event_ts) -> datetime:  # google.protobuf.Timestamp
    return datetime.fromtimestamp(event_ts.seconds + event_ts.nanos / 1e9, tz=timezone.utc)


def event_rows(batch: list[Accepted], transport: str, now: datetime) -> pa.Table:
    """One `events` row per accepted event: envelope columns + the exact bytes received."""
    cols: dict[str, list] = {name: [] for name in EVENTS_SCHEMA.names}
    for a in batch:
        e, r = a.event, a.record
        values = (
            e.event_id, e.schema_version, e.producer_id, e.run_id, e.seq, _ts(e.emitted_at),
            e.WhichOneof("payload"), e.prev_hash, e.hash, r.value, len(r.value), transport,
            r.topic, r.partition, r.offset, now,
        )
        for name, value in zip(EVENTS_SCHEMA.names, values):
            cols[name].append(value)
    return pa.table(cols, schema=EVENTS_SCHEMA)


def source_rows(batch: list[Accepted]) -> pa.Table:
    """One `sources` row per SourceRegistered."""
    rows = []
    for a in batch:
        e = a.event
        if e.WhichOneof("payload") != "source_registered":
            continue
        p = e.source_registered
        schema = [{"name": c.name, "dtype": c.dtype, "personal": c.personal} for c in p.schema]
        rows.append({
            "source_id": p.source_id, "uri": p.uri, "content_sha256": p.content_sha256,
            "row_count": p.row_count, "schema_json": json.dumps(schema), "format": p.format,
            "size_bytes": p.size_bytes, "origin": p.origin, "licence": p.licence,
            "node_id": p.node_id, "labels": list(p.labels.items()), "run_id": e.run_id,
            "producer_id": e.producer_id, "event_id": e.event_id,
            "registered_at": _ts(e.emitted_at),
        })
    return pa.Table.from_pylist(rows, schema=SOURCES_SCHEMA)


def dead_letter_rows(batch: list[Rejected], transport: str, now: datetime) -> pa.Table:
    """One `dead_letters` row per rejected record, with whatever of the envelope decoded."""
    rows = []
    for r in batch:
        e = r.event
        rows.append({
            "received_at": now, "raw": r.record.value,
            "raw_sha256": hashlib.sha256(r.record.value).hexdigest(), "error": r.error,
            "transport": transport, "topic": r.record.topic, "partition": r.record.partition,
            "offset": r.record.offset, "event_id": e.event_id[:256] if e else "",
            "producer_id": e.producer_id[:256] if e else "",
            "run_id": e.run_id[:256] if e else "", "seq": e.seq if e else 0,
        })
    return pa.Table.from_pylist(rows, schema=DEAD_LETTERS_SCHEMA)


# Derived tables, written before `events` so a crash in between is repaired by redelivery.
Processor = Callable[[list[Accepted]], pa.Table]
DERIVED: dict[str, Processor] = {
    "sources": source_rows,
}
