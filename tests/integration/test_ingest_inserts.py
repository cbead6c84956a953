"""Issue 18's cheaper ingest writes keep what they rely on: `events` and `gradients` are
inserted without the engine's merge of the block (optimize_on_insert = 0), which is safe
only because the first-write screen passes each event id once per batch; blob columns are
LZ4 (migration 0030); a trainer batch's blocks are compact parts (migration 0031); serve's
parsed event reaches the sink without a second parse."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from headwater.producers.envelope import EnvelopeBuilder
from headwater.producers.transports.base import Record
from headwater.stream_processors.processors.decode import Accepted, decode_batch
from headwater.stream_processors.processors.rows import event_rows
from headwater.stream_processors.sink import UNMERGED_INSERTS, EventSink
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2
from tests.support.gradient_records import gradient_records


def _raw_count(store: Store, table: str) -> int:
    """Rows as written, without FINAL: a duplicate in one unmerged block would show here."""
    return int(store.query(f"SELECT count() FROM {table}")[0][0])


def test_a_batch_repeating_its_events_writes_each_once_without_the_insert_merge(
        store: Store) -> None:
    assert set(UNMERGED_INSERTS) == {"events", "gradients"}
    batch = gradient_records(6, run_id="run-u", seed=5, curvature=False)
    sink = EventSink(store, "kafka")
    acks = sink.ingest(batch + batch[:4] + batch[2:3])  # repeats inside one batch
    assert all(a.accepted for a in acks) and len(acks) == 11
    assert _raw_count(store, "events") == 6
    assert _raw_count(store, "gradients") == 18
    assert _raw_count(store, "event_receipts") == 6
    sink.ingest(batch)  # a redelivery: repeats, nothing written again
    assert (_raw_count(store, "events"), _raw_count(store, "gradients")) == (6, 18)


def test_blob_columns_are_lz4(store: Store) -> None:
    codecs = dict(store.query(
        "SELECT table, compression_codec FROM system.columns WHERE database = {d:String} "
        "AND (table, name) IN (('events', 'raw'), ('gradients', 'gradient'))",
        {"d": store.database}))
    assert codecs == {"events": "CODEC(LZ4)", "gradients": "CODEC(LZ4)"}


def test_a_trainer_batch_is_written_as_compact_parts_and_reads_back_whole(
        store: Store) -> None:
    """~13 MB of gradient bytes in one batch: past the engine's default 10 MB for a wide part,
    below migration 0031's 128 MiB, so each table gets one compact part, stored in full."""
    batch = gradient_records(100, run_id="run-c", seed=7, rows=64, k=512, curvature=False)
    assert all(a.accepted for a in EventSink(store, "kafka").ingest(batch))
    parts = store.query(
        "SELECT table, part_type, sum(rows), sum(data_uncompressed_bytes) FROM system.parts "
        "WHERE database = {d:String} AND active AND table IN ('events', 'gradients') "
        "GROUP BY table, part_type ORDER BY table", {"d": store.database})
    assert [(t, kind, rows) for t, kind, rows, _ in parts] == [
        ("events", "Compact", 100), ("gradients", "Compact", 6400)]
    assert all(size > 13_000_000 for *_, size in parts)  # would have been wide before 0031
    stored = store.query("SELECT sum(length(gradient)), count(DISTINCT event_id) FROM gradients")
    assert stored == [(100 * 64 * 512 * 4, 100)]
    assert store.query("SELECT sum(length(raw)) FROM events")[0][0] == sum(
        len(r.value) for r in batch)


def test_a_record_carrying_its_parsed_event_is_not_parsed_again() -> None:
    record = gradient_records(1, run_id="run-u", seed=5, curvature=False)[0]
    parsed = events_pb2.Event.FromString(record.value)
    carried = Record(record.value, parsed=parsed)
    assert carried == Record(record.value)  # `parsed` is not part of equality
    accepted, rejected = decode_batch([carried])
    assert not rejected and isinstance(accepted[0], Accepted)
    assert accepted[0].event is parsed
    # the carried event is still validated: one that no longer matches its hash is refused
    parsed.seq += 1
    refused = decode_batch([Record(record.value, parsed=parsed)])[1]
    assert refused and "hash does not match" in refused[0].error


