"""Delivery to Kafka with confluent-kafka: acks=all, checked delivery reports, backpressure.

Small events sent under one key within `bundle_linger` go out as one message, a bundle
(transports/bundling.py): Kafka's costs are per message. Every message stays in `_pending`
until its delivery report says it is stored. If
reports stop coming while messages are pending (a broker restart can leave librdkafka
wedged), the producer is recreated and the pending messages are sent again; duplicates
are harmless because the store collapses events by id. Failures are raised to the caller
on the next `send` or `flush`, never dropped.
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from headwater.errors import PublishError
from headwater.producers import telemetry
from headwater.producers.transports.bundling import (
    BUNDLE_HEADER,
    Bundler,
    OpenBundle,
    encode_bundle,
)
from headwater.producers.transports.bundling import Headers as Traced
from headwater.producers.transports.chunking import CHUNK_HEADER, split_into_chunks
from headwater.producers.transports.spec import TransportSpec

Headers = list[tuple[str, str | bytes | None]]
DEFAULT_TOPIC = "headwater.events"
# librdkafka's compression.type values (HEADWATER_KAFKA_COMPRESSION, docs/configuration.md)
COMPRESSION = ("zstd", "lz4", "snappy", "gzip", "none")

# Errors worth sending again through a fresh producer; anything else is final.
_RETRIABLE = {
    KafkaError._MSG_TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError._TIMED_OUT,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._FATAL,  # the producer is unusable; a fresh one is created (see _check_stall)
}


class KafkaTransport:
    """Publishes encoded events to one topic, keyed by run id (one run, one partition).

    Bundling (on by default): events of up to half `bundle_bytes` sent under one key (and
    one trace context) are held for at most `bundle_linger` seconds and sent together, up
    to `bundle_events` a message; `bundle_events=1` sends every event alone, as consumers
    older than bundles need (docs/configuration.md). A larger event first sends its key's
    open bundle, so a key's events keep their order.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str = DEFAULT_TOPIC,
        *,
        config: Mapping[str, Any] | None = None,
        compression: str = "zstd",
        max_message_bytes: int = 900_000,
        max_pending: int = 100_000,
        send_timeout: float = 30.0,
        stall_timeout: float = 15.0,
        max_attempts: int = 5,
        bundle_events: int = 500,
        bundle_bytes: int = 256 * 1024,
        bundle_linger: float = 0.005,
    ) -> None:
        self.topic = topic
        self.rebuild_spec = TransportSpec(  # as it is rebuilt in a publishing worker process
            "headwater.producers.transports.kafka:KafkaTransport", (bootstrap_servers, topic), {
                "config": dict(config) if config else None, "compression": compression,
                "max_message_bytes": max_message_bytes, "max_pending": max_pending,
                "send_timeout": send_timeout, "stall_timeout": stall_timeout,
                "max_attempts": max_attempts, "bundle_events": bundle_events,
                "bundle_bytes": bundle_bytes, "bundle_linger": bundle_linger})
        if compression not in COMPRESSION:
            raise ValueError(f"compression {compression!r} is not one of "
                             f"{', '.join(COMPRESSION)}")
        self._config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            # zstd by default: the cheapest codec per byte saved here (gradients compress
            # ~0.8x) and librdkafka reads it natively; consumers without a zstd codec
            # (some kafkajs or older Java setups) need lz4, snappy, gzip or none.
            "compression.type": compression,
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "message.max.bytes": max(max_message_bytes + 65_536, 1_000_000),
            "queue.buffering.max.messages": max_pending,
            "delivery.timeout.ms": int(stall_timeout * 2 * 1000),
            # the topic is managed (`headwater topics create`): a broker that lost it must
            # not re-create it with its own default partition count, re-mapping runs
            "allow.auto.create.topics": False,
            **(dict(config) if config else {}),
        }
        self._max_message_bytes = max_message_bytes
        self._bundler = Bundler(bundle_events, min(bundle_bytes, max_message_bytes),
                                bundle_linger)
        self._linger_thread: threading.Thread | None = None
        self._closed = False
        self._max_pending = max_pending
        self._send_timeout = send_timeout
        self._stall_timeout = stall_timeout
        self._max_attempts = max_attempts
        self._ids = itertools.count()
        # token -> (key, value, headers, event ids (a bundle's: several), attempts)
        self._pending: dict[int, tuple[bytes, bytes, Headers, tuple[str, ...], int]] = {}
        self._errors: list[tuple[str, str]] = []
        self._resend: deque[tuple[bytes, bytes, Headers, tuple[str, ...], int]] = deque()
        self._last_progress = time.monotonic()
        self._fatal = False
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)  # the linger thread's: a bundle opened
        self._producer = Producer(self._config)
        self.recreated = 0
        self.messages_delivered = 0  # Kafka messages acknowledged (a bundle is one)
        self._published = telemetry.meter().create_counter(
            "headwater.events.published", description="events acknowledged by Kafka"
        )

    # -- public API -------------------------------------------------------------------

    def send(self, key: str, event_id: str, value: bytes) -> None:
        """Queue one event; blocks (backpressure) while too many are unacknowledged."""
        if self._closed:
            raise RuntimeError(f"this KafkaTransport ({self.topic}) is closed")
        self._raise_errors()
        # the sender's span (a training step), if any
        traced: Traced = tuple(telemetry.trace_headers())
        raw_key = key.encode()
        with self._lock:
            if self._bundler.takes(value):
                due = self._bundler.add(raw_key, traced, event_id, value)
                opened = self._bundler.open.get(raw_key)
                if opened is not None and len(opened.ids) == 1:
                    self._linger()  # a new bundle: its linger starts now
                for due_key, bundle in due:
                    self._produce_bundle(due_key, bundle)
                return
            before = self._bundler.take(raw_key)  # the key's order is kept
            if before is not None:
                self._produce_bundle(raw_key, before)
            if len(value) > self._max_message_bytes:
                chunks = split_into_chunks(event_id, value, self._max_message_bytes)
                for chunk in chunks:
                    self._produce(raw_key, chunk, [(CHUNK_HEADER, b"1"), *traced],
                                  (event_id,), 0)
            else:
                self._produce(raw_key, value, list(traced), (event_id,), 0)

    def flush(self, timeout: float | None = None) -> None:
        """Return when every event sent so far is acknowledged; raise what failed."""
        limit = self._send_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        self._send_open_bundles(everything=True)
        while True:
            with self._lock:
                self._producer.flush(0.2)
                self._check_stall()
                pending = self.pending
            self._raise_errors()
            if not pending:
                return
            if time.monotonic() > deadline:
                with self._lock:
                    ids = sorted({i for p in [*self._pending.values(), *self._resend]
                                  for i in p[3]})
                raise PublishError(
                    f"{len(ids)} event(s) not acknowledged by Kafka "
                    f"({self._config['bootstrap.servers']}) within {limit:.0f}s",
                    ids,
                )

    def close(self) -> None:
        """Flush (raising what failed), then release the producer and its connections."""
        try:
            self.flush()
        finally:
            with self._lock:
                self._closed = True
                self._wake.notify_all()
                self._producer.close()
            if self._linger_thread is not None:
                self._linger_thread.join(timeout=5)

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged: in flight, or waiting to be sent again."""
        return len(self._pending) + len(self._resend)

    # -- internals --------------------------------------------------------------------

    def _produce_bundle(self, key: bytes, bundle: OpenBundle) -> None:
        """Send one bundle: a lone event as itself, several as an EventBatch message."""
        if len(bundle.values) == 1:
            self._produce(key, bundle.values[0], list(bundle.headers), tuple(bundle.ids), 0)
        else:
            self._produce(key, encode_bundle(bundle.values),
                          [(BUNDLE_HEADER, b"1"), *bundle.headers], tuple(bundle.ids), 0)

    def _send_open_bundles(self, everything: bool = False) -> None:
        """Send the bundles past their linger (every open one with `everything`); a failure
        is kept for the next send or flush, naming the bundle's events."""
        with self._lock:
            for key, bundle in self._bundler.due(everything=everything):
                try:
                    self._produce_bundle(key, bundle)
                except PublishError as exc:
                    self._errors.extend((i, str(exc)) for i in bundle.ids)

    def _linger(self) -> None:
        """Wake (or start) the thread that sends bundles once their linger is over, so a
        producer that goes quiet without a flush still has its events sent (it sleeps until
        the oldest bundle is due; a later bundle is due later). Called with the lock held."""
        if self._linger_thread is None:
            self._linger_thread = threading.Thread(
                target=_linger_loop, args=(weakref.ref(self), self._wake), daemon=True,
                name="headwater-kafka-linger")
            self._linger_thread.start()
        self._wake.notify()

    def _produce(
        self, key: bytes, value: bytes, headers: Headers, event_ids: tuple[str, ...],
        attempts: int,
    ) -> None:
        token = next(self._ids)
        deadline = time.monotonic() + self._send_timeout
        while True:
            with self._lock:
                if self.pending < self._max_pending:
                    try:
                        self._hand_over(token, key, value, headers)
                    except BufferError:
                        pass
                    except KafkaException as exc:
                        if exc.args[0].code() != KafkaError._FATAL:
                            raise PublishError(f"{_named(event_ids)}: {exc}",
                                               list(event_ids)) from exc
                        self._fatal = True  # recreated by _check_stall below; try again
                    else:
                        if not self._pending:  # the stall clock starts with the first pending
                            self._last_progress = time.monotonic()
                        self._pending[token] = (key, value, headers, event_ids, attempts)
                        self._producer.poll(0)
                        return
                self._producer.poll(0.05)
                self._check_stall()
            self._raise_errors()
            if time.monotonic() > deadline:
                raise PublishError(
                    f"Kafka at {self._config['bootstrap.servers']} accepted nothing for "
                    f"{self._send_timeout:.0f}s; {len(self._pending)} message(s) still "
                    "pending", list(event_ids),
                )

    def _hand_over(self, token: int, key: bytes, value: bytes, headers: Headers) -> None:
        """Queue one message in librdkafka; its delivery report comes back with `token`."""

        def report(err: KafkaError | None, _msg: object) -> None:
            self._on_delivery(token, err)

        self._producer.produce(self.topic, value=value, key=key, headers=headers or None,
                               on_delivery=report)

    def _on_delivery(self, token: int, err: KafkaError | None) -> None:
        # Runs inside poll()/flush(), i.e. with the lock held by this thread.
        self._last_progress = time.monotonic()
        entry = self._pending.pop(token, None)
        if entry is None:  # a report for a message already re-sent elsewhere
            return
        key, value, headers, event_ids, attempts = entry
        if err is None:
            self.messages_delivered += 1
            self._published.add(len(event_ids))
            return
        if err.code() == KafkaError._FATAL:
            # A fatal idempotence error (e.g. a restarted broker forgot the producer id):
            # this producer accepts nothing more; a fresh one sends the message again.
            self._fatal = True
        if err.code() in _RETRIABLE and attempts + 1 < self._max_attempts:
            self._resend.append((key, value, headers, event_ids, attempts + 1))
        else:
            self._errors.extend((i, f"{err.name()}: {err.str()}") for i in event_ids)

    def _check_stall(self) -> None:
        """Recreate a producer that stopped reporting (or failed fatally); re-send what it
        was holding. Called with the lock held."""
        stalled = self._pending and time.monotonic() - self._last_progress > self._stall_timeout
        if stalled or self._fatal:
            self._resend.extend(self._pending.values())
            self._pending.clear()
            old, self._producer = self._producer, Producer(self._config)
            self._fatal = False
            self.recreated += 1
            self._last_progress = time.monotonic()
            old.purge(in_queue=True, in_flight=True)
            old.flush(0)  # reports for purged messages find no pending entry: ignored
            old.close()
        # Every message stays in `_resend` until the new producer took it: an event must
        # never be in neither `_pending` nor `_resend` before its delivery report.
        while self._resend:
            key, value, headers, event_ids, attempts = self._resend[0]
            token = next(self._ids)
            try:
                self._hand_over(token, key, value, headers)
            except BufferError:
                return  # the local queue is full: the rest go on a later call
            except KafkaException as exc:
                if exc.args[0].code() == KafkaError._FATAL:
                    self._fatal = True
                    return
                self._resend.popleft()
                self._errors.extend((i, str(exc)) for i in event_ids)
                continue
            if not self._pending:
                self._last_progress = time.monotonic()
            self._pending[token] = self._resend.popleft()

    def _raise_errors(self) -> None:
        if self._errors:
            errors, self._errors = self._errors, []
            shown = "; ".join(f"{eid}: {why}" for eid, why in errors[:5])
            raise PublishError(
                f"{len(errors)} event(s) failed delivery to Kafka: {shown}",
                [eid for eid, _ in errors],
            )


def _named(event_ids: tuple[str, ...]) -> str:
    """The events of a message, for an error (a bundle's first few)."""
    shown = ", ".join(event_ids[:5])
    more = f" and {len(event_ids) - 5} more" if len(event_ids) > 5 else ""
    return f"event{'s' if len(event_ids) > 1 else ''} {shown}{more}"


def _linger_loop(transport: weakref.ref[KafkaTransport], wake: threading.Condition) -> None:
    """The linger thread: sends bundles once due, until its transport is closed or gone
    (it holds only a weak reference, so an unclosed transport can still be collected)."""
    with wake:
        while True:
            t = transport()
            if t is None or t._closed:
                return
            due = t._bundler.next_due()
            if due is not None and due <= time.monotonic():
                t._send_open_bundles()
                continue
            del t  # not held while asleep
            wake.wait(1.0 if due is None else min(due - time.monotonic(), 1.0))
