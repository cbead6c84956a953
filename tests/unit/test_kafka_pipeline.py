"""The Kafka runner's pipeline: two batches in flight, offsets committed in consumption order.

The consumer is a scripted stand-in (the real broker paths are tests/e2e/test_faults.py,
test_kafka_path.py and test_scale_out.py); the sink is a stand-in whose stores finish when a
test lets them, so each ordering the pipeline can meet is made to happen, not hoped for.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from headwater.errors import StoreError
from headwater.producers.transports.base import Ack, Record
from headwater.stream_processors import kafka_runner
from headwater.stream_processors.kafka_runner import KafkaRunner

WAIT = 10.0  # s: a store a test is waiting for never takes this long


class _Message:
    def __init__(self, partition: int, offset: int, size: int) -> None:
        self._partition, self._offset, self._size = partition, offset, size

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return b"e" * self._size

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def headers(self) -> None:
        return None

    def key(self) -> bytes:
        return b"run"


class _Consumer:
    """Hands out scripted batches; a step may be a callable (a rebalance callback's turn,
    run inside consume as librdkafka does). Records every commit."""

    def __init__(self, script: list[Any], runner_box: list[KafkaRunner], size: int) -> None:
        self.script = deque(script)
        self.size = size
        self.box = runner_box
        self.commits: list[tuple[bool, list[tuple[int, int]]]] = []
        self.callbacks: dict[str, Callable[..., None]] = {}
        self.closed = False

    def subscribe(self, topics: list[str], **callbacks: Callable[..., None]) -> None:
        self.callbacks = callbacks

    def consume(self, num: int, timeout: float) -> list[_Message]:
        if not self.script:
            self.box[0].stop()
            return []
        step = self.script.popleft()
        if callable(step):
            step(self)
            return []
        return [_Message(p, o, self.size) for p, o in step]

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        self.commits.append((asynchronous, [(tp.partition, tp.offset) for tp in offsets]))

    def incremental_assign(self, partitions: list[Any]) -> None: ...

    def incremental_unassign(self, partitions: list[Any]) -> None: ...

    def close(self) -> None:
        self.closed = True


class _Sink:
    """ingest() blocks until the test releases that call (by its order of arrival); a
    released call may raise instead of storing."""

    def __init__(self) -> None:
        self.calls: list[list[Record]] = []
        self.release: list[threading.Event] = [threading.Event() for _ in range(16)]
        self.outcome: dict[int, BaseException] = {}
        self.arrived = threading.Condition()
        self.running = 0
        self.most_running = 0
        self.delay = 0.0  # s each store takes once released

    def ingest(self, records: list[Record]) -> list[Ack]:
        with self.arrived:
            n = len(self.calls)
            self.calls.append(records)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.arrived.notify_all()
        try:
            assert self.release[n].wait(WAIT), f"call {n} was never released"
            threading.Event().wait(self.delay)
            if n in self.outcome:
                raise self.outcome.pop(n)
            return [Ack(i, f"e{i}", True) for i in range(len(records))]
        finally:
            with self.arrived:
                self.running -= 1

    def wait_calls(self, n: int) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.calls) >= n, WAIT)


def _runner(monkeypatch: pytest.MonkeyPatch, script: list[Any], sink: _Sink,
            event_bytes: int = 1_300) -> tuple[KafkaRunner, _Consumer]:
    box: list[KafkaRunner] = []
    consumer = _Consumer(script, box, event_bytes)
    monkeypatch.setattr(kafka_runner, "Consumer", lambda config: consumer)
    runner = KafkaRunner(sink, "127.0.0.1:1", "t", "g", within=0.01)  # type: ignore[arg-type]
    box.append(runner)
    return runner, consumer


def _start(runner: KafkaRunner) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            runner.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, errors


def _async_commits(consumer: _Consumer) -> list[list[tuple[int, int]]]:
    return [offsets for asynchronous, offsets in consumer.commits if asynchronous]


def _slow_stores(sink: _Sink) -> None:
    """Every store takes 50 ms: long enough for the next batch to arrive meanwhile."""
    for event in sink.release:
        event.set()
    sink.delay = 0.05


def test_a_later_batch_stored_first_is_committed_after_the_earlier_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sink = _Sink()
    runner, consumer = _runner(monkeypatch, [[(0, 0), (0, 1)], [(0, 2)], [(0, 3)]], sink)
    sink.release[0].set()  # the first batch alone tells the events per message
    thread, errors = _start(runner)
    sink.wait_calls(3)  # batches 2 and 3 are in flight together
    assert sink.most_running == 2
    sink.release[2].set()  # the third is stored first...
    threading.Event().wait(0.2)
    assert _async_commits(consumer) == [[(0, 2)]]  # ...but not committed before the second
    sink.release[1].set()
    thread.join(WAIT)
    assert not errors and not thread.is_alive()
    assert _async_commits(consumer) == [[(0, 2)], [(0, 3)], [(0, 4)]]
    assert runner.stored == 4
    assert consumer.closed


def test_at_most_two_batches_are_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = _Sink()
    runner, consumer = _runner(monkeypatch, [[(0, i)] for i in range(6)], sink)
    _slow_stores(sink)
    thread, errors = _start(runner)
    thread.join(WAIT)
    assert not errors
    assert sink.most_running == 2
    assert _async_commits(consumer) == [[(0, i + 1)] for i in range(6)]


def test_batches_of_large_events_are_stored_one_at_a_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A trainer's ~66 KB events: two such batches at once cost more CPU for no more rows/s,
    so each is stored before the next is handed over."""
    sink = _Sink()
    runner, consumer = _runner(monkeypatch, [[(0, i)] for i in range(4)], sink,
                               event_bytes=kafka_runner.PIPELINE_EVENT_BYTES + 1)
    _slow_stores(sink)
    thread, errors = _start(runner)
    thread.join(WAIT)
    assert not errors
    assert sink.most_running == 1 and len(sink.calls) == 4
    assert _async_commits(consumer) == [[(0, i + 1)] for i in range(4)]


