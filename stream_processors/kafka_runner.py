"""The Kafka runner, a faust-streaming app: one member of a consumer group feeding batches
to the EventSink.

At-least-once, made exactly-once in effect by the idempotent sink: a batch's events are
acknowledged, and its offsets committed, only after ClickHouse stored the whole batch.
faust's own `take_events` acknowledges a batch in a `finally:` once the loop body is left,
even when the body raised (docs/design-decisions.md: it committed batches whose store had
failed), so the body here never lets an exception out: a failed write is retried with
backoff, and when the member has to give up (a stop requested meanwhile) the process
exits before the acknowledgement. A crash at any point only causes redelivery.

A batch is at most `batch_size` Kafka messages taken within `within` seconds; a bundle
message counts once, whatever events it carries (producers cap a bundle at 256 KiB, a
message at 1 MiB), so a batch holds at most `batch_size` x the message size in memory.

Rebalancing is faust's (aiokafka's eager protocol): on a revoke faust pauses the
partitions, waits until every event handed to the agent is acknowledged (stored), commits,
then lets them go; every member gives up its partitions until the new assignment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from headwater.errors import HeadwaterError, StoreError
from headwater.producers.transports.base import Ack, Record
from headwater.stream_processors.faust_config import FaustClientSettings, client_settings
from headwater.stream_processors.sink import EventSink

log = logging.getLogger("headwater.process")


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


CRASH_AFTER_INSERT = "HEADWATER_TEST_CRASH_AFTER_INSERT"
# Most events per insert, about (a bundle counted as the events per message of the batch
# before): 25,000 small events in one insert cost chDB's engine threads ~1 s more CPU per
# 30,000 than inserts of ~12,000, while a trainer's 312-event batches lose by being cut
INSERT_EVENTS = 12_000
EXIT_UNSTORED = 75  # EX_TEMPFAIL: stopped while a batch could not be stored (redelivered)


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


def _headers(headers: Any) -> tuple[tuple[str, bytes], ...]:
    """aiokafka hands a record's headers as (str, bytes | None) pairs; faust passes them on
    as given (a mapping only for messages it produced itself)."""
    if not headers:
        return ()
    pairs = headers.items() if hasattr(headers, "items") else headers
    return tuple((k, v or b"") for k, v in pairs)


class KafkaRunner:
    """Consumes `topic` in group `group` and stores every batch through `sink`."""

    def __init__(
        self,
        sink: EventSink,
        bootstrap: str,
        topic: str,
        group: str,
        *,
        batch_size: int = 256,
        within: float = 0.5,
        kafka_config: dict[str, Any] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.sink = sink
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.batch_size = batch_size
        self.within = within
        self.on_batch = on_batch
        self.settings: FaustClientSettings = client_settings(kafka_config or {})
        self.stop_event = threading.Event()
        self.stored = 0  # events stored (accepted), not counting dead letters
        self.dead_lettered = 0
        self.assigned: set[int] = set()
        self._inserts = 0
        self._per_message = 1.0  # events per message (a bundle: many), the batch before
        self._store_thread = ThreadPoolExecutor(1, thread_name_prefix="headwater-store")

    def stop(self) -> None:
        """Finish the batch in hand (store + commit), then leave the group."""
        self.stop_event.set()

    def run(self) -> None:
        """Run the member on an event loop of this thread until `stop`."""
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main(loop))
        finally:
            loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        import faust

        if self.stop_event.is_set():
            return
        s = self.settings
        # faust keeps an app directory (for tables; this app has none) that it would make in
        # the working directory, read-only in the Kubernetes pods: a private temporary one
        datadir = tempfile.mkdtemp(prefix="headwater-faust-")
        app = faust.App(
            self.group, broker=f"kafka://{self.bootstrap}", loop=loop,
            datadir=datadir, store="memory://", web_enabled=False, topic_disable_leader=True,
            autodiscover=False, consumer_auto_offset_reset="earliest",
            broker_session_timeout=s.session_timeout,
            broker_heartbeat_interval=s.heartbeat_interval,
            broker_rebalance_timeout=s.session_timeout,
            broker_commit_interval=0.5,
            consumer_max_fetch_size=16 * 1024 * 1024,
            stream_buffer_maxsize=max(4096, self.batch_size),
            broker_credentials=s.credentials,
        )
        topic = app.topic(self.topic, value_type=bytes, value_serializer="raw",
                          key_type=bytes, key_serializer="raw")
        app.agent(topic, name="headwater-store")(self._agent(app))

        async def assigned(sender: Any, *args: Any, **_: Any) -> None:
            parts = sorted(tp.partition for tp in args[0] if tp.topic == self.topic)
            self.assigned = set(parts)
            log.info("assigned partitions %s", parts)

        async def revoked(sender: Any, *args: Any, **_: Any) -> None:
            parts = sorted(tp.partition for tp in args[0] if tp.topic == self.topic)
            self.assigned -= set(parts)
            log.info("revoked partitions %s", parts)

        # faust calls a receiver as (sender, partitions, signal=...); its stubs want the
        # keyword spelled out, which mypy cannot match through the union they declare
        app.on_partitions_assigned.connect(cast(Any, assigned))
        app.on_partitions_revoked.connect(cast(Any, revoked))

        try:
            await app.start()
            await self._until_stopped_or_crashed(app)
        finally:
            await app.stop()
            self._store_thread.shutdown(wait=True)
            shutil.rmtree(datadir, ignore_errors=True)

    async def _until_stopped_or_crashed(self, app: Any) -> None:
        """Until `stop` (polled: it is set from a signal handler or another thread);
        HeadwaterError when faust's app or consumer crashed (a fatal Kafka error: the member
        would otherwise stay up consuming nothing)."""
        while not self.stop_event.is_set():
            for service in (app, app.consumer):
                if service.crashed:
                    raise HeadwaterError(f"the Kafka consumer stopped: "
                                         f"{service.crash_reason!r}")
            await asyncio.sleep(0.1)

    def _agent(self, app: Any) -> Callable[[Any], Any]:
        async def store_batches(stream: Any) -> None:
            async for events in stream.take_events(self.batch_size, within=self.within):
                records = [Record(value=e.message.value or b"", topic=e.message.topic,
                                  partition=e.message.partition, offset=e.message.offset,
                                  headers=_headers(e.message.headers),
                                  key=e.message.key or b"")
                           for e in events]
                # Stored on a thread of its own, so faust goes on handing over messages
                # meanwhile (trainer events: ~1.4x the rows/s of storing on the loop).
                writing = self._store_thread.submit(self._write, records)
                try:
                    acks = await asyncio.shield(asyncio.wrap_future(writing))
                except asyncio.CancelledError:
                    # Cancelled (the app stopping) mid-store: take_events acknowledges this
                    # batch on the way out, so it must be stored first (on this loop,
                    # blocking: it has nothing left to do; _write never raises). A fallback:
                    # faust's own stop first waits until the batch in hand is acknowledged
                    # (tests/integration/test_kafka_runner_stop.py).
                    writing.result()
                    raise
                self._inserts += 1
                _crash_after_insert_hook(self._inserts)
                for e in events:
                    await stream.ack(e)
                await app.consumer.commit()
                stored = sum(1 for a in acks if a.accepted and a.index >= 0)
                self.stored += stored
                self.dead_lettered += sum(1 for a in acks if not a.accepted)
                if self.on_batch is not None:
                    self.on_batch(stored)
        return store_batches

    def _write(self, records: list[Record]) -> list[Ack]:
        """The sink's acks once the batch is stored, in inserts of about INSERT_EVENTS
        events each. Never raises: when stopping with part of the batch unstored the
        process exits before faust could acknowledge any of it."""
        acks: list[Ack] = []
        for chunk in insert_chunks(records, self._per_message, INSERT_EVENTS):
            acks += self._write_chunk(chunk)
        self._per_message = max(1.0, len(acks) / max(len(records), 1))
        return acks

    def _write_chunk(self, records: list[Record]) -> list[Ack]:
        delay = 0.2
        while True:
            try:
                return self.sink.ingest(records)
            except StoreError as exc:
                if self.stop_event.is_set():
                    log.error("stopping with %d unstored events; not committing them "
                              "(they will be redelivered)", len(records))
                    os._exit(EXIT_UNSTORED)
                log.warning("store write failed (%s); retrying in %.1fs", exc, delay)
                self.stop_event.wait(delay)
                delay = min(delay * 2, 10.0)
            except BaseException:
                log.exception("storing a batch failed; exiting before it is acknowledged")
                os._exit(70)


def insert_chunks(records: list[Record], events_per_message: float, max_events: int
                  ) -> list[list[Record]]:
    """`records` in order, cut into runs of about `max_events` events at
    `events_per_message` each (a bundle carries many; at least one message a run)."""
    per_run = max(1, int(max_events / max(events_per_message, 1.0)))
    return [records[i:i + per_run] for i in range(0, len(records), per_run)]


def run_until_signalled(runner: KafkaRunner) -> None:
    """Run in this thread; SIGINT/SIGTERM finish the current batch and leave the group."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: runner.stop())
    started = time.monotonic()
    runner.run()
    log.info("stored %d events (%d records dead-lettered) in %.0fs", runner.stored,
             runner.dead_lettered, time.monotonic() - started)
