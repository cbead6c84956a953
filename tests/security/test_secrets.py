"""Identity and secrets (issue 14, deliverable 7, without principal recording): plaintext
never goes through a proxy, the token file and private keys are refused when other users
could change (keys: read) them, a missing token file fails closed, and the server's
certificate is checked for expiry at start."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.secure_serve import (
    TOKENS,
    Pki,
    SecureServe,
    make_pki,
    self_signed_server,
    source_event,
    write_tokens,
)

from conftest import Serve, free_port, run_headwater, stop
from headwater.errors import ConfigError
from headwater.producers import GrpcTransport, Publisher
from headwater.producers.transports.channel import (
    ChannelConfigError,
    ClientSecurity,
    open_channel,
)
from headwater.query_service.server.auth import Principal, Role, TokenFile, hash_token
from headwater.query_service.server.transport_security import ServerSecurity, server_credentials
from headwater.v1 import query_pb2, query_pb2_grpc

PROXY_VARIABLES = ("grpc_proxy", "https_proxy", "http_proxy", "GRPC_PROXY", "HTTPS_PROXY",
                   "HTTP_PROXY")


# --- a proxy that only listens -----------------------------------------------------------------

class RecordingProxy:
    """A TCP listener on loopback standing in for an HTTP proxy: it records every byte it is
    sent and answers nothing."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.received = bytearray()
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        conn.settimeout(2)
        with conn:
            try:
                while data := conn.recv(65536):
                    self.received += data
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingProxy]:
    """Every proxy variable grpc reads points at a RecordingProxy; no_proxy is unset."""
    p = RecordingProxy()
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, p.url)
    for name in ("no_proxy", "NO_PROXY", "no_grpc_proxy"):
        monkeypatch.delenv(name, raising=False)
    yield p
    p.close()


def test_plaintext_channels_never_go_through_a_proxy(serve: Serve,
                                                     proxy: RecordingProxy) -> None:
    """Row 13: a token on a plaintext loopback channel with grpc_proxy / https_proxy set: the
    proxy received `authorization: Bearer ...` in clear."""
    token = "tok-proxy-Hn4Vq8Lz2"
    # the proxy is live: a channel of grpc's own defaults dials it first
    with grpc.insecure_channel(serve.target) as plain:
        with pytest.raises(grpc.RpcError):
            query_pb2_grpc.LineageStub(plain).Sources(
                query_pb2.SourcesRequest(), timeout=2,
                metadata=[("authorization", f"Bearer {token}")])
    deadline = time.monotonic() + 5
    while b"CONNECT" not in proxy.received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"CONNECT {serve.target}".encode() in proxy.received
    time.sleep(0.3)  # the closed control channel stops reconnecting
    proxy.received.clear()
    seen = proxy.connections

    # Headwater's channels: the CLI's and the SDK's helper, the transport, the probe
    channel = open_channel(serve.target, ClientSecurity(token=token))
    sources = query_pb2_grpc.LineageStub(channel).Sources(query_pb2.SourcesRequest(),
                                                          timeout=10)
    assert list(sources.sources) == []
    with Publisher(GrpcTransport(serve.target, token=token), run_id="proxy-run") as pub:
        pub.publish(source_event(1))
    done = run_headwater("sql", "SELECT count() AS n FROM sources FINAL", "--format", "json",
                         "--listen", serve.target, env={"HEADWATER_TOKEN": token})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '{"n": 1}'
    from headwater.query_service.server.probe import main as probe

    assert probe(["grpc", serve.target]) == 0
    time.sleep(0.3)
    assert proxy.connections == seen and bytes(proxy.received) == b""


def test_tls_channels_may_use_a_proxy_which_sees_no_token(serve: Serve,
                                                          proxy: RecordingProxy,
                                                          tmp_path: Path) -> None:
    """Row 13 (sibling): TLS honours the proxy (an HTTP CONNECT tunnel): the proxy learns the
    target's host and port, never the token, which travels inside TLS."""
    pki = make_pki(tmp_path)
    token = "tok-proxy-Tq7Wc3Mx9"
    channel = open_channel(serve.target, ClientSecurity(tls=True, tls_ca_file=pki.ca,
                                                        token=token))
    with pytest.raises(grpc.RpcError):  # this proxy tunnels nothing
        query_pb2_grpc.LineageStub(channel).Sources(query_pb2.SourcesRequest(), timeout=2)
    deadline = time.monotonic() + 5
    while b"\r\n\r\n" not in proxy.received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert bytes(proxy.received).startswith(f"CONNECT {serve.target} HTTP/1.1".encode())
    assert token.encode() not in proxy.received and b"authorization" not in proxy.received


# --- the token file --------------------------------------------------------------------------

