"""Client channels to a Headwater server: TLS from a CA file, a bearer token on every call.

One helper for every client (the SDK's GrpcTransport and UnlearningListener, the CLI), so
none of them opens a plaintext channel or sends a token where it should not.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from headwater.errors import ChannelConfigError

TOKEN_ENV = "HEADWATER_TOKEN"
TOKEN_FILE_ENV = "HEADWATER_TOKEN_FILE"
TLS_CA_ENV = "HEADWATER_TLS_CA_FILE"
TLS_CLIENT_CERT_ENV = "HEADWATER_TLS_CLIENT_CERT_FILE"
TLS_CLIENT_KEY_ENV = "HEADWATER_TLS_CLIENT_KEY_FILE"


NO_PROXY = ("grpc.enable_http_proxy", 0)  # channel option: never dial through a proxy



@dataclass(frozen=True, repr=False)
class ClientSecurity:
    """How a client reaches the server; `token` is a secret and never shown by repr."""

    tls: bool = False
    tls_ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    token: str | None = None

    def __repr__(self) -> str:
        return (f"ClientSecurity(tls={self.tls}, tls_ca_file={self.tls_ca_file}, "
                f"client_cert_file={self.client_cert_file}, "
                f"token={'***' if self.token else None})")


def is_loopback_host(host: str) -> bool:
    """True for `localhost` and loopback IP literals (127.0.0.0/8, ::1), brackets allowed."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(target: str) -> str:
    """The host part of HOST:PORT (IPv6 in brackets) or of a `dns:///host:port` target."""
    rest = target.split("///", 1)[-1] if "///" in target else target
    host, sep, port = rest.rpartition(":")
    return host if sep and port.isdigit() else rest


def read_token_file(path: Path, setting: str = TOKEN_FILE_ENV) -> str:
    """The token held in `path` (surrounding whitespace removed)."""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ChannelConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    if not token:
        raise ChannelConfigError(f"{setting}: {path} is empty")
    return token


def security_from_env(*, tls_ca_file: str | Path | None = None, token: str | None = None,
                      env: Mapping[str, str] | None = None) -> ClientSecurity:
    """Explicit arguments, else HEADWATER_TLS_CA_FILE, HEADWATER_TLS_CLIENT_CERT_FILE/_KEY_FILE
    and HEADWATER_TOKEN / HEADWATER_TOKEN_FILE; TLS is on when a CA file is known."""
    env = os.environ if env is None else env
    ca = tls_ca_file or env.get(TLS_CA_ENV) or None
    cert = env.get(TLS_CLIENT_CERT_ENV) or None
    key = env.get(TLS_CLIENT_KEY_ENV) or None
    if token is None:
        token = env.get(TOKEN_ENV) or None
        if token is None and env.get(TOKEN_FILE_ENV):
            token = read_token_file(Path(env[TOKEN_FILE_ENV]))
    return ClientSecurity(tls=ca is not None, tls_ca_file=Path(ca) if ca else None,
                          client_cert_file=Path(cert) if cert else None,
                          client_key_file=Path(key) if key else None, token=token)


def file_mode_problem(path: Path, *, private_key: bool = False) -> str | None:
    """Why a secret file must not be trusted, or None. Refused: a file group- or world-
    writable (anyone could add a token or swap a key), or owned by a user other than this
    process's or root; a private key (`private_key`) also when others can read it, or its
    group can and it is not owned by root (root-owned 0640 is how a Kubernetes Secret with
    fsGroup is mounted). A file that cannot be stat'ed is not a mode problem (None)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        return (f"{path} is group- or world-writable (mode {mode:04o}): another user could "
                f"change it; chmod 600 {path}")
    if st.st_uid not in (0, os.geteuid()):
        return (f"{path} is owned by uid {st.st_uid}, neither this user (uid {os.geteuid()}) "
                f"nor root: its owner could change it; chown it and chmod 600 {path}")
    if private_key and (mode & 0o004 or (mode & 0o040 and st.st_uid != 0)):
        return (f"{path} is a private key readable by other users (mode {mode:04o}); "
                f"chmod 600 {path} (or 640 owned by root)")
    return None


def read_setting_file(path: Path, setting: str,
                      error: type[Exception] = ChannelConfigError, *,
                      private_key: bool = False) -> bytes:
    """The bytes of a file named by a setting; `error` names the setting and the path (never
    the content: it may be a key). `private_key`: refused when its mode or owner lets another
    user read or change it (file_mode_problem)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise error(f"{setting}: cannot read {path}: {exc.strerror}") from None
    if private_key:
        problem = file_mode_problem(path, private_key=True)
        if problem:
            raise error(f"{setting}: refused: {problem}")
    return data


def channel_credentials(security: ClientSecurity) -> grpc.ChannelCredentials:
    """TLS credentials: the CA file (else the system roots) and an optional client cert."""
    if (security.client_cert_file is None) != (security.client_key_file is None):
        raise ChannelConfigError(f"mTLS needs both {TLS_CLIENT_CERT_ENV} and "
                                 f"{TLS_CLIENT_KEY_ENV}; only one is set")
    ca = read_setting_file(security.tls_ca_file, TLS_CA_ENV) if security.tls_ca_file else None
    cert = key = None
    if security.client_cert_file and security.client_key_file:
        cert = read_setting_file(security.client_cert_file, TLS_CLIENT_CERT_ENV)
        key = read_setting_file(security.client_key_file, TLS_CLIENT_KEY_ENV,
                                private_key=True)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call (plaintext loopback or TLS)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def __repr__(self) -> str:
        return "_BearerToken(***)"

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: Any


def open_channel(target: str, security: ClientSecurity | None = None,
                 options: Sequence[tuple[str, Any]] | None = None) -> grpc.Channel:
    """A channel to `target`: TLS when `security.tls`, the token on every call. A token is
    never sent in plaintext to a host other than loopback."""
    security = security or ClientSecurity()
    opts = list(options or ())
    if security.tls:
        # TLS may go through an HTTP CONNECT proxy (grpc_proxy / https_proxy): the proxy
        # relays the encrypted stream and sees the target's host and port, never the token
        channel = grpc.secure_channel(target, channel_credentials(security), opts)
    else:
        if security.token and not is_loopback_host(host_of(target)):
            raise ChannelConfigError(
                f"refusing to send the token to {target} over plaintext; set "
                f"{TLS_CA_ENV} (or pass tls_ca_file) to use TLS")
        # plaintext never goes through a proxy, whatever grpc_proxy / http(s)_proxy say: the
        # proxy would read every message and the token in clear
        channel = grpc.insecure_channel(target, [*opts, NO_PROXY])
    return with_token(channel, security.token)


def with_token(channel: grpc.Channel, token: str | None) -> grpc.Channel:
    """`channel` sending `authorization: Bearer <token>` on every call (unchanged if None)."""
    return grpc.intercept_channel(channel, _BearerToken(token)) if token else channel
