"""Issue 14, rows 7 and 10: a stored event is never replaced. The same id with the same
content is an idempotent repeat; with other content it is refused as a conflicting
duplicate (serve and `headwater process` share the sink), and `audit verify` reports a
stored event that is not the one first accepted, or that no receipt covers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from e2e.test_kafka_path import Processor, _process, _setup, scalar, sql

from conftest import Broker, Serve
from headwater.producers.envelope import EnvelopeBuilder, event_hash
from headwater.producers.transports.base import Record
from headwater.producers.transports.grpc import GrpcTransport
from headwater.query_service.compliance.log_reader import verify_stored_log
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2


def _version(model: str, version: str, step: int) -> events_pb2.ModelVersionRecorded:
    return events_pb2.ModelVersionRecorded(model_id=model, version=version, step=step,
                                           parameter_hash=f"{step:064x}", framework="numpy")


def _forged(event: events_pb2.Event) -> events_pb2.Event:
    """The same event id and place in the chain, other content, a hash recomputed to match."""
    forged = events_pb2.Event()
    forged.CopyFrom(event)
    forged.model_version_recorded.parameter_hash = "f" * 64
    forged.hash = event_hash(forged)
    return forged


def _raw(event: events_pb2.Event) -> bytes:
    return event.SerializeToString(deterministic=True)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[EventSink]:
    store = Store(f"chdb://{tmp_path / 'clickhouse'}")
    store.migrate()
    yield EventSink(store, "grpc")
    store.close()


def test_identical_repeat_is_a_no_op_and_a_conflict_is_refused(sink: EventSink) -> None:
    env = EnvelopeBuilder("run-fww", "trainer-fww")
    events = [env.wrap(_version("clf", f"v{i}", i)) for i in range(1, 4)]
    acks = sink.ingest([Record(_raw(e), principal="token=t role=producer") for e in events])
    assert all(a.accepted for a in acks)
    store = sink.store
    receipts = store.query("SELECT count() FROM event_receipts")[0][0]

    again = sink.ingest([Record(_raw(e)) for e in events])  # a redelivery: acked, not rewritten
    assert [a.accepted for a in again] == [True, True, True]
    assert store.query("SELECT count() FROM event_receipts")[0][0] == receipts == 3
    assert store.query("SELECT count() FROM events")[0][0] == 3  # no second copy, even unmerged

    forged = _forged(events[-1])
    (refused,) = sink.ingest([Record(_raw(forged), principal="token=mallory role=producer")])
    assert not refused.accepted and "conflicting duplicate" in refused.error
    assert store.query("SELECT hex(hash) FROM events FINAL WHERE event_id = {e:String}",
                       {"e": forged.event_id}) == [(events[-1].hash.hex().upper(),)]
    assert store.query("SELECT parameter_hash FROM model_versions FINAL "
                       "WHERE version = 'v3'") == [(f"{3:064x}",)]
    assert store.query("SELECT principal FROM dead_letters WHERE error LIKE "
                       "'%conflicting duplicate%'") == [("token=mallory role=producer",)]
    report = verify_stored_log(store, recompute_hashes=True)
    assert report.ok, report.problems


def test_within_one_batch_the_first_copy_wins(sink: EventSink) -> None:
    env = EnvelopeBuilder("run-batch", "trainer-batch")
    event = env.wrap(_version("clf", "v1", 1))
    acks = sink.ingest([Record(_raw(event)), Record(_raw(_forged(event))), Record(_raw(event))])
    assert [a.accepted for a in acks] == [True, False, True]
    assert "conflicting duplicate" in acks[1].error
    assert sink.store.query("SELECT parameter_hash FROM model_versions FINAL") == \
        [(f"{1:064x}",)]


def test_row_7_the_newest_event_resent_through_serve_is_refused(serve: Serve) -> None:
    """Row 7: the newest event of a chain re-sent with the same id, new content and a
    recomputed hash used to replace the stored one, and `audit verify` said intact."""
    env = EnvelopeBuilder("run-serve", "trainer-serve")
    events = [env.wrap(_version("clf", f"v{i}", i)) for i in range(1, 4)]
    transport = GrpcTransport(serve.target)
    for e in events:
        transport.send(e.run_id, e.event_id, _raw(e))
    transport.flush()
    forged = _forged(events[-1])
    transport.send(forged.run_id, forged.event_id, _raw(forged))
    with pytest.raises(Exception, match="conflicting duplicate"):
        transport.flush()
    transport.close()
    done = serve.cli("sql", "SELECT parameter_hash FROM model_versions FINAL WHERE "
                     "version = 'v3'", "--format", "json")
    assert json.loads(done.stdout) == {"parameter_hash": f"{3:064x}"}
    verify = serve.cli("audit", "verify", "--recompute-hashes", "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"] is True


@pytest.mark.kafka
@pytest.mark.timeout(180)
def test_a_conflicting_duplicate_on_kafka_is_dead_lettered(
        broker: Broker, tmp_path: Path, processors: list[Processor]) -> None:
    """`headwater process` keeps the first copy and dead-letters the other."""
    topic, tag, data = _setup(broker, "fww", tmp_path)
    env = EnvelopeBuilder(f"run-{tag}", "trainer-kafka")
    event = env.wrap(_version("clf", "v1", 1))
    raw = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for e in (event, _forged(event), event):
        raw.produce(topic, key=e.run_id.encode(), value=_raw(e))
    assert raw.flush(30) == 0
    worker = _process(processors, broker.bootstrap, topic, data)
    worker.wait_committed(3, timeout=90)
    worker.stop()
    assert scalar(data, "SELECT count() FROM events") == 1
    assert scalar(data, "SELECT parameter_hash FROM model_versions FINAL") == f"{1:064x}"
    errors = [r["error"] for r in sql(data, "SELECT error FROM dead_letters")]
    assert len(errors) == 1 and "conflicting duplicate" in errors[0]


@pytest.fixture
def processors() -> Iterator[list[Processor]]:
    started: list[Processor] = []
    yield started
    for p in started:
        p.kill()


def test_an_event_written_around_the_sink_is_reported(sink: EventSink) -> None:
    """An event inserted straight into the store has no receipt; one replaced there is not
    the event first accepted: both fail `audit verify`."""
    env = EnvelopeBuilder("run-around", "trainer-around")
    first, second = (env.wrap(_version("clf", f"v{i}", i)) for i in (1, 2))
    sink.ingest([Record(_raw(first))])
    store = sink.store
    store.command("INSERT INTO events (event_id, producer_id, run_id, seq, emitted_at, prev_hash, "
                  "hash, raw, payload_type) VALUES ({e:String}, {p:String}, {r:String}, 2, "
                  "now64(6), unhex({ph:String}), unhex({h:String}), unhex({raw:String}), "
                  "'model_version_recorded')",
                  {"e": second.event_id, "p": second.producer_id, "r": second.run_id,
                   "ph": second.prev_hash.hex(), "h": second.hash.hex(), "raw": _raw(second).hex()})
    report = verify_stored_log(store)
    assert [(p.kind, p.seq) for p in report.problems] == [("unreceipted", 2)]


def test_concurrent_batches_with_one_event_id_store_the_first_copy_only(
        sink: EventSink) -> None:
    """Two calls at once (serve's concurrent PublishBatch: a retry beside its original, or a
    forger racing the producer) both find no receipt: the sink holds the second until the
    first is stored, so it is screened as a repeat or a conflict, never stored beside it."""
    import threading

    env = EnvelopeBuilder("run-race", "trainer-race")
    events = [env.wrap(_version("clf", f"v{i}", i)) for i in range(1, 201)]
    forged = [_forged(e) for e in events]
    barrier = threading.Barrier(2)
    acks: dict[str, list] = {}

    def send(name: str, batch: list[events_pb2.Event]) -> None:
        barrier.wait()
        acks[name] = sink.ingest([Record(_raw(e)) for e in batch])

    threads = [threading.Thread(target=send, args=("real", events)),
               threading.Thread(target=send, args=("forged", forged))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = "real" if all(a.accepted for a in acks["real"]) else "forged"
    second = "forged" if first == "real" else "real"
    assert all(a.accepted for a in acks[first])
    assert not any(a.accepted for a in acks[second])
    assert all("conflicting duplicate" in a.error for a in acks[second])
    kept = events if first == "real" else forged
    stored = dict(sink.store.query("SELECT event_id, hex(hash) FROM events FINAL"))
    assert stored == {e.event_id: e.hash.hex().upper() for e in kept}
