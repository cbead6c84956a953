"""`headwater status`: what is stored, what was rejected, whether the log is whole, lag."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from headwater.query_service.log_reader import verify_stored_log
from headwater.query_service.remote import RemoteStore
from headwater.stream_processors.log_integrity import LogReport
from headwater.stream_processors.store import Store


@dataclass
class Status:
    events_by_type: dict[str, int]
    dead_letters: int
    recent_dead_letters: list[tuple[str, str]]  # (received_at, error)
    log: LogReport
    lag: dict[str, int] | None = None  # partition -> messages not yet processed
    lag_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def collect_status(store: Store | RemoteStore) -> Status:
    by_type = dict(store.query(
        "SELECT payload_type, count() FROM events FINAL GROUP BY payload_type ORDER BY 1"))
    dead = store.query("SELECT count() FROM dead_letters FINAL")[0][0]
    recent = [(str(t), e) for t, e in store.query(
        "SELECT received_at, error FROM dead_letters FINAL ORDER BY received_at DESC LIMIT 5")]
    log = store.verify_log() if isinstance(store, RemoteStore) else verify_stored_log(store)
    return Status(by_type, dead, recent, log)


def consumer_lag(bootstrap: str, topic: str, group: str, config: dict[str, Any],
                 timeout: float = 5.0) -> dict[str, int]:
    """Messages per partition between the group's committed offset and the high watermark."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False, **config})
    try:
        meta = consumer.list_topics(topic, timeout=timeout)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            raise RuntimeError(f"topic {topic!r} not found on {bootstrap}")
        parts = [TopicPartition(topic, p) for p in sorted(meta.topics[topic].partitions)]
        committed = consumer.committed(parts, timeout=timeout)
        lag = {}
        for tp in committed:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
            done = tp.offset if tp.offset >= 0 else low
            lag[f"{topic}/{tp.partition}"] = max(high - done, 0)
        return lag
    finally:
        consumer.close()
