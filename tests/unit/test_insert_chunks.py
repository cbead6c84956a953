"""The Kafka runner cuts a batch into inserts of about INSERT_EVENTS events, in order, at
the events per message of the batch before (a bundle carries many)."""

from __future__ import annotations

from headwater.producers.transports.base import Record
from headwater.stream_processors.kafka_runner import insert_chunks


def _records(n: int) -> list[Record]:
    return [Record(value=b"x", topic="t", partition=0, offset=i, headers=(), key=b"")
            for i in range(n)]


def _sizes(chunks: list[list[Record]]) -> list[int]:
    return [len(c) for c in chunks]


def test_bundles_are_cut_at_the_event_budget_in_order() -> None:
    records = _records(256)
    chunks = insert_chunks(records, 190.0, 12_000)  # 63 bundles of ~190 events a run
    assert _sizes(chunks) == [63, 63, 63, 63, 4]
    assert [r for c in chunks for r in c] == records


def test_single_events_and_small_bundles_stay_one_insert() -> None:
    assert _sizes(insert_chunks(_records(256), 1.0, 12_000)) == [256]
    assert _sizes(insert_chunks(_records(104), 3.0, 12_000)) == [104]  # trainer events


def test_at_least_one_message_a_run_and_nothing_lost() -> None:
    assert _sizes(insert_chunks(_records(3), 50_000.0, 12_000)) == [1, 1, 1]
    assert _sizes(insert_chunks(_records(5), 0.0, 2)) == [2, 2, 1]
    assert insert_chunks([], 10.0, 100) == []
