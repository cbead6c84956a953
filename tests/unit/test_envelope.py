"""Envelopes: ids, seq and the hash chain are built once, the same for every transport."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from headwater.producers.envelope import GENESIS_HASH, EnvelopeBuilder, event_hash, new_event_id
from headwater.v1 import events_pb2


def _source(i: int = 0) -> events_pb2.SourceRegistered:
    return events_pb2.SourceRegistered(source_id=f"s{i}", uri=f"file:///s{i}.csv",
                                       content_sha256="0" * 64, row_count=i)


def test_chain_links_every_event_to_the_previous_one() -> None:
    b = EnvelopeBuilder("run-1", "producer-a")
    events = [b.wrap(_source(i)) for i in range(5)]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[0].prev_hash == GENESIS_HASH
    for prev, cur in zip(events, events[1:], strict=False):
        assert cur.prev_hash == prev.hash
    for e in events:
        assert e.hash == event_hash(e)
        assert e.schema_version == 1 and e.run_id == "run-1" and e.producer_id == "producer-a"


def test_a_resumed_builder_goes_on_from_the_head_it_is_handed() -> None:
    first = EnvelopeBuilder("run-1", "producer-a")
    assert first.head() == (0, GENESIS_HASH)
    last = [first.wrap(_source(i)) for i in range(3)][-1]
    assert first.head() == (3, last.hash)
    second = EnvelopeBuilder("run-1", "producer-a")
    second.resume(*first.head())
    nxt = second.wrap(_source(3))
    assert nxt.seq == 4 and nxt.prev_hash == last.hash and nxt.hash == event_hash(nxt)


def test_hash_covers_the_payload() -> None:
    event = EnvelopeBuilder("r").wrap(_source(1))
    before = event.hash
    event.source_registered.row_count = 2
    assert event_hash(event) != before
    assert event.hash == before  # event_hash leaves the event as it was


def test_event_ids_are_time_ordered_uuid7() -> None:
    ids = [new_event_id() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 7 for i in ids[:10])
    assert all(str(uuid.UUID(i)) == i for i in ids)  # the canonical text form


def test_emitted_at_is_the_clock_to_the_microsecond() -> None:
    before = time.time()
    event = EnvelopeBuilder("r").wrap(_source(1))
    after = time.time()
    stamp = event.emitted_at.seconds + event.emitted_at.nanos / 1e9
    assert before - 1e-6 <= stamp <= after
    assert event.emitted_at.nanos % 1000 == 0 and 0 <= event.emitted_at.nanos < 1_000_000_000


def test_wrong_payload_type_is_named() -> None:
    with pytest.raises(TypeError, match="payload must be one of .*got Column"):
        EnvelopeBuilder("r").wrap(events_pb2.Column(name="x"))


def test_run_id_is_required() -> None:
    with pytest.raises(ValueError, match="run_id"):
        EnvelopeBuilder("")


def test_default_producer_ids_differ_per_builder() -> None:
    assert EnvelopeBuilder("r").producer_id != EnvelopeBuilder("r").producer_id


def _random_b(event_id: str) -> int:
    return uuid.UUID(event_id).int & ((1 << 62) - 1)


def test_event_ids_random_bits_differ_in_a_forked_child() -> None:
    """The random bits are read from the OS ahead of use; a forked child must not repeat
    the ones its parent is about to use."""
    new_event_id()  # the pool is filled: the next ids' bits are already read
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, new_event_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = new_event_id()
    assert uuid.UUID(child).version == 7
    assert _random_b(child) != _random_b(parent)


def test_event_ids_random_bits_are_not_repeated() -> None:
    bits = [_random_b(new_event_id()) for _ in range(3000)]  # several 512-id pools
    assert len(set(bits)) == len(bits)
