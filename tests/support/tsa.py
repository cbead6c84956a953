"""A real RFC 3161 time-stamp authority on loopback for the tests: OpenSSL's `ts -reply`
(its TSA implementation) behind a small HTTP endpoint, with a test root CA and a TSA
certificate (extended key usage timeStamping, critical) made here."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CONFIG = """
[ tsa ]
default_tsa = tsa_config1

[ tsa_config1 ]
dir = {dir}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.2.3.4.1
other_policies = 1.2.3.4.5
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = no
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          signer: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
    return builder.sign(signer, hashes.SHA256())


class LocalTsa:
    """OpenSSL's TSA on http://127.0.0.1:PORT/; `ca_file` is the root to trust."""

    def __init__(self, folder: Path) -> None:
        self.openssl = shutil.which("openssl")
        if self.openssl is None:
            raise RuntimeError("the openssl command is needed for the local TSA")
        self.dir = folder
        folder.mkdir(parents=True, exist_ok=True)
        ca_key, tsa_key = ec.generate_private_key(ec.SECP256R1()), \
            ec.generate_private_key(ec.SECP256R1())
        ca = _cert("headwater test root", ca_key, x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, "headwater test root")]), ca_key, True)
        tsa = _cert("headwater test tsa", tsa_key, ca.subject, ca_key, False)
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        (folder / "tsa.pem").write_bytes(tsa.public_bytes(serialization.Encoding.PEM))
        (folder / "tsa.key").write_bytes(tsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (folder / "serial").write_text("01\n")
        self.config = folder / "tsa.cnf"
        self.config.write_text(CONFIG.format(dir=folder))
        self.replies = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reply(self, query: bytes) -> bytes:
        """OpenSSL's TimeStampResp to a DER TimeStampReq."""
        with self._lock, tempfile.TemporaryDirectory() as tmp:
            q, r = Path(tmp) / "q.tsq", Path(tmp) / "r.tsr"
            q.write_bytes(query)
            subprocess.run([str(self.openssl), "ts", "-reply", "-config", str(self.config),
                            "-queryfile", str(q), "-out", str(r)], check=True,
                           capture_output=True, timeout=30)
            self.replies += 1
            return r.read_bytes()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        tsa = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = tsa.reply(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
