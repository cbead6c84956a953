"""The sink: decode, dead-letter, store every table, idempotent under redelivery."""

from __future__ import annotations

import pytest

from headwater.producers import LocalTransport, Publisher, PublishError
from headwater.producers.envelope import EnvelopeBuilder
from headwater.producers.transports.base import Record
from headwater.producers.transports.bundling import BUNDLE_HEADER, encode_bundle
from headwater.producers.transports.chunking import CHUNK_HEADER, split_into_chunks
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2
from tests.support.gradient_records import gradient_records


def _source(i: int) -> events_pb2.SourceRegistered:
    return events_pb2.SourceRegistered(
        source_id=f"src-{i}", uri=f"file:///data/{i}.csv", content_sha256=f"{i:064x}",
        row_count=100 + i, format="csv", origin="unit test",
        schema=[events_pb2.Column(name="age", dtype="int64", personal=True)],
        labels={"team": "a"},
    )


def _records(n: int, run: str = "r") -> list[Record]:
    b = EnvelopeBuilder(run)
    return [Record(b.wrap(_source(i)).SerializeToString(deterministic=True)) for i in range(n)]


def test_published_sources_are_stored(store: Store) -> None:
    with Publisher(LocalTransport(EventSink(store, "local")), run_id="run-a") as pub:
        events = [pub.publish(_source(i)) for i in range(3)]
    rows = store.query("SELECT source_id, uri, row_count, schema_json, labels, event_id, run_id "
                       "FROM sources FINAL ORDER BY source_id")
    assert [r[0] for r in rows] == ["src-0", "src-1", "src-2"]
    assert rows[1][1:3] == ("file:///data/1.csv", 101)
    assert '"personal": true' in rows[0][3] and rows[0][4] == {"team": "a"}
    assert [r[5] for r in rows] == [e.event_id for e in events]
    stored = store.query("SELECT seq, payload_type, hex(hash) FROM events FINAL ORDER BY seq")
    assert [(s, t) for s, t, _ in stored] == [(1, "source_registered")] * 1 + [
        (2, "source_registered"), (3, "source_registered")]
    assert [h.lower() for *_, h in stored] == [e.hash.hex() for e in events]


def test_redelivery_leaves_one_row_each(store: Store) -> None:
    sink = EventSink(store, "kafka")
    batch = _records(50)
    sink.ingest(batch)
    sink.ingest(batch)
    sink.ingest(batch[10:20])
    assert store.query("SELECT count() FROM events FINAL")[0][0] == 50
    assert store.query("SELECT count() FROM sources FINAL")[0][0] == 50
    store.command("OPTIMIZE TABLE events FINAL")
    assert store.query("SELECT count() FROM events")[0][0] == 50


def test_poison_event_goes_to_dead_letters_and_the_rest_is_stored(store: Store) -> None:
    good = _records(2)
    poison = Record(b"\x08\x96\x01 not protobuf", topic="headwater.events", partition=3, offset=7)
    acks = EventSink(store, "kafka").ingest([good[0], poison, good[1]])
    assert [a.accepted for a in acks] == [True, False, True]
    assert "undecodable" in acks[1].error
    assert store.query("SELECT count() FROM events FINAL")[0][0] == 2
    dead = store.query("SELECT topic, partition, offset, error, raw FROM dead_letters FINAL")
    assert len(dead) == 1
    assert dead[0][:3] == ("headwater.events", 3, 7) and "undecodable" in dead[0][3]


def test_a_bundle_s_events_are_stored_and_dead_lettered_one_by_one(store: Store) -> None:
    """A bundle (many events in one Kafka message) is no unit of acceptance: a poison
    event inside is dead-lettered with its own bytes and the message's place, the rest
    stored; the same bundle redelivered changes nothing."""
    good = [r.value for r in _records(5)]
    poison = b"\x08\x96\x01 not protobuf"
    bundle = Record(encode_bundle([*good[:2], poison, *good[2:]]), "headwater.events", 1, 9,
                    ((BUNDLE_HEADER, b"1"),), key=b"r")
    sink = EventSink(store, "kafka")
    acks = sink.ingest([bundle])
    assert [a.accepted for a in acks] == [True, True, False, True, True, True]
    assert "undecodable" in acks[2].error
    sink.ingest([bundle])
    assert store.query("SELECT count() FROM events FINAL")[0][0] == 5
    assert store.query("SELECT count() FROM sources FINAL")[0][0] == 5
    dead = store.query("SELECT topic, partition, offset, raw, key FROM dead_letters FINAL")
    assert dead == [("headwater.events", 1, 9, poison.hex(), "r")]


def test_a_forged_bundle_is_dead_lettered_whole_and_the_events_around_it_stored(
        store: Store) -> None:
    good = _records(2)
    forged = Record(b"\xff\xfe not an EventBatch", "t", 0, 3, ((BUNDLE_HEADER, b"1"),))
    acks = EventSink(store, "kafka").ingest([good[0], forged, good[1]])
    assert sorted(a.accepted for a in acks) == [False, True, True]
    assert any("undecodable bundle" in a.error for a in acks)
    assert store.query("SELECT count() FROM events FINAL")[0][0] == 2
    assert store.query("SELECT error FROM dead_letters FINAL")[0][0].startswith(
        "undecodable bundle")


def test_redelivered_poison_is_kept_once(store: Store) -> None:
    poison = Record(b"garbage", topic="t", partition=0, offset=1)
    sink = EventSink(store, "kafka")
    sink.ingest([poison])
    sink.ingest([poison])
    assert store.query("SELECT count() FROM dead_letters FINAL")[0][0] == 1


