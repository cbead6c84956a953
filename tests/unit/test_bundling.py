"""Many events per Kafka message: the producer's Bundler and the sink's expansion (pure)."""

from __future__ import annotations

import pytest

from headwater.producers.transports.base import Record
from headwater.producers.transports.bundling import (
    BUNDLE_FRAMING,
    BUNDLE_HEADER,
    Bundler,
    encode_bundle,
)
from headwater.producers.transports.chunking import CHUNK_HEADER
from headwater.stream_processors.processors.bundles import MAX_BUNDLE_EVENTS, expand
from headwater.v1 import query_pb2

NO_HEADERS: tuple[tuple[str, bytes], ...] = ()


def test_a_bundle_is_due_when_full_by_count() -> None:
    b = Bundler(max_events=3, max_bytes=10_000, linger=1.0)
    assert b.add(b"k", NO_HEADERS, "e1", b"a", now=0.0) == []
    assert b.add(b"k", NO_HEADERS, "e2", b"b", now=0.0) == []
    ((key, due),) = b.add(b"k", NO_HEADERS, "e3", b"c", now=0.0)
    assert key == b"k" and due.ids == ["e1", "e2", "e3"] and due.values == [b"a", b"b", b"c"]
    assert not b.open


def test_an_event_that_does_not_fit_sends_the_bundle_before_it() -> None:
    b = Bundler(max_events=100, max_bytes=3 * (10 + BUNDLE_FRAMING), linger=1.0)
    for i in range(3):
        assert b.add(b"k", NO_HEADERS, f"e{i}", b"x" * 10, now=0.0) == []
    ((_, due),) = b.add(b"k", NO_HEADERS, "e3", b"x" * 10, now=0.0)
    assert due.ids == ["e0", "e1", "e2"]
    assert b.open[b"k"].ids == ["e3"]


def test_keys_are_bundled_apart_and_due_after_the_linger() -> None:
    b = Bundler(max_events=100, max_bytes=10_000, linger=0.5)
    b.add(b"k1", NO_HEADERS, "a", b"1", now=0.0)
    b.add(b"k2", NO_HEADERS, "b", b"2", now=0.2)
    b.add(b"k3", NO_HEADERS, "c", b"3", now=0.3)
    assert b.next_due() == 0.5
    assert [(k, x.ids) for k, x in b.due(now=0.6)] == [(b"k1", ["a"])]
    assert b.next_due() == pytest.approx(0.7)
    rest = b.due(now=0.0, everything=True)
    assert sorted(x.ids[0] for _, x in rest) == ["b", "c"] and b.next_due() is None


def test_another_trace_context_closes_the_key_s_bundle_so_its_order_is_kept() -> None:
    """One bundle open per key: an event with other headers (another span) sends the
    bundle before it, so a key's events reach the partition in the order sent."""
    b = Bundler(max_events=100, max_bytes=10_000, linger=1.0)
    traced = (("traceparent", b"00-abc-01"),)
    b.add(b"k", NO_HEADERS, "a", b"1", now=0.0)
    ((_, first),) = b.add(b"k", traced, "b", b"2", now=0.0)
    assert (first.ids, first.headers) == (["a"], NO_HEADERS)
    assert (b.open[b"k"].ids, b.open[b"k"].headers) == (["b"], traced)
    assert b.take(b"k") is not None and b.take(b"k") is None


def test_large_events_and_bundles_of_one_are_not_bundled() -> None:
    assert Bundler(10, 1000, 0.0).takes(b"x" * 400)
    assert not Bundler(10, 1000, 0.0).takes(b"x" * 500)  # over half a bundle: alone
    assert not Bundler(1, 1000, 0.0).takes(b"x")  # bundle_events=1: bundling off


@pytest.mark.parametrize("kwargs", [{"max_events": 0}, {"max_bytes": 0}, {"linger": -1.0}])
def test_bad_bundler_settings_are_refused_by_name(kwargs: dict) -> None:
    args = {"max_events": 10, "max_bytes": 1000, "linger": 0.0, **kwargs}
    name = {"max_events": "bundle_events", "max_bytes": "bundle_bytes",
            "linger": "bundle_linger"}[next(iter(kwargs))]
    with pytest.raises(ValueError, match=name):
        Bundler(**args)


def _bundle(values: list[bytes], *headers: tuple[str, bytes]) -> Record:
    return Record(encode_bundle(values), "t", 2, 41, ((BUNDLE_HEADER, b"1"), *headers),
                  principal="p", key=b"run-1")


def test_expand_keeps_order_place_and_the_message_s_other_headers() -> None:
    plain = Record(b"plain", "t", 2, 40)
    trace = ("traceparent", b"00-abc-01")
    out, rejected = expand([plain, _bundle([b"e1", b"e2"], trace), Record(b"after", "t", 2, 42)])
    assert not rejected
    assert [r.value for r in out] == [b"plain", b"e1", b"e2", b"after"]
    assert {(r.topic, r.partition, r.offset, r.key, r.principal, r.headers)
            for r in out[1:3]} == {("t", 2, 41, b"run-1", "p", (trace,))}


def test_a_batch_without_headers_is_returned_as_it_is() -> None:
    records = [Record(b"a"), Record(b"b")]
    assert expand(records) == (records, [])


@pytest.mark.parametrize("record, error", [
    (Record(b"\xff\xff not protobuf", headers=((BUNDLE_HEADER, b"1"),)), "undecodable bundle"),
    (Record(b"", headers=((BUNDLE_HEADER, b"1"),)), "empty bundle"),
    (Record(encode_bundle([b"a"]), headers=((BUNDLE_HEADER, b"1"), (CHUNK_HEADER, b"1"))),
     "both a bundle"),
    (Record(query_pb2.EventBatch(events=[b"x"] * (MAX_BUNDLE_EVENTS + 1)).SerializeToString(),
            headers=((BUNDLE_HEADER, b"1"),)), f"at most {MAX_BUNDLE_EVENTS}"),
])
def test_hostile_bundles_are_refused_whole_and_named(record: Record, error: str) -> None:
    out, rejected = expand([Record(b"ok"), record])
    assert [r.value for r in out] == [b"ok"]
    assert len(rejected) == 1 and error in rejected[0].error
    assert rejected[0].record is record and rejected[0].index == -1
