"""Gauges read when metrics are collected (a Prometheus scrape, an OTLP export): the store's
size per table, and the consumer group's lag per partition. Counters of what was stored
and dead-lettered live where it happens (sink.py)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from headwater.producers import telemetry
from headwater.stream_processors.store import Store

log = logging.getLogger(__name__)

SIZES_SQL = ("SELECT table, sum(rows), sum(bytes_on_disk) FROM system.parts "
             "WHERE database = {db:String} AND active GROUP BY table ORDER BY table")


class _Cached:
    """`read()` at most once per `ttl` seconds (two gauges share one query per scrape); a
    failed read observes nothing rather than breaking the scrape."""

    def __init__(self, read: Callable[[], Any], ttl: float = 2.0) -> None:
        self._read, self._ttl = read, ttl
        self._at, self._value = -ttl, None
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if time.monotonic() - self._at >= self._ttl:
                try:
                    self._value = self._read()
                except Exception as exc:  # noqa: BLE001 - a gauge must not fail the scrape
                    log.warning("metrics: %s", exc)
                    self._value = None
                self._at = time.monotonic()
            return self._value


def table_sizes(rows: Iterable[tuple]) -> tuple[list[Observation], list[Observation]]:
    """(rows, bytes) observations per table from system.parts sums."""
    counts, sizes = [], []
    for table, n_rows, n_bytes in rows:
        counts.append(Observation(int(n_rows), {"table": str(table)}))
        sizes.append(Observation(int(n_bytes), {"table": str(table)}))
    return counts, sizes


def observe_store(store: Store) -> None:
    """headwater.store.rows and headwater.store.size (bytes on disk), per table."""
    sizes = _Cached(lambda: table_sizes(store.query(SIZES_SQL, {"db": store.database})))
    meter = telemetry.meter()

    def rows(_: CallbackOptions) -> list[Observation]:
        value = sizes.get()
        return value[0] if value else []

    def size(_: CallbackOptions) -> list[Observation]:
        value = sizes.get()
        return value[1] if value else []

    meter.create_observable_gauge("headwater.store.rows", [rows], unit="{row}",
                                  description="rows stored, per table (active parts)")
    meter.create_observable_gauge("headwater.store.size", [size], unit="By",
                                  description="bytes on disk, per table (active parts)")


def observe_lag(read: Callable[[], dict[str, int]]) -> None:
    """headwater.process.lag: messages per partition ("topic/partition") the consumer group
    has not committed yet; `read` asks the broker (headwater status uses the same)."""
    lag = _Cached(read, ttl=5.0)

    def observe(_: CallbackOptions) -> list[Observation]:
        value = lag.get() or {}
        return [Observation(n, {"partition": p}) for p, n in sorted(value.items())]

    telemetry.meter().create_observable_gauge(
        "headwater.process.lag", [observe], unit="{message}",
        description="messages behind the end of each partition (the consumer group's lag)")
