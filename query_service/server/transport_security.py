"""Server transport security: TLS (optionally mutual) from PEM files, the token file, and the
rule that a non-loopback address is served only with both."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from headwater.errors import ConfigError
from headwater.producers.transports.channel import (
    host_of,
    is_loopback_host,
    read_setting_file,
)
from headwater.query_service.server.auth import TokenFile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSecurity:
    """What protects the listening socket; all None: plaintext, no auth (loopback only)."""

    tokens_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None
    cert_warn_days: int = 14  # HEADWATER_TLS_CERT_WARN_DAYS

    @property
    def tls(self) -> bool:
        return self.cert_file is not None

    @property
    def auth(self) -> bool:
        return self.tokens_file is not None

    def describe(self) -> str:
        tls = ("mTLS" if self.client_ca_file else "TLS") if self.tls else "plaintext"
        notice = expiry_notice(self)
        return (f"{tls}, " + ("token auth" if self.auth else "no auth (loopback only)")
                + (f"; WARNING: {notice}" if notice else ""))


def _not_after(cert_file: Path) -> dt.datetime | None:
    """When the first certificate of `cert_file` expires; None when it cannot be read."""
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificates(Path(cert_file).read_bytes())[0] \
            .not_valid_after_utc
    except (OSError, ValueError, IndexError):
        return None


def expiry_notice(security: ServerSecurity, now: dt.datetime | None = None) -> str | None:
    """A line when the server certificate has expired or expires within
    `security.cert_warn_days` days; None otherwise (or without TLS)."""
    if security.cert_file is None:
        return None
    not_after = _not_after(security.cert_file)
    if not_after is None:
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    when = f"{not_after:%Y-%m-%d %H:%M} UTC"
    if not_after <= now:
        return (f"the certificate in {security.cert_file} expired on {when}: clients refuse "
                "it; renew it (HEADWATER_TLS_CERT_FILE) and restart")
    left = not_after - now
    if left < dt.timedelta(days=security.cert_warn_days):
        return (f"the certificate in {security.cert_file} expires in {left.days} day(s), on "
                f"{when}; renew it and restart before then")
    return None


def server_security(settings: Any) -> ServerSecurity:
    """The ServerSecurity of a Settings; cert and key come together, a client CA needs TLS."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if (cert is None) != (key is None):
        raise ConfigError("TLS needs both HEADWATER_TLS_CERT_FILE and HEADWATER_TLS_KEY_FILE; "
                          f"only {'the certificate' if cert else 'the key'} is set")
    if settings.tls_client_ca_file is not None and cert is None:
        raise ConfigError("HEADWATER_TLS_CLIENT_CA_FILE (mTLS) needs HEADWATER_TLS_CERT_FILE "
                          "and HEADWATER_TLS_KEY_FILE too")
    return ServerSecurity(settings.auth_tokens_file, cert, key, settings.tls_client_ca_file,
                          getattr(settings, "tls_cert_warn_days", 14))


def check_exposure(listen: str, security: ServerSecurity) -> None:
    """Refuse to serve a non-loopback address without both TLS and token auth."""
    if is_loopback_host(host_of(listen)):
        return
    missing = [what for what, ok in (
        ("TLS (HEADWATER_TLS_CERT_FILE + HEADWATER_TLS_KEY_FILE)", security.tls),
        ("token auth (HEADWATER_AUTH_TOKENS_FILE)", security.auth)) if not ok]
    if missing:
        raise ConfigError(f"refusing to listen on {listen}: a non-loopback address needs TLS "
                          f"and token auth; missing {' and '.join(missing)}. Listen on "
                          "127.0.0.1 for plaintext without tokens (see docs/security.md)")


def server_credentials(security: ServerSecurity) -> grpc.ServerCredentials:
    """TLS credentials from the PEM files, checked now (not at the first handshake): the
    key must parse and match the certificate; a client CA makes client certificates required."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    assert security.cert_file is not None and security.key_file is not None
    cert_pem = read_setting_file(security.cert_file, "HEADWATER_TLS_CERT_FILE", ConfigError)
    key_pem = read_setting_file(security.key_file, "HEADWATER_TLS_KEY_FILE", ConfigError,
                                private_key=True)
    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        raise ConfigError(f"HEADWATER_TLS_CERT_FILE: {security.cert_file} holds no PEM "
                          "certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"HEADWATER_TLS_KEY_FILE: {security.key_file} holds no unencrypted "
                          "PEM private key") from None
    notice = expiry_notice(security)
    if notice and cert.not_valid_after_utc <= dt.datetime.now(dt.timezone.utc):
        raise ConfigError(f"HEADWATER_TLS_CERT_FILE: refusing to start: {notice}")
    if notice:
        log.warning("%s", notice)
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
        raise ConfigError(f"HEADWATER_TLS_KEY_FILE: {security.key_file} is not the key of the "
                          f"certificate in {security.cert_file}")
    client_ca = None
    if security.client_ca_file is not None:
        client_ca = read_setting_file(security.client_ca_file, "HEADWATER_TLS_CLIENT_CA_FILE",
                                      ConfigError)
        try:
            x509.load_pem_x509_certificates(client_ca)
        except ValueError:
            raise ConfigError(f"HEADWATER_TLS_CLIENT_CA_FILE: {security.client_ca_file} holds "
                              "no PEM certificate") from None
    return grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def token_file(security: ServerSecurity) -> TokenFile | None:
    return TokenFile(security.tokens_file) if security.tokens_file is not None else None