def _source(i: int) -> events_pb2.SourceRegistered:
    return events_pb2.SourceRegistered(
        source_id=f"s{i}", uri=f"file:///d/{i}.parquet", content_sha256=f"{i:064x}",
        row_count=10 + i, labels={"team": "x", "é": str(i)},
        schema=[events_pb2.Column(name="age", dtype="int64", personal=True)])


def test_the_arrow_stream_stores_what_the_temporary_file_stored(store: Store) -> None:
    """chDB inserts go through ChdbInserter (an Arrow stream); clickhouse-connect's Arrow
    file path stores the same rows, column for column, in every table a batch writes."""
    from headwater.stream_processors.chdb_insert import ChdbInserter
    from headwater.stream_processors.processors.decode import Rejected
    from headwater.stream_processors.processors.derived import DERIVED
    from headwater.stream_processors.processors.rows import dead_letter_rows, receipt_rows
    from headwater.stream_processors.sink import _sketch_part

    b = EnvelopeBuilder("run-s")
    records = gradient_records(5, run_id="run-u", seed=5, curvature=False) + [
        Record(b.wrap(_source(i)).SerializeToString(deterministic=True), "t", 1, 100 + i)
        for i in range(3)]
    accepted, _ = decode_batch(records)
    now = datetime.now(timezone.utc)
    bad = Record(b"\x00junk", "t", 2, 7, headers=(("h", b"v"),), principal="p", key=b"k")
    tables = {
        "events": event_rows(accepted, "kafka", now),
        "event_receipts": receipt_rows(accepted, "kafka", now),
        "dead_letters": dead_letter_rows([Rejected(0, bad, "undecodable")], "kafka", now),
        "gradients": DERIVED["gradients"](accepted),
        "sources": DERIVED["sources"](accepted),
        "lineage_nodes": DERIVED["lineage_nodes"](accepted),
        "curvature_parts": _sketch_part([DERIVED["gradients"](accepted)], [], now),
    }
    assert store.dsn.path is not None
    inserter = ChdbInserter(store.dsn.path, store.database)
    try:
        for table, rows in tables.items():
            assert rows is not None and rows.num_rows > 0, table
            for copy in ("via_stream", "via_file"):
                store.command(f"CREATE TABLE {table}_{copy} AS {table}")
            inserter.insert(f"{table}_via_stream", rows, {"optimize_on_insert": "0"})
            store._client.insert_arrow(f"{table}_via_file", rows)
            # every column's text (NaN included), row by row
            sql = "SELECT formatRow('TSV', *) AS r FROM {} ORDER BY r"
            stream = store.query(sql.format(f"{table}_via_stream"))
            assert stream == store.query(sql.format(f"{table}_via_file")), table
            assert len(stream) == rows.num_rows
    finally:
        inserter.close()


@pytest.mark.parametrize("table, settings, named", [
    ("events`; DROP TABLE events; --", None, "is not a plain identifier"),
    ("events", {"optimize_on_insert": "0; SYSTEM SHUTDOWN"}, "is not a plain number or word"),
    ("events", {"max_threads = 1, readonly": "1"}, "is not a plain identifier"),
])
def test_the_arrow_stream_writes_only_plain_names(store: Store, table: str,
                                                  settings: dict | None, named: str) -> None:
    """The stream insert builds its statement from names and settings: anything but a plain
    identifier or value is refused before a statement is sent, and nothing is stored."""
    from headwater.stream_processors.chdb_insert import ChdbInserter

    rows = event_rows(decode_batch(gradient_records(2, run_id="run-h", seed=3))[0], "kafka",
                      datetime.now(timezone.utc))
    before = store.query("SELECT count() FROM events")[0][0]
    assert store.dsn.path is not None
    inserter = ChdbInserter(store.dsn.path, store.database)
    try:
        with pytest.raises(ValueError, match=named):
            inserter.insert(table, rows, settings)
    finally:
        inserter.close()
    assert store.query("SELECT count() FROM events")[0][0] == before
    assert [r[0] for r in store.query("EXISTS TABLE events")] == [1]
