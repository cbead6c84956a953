"""A second party's witness (`witness_server`) on a free loopback port, in a thread."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from headwater.query_service.compliance.signing import key_id
from headwater.query_service.compliance.witness import Trusted
from headwater.query_service.compliance.witness_server import (
    ReceiptFile,
    WitnessService,
    make_server,
)


class Running:
    """The witness, trusting `operator`'s checkpoints, signing receipts with `wkey`."""

    def __init__(self, store: Path, operator: Ed25519PrivateKey,
                 wkey: Ed25519PrivateKey) -> None:
        trusted = {key_id(operator.public_key()): Trusted(operator.public_key())}
        self.service = WitnessService(ReceiptFile(store), wkey, trusted, 300.0)
        self.server = make_server(self.service, "127.0.0.1:0")
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("POST", "/v1/checkpoints", body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.service.close()
