"""In-process delivery: hands batches straight to a sink living in the same process."""

from __future__ import annotations

import threading

from headwater.producers.transports.base import Record, Sink, raise_for_rejects


class LocalTransport:
    """Batches events and calls `sink.ingest`; used in embedded mode and in tests."""

    def __init__(self, sink: Sink, batch_size: int = 1000) -> None:
        self._sink = sink
        self._batch_size = batch_size
        self._buffer: list[Record] = []
        self._ids: list[str] = []
        self._lock = threading.Lock()

    def send(self, key: str, event_id: str, value: bytes) -> None:
        with self._lock:
            self._buffer.append(Record(value=value))
            self._ids.append(event_id)
            if len(self._buffer) >= self._batch_size:
                self._deliver()

    def flush(self, timeout: float | None = None) -> None:
        with self._lock:
            self._deliver()

    def close(self) -> None:
        self.flush()

    def _deliver(self) -> None:
        if not self._buffer:
            return
        acks = self._sink.ingest(self._buffer)  # on a store error the batch stays buffered
        ids, self._buffer, self._ids = self._ids, [], []
        raise_for_rejects(acks, ids)
