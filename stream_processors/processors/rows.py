"""Pure processors: batches of accepted events -> Arrow tables for ClickHouse.

Each processor reads only the events it cares about and returns rows keyed so that
inserting the same batch twice leaves the same result (ReplacingMergeTree keys).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache

import pyarrow as pa

from headwater.stream_processors.processors.decode import Accepted, Rejected
from headwater.stream_processors.processors.fields import Envelope, columns
from headwater.v1 import events_pb2

TS = pa.timestamp("us", tz="UTC")

EVENTS_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("schema_version", pa.uint32()), ("producer_id", pa.string()),
    ("run_id", pa.string()), ("seq", pa.uint64()), ("emitted_at", TS),
    ("payload_type", pa.string()), ("prev_hash", pa.binary(32)), ("hash", pa.binary(32)),
    ("raw", pa.binary()), ("size_bytes", pa.uint32()), ("transport", pa.string()),
    ("topic", pa.string()), ("partition", pa.int32()), ("offset", pa.int64()),
    ("ingested_at", TS), ("principal", pa.string()),
])

RECEIPTS_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("hash", pa.binary(32)), ("producer_id", pa.string()),
    ("run_id", pa.string()), ("seq", pa.uint64()), ("principal", pa.string()),
    ("transport", pa.string()), ("received_at", TS),
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
    ("principal", pa.string()), ("key", pa.binary()),
    ("headers", pa.list_(pa.struct([("name", pa.string()), ("value", pa.binary())]))),
])


@lru_cache(maxsize=4096)
def _schema_json(columns: tuple[tuple[str, str, bool], ...]) -> str:
    return json.dumps([{"name": n, "dtype": t, "personal": p} for n, t, p in columns])


def micros(event_ts) -> int:  # google.protobuf.Timestamp -> microseconds since epoch
    return event_ts.seconds * 1_000_000 + event_ts.nanos // 1000


def ts_column(micros: Sequence[int]) -> pa.Array:
    return pa.array(micros, pa.int64()).cast(TS)


def event_rows(batch: list[Accepted], transport: str, now: datetime) -> pa.Table:
    """One `events` row per accepted event: envelope columns + the exact bytes received."""
    env = columns([a.envelope for a in batch], Envelope._fields)
    records = [a.record for a in batch]
    values = [r.value for r in records]
    n = len(batch)
    now_us = int(now.timestamp() * 1_000_000)
    columns_ = [
        env["event_id"], env["schema_version"], env["producer_id"], env["run_id"], env["seq"],
        ts_column(env["emitted_us"]), env["kind"], env["prev_hash"], env["hash"],
        values,
        [len(v) for v in values],
        [transport] * n,
        [r.topic for r in records],
        [r.partition for r in records],
        [r.offset for r in records],
        ts_column([now_us] * n),
        [r.principal for r in records],
    ]
    return pa.Table.from_arrays(
        [c if isinstance(c, pa.Array) else pa.array(c, f.type)
         for c, f in zip(columns_, EVENTS_SCHEMA, strict=True)],
        schema=EVENTS_SCHEMA,
    )


def receipt_rows(batch: list[Accepted], transport: str, now: datetime) -> pa.Table:
    """One `event_receipts` row per newly accepted event: the content hash its id now
    stands for (first write wins)."""
    env = columns([a.envelope for a in batch], Envelope._fields)
    return pa.Table.from_arrays([
        pa.array(env["event_id"], pa.string()),
        pa.array(env["hash"], pa.binary(32)),
        pa.array(env["producer_id"], pa.string()),
        pa.array(env["run_id"], pa.string()),
        pa.array(env["seq"], pa.uint64()),
        pa.array([a.record.principal for a in batch], pa.string()),
        pa.array([transport] * len(batch), pa.string()),
        ts_column([int(now.timestamp() * 1_000_000)] * len(batch)),
    ], schema=RECEIPTS_SCHEMA)


def source_rows(batch: list[Accepted]) -> pa.Table:
    """One `sources` row per SourceRegistered."""
    found = [a.event for a in batch if a.envelope.kind == "source_registered"]
    ps = [e.source_registered for e in found]
    columns = [
        [p.source_id for p in ps],
        [p.uri for p in ps],
        [p.content_sha256 for p in ps],
        [p.row_count for p in ps],
        [_schema_json(tuple((c.name, c.dtype, c.personal) for c in p.schema)) for p in ps],
        [p.format for p in ps],
        [p.size_bytes for p in ps],
        [p.origin for p in ps],
        [p.licence for p in ps],
        [p.node_id for p in ps],
        [list(p.labels.items()) for p in ps],
        [e.run_id for e in found],
        [e.producer_id for e in found],
        [e.event_id for e in found],
        ts_column([micros(e.emitted_at) for e in found]),
    ]
    return pa.Table.from_arrays(
        [c if isinstance(c, pa.Array) else pa.array(c, f.type)
         for c, f in zip(columns, SOURCES_SCHEMA, strict=True)],
        schema=SOURCES_SCHEMA,
    )


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
            "principal": r.record.principal, "key": r.record.key,
            "headers": [{"name": n, "value": v} for n, v in r.record.headers],
        })
    return pa.Table.from_pylist(rows, schema=DEAD_LETTERS_SCHEMA)


NODES_SCHEMA = pa.schema([
    ("node_id", pa.string()), ("kind", pa.string()), ("source_id", pa.string()),
    ("op_id", pa.string()), ("rows", pa.uint64()), ("shape", pa.list_(pa.uint64())),
    ("columns", pa.list_(pa.string())), ("run_id", pa.string()), ("event_id", pa.string()),
    ("recorded_at", TS),
])

OPS_SCHEMA = pa.schema([
    ("op_id", pa.string()), ("op_name", pa.string()), ("params_json", pa.string()),
    ("input_node_ids", pa.list_(pa.string())), ("output_node_id", pa.string()),
    ("output_rows", pa.uint64()), ("understood", pa.bool_()), ("granularity", pa.string()),
    ("code_version", pa.string()), ("segments", pa.uint32()), ("row_map", pa.binary()),
    ("run_id", pa.string()), ("producer_id", pa.string()), ("event_id", pa.string()),
    ("recorded_at", TS), ("columns_json", pa.string()),
    ("output_columns", pa.list_(pa.string())),
])


def source_node_id(p: events_pb2.SourceRegistered) -> str:
    """The lineage node holding a source's rows: its node_id, else its source_id."""
    return p.node_id or p.source_id


