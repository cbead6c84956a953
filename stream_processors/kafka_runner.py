"""The Kafka runner: one member of a consumer group feeding batches to the EventSink.

At-least-once, made exactly-once in effect by the idempotent sink: a batch's offsets are
committed only after ClickHouse stored the whole batch. The commit is sent asynchronously
(the loop does not wait on the group coordinator, which answers only after a rebalance:
~5 s measured), and a revoke — which runs inside `consume` — first commits the revoked
partitions' stored offsets synchronously, so a rebalance never hands a partition over with
a stored-but-uncommitted batch; a crash at any point only causes redelivery. A failed
write is retried with backoff; a stop requested meanwhile leaves the batch uncommitted, to
be redelivered to whichever member takes the partition.

Rebalancing is cooperative (`cooperative-sticky`, incremental): when a member joins, leaves
or dies, only the partitions that move are revoked and assigned; the others stay with their
members (an eager protocol takes every partition of the group away until the new
assignment); with the asynchronous commit the survivors' loop does not pause for it
(benchmarks/rebalance.py, README).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from headwater.errors import HeadwaterError, StoreError
from headwater.producers.transports.base import Ack, Record
from headwater.stream_processors.sink import EventSink

log = logging.getLogger("headwater.process")

# Bytes of events one batch may hold, about: the count asked of each `consume` is the
# batch size, capped at what this many bytes hold at the previous batch's mean message size.
# Each insert writes one part per table, a fixed cost of milliseconds whatever its size, so
# a backlog of small events is stored in large batches, while a batch of ~66 KB trainer
# events stays near this size in memory (docs/design-decisions.md).
BATCH_BYTES = 32 * 1024 * 1024
_FIRST_MESSAGE_BYTES = 1024 * 1024  # assumed before any message was seen: the producers' cap


def _headers(message: Message) -> list[tuple[str, str | bytes | None]]:
    # confluent-kafka returns a list of (name, value) pairs (its stubs say otherwise)
    return list(message.headers() or [])  # type: ignore[arg-type]


def _as_bytes(value: str | bytes | None) -> bytes:
    return value.encode() if isinstance(value, str) else value or b""


def batch_count(batch_size: int, message_bytes: float, events_per_message: float = 1.0
                ) -> int:
    """Messages to ask of the next `consume` (one call per batch: the rebalance callbacks
    run between batches): about `batch_size` events at `events_per_message` each (a bundle
    carries many), bounded by BATCH_BYTES at `message_bytes` each."""
    by_events = int(batch_size / max(events_per_message, 1.0))
    return max(1, min(by_events, int(BATCH_BYTES / max(message_bytes, 1.0))))


def check_reachable(bootstrap: str, config: dict[str, Any], timeout: float = 10.0) -> None:
    """Raise HeadwaterError in one line unless a broker answers within `timeout`.

    librdkafka's own log lines (one per connection attempt) are silenced; a connection
    refused by every broker fails at once rather than after the timeout.
    """
    errors: list[KafkaError] = []
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0,
                         "error_cb": errors.append, **config})  # type: ignore[dict-item]
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=1.0)
            return
        except KafkaException:
            admin.poll(0)  # serve error_cb
        down = any(e.code() == KafkaError._ALL_BROKERS_DOWN for e in errors)
        if down or time.monotonic() >= deadline:
            why = errors[-1].str() if errors else f"no answer within {timeout:.0f}s"
            raise HeadwaterError(f"cannot reach Kafka at {bootstrap}: {why}")


COOPERATIVE = "cooperative-sticky"  # incremental rebalancing (KIP-429)
CRASH_AFTER_INSERT = "HEADWATER_TEST_CRASH_AFTER_INSERT"


def _crash_after_insert_hook(inserts: int) -> None:
    """Fault injection for tests only (tests/e2e/test_faults.py): with
    HEADWATER_TEST_CRASH_AFTER_INSERT=N the process dies (os._exit(70), no cleanup) after
    its Nth stored batch and before that batch's offset commit: the crash window that
    redelivery must repair."""
    limit = os.environ.get(CRASH_AFTER_INSERT)
    if limit and inserts >= int(limit):
        log.error("%s=%s: exiting after insert %d, before the offset commit",
                  CRASH_AFTER_INSERT, limit, inserts)
        os._exit(70)


class KafkaRunner:
    """Consumes `topic` in group `group` and stores every batch through `sink`."""

    def __init__(
        self,
        sink: EventSink,
        bootstrap: str,
        topic: str,
        group: str,
        *,
        batch_size: int = 8000,
        within: float = 0.5,
        kafka_config: dict[str, Any] | None = None,
        session_timeout: float = 10.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.sink = sink
        self.topic = topic
        self.batch_size = batch_size
        self.within = within
        self.on_batch = on_batch
        self.stop_event = threading.Event()
        self.stored = 0  # events stored (accepted), not counting dead letters
        self.dead_lettered = 0
        self.assigned: set[int] = set()
        self._inserts = 0
        self._message_bytes = float(_FIRST_MESSAGE_BYTES)  # mean message size, previous batch
        self._per_message = 1.0  # events per message (bundles: many), previous batch
        self._stored_next: dict[int, int] = {}  # partition -> next offset after those stored
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": int(session_timeout * 1000),
            "heartbeat.interval.ms": int(min(1000, session_timeout * 200)),
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            "partition.assignment.strategy": COOPERATIVE,
            **(kafka_config or {}),
            "on_commit": self._on_commit,
        })
        # HEADWATER_KAFKA_CONFIG may choose an eager strategy (range, roundrobin) instead
        strategy = str((kafka_config or {}).get("partition.assignment.strategy", COOPERATIVE))
        self.cooperative = strategy.strip() == COOPERATIVE

    def stop(self) -> None:
        """Finish the batch in hand (store + commit), then leave the group."""
        self.stop_event.set()

    def run(self) -> None:
        self._consumer.subscribe([self.topic], on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_lost)
        try:
            while not self.stop_event.is_set():
                messages = self._consumer.consume(
                    batch_count(self.batch_size, self._message_bytes, self._per_message),
                    timeout=self.within)
                records = self._records(messages)
                if not records:
                    continue
                acks = self._write(records)
                if acks is None:
                    return  # stopping with an unstored batch: leave it uncommitted
                self._per_message = max(1.0, len(acks) / len(records))
                self._inserts += 1
                _crash_after_insert_hook(self._inserts)
                self._commit(records)
                # events stored (or already stored, redelivered); dead letters apart
                stored = sum(1 for a in acks if a.accepted and a.index >= 0)
                self.stored += stored
                self.dead_lettered += sum(1 for a in acks if not a.accepted)
                if self.on_batch is not None:
                    self.on_batch(stored)
        finally:
            self._commit_stored(set(self._stored_next))  # what was stored, before leaving
            self._consumer.close()

    def _records(self, messages: list[Message]) -> list[Record]:
        records = []
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise HeadwaterError(f"Kafka consumer failed: {err.str()}")
                log.warning("Kafka: %s", err.str())
                continue
            records.append(Record(
                value=m.value() or b"", topic=m.topic() or "", partition=m.partition() or 0,
                offset=m.offset() or 0,
                headers=tuple((k, _as_bytes(v)) for k, v in _headers(m)),
                key=_as_bytes(m.key()),
            ))
        if records:
            self._message_bytes = max(1.0, sum(len(r.value) for r in records) / len(records))
        return records

    def _write(self, records: list[Record]) -> list[Ack] | None:
        """The sink's acks once the batch is stored; None when stopping before that."""
        delay = 0.2
        while True:
            try:
                return self.sink.ingest(records)
            except StoreError as exc:
                if self.stop_event.is_set():
                    log.error("stopping with %d unstored events; not committing them "
                              "(they will be redelivered)", len(records))
                    return None
                log.warning("store write failed (%s); retrying in %.1fs", exc, delay)
                self.stop_event.wait(delay)
                delay = min(delay * 2, 10.0)

    def _commit(self, records: list[Record]) -> None:
        """Send the stored batch's offsets (asynchronously: the answer comes to _on_commit
        in a later consume)."""
        last: dict[int, int] = {}
        for r in records:
            last[r.partition] = max(last.get(r.partition, -1), r.offset)
        for p, o in last.items():
            self._stored_next[p] = max(self._stored_next.get(p, 0), o + 1)
        offsets = [TopicPartition(self.topic, p, o + 1) for p, o in sorted(last.items())]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            log.warning("offset commit failed (%s); the batch will be redelivered", exc)

    def _commit_stored(self, partitions: set[int]) -> None:
        """Commit, and wait for, the stored offsets of `partitions` (before they leave)."""
        offsets = [TopicPartition(self.topic, p, self._stored_next[p])
                   for p in sorted(partitions) if p in self._stored_next]
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Stored but not committed: the batch is redelivered, which the sink absorbs.
            log.warning("offset commit failed (%s); the batch will be redelivered", exc)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None:  # stored, not committed: redelivered (and absorbed) at worst
            log.warning("offset commit failed (%s); the batch will be redelivered", err.str())

    # The rebalance callbacks run inside consume(), between batches: every batch before was
    # stored, and a revoke commits the revoked partitions' offsets first, so nothing
    # stored-but-uncommitted changes hands. Cooperative: `partitions` are just those added
    # or taken away (the rest stay assigned); eager: the whole assignment each time.

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        self.assigned |= {p.partition for p in partitions}
        log.info("assigned partitions %s", sorted(p.partition for p in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._commit_stored({p.partition for p in partitions})
        self._forget(partitions)
        if self.cooperative:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()
        self.assigned -= {p.partition for p in partitions}
        log.info("revoked partitions %s", sorted(p.partition for p in partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions taken away without a revoke (this member's session expired): they
        may already be consumed elsewhere. A commit of the batch in hand fails (a stale
        generation) and is logged; its new owner gets the batch again, which the sink
        absorbs."""
        log.warning("lost partitions %s (session expired)",
                    sorted(p.partition for p in partitions))
        self._forget(partitions)  # not committed: no longer this member's to commit
        self._on_revoke(consumer, partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self._stored_next.pop(p.partition, None)


def run_until_signalled(runner: KafkaRunner) -> None:
    """Run in this thread; SIGINT/SIGTERM finish the current batch and leave the group."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: runner.stop())
    started = time.monotonic()
    runner.run()
    log.info("stored %d events (%d records dead-lettered) in %.0fs", runner.stored,
             runner.dead_lettered, time.monotonic() - started)
