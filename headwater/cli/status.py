"""`headwater status`: what is stored, what was rejected, whether the log is whole, lag."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from headwater.cli.common import (
    data_dir_option,
    dsn_option,
    kafka_option,
    listen_option,
    load_settings,
    open_reader,
    out,
)
from headwater.errors import HeadwaterError
from headwater.query_service.client.remote import RemoteStore
from headwater.query_service.compliance.log_reader import verify_stored_log
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


@click.command()
@data_dir_option
@dsn_option
@listen_option
@kafka_option
@click.option("--topic", default=None, help="Events topic [HEADWATER_KAFKA_TOPIC]")
@click.option("--group", default=None, help="Consumer group whose lag is shown "
              "[HEADWATER_KAFKA_GROUP]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables")
def status(data_dir: Path | None, dsn: str | None, listen: str | None,
           kafka_bootstrap: str | None, topic: str | None, group: str | None,
           as_json: bool) -> None:
    """Events by type, dead letters, log integrity and (with Kafka) consumer lag."""
    settings = load_settings(data_dir=data_dir, dsn=dsn, listen=listen,
                         kafka_bootstrap=kafka_bootstrap, kafka_topic=topic,
                         kafka_group=group)
    lag, lag_error = None, ""
    if settings.kafka_bootstrap:  # asked of Kafka: known even when the store is not readable
        try:
            lag = consumer_lag(settings.kafka_bootstrap, settings.kafka_topic,
                               settings.kafka_group, settings.kafka_config)
        except Exception as exc:  # report, do not fail the whole status
            lag_error = str(exc)
    try:
        reader = open_reader(settings, listen)
    except HeadwaterError:
        # e.g. the directory held by `headwater process`, which answers no queries: the
        # group's lag is still worth showing before the error
        if lag is not None:
            out.print(f"consumer lag ({settings.kafka_group}): {sum(lag.values())} {lag}")
        raise
    try:
        st = collect_status(reader)
    finally:
        reader.close()
    st.lag, st.lag_error = lag, lag_error
    problems = [vars(p) for p in st.log.problems]
    if as_json:
        click.echo(json.dumps({
            "events_by_type": st.events_by_type, "dead_letters": st.dead_letters,
            "log_ok": st.log.ok, "producers": len(st.log.producers), "problems": problems,
            "lag": st.lag, "lag_error": st.lag_error,
        }, default=str))
    else:
        t = Table("payload", "events", title="Events stored")
        for k, v in st.events_by_type.items():
            t.add_row(k, str(v))
        out.print(t)
        out.print(f"dead letters: {st.dead_letters}")
        for when, err in st.recent_dead_letters:
            out.print(f"  {when}  {err}")
        verdict = "[green]intact[/]" if st.log.ok else f"[red]{len(problems)} problem(s)[/]"
        out.print(f"log: {st.log.events} events from {len(st.log.producers)} producer(s), "
                  f"{verdict}")
        for p in st.log.problems[:20]:
            out.print(f"  {p.kind:<13} {p.producer_id} seq {p.seq}: {p.detail}")
        if st.lag is not None:
            out.print(f"consumer lag ({settings.kafka_group}): {sum(st.lag.values())} "
                      f"{st.lag}")
        elif st.lag_error:
            out.print(f"consumer lag: unavailable ({st.lag_error})")
    if not st.log.ok:
        sys.exit(1)
