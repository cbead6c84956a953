"""`headwater witness serve`: the witness a second party runs (HTTP, stdlib server).

It holds its own Ed25519 key and its own append-only receipt file (JSON lines, O_APPEND,
fsync'd before a receipt is answered), accepts signed chain-head checkpoints by the keys
it was told to trust, and answers each with a countersigned receipt
(witness_receipts.WitnessLog decides). At start it re-verifies its own file and refuses to
serve a file that is not its own unbroken chain of receipts.

    POST /v1/checkpoints   {"checkpoints": [Checkpoint, ...]} -> {"receipts", "added"}
    GET  /v1/receipts?after=N&limit=M                        -> {"receipts": [...], "next"}
    GET  /v1/public-key    the witness's public key (PEM; trust it out of band, not from here)
    GET  /healthz

Checkpoints and receipts are signed, so integrity does not rest on the transport; still, a
non-loopback address is served only over TLS (--tls-cert, --tls-key), as every headwater
server.
"""

from __future__ import annotations

import fcntl
import json
import os
import ssl
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from headwater.errors import ConfigError, RequestError
from headwater.producers.transports.channel import is_loopback_host
from headwater.query_service.compliance.signing import public_pem
from headwater.query_service.compliance.witness import Trusted, append_lines
from headwater.query_service.compliance.witness_receipts import (
    Receipt,
    WitnessLog,
    WitnessRefused,
    check_receipts,
    checkpoint_from,
    receipt_from,
)

MAX_BODY_BYTES = 64 * 1024
MAX_CHECKPOINTS = 100  # per request
MAX_PAGE = 1000  # receipts per GET
DEFAULT_LISTEN = "127.0.0.1:8790"


class ReceiptFile:
    """The witness's own append-only store: one receipt a line."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> list[Receipt]:
        if not self.path.exists():
            return []
        out = []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            try:
                out.append(receipt_from(json.loads(line)))
            except (ValueError, RequestError) as exc:
                raise ConfigError(f"witness store {self.path} line {n}: not a receipt "
                                  f"({exc})") from None
        return out

    def append(self, receipts: list[Receipt]) -> None:
        append_lines(self.path, [r.as_dict() for r in receipts])


def _lock(store: Path) -> int:
    """An exclusive lock on `store`.lock, held while the returned descriptor is open; a
    second witness on the same store is refused (two writers would fork its receipt chain)."""
    fd = os.open(f"{store}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(f"witness store {store} is in use by another witness process") \
            from None
    return fd


class WitnessService:
    """The witness's state and store behind one lock (the HTTP handler's only state)."""

    def __init__(self, store: ReceiptFile, key: Ed25519PrivateKey,
                 trusted: dict[str, Trusted], max_skew_s: float) -> None:
        if not trusted:
            raise ConfigError("witness serve needs at least one key to trust (--trust)")
        self._held = _lock(store.path)  # one witness process per store, for its lifetime
        try:
            held = store.read()
            broken = check_receipts(held, key.public_key())
            if broken:
                raise ConfigError(f"witness store {store.path} is not this witness's "
                                  f"unbroken chain of receipts: {broken[0]}")
        except ConfigError:
            self.close()
            raise
        self.store, self.key = store, key
        self.log = WitnessLog(key, trusted, max_skew_s, held)
        self._lock = threading.Lock()

    def submit(self, body: Any) -> dict[str, Any]:
        """Receipts for a request's checkpoints, and which were newly added (not a
        byte-identical replay of one already held)."""
        if not isinstance(body, dict) or set(body) != {"checkpoints"} or not isinstance(
                body["checkpoints"], list):
            raise WitnessRefused('the body must be {"checkpoints": [...]}', 400)
        if not 0 < len(body["checkpoints"]) <= MAX_CHECKPOINTS:
            raise WitnessRefused(f"send 1 to {MAX_CHECKPOINTS} checkpoints a request", 400)
        found = [checkpoint_from(c) for c in body["checkpoints"]]
        with self._lock:  # stored (fsync'd) before held in memory and answered
            done = self.log.accept(found, datetime.now(timezone.utc), self.store.append)
        return {"receipts": [r.as_dict() for r, _ in done], "added": [new for _, new in done]}

    def close(self) -> None:
        """Release the store's lock."""
        if self._held >= 0:
            os.close(self._held)
            self._held = -1

    def page(self, after: int, limit: int) -> dict[str, Any]:
        with self._lock:
            chunk = self.log.receipts[after:after + limit]
            total = len(self.log.receipts)
        end = after + len(chunk)
        return {"receipts": [r.as_dict() for r in chunk], "next": end if end < total else None}


