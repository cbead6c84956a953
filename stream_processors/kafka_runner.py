"""The Kafka runner: a faust-streaming consumer group feeding batches to the EventSink.

At-least-once: `take_events` acks a batch when the loop body is left (by returning, or
by an exception), so the body leaves only after ClickHouse stored the batch. A failed
write is retried; a record whose processing fails otherwise goes to dead_letters; if the
worker must stop while a batch is unstored, the process exits hard so faust cannot commit
its offsets, and the batch is redelivered to whichever processor takes the partition.
Redelivery is harmless because every table is keyed by event.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import faust

from headwater.producers.transports.base import Record
from headwater.stream_processors.chunks import is_chunk
from headwater.stream_processors.decode import Rejected
from headwater.stream_processors.errors import StoreError
from headwater.stream_processors.rows import dead_letter_rows
from headwater.stream_processors.sink import EventSink
from headwater.v1 import events_pb2

log = logging.getLogger("headwater.process")
EXIT_UNSTORED = 75  # EX_TEMPFAIL: stopped with a batch not stored; offsets not committed


def faust_credentials(config: dict[str, Any]) -> Any:
    """Map the librdkafka-style security settings we accept onto faust credentials."""
    protocol = str(config.get("security.protocol", "PLAINTEXT")).upper()
    if protocol == "PLAINTEXT":
        return None
    ssl_context = None
    if "SSL" in protocol:
        import ssl

        ssl_context = ssl.create_default_context(cafile=config.get("ssl.ca.location"))
        if config.get("ssl.certificate.location"):
            ssl_context.load_cert_chain(config["ssl.certificate.location"],
                                        config.get("ssl.key.location"))
    if "SASL" in protocol:
        mechanism = str(config.get("sasl.mechanism", "PLAIN")).upper()
        if mechanism == "PLAIN":
            return faust.SASLCredentials(username=config.get("sasl.username"),
                                         password=config.get("sasl.password"),
                                         ssl_context=ssl_context)
        if mechanism.startswith("SCRAM"):
            from faust.auth import SASLCredentials
            from faust.types.auth import SASLMechanism

            return SASLCredentials(username=config.get("sasl.username"),
                                   password=config.get("sasl.password"),
                                   mechanism=SASLMechanism(mechanism),
                                   ssl_context=ssl_context)
        raise ValueError(f"sasl.mechanism {mechanism!r} is not supported by the processor")
    return faust.SSLCredentials(ssl_context)


def _record(message: Any) -> Record:
    headers = message.headers or []
    if isinstance(headers, dict):
        headers = headers.items()
    return Record(value=message.value or b"",  # None: a tombstone, dead-lettered as empty
                  topic=message.topic, partition=message.partition, offset=message.offset,
                  headers=tuple((k, v) for k, v in headers))


class _Writer:
    """Runs sink writes on one thread, retrying store failures until stopped.

    Nothing may escape `write_batch` while its batch is unstored: faust's `take_events`
    acks a batch when the agent's loop is left, by an exception too, so an escaping error
    would commit offsets of events that were never stored. A store failure is retried; a
    record whose processing raises anything else is isolated (the batch is bisected) and
    kept in dead_letters with the error, so one bad event neither stalls nor drops the rest.
    """

    def __init__(self, sink: EventSink) -> None:
        self._sink = sink
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headwater-write")
        self.stopping = threading.Event()
        self.stored = 0
        self.isolated = 0

    def _retrying(self, action: Callable[[], object]) -> None:
        delay = 0.2
        while True:
            try:
                action()
                return
            except StoreError as exc:
                if self.stopping.is_set():
                    raise
                log.warning("store write failed (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def write(self, records: list[Record]) -> None:
        try:
            self._retrying(lambda: self._sink.ingest(records))
        except StoreError:
            raise
        except Exception as exc:
            if len(records) == 1:
                self._dead_letter(records[0], exc)
                return
            mid = len(records) // 2
            self.write(records[:mid])
            self.write(records[mid:])
            return
        self.stored += len(records)

    def _dead_letter(self, record: Record, exc: Exception) -> None:
        where = f"{record.topic}/{record.partition}@{record.offset}"
        log.error("processing the record at %s failed; kept in dead_letters", where,
                  exc_info=exc)
        event = None
        if not is_chunk(record):
            try:
                event = events_pb2.Event.FromString(record.value)
            except Exception:
                event = None
        reason = f"processing failed: {type(exc).__name__}: {exc}"
        rows = dead_letter_rows([Rejected(-1, record, reason, event)], self._sink.transport,
                                datetime.now(timezone.utc))
        self._retrying(lambda: self._sink.store.insert("dead_letters", rows))
        self.isolated += 1

    async def write_batch(self, events: list[Any]) -> int:
        """Store one batch of faust events; return how many records it held."""
        try:
            records = [_record(e.message) for e in events]
            future = self._pool.submit(self.write, records)
            await asyncio.wrap_future(future)
            return len(records)
        except asyncio.CancelledError:
            # Shutdown mid-batch: finish this write before faust acks the batch, or die
            # without committing so the batch is redelivered.
            self.stopping.set()
            try:
                future.result(timeout=30)
            except Exception:
                log.exception("stopping with an unstored batch; exiting without committing")
                os._exit(EXIT_UNSTORED)
            raise
        except BaseException:
            log.exception("stopping with an unstored batch; exiting without committing")
            os._exit(EXIT_UNSTORED)


def build_app(
    sink: EventSink,
    bootstrap: str,
    topic: str,
    group: str,
    *,
    batch_size: int = 2000,
    within: float = 0.5,
    kafka_config: dict[str, Any] | None = None,
    partitions: int = 8,
    session_timeout: float = 10.0,
    on_batch: Callable[[int], None] | None = None,
) -> faust.App:
    """A faust app whose one agent stores every batch of `topic` through `sink`."""
    app = faust.App(
        group,
        broker=[f"kafka://{b.strip()}" for b in bootstrap.split(",")],
        broker_credentials=faust_credentials(kafka_config or {}),
        store="memory://",
        web_enabled=False,
        topic_disable_leader=True,
        topic_partitions=partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_timeout,
        broker_heartbeat_interval=min(1.0, session_timeout / 5),
        stream_wait_empty=False,
        producer_max_request_size=16 * 1024 * 1024,
        consumer_max_fetch_size=16 * 1024 * 1024,
    )
    source = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw")
    writer = _Writer(sink)

    @app.agent(source, name="headwater-store")
    async def store_events(stream: Any) -> None:
        async for events in stream.take_events(batch_size, within=within):
            stored = await writer.write_batch(events)
            if on_batch is not None:
                on_batch(stored)

    app.headwater_writer = writer  # type: ignore[attr-defined]
    return app


def run_worker(app: faust.App, loglevel: str = "warning") -> None:
    """Run the faust worker in this thread until SIGINT/SIGTERM."""
    from faust.worker import Worker

    Worker(app, loglevel=loglevel, quiet=True, override_logging=True).execute_from_commandline()
