"""HEADWATER_KAFKA_CONFIG read for the faust runner's consumer: group timings, SASL/TLS, and
a clear error for what the consumer cannot honour."""

from __future__ import annotations

import pytest

from headwater.errors import HeadwaterError
from headwater.stream_processors.faust_config import SESSION_TIMEOUT, client_settings


def test_defaults_are_the_runner_timings_and_plaintext() -> None:
    s = client_settings({})
    assert (s.session_timeout, s.heartbeat_interval, s.credentials) == (
        SESSION_TIMEOUT, 1.0, None)


def test_group_timings_are_read_in_milliseconds() -> None:
    s = client_settings({"session.timeout.ms": 3000, "heartbeat.interval.ms": "500"})
    assert (s.session_timeout, s.heartbeat_interval) == (3.0, 0.5)
    assert client_settings({"session.timeout.ms": 2000}).heartbeat_interval == 0.4


@pytest.mark.parametrize("config, message", [
    ({"session.timeout.ms": "soon"}, "session.timeout.ms must be a whole number"),
    ({"session.timeout.ms": 0}, "session.timeout.ms must be positive"),
    ({"session.timeout.ms": 1000, "heartbeat.interval.ms": 1000}, "must be below"),
    ({"fetch.max.bytes": 1}, "fetch.max.bytes not supported"),
    ({"partition.assignment.strategy": "range"}, "faust's own assignor"),
    ({"security.protocol": "KERBEROS"}, "security.protocol 'KERBEROS'"),
    ({"sasl.username": "u"}, "security.protocol is PLAINTEXT"),
    ({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "GSSAPI"}, "GSSAPI"),
    ({"security.protocol": "SASL_PLAINTEXT", "sasl.username": "u"}, "needs sasl.password"),
    ({"security.protocol": "SSL", "ssl.ca.location": "/nonexistent/ca.pem"},
     "cannot load the TLS files"),
])
def test_what_the_consumer_cannot_honour_is_named(config: dict, message: str) -> None:
    with pytest.raises(HeadwaterError, match="HEADWATER_KAFKA_CONFIG") as err:
        client_settings(config)
    assert message in str(err.value)


def test_producer_keys_are_accepted_and_not_used() -> None:
    s = client_settings({"linger.ms": 5, "compression.type": "zstd", "acks": "all"})
    assert s.credentials is None


def test_scram_over_tls_becomes_faust_sasl_credentials() -> None:
    from faust.auth import SASLCredentials

    creds = client_settings({"security.protocol": "SASL_SSL",
                             "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "hw",
                             "sasl.password": "s3cret"}).credentials
    assert isinstance(creds, SASLCredentials)
    assert (creds.username, creds.password, str(creds.mechanism.value)) == (
        "hw", "s3cret", "SCRAM-SHA-512")
    assert creds.ssl_context is not None and str(creds.protocol.value) == "SASL_SSL"
    assert "s3cret" not in repr(creds)


def test_tls_without_hostname_check_when_asked() -> None:
    creds = client_settings({"security.protocol": "SSL",
                             "ssl.endpoint.identification.algorithm": "none"}).credentials
    assert creds.context.check_hostname is False
