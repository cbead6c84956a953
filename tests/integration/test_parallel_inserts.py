"""The sink's parallel writes (Store.insert_all): every table written, a failure in any of
them acks nothing and writes no receipt, and the redelivery stores each event once."""

from __future__ import annotations

import pyarrow as pa
import pytest

from headwater.errors import StoreError
from headwater.producers.transports.base import Record
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store
from tests.support.gradient_records import gradient_records


def _count(store: Store, table: str) -> int:
    return int(store.query(f"SELECT count() FROM {table}")[0][0])


def test_insert_all_writes_each_table_and_raises_the_failure(store: Store) -> None:
    store.command("CREATE TABLE pa (x UInt64) ENGINE = MergeTree ORDER BY x")
    store.command("CREATE TABLE pb (x UInt64) ENGINE = MergeTree ORDER BY x")
    rows = pa.table({"x": pa.array([1, 2, 3], pa.uint64())})
    empty = pa.table({"x": pa.array([], pa.uint64())})
    store.insert_all([("pa", rows), ("pb", rows), ("no_such_table", empty)])
    assert (_count(store, "pa"), _count(store, "pb")) == (3, 3)
    with pytest.raises(StoreError, match="insert into no_such_table failed"):
        store.insert_all([("pa", rows), ("no_such_table", rows), ("pb", rows)])
    # the others were written all the same (no order among them): keyed tables absorb it
    assert (_count(store, "pa"), _count(store, "pb")) == (6, 6)


@pytest.mark.parametrize("failing", ["events", "gradients", "dead_letters"])
def test_a_failed_parallel_write_acks_nothing_and_the_redelivery_stores_once(
        store: Store, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    batch = gradient_records(10, run_id="run-p", seed=11)
    batch.append(Record(b"not an event", "t", 0, 10))  # a dead letter in the same write
    sink = EventSink(store, "kafka")
    real_insert, real_writer = store.insert, store._insert_on_writer

    def insert(table: str, rows: pa.Table, settings: object = None) -> None:
        if table == failing:
            raise StoreError(f"insert into {table} failed: disk full (test)")
        real_insert(table, rows, settings)  # type: ignore[arg-type]

    def on_writer(table: str, rows: pa.Table, settings: object = None) -> None:
        if table == failing:
            raise StoreError(f"insert into {table} failed: disk full (test)")
        real_writer(table, rows, settings)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "insert", insert)
    monkeypatch.setattr(store, "_insert_on_writer", on_writer)
    with pytest.raises(StoreError, match=failing):
        sink.ingest(batch)
    # the receipts follow every other table: none was written, so nothing is a repeat yet
    assert _count(store, "event_receipts") == 0
    assert _count(store, "curvature_parts") == 0
    monkeypatch.undo()
    acks = sink.ingest(batch)  # redelivered
    assert [a.accepted for a in acks] == [True] * 10 + [False]
    assert store.query("SELECT count() FROM events FINAL")[0][0] == 10
    assert store.query("SELECT count() FROM gradients FINAL")[0][0] == 30
    assert _count(store, "event_receipts") == 10
    assert store.query("SELECT count() FROM dead_letters FINAL")[0][0] == 1
    assert store.query("SELECT sum(rows) FROM curvature_parts")[0][0] == 30
    sink.ingest(batch)  # and again: nothing changes, nothing counted twice
    assert _count(store, "event_receipts") == 10
    assert store.query("SELECT sum(rows) FROM curvature_parts")[0][0] == 30