def test_token_file_writable_by_others_or_not_ours_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Row 14: a tokens file writable by another user (0666): a line appended by `nobody` was
    accepted as admin within ~1 s (live reload, no mode or owner check)."""
    path = write_tokens(tmp_path / "tokens")
    path.chmod(0o600)
    # at start: refused, naming the file, its mode and the fix
    for mode in (0o666, 0o620, 0o602):
        path.chmod(mode)
        with pytest.raises(ConfigError) as err:
            TokenFile(path)
        assert str(err.value) == (
            f"HEADWATER_AUTH_TOKENS_FILE: refused: {path} is group- or world-writable (mode "
            f"{mode:04o}): another user could change it; chmod 600 {path}")
    path.chmod(0o644)  # readable is fine: the file holds digests, not tokens
    assert TokenFile(path).lookup(TOKENS[Role.READER]) == Principal(Role.READER, "reader-bot")
    path.chmod(0o600)
    os.chown(path, 65534, 65534)  # nobody's file, however strict its mode
    with pytest.raises(ConfigError, match=r"owned by uid 65534, neither this user"):
        TokenFile(path)
    os.chown(path, os.geteuid(), os.getegid())

    # at a re-read: the appended line is never accepted, and the whole file is distrusted
    now = [0.0]
    tokens = TokenFile(path, clock=lambda: now[0])
    assert tokens.lookup(TOKENS[Role.ADMIN]).role is Role.ADMIN
    path.chmod(0o666)
    with path.open("a") as f:  # what `nobody` can do now
        f.write(f"{hash_token('appended-by-nobody')} admin intruder\n")
    now[0] = 2.0
    assert tokens.lookup("appended-by-nobody") is None
    assert tokens.lookup(TOKENS[Role.ADMIN]) is None  # fails closed
    assert "token file refused, every call is refused until it is fixed" in caplog.text
    assert "mode 0666" in caplog.text
    write_tokens(path)  # the operator rewrites it and fixes the mode
    path.chmod(0o600)
    now[0] = 4.0
    assert tokens.lookup(TOKENS[Role.ADMIN]).role is Role.ADMIN
    assert tokens.lookup("appended-by-nobody") is None


def test_deleted_token_file_fails_closed_until_it_is_back(tmp_path: Path) -> None:
    """Row 14: deleting the tokens file kept every old token valid (forever). Now every call
    but health is refused UNAUTHENTICATED until the file is back, and it is logged; a
    rewrite that does not parse keeps the previous tokens (documented)."""
    path = write_tokens(tmp_path / "tokens")
    path.chmod(0o600)
    serve = SecureServe(tmp_path / "data", {"HEADWATER_AUTH_TOKENS_FILE": str(path)},
                        tmp_path / "serve.log")
    try:
        channel = open_channel(serve.target, ClientSecurity(token=TOKENS[Role.READER]))
        lineage = query_pb2_grpc.LineageStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        lineage.Sources(query_pb2.SourcesRequest(), timeout=10)

        def code_within(seconds: float, want: grpc.StatusCode) -> None:
            deadline, got = time.monotonic() + seconds, None
            while time.monotonic() < deadline:
                try:
                    lineage.Sources(query_pb2.SourcesRequest(), timeout=5)
                    got = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    got = exc.code()
                if got == want:
                    return
                time.sleep(0.2)
            raise AssertionError(f"still {got} after {seconds} s, wanted {want}")

        path.unlink()
        code_within(5, grpc.StatusCode.UNAUTHENTICATED)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING  # probes stay open
        log = serve.log.read_text()
        assert f"token file refused, every call is refused until it is fixed: " \
               f"HEADWATER_AUTH_TOKENS_FILE: cannot read {path}" in log
        write_tokens(path).chmod(0o600)
        code_within(5, grpc.StatusCode.OK)
        path.write_text("not a token file\n")  # a broken rewrite: previous tokens stay
        path.chmod(0o600)
        time.sleep(1.5)
        code_within(1, grpc.StatusCode.OK)
        assert "token file not re-read, previous tokens stay in force" in serve.log.read_text()
    finally:
        stop(serve.proc)


def test_serve_refuses_a_world_writable_token_file_at_start(tmp_path: Path) -> None:
    """Row 14 (start-up): serve does not start on a token file anyone can append to."""
    path = write_tokens(tmp_path / "tokens")
    path.chmod(0o666)
    done = run_headwater("serve", "--data-dir", str(tmp_path / "d"), "--listen",
                         f"127.0.0.1:{free_port()}", env={"HEADWATER_AUTH_TOKENS_FILE": str(path)})
    assert done.returncode == 2
    assert (f"HEADWATER_AUTH_TOKENS_FILE: refused: {path} is group- or world-writable (mode "
            f"0666)") in done.stderr and f"chmod 600 {path}" in done.stderr


# --- private keys ----------------------------------------------------------------------------

@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def test_private_keys_readable_or_writable_by_others_are_refused(pki: Pki) -> None:
    """Row 14 (sibling, keys): a server or client private key that other users can read or
    change is refused, naming the setting, the file, its mode and the fix."""
    server = ServerSecurity(cert_file=pki.cert, key_file=pki.key)
    server_credentials(server)  # 0600: fine
    for mode, why in ((0o644, "readable by other users"), (0o604, "readable by other users"),
                      (0o660, "group- or world-writable"), (0o622, "group- or world-writable")):
        pki.key.chmod(mode)
        with pytest.raises(ConfigError) as err:
            server_credentials(server)
        assert str(err.value).startswith(f"HEADWATER_TLS_KEY_FILE: refused: {pki.key} is ")
        assert why in str(err.value) and f"mode {mode:04o}" in str(err.value)
        assert f"chmod 600 {pki.key}" in str(err.value)
    if os.geteuid() == 0:  # root-owned, group-readable: a Kubernetes Secret with fsGroup
        pki.key.chmod(0o640)
        server_credentials(server)
    os.chown(pki.key, 65534, 65534)  # another user's key: they could swap it
    pki.key.chmod(0o600)
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        server_credentials(server)

    client = ClientSecurity(tls=True, tls_ca_file=pki.ca, client_cert_file=pki.client_cert,
                            client_key_file=pki.client_key)
    open_channel("127.0.0.1:1", client).close()
    pki.client_key.chmod(0o644)
    with pytest.raises(ChannelConfigError, match=r"HEADWATER_TLS_CLIENT_KEY_FILE: refused: .* "
                                                 r"readable by other users \(mode 0644\)"):
        open_channel("127.0.0.1:1", client)


def test_serve_refuses_a_key_others_can_read_at_start(pki: Pki, tmp_path: Path) -> None:
    """Row 14 (sibling, keys): through `headwater serve`, before anything listens."""
    pki.key.chmod(0o644)
    port = free_port()
    done = run_headwater("serve", "--data-dir", str(tmp_path / "d"), "--listen",
                         f"127.0.0.1:{port}", env={"HEADWATER_TLS_CERT_FILE": str(pki.cert),
                                                   "HEADWATER_TLS_KEY_FILE": str(pki.key)})
    assert done.returncode == 2
    assert f"HEADWATER_TLS_KEY_FILE: refused: {pki.key} is a private key readable by other " \
           f"users (mode 0644); chmod 600 {pki.key}" in done.stderr


# --- certificate expiry ----------------------------------------------------------------------

def _serve_with(cert: Path, key: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return run_headwater("serve", "--data-dir", str(tmp_path / "d"), "--listen",
                         f"127.0.0.1:{free_port()}", env={"HEADWATER_TLS_CERT_FILE": str(cert),
                                                          "HEADWATER_TLS_KEY_FILE": str(key)},
                         timeout=60)


def test_expired_certificate_is_refused_and_near_expiry_is_warned(tmp_path: Path) -> None:
    """Deliverable 7 (certificate expiry; no table row): an expired server certificate stops
    start-up (clients would refuse it anyway); one expiring within HEADWATER_TLS_CERT_WARN_DAYS
    starts with a WARNING in the log and on the start-up line."""
    now = dt.datetime.now(dt.timezone.utc)
    cert, key = self_signed_server(tmp_path / "expired", now - dt.timedelta(hours=1))
    done = _serve_with(cert, key, tmp_path)
    assert done.returncode == 2
    assert (f"HEADWATER_TLS_CERT_FILE: refusing to start: the certificate in {cert} expired "
            "on ") in done.stderr and "renew it" in done.stderr

    cert, key = self_signed_server(tmp_path / "soon", now + dt.timedelta(days=3, hours=1))
    serve = SecureServe(tmp_path / "data", {"HEADWATER_TLS_CERT_FILE": str(cert),
                                            "HEADWATER_TLS_KEY_FILE": str(key)},
                        tmp_path / "serve.log")
    try:
        deadline = time.monotonic() + 30
        while "headwater serve: gRPC on" not in serve.log.read_text():
            assert time.monotonic() < deadline, serve.log.read_text()
            time.sleep(0.1)
        log = serve.log.read_text()
        warning = f"the certificate in {cert} expires in 3 day(s)"
        assert f"WARNING headwater.query_service.server.transport_security: {warning}" in log
        startup = "".join(log[log.index("headwater serve: gRPC on"):].split())  # rich wraps
        assert "".join(f"TLS, no auth (loopback only); WARNING: {warning}".split()) in startup
    finally:
        stop(serve.proc)
    fresh, fresh_key = self_signed_server(tmp_path / "fresh", now + dt.timedelta(days=90))
    assert ServerSecurity(cert_file=fresh, key_file=fresh_key).describe() == "TLS, no auth " \
        "(loopback only)"
    assert "expires in" in ServerSecurity(cert_file=fresh, key_file=fresh_key,
                                          cert_warn_days=100).describe()
