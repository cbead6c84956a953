"""`headwater topics create|check`: the events topic, made and verified with the configured
partitions and replication (producers never auto-create it; processors refuse a mismatch)."""

from __future__ import annotations

from typing import Any

import click

from headwater.cli.common import kafka_option, load_settings
from headwater.errors import HeadwaterError
from headwater.query_service.settings import Settings


def topic_options(f: Any) -> Any:
    """--topic, --partitions, --replication and --kafka-bootstrap."""
    f = click.option("--replication", type=int, default=None,
                     help="Replication factor [HEADWATER_KAFKA_REPLICATION; 1]")(f)
    f = click.option("--partitions", type=int, default=None,
                     help="Partitions of the events topic [HEADWATER_KAFKA_PARTITIONS; 8]")(f)
    f = click.option("--topic", default=None,
                     help="Events topic [HEADWATER_KAFKA_TOPIC; headwater.events]")(f)
    return kafka_option(f)


def topic_settings(kafka_bootstrap: str | None, topic: str | None, partitions: int | None,
                   replication: int | None) -> tuple[Settings, str]:
    """The settings with these flags over them, and the bootstrap (required)."""
    settings = load_settings(kafka_bootstrap=kafka_bootstrap, kafka_topic=topic,
                             kafka_partitions=partitions, kafka_replication=replication)
    if not settings.kafka_bootstrap:
        raise HeadwaterError("no Kafka broker: pass --kafka-bootstrap or set "
                             "HEADWATER_KAFKA_BOOTSTRAP")
    return settings, settings.kafka_bootstrap


@click.group()
def topics() -> None:
    """The events topic: create it, or check it against the configuration."""


@topics.command()
@topic_options
def create(kafka_bootstrap: str | None, topic: str | None, partitions: int | None,
           replication: int | None) -> None:
    """Create the events topic (an existing one is checked instead)."""
    from headwater.stream_processors.kafka_runner import check_reachable
    from headwater.stream_processors.kafka_topics import create_topic

    settings, bootstrap = topic_settings(kafka_bootstrap, topic, partitions, replication)
    check_reachable(bootstrap, settings.kafka_config)
    made = create_topic(bootstrap, settings.kafka_topic, settings.kafka_partitions,
                        settings.kafka_replication, settings.kafka_config)
    verb = "created" if made else "exists, as configured:"
    click.echo(f"topic {settings.kafka_topic} {verb} {settings.kafka_partitions} partitions, "
              f"replication {settings.kafka_replication} @ {bootstrap}")


@topics.command()
@topic_options
def check(kafka_bootstrap: str | None, topic: str | None, partitions: int | None,
          replication: int | None) -> None:
    """Exit 2 unless the events topic exists with the configured partitions and
    replication."""
    from headwater.stream_processors.kafka_runner import check_reachable
    from headwater.stream_processors.kafka_topics import check_topic

    settings, bootstrap = topic_settings(kafka_bootstrap, topic, partitions, replication)
    check_reachable(bootstrap, settings.kafka_config)
    shape = check_topic(bootstrap, settings.kafka_topic, settings.kafka_partitions,
                        settings.kafka_config, replication=settings.kafka_replication)
    click.echo(f"topic {shape.name}: {shape.partitions} partitions, replication "
              f"{shape.replication} @ {bootstrap}, as configured")