def test_local_transport_raises_for_rejected_events(store: Store) -> None:
    class Corrupting(LocalTransport):
        def send(self, key: str, event_id: str, value: bytes) -> None:
            super().send(key, event_id, value[:-3] + b"xyz")

    pub = Publisher(Corrupting(EventSink(store, "local")), run_id="r")
    event = pub.publish(_source(1))
    with pytest.raises(PublishError, match="1 event\\(s\\) rejected") as err:
        pub.flush()
    assert err.value.failed_event_ids == [event.event_id]
    dead = store.query("SELECT error FROM dead_letters FINAL")
    assert len(dead) == 1 and dead[0][0].startswith("undecodable")


def test_chunks_are_reassembled_across_batches(store: Store) -> None:
    event = EnvelopeBuilder("r").wrap(events_pb2.SourceRegistered(
        source_id="big", uri="file:///big.csv", content_sha256="a" * 64, origin="x" * 30_000))
    raw = event.SerializeToString(deterministic=True)
    pieces = [Record(c, "t", 0, i, ((CHUNK_HEADER, b"1"),))
              for i, c in enumerate(split_into_chunks(event.event_id, raw, 10_000))]
    assert len(pieces) == 4
    sink = EventSink(store, "kafka")
    sink.ingest(pieces[:2])
    assert store.query("SELECT count() FROM events FINAL")[0][0] == 0
    sink.ingest(pieces[2:])
    sink.ingest(pieces[3:])  # a redelivered last piece changes nothing
    assert store.query("SELECT count(), any(hex(raw)) FROM events FINAL")[0] == (
        1, raw.hex().upper())


def test_corrupt_chunk_set_is_dead_lettered(store: Store) -> None:
    raw = EnvelopeBuilder("r").wrap(_source(1)).SerializeToString(deterministic=True)
    pieces = split_into_chunks("e1", raw + b"!", 1000)
    chunk = events_pb2.EventChunk.FromString(pieces[0])
    chunk.sha256 = "0" * 64
    acks = EventSink(store, "kafka").ingest(
        [Record(chunk.SerializeToString(), "t", 0, 0, ((CHUNK_HEADER, b"1"),))])
    assert not acks[0].accepted and "fail their sha256" in acks[0].error


def test_a_record_whose_processing_raises_is_isolated(store: Store,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from headwater.stream_processors.processors import derived as derived_module
    from headwater.stream_processors.processors import rows as rows_module

    real = rows_module.source_rows

    def fragile(batch):  # a processor bug triggered by one particular event
        if any(a.event.source_registered.source_id == "src-3" for a in batch):
            raise OverflowError("boom")
        return real(batch)

    monkeypatch.setitem(derived_module.DERIVED, "sources", fragile)
    acks = EventSink(store, "kafka").ingest(_records(8))
    assert [a.accepted for a in acks] == [True] * 3 + [False] + [True] * 4
    assert acks[3].error == "processing failed: OverflowError: boom"
    assert store.query("SELECT count() FROM events FINAL")[0][0] == 7
    assert store.query("SELECT count() FROM sources FINAL")[0][0] == 7
    dead = store.query("SELECT event_id, error FROM dead_letters FINAL")
    assert len(dead) == 1 and dead[0][0] == acks[3].event_id


def _counted(store: Store) -> tuple[int, list[str]]:
    rows = store.query("SELECT sum(rows) FROM curvature_parts")[0][0]
    ids = store.query("SELECT e FROM curvature_parts ARRAY JOIN event_ids AS e ORDER BY e")
    return int(rows or 0), [r[0] for r in ids]


def test_sketch_counts_each_event_once_across_a_failure_after_the_receipts(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sketch is written after the receipts: a failure in between leaves receipted,
    uncounted events, which their redelivery (arriving as repeats, in other batches, beside
    new events) counts exactly once; a plain redelivery counts nothing again."""
    from headwater.errors import StoreError

    batch = gradient_records(12, run_id="run-g", seed=7)
    sink = EventSink(store, "kafka")
    real_insert = store.insert
    failures = iter([True])

    def insert(table, rows, settings=None):
        if table == "curvature_parts" and next(failures, False):
            raise StoreError("connection lost (test)")
        return real_insert(table, rows, settings)

    monkeypatch.setattr(store, "insert", insert)
    with pytest.raises(StoreError):
        sink.ingest(batch[:8])
    assert store.query("SELECT count() FROM event_receipts")[0][0] == 8
    assert _counted(store) == (0, [])
    sink.ingest(batch[4:])  # redelivered differently: 4 repeats, 4 new events
    sink.ingest(batch[:6])  # repeats: 4 still uncounted, 2 counted already
    sink.ingest(batch)  # everything again
    rows, ids = _counted(store)
    assert rows == 12 * 3
    assert ids == sorted(events_pb2.Event.FromString(r.value).event_id for r in batch)


def test_the_same_new_events_in_two_concurrent_batches_are_counted_once(store: Store) -> None:
    """serve stores concurrent calls at once; a client's retry beside its original holds
    the same new events. Both batches found no receipt, so both stored the events and
    the curvature sketch counted them twice (600 gradient rows counted as 1,200); now the
    second waits for the first and screens them as repeats."""
    import threading

    sink = EventSink(store, "grpc")
    records = gradient_records(200, run_id="r", seed=1)
    barrier = threading.Barrier(2)
    acks: list[list] = []

    def send() -> None:
        barrier.wait()
        acks.append(sink.ingest(records))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a.accepted for batch in acks for a in batch) and len(acks) == 2
    assert store.query("SELECT count() FROM events FINAL")[0][0] == 200
    assert store.query("SELECT sum(rows) FROM curvature_parts")[0][0] == 600
    assert store.query("SELECT count() FROM curvature_parts ARRAY JOIN event_ids AS e"
                       )[0][0] == 200