def _handler(service: WitnessService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "headwater-witness"
        timeout = 10  # a client that stalls mid-request is dropped

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # the receipt file is the record; no per-request noise

        def _answer(self, status: int, body: Any, kind: str = "application/json") -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            url = urlsplit(self.path)
            if url.path == "/healthz":
                return self._answer(200, {"ok": True, "receipts": len(service.log.receipts)})
            if url.path == "/v1/public-key":
                return self._answer(200, public_pem(service.key.public_key()),
                                    "application/x-pem-file")
            if url.path != "/v1/receipts":
                return self._answer(404, {"error": f"no such path: {url.path[:100]}"})
            query = parse_qs(url.query)
            try:
                after = int(query.get("after", ["0"])[0])
                limit = int(query.get("limit", [str(MAX_PAGE)])[0])
            except ValueError:
                return self._answer(400, {"error": "after and limit must be integers"})
            if after < 0 or not 0 < limit <= MAX_PAGE:
                return self._answer(400, {"error": f"after >= 0 and 1 <= limit <= {MAX_PAGE}"})
            return self._answer(200, service.page(after, limit))

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            if urlsplit(self.path).path != "/v1/checkpoints":
                return self._answer(404, {"error": f"no such path: {self.path[:100]}"})
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                return self._answer(411, {"error": "a Content-Length is required"})
            if int(length) > MAX_BODY_BYTES:
                self.close_connection = True  # the body is not read
                return self._answer(413, {"error": f"body of {length} bytes is over the "
                                                   f"{MAX_BODY_BYTES}-byte limit"})
            try:
                body = json.loads(self.rfile.read(int(length)))
            except (ValueError, UnicodeDecodeError):
                return self._answer(400, {"error": "the body is not JSON"})
            try:
                return self._answer(200, service.submit(body))
            except WitnessRefused as exc:
                return self._answer(exc.status, {"error": str(exc)})
            except OSError as exc:  # its store failed: nothing was kept, the sender retries
                return self._answer(503, {"error": f"the witness could not store receipts: "
                                                   f"{exc}"})

    return Handler


def make_server(service: WitnessService, listen: str = DEFAULT_LISTEN,
                tls: tuple[Path, Path] | None = None) -> ThreadingHTTPServer:
    """A bound (not yet serving) HTTP server, HTTPS with `tls` (certificate, key PEM files);
    port 0 picks a free one. A non-loopback address is refused without TLS."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"witness listen address must be HOST:PORT, got {listen!r}")
    if tls is None and not is_loopback_host(host):
        raise ConfigError(f"refusing to serve the witness on {listen} without TLS: give "
                          "--tls-cert and --tls-key (or keep it on loopback behind a TLS "
                          "proxy)")
    context = None
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(*tls)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"witness TLS certificate {tls[0]} / key {tls[1]}: {exc}") \
                from None
    server = ThreadingHTTPServer((host.strip("[]"), int(port)), _handler(service))
    server.daemon_threads = True
    if context is not None:  # the handshake runs in the handler's thread, under its timeout
        server.socket = context.wrap_socket(server.socket, server_side=True,
                                            do_handshake_on_connect=False)
    return server
