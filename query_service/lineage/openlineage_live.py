"""Live OpenLineage delivery: `serve` and `process` (HEADWATER_OPENLINEAGE_LIVE) send the
RunEvent of every op as soon as it is stored, through the configured openlineage-python
transport (openlineage_delivery.py), on a worker thread so ingest never waits for a lineage
server. A failed send is logged and counted, not retried: `lineage openlineage --emit`
sends a whole run again (the events are idempotent: same runIds, same content)."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from headwater.producers import telemetry
from headwater.producers.envelope import peek
from headwater.producers.transports.base import Ack, Record
from headwater.query_service.lineage.openlineage import load_ops, op_events
from headwater.query_service.lineage.openlineage_delivery import typed
from headwater.query_service.tables import Reader
from headwater.stream_processors.processors.validate import DEFAULT_LIMITS, Limits
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store

log = logging.getLogger(__name__)
_STOP: list[str] = []


class LiveLineage:
    """Sends the op events of stored OpRecorded events, in the order they were stored."""

    def __init__(self, reader: Reader, client: Any, max_pending: int = 10_000) -> None:
        self._reader, self._client = reader, client
        self._queue: queue.Queue[list[str]] = queue.Queue(max_pending)
        m = telemetry.meter()
        self._sent = m.create_counter("headwater.openlineage.events",
                                      description="OpenLineage events sent live")
        self._failed = m.create_counter("headwater.openlineage.failures",
                                        description="live OpenLineage sends that failed")
        self._worker = threading.Thread(target=self._run, name="headwater-openlineage",
                                        daemon=True)
        self._worker.start()

    def stored(self, event_ids: list[str]) -> None:
        """Queue the ops of these stored events (dropped, with a warning, when the lineage
        server is so slow that `max_pending` batches wait)."""
        try:
            self._queue.put_nowait(event_ids)
        except queue.Full:
            self._failed.add(len(event_ids))
            log.warning("OpenLineage: %d op event(s) not sent live (the transport is behind); "
                        "send the run with `headwater lineage openlineage --emit`",
                        len(event_ids))

    def close(self, timeout: float = 30.0) -> None:
        """Send what is queued (up to `timeout` seconds), then stop."""
        self._queue.put(_STOP)
        self._worker.join(timeout)
        self._client.close(timeout=timeout)

    def _run(self) -> None:
        while (event_ids := self._queue.get()) is not _STOP:
            try:
                for lineage in load_ops(self._reader, event_ids):
                    for event in op_events(lineage):
                        self._client.emit(typed(event))
                        self._sent.add(1)
            except Exception as exc:  # noqa: BLE001 - a lineage server never stops ingest
                self._failed.add(len(event_ids))
                log.warning("OpenLineage: live send failed (%s: %s); send the run again "
                            "with `headwater lineage openlineage --emit`",
                            type(exc).__name__, exc)


class LiveLineageSink(EventSink):
    """An EventSink that hands the ids of the OpRecorded events it stored to LiveLineage
    (found by peeking at the records' top-level fields, without decoding them again)."""

    def __init__(self, store: Store, transport: str, live: LiveLineage,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(store, transport, limits)
        self.live = live

    def ingest(self, records: list[Record]) -> list[Ack]:
        acks = super().ingest(records)
        stored = {a.event_id for a in acks if a.accepted}
        ops = [event_id for event_id, kind in (peek(r.value) for r in records)
               if kind == "op_recorded" and event_id in stored]
        if ops:
            self.live.stored(ops)
        return acks
