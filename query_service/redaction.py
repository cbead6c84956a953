"""Hiding secrets in what is shown: Kafka client settings whose names mark them secret."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

REDACTED = "***"
# librdkafka / aiokafka names: sasl.password, ssl.key.password, ssl.keystore.password,
# sasl.oauthbearer.client.secret, sasl.jaas.config, ssl.key.pem, sasl_plain_password, ...
_SECRET_PARTS = ("password", "secret", "token", "jaas", "key.pem", "credential")


def is_secret_key(name: str) -> bool:
    """True when a setting's name says its value is a secret."""
    lowered = name.lower()
    return any(part in lowered for part in _SECRET_PARTS)


def redact_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `config` with every secret value replaced by ***."""
    return {k: REDACTED if is_secret_key(k) else v for k, v in config.items()}
