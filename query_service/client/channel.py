"""The one way CLI commands open a channel to a server: TLS and token from Settings."""

from __future__ import annotations

import grpc

from headwater.errors import ConfigError
from headwater.producers.transports.channel import (
    ChannelConfigError,
    ClientSecurity,
    read_token_file,
)
from headwater.producers.transports.channel import open_channel as _open
from headwater.query_service.settings import Settings


def client_security(settings: Settings) -> ClientSecurity:
    """TLS when HEADWATER_TLS_CA_FILE is set; the token from HEADWATER_TOKEN or _FILE."""
    if settings.token is not None and settings.token_file is not None:
        raise ConfigError("set HEADWATER_TOKEN or HEADWATER_TOKEN_FILE, not both")
    try:
        token = (settings.token.get_secret_value() if settings.token is not None
                 else read_token_file(settings.token_file) if settings.token_file else None)
    except ChannelConfigError as exc:
        raise ConfigError(str(exc)) from None
    return ClientSecurity(tls=settings.tls_ca_file is not None, tls_ca_file=settings.tls_ca_file,
                          client_cert_file=settings.tls_client_cert_file,
                          client_key_file=settings.tls_client_key_file, token=token or None)


def open_channel(settings: Settings, target: str | None = None) -> grpc.Channel:
    """A channel to `target` (default settings.listen) secured as the settings say."""
    try:
        return _open(target or settings.listen, client_security(settings))
    except ChannelConfigError as exc:
        raise ConfigError(str(exc)) from None
