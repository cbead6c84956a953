"""Shared by the security tests: a throwaway PKI, a token file with one token per role, and
`headwater serve` running with TLS (optionally mutual) and token auth in a child process."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import HEADWATER, REPO, free_port, run_headwater, wait_for_port
from headwater.producers.transports.channel import ClientSecurity, open_channel
from headwater.query_service.server.auth import Role, hash_token
from headwater.v1 import events_pb2

TOKENS = {role: f"tok-{role.value}-Zq8x2VbN4kLp9mRt7wYc3" for role in Role}


# --- a throwaway PKI -------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
           ca: bool = False, sans: list[x509.GeneralName] | None = None,
           not_after: dt.datetime | None = None):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    not_after = not_after or now + dt.timedelta(days=1)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(min(now, not_after) - dt.timedelta(days=1))
               .not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    client_cert: Path  # subject CN=trainer
    client_key: Path
    other_ca: Path


def _write(path: Path, key, cert) -> tuple[Path, Path]:
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    path.with_suffix(".key").chmod(0o600)  # keys readable by others are refused
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path.with_suffix(".pem"), path.with_suffix(".key")


def make_pki(d: Path) -> Pki:
    """A CA, a server certificate for localhost/127.0.0.1, a client certificate (CN=trainer)
    and an unrelated CA, written under `d`."""
    ca_key, ca_cert = _issue("headwater test CA", None, ca=True)
    ca_pem, _ = _write(d / "ca", ca_key, ca_cert)
    issuer = (ca_cert.subject, ca_key)
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert, key = _write(d / "server", *_issue("headwater serve", issuer, sans=sans))
    client_cert, client_key = _write(d / "client", *_issue("trainer", issuer))
    other_pem, _ = _write(d / "other", *_issue("someone else's CA", None, ca=True))
    return Pki(ca_pem, cert, key, client_cert, client_key, other_pem)


def self_signed_server(path: Path, not_after: dt.datetime) -> tuple[Path, Path]:
    """A self-signed certificate for localhost/127.0.0.1 valid until `not_after`, and its key
    (mode 0600): (PATH.pem, PATH.key)."""
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    return _write(path, *_issue("headwater serve", None, sans=sans, not_after=not_after))


def write_tokens(path: Path) -> Path:
    """A token file with one token per role (TOKENS), named `<role>-bot`."""
    path.write_text("# sha256  role  name\n" + "".join(
        f"sha256:{hash_token(t)} {r.value} {r.value}-bot\n" for r, t in TOKENS.items()))
    return path


# --- the server ------------------------------------------------------------------------------

class SecureServe:
    """`headwater serve` with TLS and tokens; its output goes to a file tests can read."""

    def __init__(self, data_dir: Path, env: dict[str, str], log: Path) -> None:
        self.data_dir, self.env, self.log = data_dir, env, log
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [*HEADWATER, "serve", "--data-dir", str(data_dir), "--listen", self.target],
                env={**os.environ, **env}, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(self.port, timeout=60, proc=self.proc)

    def cli(self, *args: str, token: str | None) -> subprocess.CompletedProcess:
        env = {"HEADWATER_TLS_CA_FILE": self.env["HEADWATER_TLS_CA_FILE"]}
        if token:
            env["HEADWATER_TOKEN"] = token
        return run_headwater(*args, "--data-dir", str(self.data_dir), "--listen", self.target,
                             env=env)


def secure_env(pki: Pki, tokens_file: Path, mutual: bool = False) -> dict[str, str]:
    """The server's settings for TLS (mutual: clients need a certificate the CA signed) and
    token auth; HEADWATER_TLS_CA_FILE is the clients' CA."""
    env = {"HEADWATER_TLS_CERT_FILE": str(pki.cert), "HEADWATER_TLS_KEY_FILE": str(pki.key),
           "HEADWATER_AUTH_TOKENS_FILE": str(tokens_file),
           "HEADWATER_TLS_CA_FILE": str(pki.ca)}
    if mutual:
        env["HEADWATER_TLS_CLIENT_CA_FILE"] = str(pki.ca)
    return env


def tls_channel(pki: Pki, token: str | None = None, target: str = "",
                client_cert: bool = False) -> grpc.Channel:
    """A TLS channel trusting the test CA, with `token` and (client_cert) the CN=trainer
    client certificate."""
    return open_channel(target, ClientSecurity(
        tls=True, tls_ca_file=pki.ca, token=token,
        client_cert_file=pki.client_cert if client_cert else None,
        client_key_file=pki.client_key if client_cert else None))


def source_event(i: int) -> events_pb2.SourceRegistered:
    return events_pb2.SourceRegistered(
        source_id=f"clinic-{i}", uri=f"file:///data/clinic_{i}.csv", content_sha256=f"{i:064x}",
        row_count=10, format="csv", origin="test",
        schema=[events_pb2.Column(name="x", dtype="float64")])