def lineage_node_rows(batch: list[Accepted]) -> pa.Table:
    """One `lineage_nodes` row per source and per op output."""
    rows = []
    for a in batch:
        e = a.event
        kind = a.envelope.kind
        if kind == "source_registered":
            p = e.source_registered
            rows.append({"node_id": source_node_id(p), "kind": "source",
                         "source_id": p.source_id, "op_id": "", "rows": p.row_count,
                         "shape": [p.row_count, len(p.schema)],
                         "columns": [c.name for c in p.schema]})
        elif kind == "op_recorded":
            o = e.op_recorded
            rows.append({"node_id": o.output_node_id, "kind": "op", "source_id": "",
                         "op_id": o.op_id, "rows": o.row_map.output_rows,
                         "shape": list(o.output_shape), "columns": list(o.output_columns)})
        else:
            continue
        rows[-1].update(run_id=e.run_id, event_id=e.event_id,
                        recorded_at=micros(e.emitted_at))
    table = pa.Table.from_pylist(rows, schema=NODES_SCHEMA.set(
        NODES_SCHEMA.get_field_index("recorded_at"), pa.field("recorded_at", pa.int64())))
    return table.set_column(table.schema.get_field_index("recorded_at"), "recorded_at",
                            table["recorded_at"].cast(TS))


def _columns_json(columns: Iterable[events_pb2.ColumnMapping]) -> str:
    """OpRecorded.columns as a JSON array, keys named as the proto fields."""
    return json.dumps([{"output_column": c.output_column, "input": c.input,
                        "input_columns": list(c.input_columns),
                        "transformation": c.transformation} for c in columns])


def lineage_op_rows(batch: list[Accepted]) -> pa.Table:
    """One `lineage_ops` row per OpRecorded, the row map kept as serialized bytes and the
    column mappings as JSON (`columns_json`, read by the OpenLineage export)."""
    rows = []
    for a in batch:
        e = a.event
        if a.envelope.kind != "op_recorded":
            continue
        o = e.op_recorded
        rows.append({
            "op_id": o.op_id, "op_name": o.op_name, "params_json": o.params_json,
            "input_node_ids": list(o.input_node_ids), "output_node_id": o.output_node_id,
            "output_rows": o.row_map.output_rows, "understood": o.understood,
            "granularity": events_pb2.OpRecorded.Granularity.Name(o.granularity),
            "code_version": o.code_version, "segments": len(o.row_map.segments),
            "row_map": o.row_map.SerializeToString(deterministic=True), "run_id": e.run_id,
            "producer_id": e.producer_id, "event_id": e.event_id,
            "recorded_at": micros(e.emitted_at),
            "columns_json": _columns_json(o.columns) if o.columns else "[]",
            "output_columns": list(o.output_columns),
        })
    schema = OPS_SCHEMA.set(OPS_SCHEMA.get_field_index("recorded_at"),
                            pa.field("recorded_at", pa.int64()))
    table = pa.Table.from_pylist(rows, schema=schema)
    return table.set_column(table.schema.get_field_index("recorded_at"), "recorded_at",
                            table["recorded_at"].cast(TS))