def test_a_batch_never_stored_stops_every_later_commit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopping while the second batch's store keeps failing: the third, stored, is not
    committed (its offsets would cover the second's); leaving commits the first alone."""
    sink = _Sink()
    runner, consumer = _runner(monkeypatch, [[(0, 0)], [(0, 1)], [(0, 2)]], sink)
    sink.release[0].set()
    fails = 0

    def failing_store(records: list[Record]) -> list[Ack]:
        nonlocal fails
        if records[0].offset == 1:
            fails += 1
            if fails == 2:
                runner.stop()
            raise StoreError("the store is down")
        return _Sink.ingest(sink, records)

    sink.ingest = failing_store  # type: ignore[method-assign]
    sink.release[1].set()  # the third batch's call (the sink's second) stores at once
    thread, errors = _start(runner)
    thread.join(WAIT)
    assert not errors and not thread.is_alive()
    assert _async_commits(consumer) == [[(0, 1)]]
    assert all(offsets == [(0, 1)] for _, offsets in consumer.commits)
    assert runner.stored == 1


def test_a_batch_whose_store_raises_stops_the_runner_without_committing_later_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sink = _Sink()
    runner, consumer = _runner(monkeypatch, [[(0, 0)], [(0, 1)], [(0, 2)]], sink)
    sink.release[0].set()
    sink.outcome[1] = RuntimeError("a processor bug")
    thread, errors = _start(runner)
    sink.wait_calls(3)
    sink.release[2].set()
    threading.Event().wait(0.1)
    sink.release[1].set()
    thread.join(WAIT)
    assert [str(e) for e in errors] == ["a processor bug"]
    assert all(offsets == [(0, 1)] for _, offsets in consumer.commits)


class _TopicPartition:
    def __init__(self, partition: int) -> None:
        self.partition = partition


def test_a_revoke_first_stores_and_commits_the_batches_in_flight(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sink = _Sink()

    def revoke(consumer: _Consumer) -> None:
        sink.wait_calls(2)
        assert sink.running == 1  # the second batch is still being stored
        sink.release[1].set()
        consumer.callbacks["on_revoke"](consumer, [_TopicPartition(0), _TopicPartition(1)])

    runner, consumer = _runner(monkeypatch, [[(0, 0)], [(0, 1), (1, 0)], revoke], sink)
    sink.release[0].set()
    thread, errors = _start(runner)
    thread.join(WAIT)
    assert not errors and not thread.is_alive()
    # the revoked partitions' synchronous commit covers the batch that was in flight
    assert (False, [(0, 2), (1, 1)]) in consumer.commits
    sync = consumer.commits.index((False, [(0, 2), (1, 1)]))
    assert consumer.commits[:sync] == [(True, [(0, 1)]), (True, [(0, 2), (1, 1)])]
    assert runner.stored == 3


def test_lost_partitions_are_stored_but_not_committed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A session that expired: the batch in flight is still stored (the sink absorbs its
    redelivery elsewhere), but its lost partition's offset is not committed: a late commit
    could move its new owner's offset back."""
    sink = _Sink()

    def lose(consumer: _Consumer) -> None:
        sink.wait_calls(2)
        sink.release[1].set()
        consumer.callbacks["on_lost"](consumer, [_TopicPartition(0)])

    runner, consumer = _runner(monkeypatch, [[(0, 0), (1, 0)], [(0, 1), (1, 1)], lose],
                               sink)
    sink.release[0].set()
    thread, errors = _start(runner)
    thread.join(WAIT)
    assert not errors
    assert len(sink.calls) == 2
    committed = [o for _, offsets in consumer.commits for o in offsets]
    assert (0, 2) not in committed and (1, 2) in committed
