"""HEADWATER_KAFKA_CONFIG (librdkafka's keys, which the producers use as they are) read for
the faust runner's consumer (aiokafka): the group timings and SASL/TLS, or a clear error
naming a key the consumer cannot honour, rather than silently running without it."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from headwater.errors import HeadwaterError

SESSION_TIMEOUT = 10.0  # seconds; Tansu and Kafka answer a first join after ~half of it
# librdkafka keys that shape the producers sharing this setting (serve's control events) or
# librdkafka's own logging: the consumer accepts them and has no use for them.
_PRODUCING = frozenset({
    "acks", "linger.ms", "batch.size", "batch.num.messages", "compression.type",
    "compression.codec", "enable.idempotence", "message.timeout.ms", "delivery.timeout.ms",
    "queue.buffering.max.messages", "queue.buffering.max.kbytes", "retries",
    "retry.backoff.ms", "request.timeout.ms", "socket.timeout.ms", "client.id",
    "statistics.interval.ms", "log_level", "debug",
})
_SECURITY = ("security.protocol", "sasl.mechanism", "sasl.mechanisms", "sasl.username",
             "sasl.password", "ssl.ca.location", "ssl.certificate.location",
             "ssl.key.location", "ssl.key.password", "ssl.endpoint.identification.algorithm")
SUPPORTED = ("session.timeout.ms", "heartbeat.interval.ms", *_SECURITY)


@dataclass(frozen=True)
class FaustClientSettings:
    session_timeout: float  # seconds
    heartbeat_interval: float
    credentials: Any  # a faust Credentials, or None for PLAINTEXT


def client_settings(config: dict[str, Any]) -> FaustClientSettings:
    """The consumer's settings from librdkafka-style `config`; HeadwaterError on a key it
    cannot honour or a value that is not what the key takes."""
    if "partition.assignment.strategy" in config:
        raise HeadwaterError(
            "HEADWATER_KAFKA_CONFIG: partition.assignment.strategy cannot be chosen: the "
            "Kafka runner assigns partitions with faust's own assignor (eager rebalancing; "
            "docs/operations.md)")
    unknown = sorted(k for k in config if k not in SUPPORTED and k not in _PRODUCING)
    if unknown:
        raise HeadwaterError(
            f"HEADWATER_KAFKA_CONFIG: {', '.join(unknown)} not supported by the Kafka "
            f"consumer of `headwater process`/`serve` (faust-streaming on aiokafka); it "
            f"takes {', '.join(SUPPORTED)} (docs/configuration.md)")
    session = _seconds(config, "session.timeout.ms", SESSION_TIMEOUT)
    heartbeat = _seconds(config, "heartbeat.interval.ms", min(1.0, session / 5))
    if heartbeat >= session:
        raise HeadwaterError(f"HEADWATER_KAFKA_CONFIG: heartbeat.interval.ms "
                             f"({heartbeat * 1000:.0f}) must be below session.timeout.ms "
                             f"({session * 1000:.0f})")
    return FaustClientSettings(session, heartbeat, _credentials(config))


def _seconds(config: dict[str, Any], key: str, default: float) -> float:
    if key not in config:
        return default
    try:
        ms = int(config[key])
    except (TypeError, ValueError):
        raise HeadwaterError(f"HEADWATER_KAFKA_CONFIG: {key} must be a whole number of "
                             f"milliseconds, not {config[key]!r}") from None
    if ms <= 0:
        raise HeadwaterError(f"HEADWATER_KAFKA_CONFIG: {key} must be positive, not {ms}")
    return ms / 1000.0


def _credentials(config: dict[str, Any]) -> Any:
    protocol = str(config.get("security.protocol", "PLAINTEXT")).upper()
    if protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise HeadwaterError(f"HEADWATER_KAFKA_CONFIG: security.protocol {protocol!r} is not "
                             "one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL")
    if protocol == "PLAINTEXT":
        stray = [k for k in _SECURITY[1:] if k in config]
        if stray:
            raise HeadwaterError(f"HEADWATER_KAFKA_CONFIG: {', '.join(stray)} given but "
                                 "security.protocol is PLAINTEXT (set SSL, SASL_PLAINTEXT "
                                 "or SASL_SSL)")
        return None
    from faust.auth import SASLCredentials, SSLCredentials

    context = _ssl_context(config) if protocol.endswith("SSL") else None
    if protocol == "SSL":
        return SSLCredentials(context)
    mechanism = str(config.get("sasl.mechanism", config.get("sasl.mechanisms", "PLAIN")))
    if mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        raise HeadwaterError(f"HEADWATER_KAFKA_CONFIG: sasl.mechanism {mechanism!r} is not "
                             "one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512")
    for key in ("sasl.username", "sasl.password"):
        if not config.get(key):
            raise HeadwaterError(f"HEADWATER_KAFKA_CONFIG: {protocol} needs {key}")
    return SASLCredentials(username=str(config["sasl.username"]),
                           password=str(config["sasl.password"]),
                           ssl_context=context, mechanism=mechanism)


def _ssl_context(config: dict[str, Any]) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=config.get("ssl.ca.location"))
        if config.get("ssl.certificate.location"):
            context.load_cert_chain(config["ssl.certificate.location"],
                                    config.get("ssl.key.location"),
                                    config.get("ssl.key.password"))
    except (OSError, ssl.SSLError) as exc:
        raise HeadwaterError(f"HEADWATER_KAFKA_CONFIG: cannot load the TLS files: {exc}"
                             ) from None
    if str(config.get("ssl.endpoint.identification.algorithm", "https")).lower() == "none":
        context.check_hostname = False
    return context
