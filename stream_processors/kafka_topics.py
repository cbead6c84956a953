"""The events topic, managed: created once with the configured partitions and replication
(`headwater topics create`), checked by every processor before it joins the group.

Producers never auto-create the topic (`allow.auto.create.topics=false`): a broker that
lost it (a restart with ephemeral storage) would otherwise re-create it with *its* default
partition count, silently changing which partition each run's key hashes to. A processor
that finds a partition count other than the configured one refuses to start, naming both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from headwater.errors import ConfigError, HeadwaterError


@dataclass(frozen=True)
class TopicShape:
    """A topic as the broker describes it."""

    name: str
    partitions: int
    replication: int  # replicas of its partition 0 (the same for every partition here)


def _admin(bootstrap: str, config: dict[str, Any]) -> AdminClient:
    # an admin client is a producer to librdkafka, which would auto-create a topic it asks
    # about: asking whether the topic exists must not make it exist
    return AdminClient({"bootstrap.servers": bootstrap, **config,
                        "allow.auto.create.topics": False})


def describe_topic(bootstrap: str, topic: str, config: dict[str, Any],
                   timeout: float = 10.0) -> TopicShape | None:
    """The topic's partitions and replication, or None when the broker has no such topic."""
    meta = _admin(bootstrap, config).list_topics(timeout=timeout)  # all: names none
    found = meta.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        return None
    first = found.partitions[min(found.partitions)]
    return TopicShape(topic, len(found.partitions), max(len(first.replicas), 1))


def create_topic(bootstrap: str, topic: str, partitions: int, replication: int,
                 config: dict[str, Any], timeout: float = 10.0) -> bool:
    """Create `topic` with `partitions` and `replication`; False when it already existed
    (then it is checked against both, as `check_topic` does)."""
    admin = _admin(bootstrap, config)  # held until the answer came (a freed client fails it)
    future = admin.create_topics([NewTopic(topic, partitions, replication)])[topic]
    try:
        future.result(timeout=timeout)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise HeadwaterError(f"cannot create topic {topic!r} with {partitions} "
                                 f"partitions, replication {replication}: "
                                 f"{exc.args[0].str()}") from None
        check_topic(bootstrap, topic, partitions, config, timeout=timeout,
                    replication=replication)
        return False
    return True


def check_topic(bootstrap: str, topic: str, partitions: int, config: dict[str, Any],
                *, timeout: float = 10.0, replication: int | None = None) -> TopicShape:
    """The topic's shape if it matches the configuration; ConfigError naming both numbers
    when its partition count (or, if given, replication) differs, or when it is missing."""
    shape = describe_topic(bootstrap, topic, config, timeout)
    if shape is None:
        raise ConfigError(f"topic {topic!r} does not exist on {bootstrap}: create it with "
                          f"`headwater topics create` ({partitions} partitions, "
                          "HEADWATER_KAFKA_PARTITIONS)")
    if shape.partitions != partitions:
        raise ConfigError(
            f"topic {topic!r} on {bootstrap} has {shape.partitions} partitions, the "
            f"configuration says {partitions} (HEADWATER_KAFKA_PARTITIONS / --partitions): "
            "runs would hash to other partitions than their earlier events; recreate the "
            "topic or set the configuration to match")
    if replication is not None and shape.replication != replication:
        raise ConfigError(
            f"topic {topic!r} on {bootstrap} has replication {shape.replication}, the "
            f"configuration says {replication} (HEADWATER_KAFKA_REPLICATION / --replication)")
    return shape
