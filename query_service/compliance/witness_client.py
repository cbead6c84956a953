"""The operator's side of a second party's witness, and choosing a witness by its name.

`HEADWATER_WITNESS` (or `--witness`) names either a local append-only file (FileWitness)
or, starting with http:// or https://, a `headwater witness serve` endpoint (HttpWitness).
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from headwater.errors import ConfigError, HeadwaterError, RequestError
from headwater.query_service.compliance.witness import Checkpoint, FileWitness, Witness
from headwater.query_service.compliance.witness_receipts import (
    Receipt,
    check_receipts,
    receipt_from,
    receipt_problem,
)

CA_ENV = "HEADWATER_TLS_CA_FILE"  # the CA an https:// witness's certificate must chain to


def is_url(name: str) -> bool:
    return name.startswith(("http://", "https://"))


class HttpWitness:
    """A witness endpoint: checkpoints appended by POST, countersigned receipts read back.
    With `public_key`, every receipt it answers must verify with that key."""

    def __init__(self, url: str, public_key: Ed25519PublicKey | None = None,
                 timeout_s: float = 10.0, ca_file: Path | None = None) -> None:
        self.url = url.rstrip("/")
        self.public_key = public_key
        self.timeout_s = timeout_s
        ca = ca_file or os.environ.get(CA_ENV) or None  # https: the witness's CA
        self._tls = ssl.create_default_context(cafile=str(ca) if ca else None) \
            if self.url.startswith("https://") else None

    def _call(self, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=(
            "GET" if body is None else "POST"), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s,
                                        context=self._tls) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                why = json.loads(exc.read()).get("error", "")
            except (ValueError, AttributeError):
                why = ""
            raise HeadwaterError(f"witness {self.url} refused ({exc.code}): "
                                 f"{why or exc.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise HeadwaterError(f"witness {self.url} did not answer: {exc}") from None

    def submit(self, checkpoints: list[Checkpoint]) -> list[Receipt]:
        """The witness's receipts for `checkpoints` (HeadwaterError when it refuses or a
        receipt does not cover what was sent or does not verify)."""
        answer = self._call("/v1/checkpoints", {"checkpoints": [asdict(c) for c in checkpoints]})
        try:
            receipts = [receipt_from(r) for r in answer["receipts"]]
        except (KeyError, TypeError, RequestError) as exc:
            raise HeadwaterError(f"witness {self.url} answered no receipts: {exc}") from None
        if [r.checkpoint for r in receipts] != checkpoints:
            raise HeadwaterError(f"witness {self.url}: the receipts do not cover the "
                                 "checkpoints sent")
        if self.public_key is not None:
            for r in receipts:
                why = receipt_problem(r, self.public_key)
                if why:
                    raise HeadwaterError(f"witness {self.url}: {why}")
        return receipts

    def append(self, checkpoints: list[Checkpoint]) -> None:
        """Witness protocol: hand checkpoints over, a receipt for each (in batches)."""
        for i in range(0, len(checkpoints), 10):  # 10 timestamped ones fit a request
            self.submit(checkpoints[i:i + 10])

    def receipts(self) -> list[Receipt]:
        """Every receipt the witness holds, in order."""
        out: list[Receipt] = []
        after: int | None = 0
        while after is not None:
            page = self._call(f"/v1/receipts?after={after}&limit=1000")
            try:
                out.extend(receipt_from(r) for r in page["receipts"])
                after = page["next"]
            except (KeyError, TypeError, RequestError) as exc:
                raise HeadwaterError(f"witness {self.url}: not a page of receipts: "
                                     f"{exc}") from None
        return out

    def read(self) -> list[Checkpoint]:
        """Witness protocol: the checkpoints the witness holds (receipts verified when a
        public key was given)."""
        receipts = self.receipts()
        if self.public_key is not None:
            broken = check_receipts(receipts, self.public_key)
            if broken:
                raise HeadwaterError(f"witness {self.url}: {broken[0]}")
        return [r.checkpoint for r in receipts]


def open_witness(name: str, public_key: Ed25519PublicKey | None = None) -> Witness:
    """The witness `name` names: a URL -> HttpWitness, anything else -> FileWitness."""
    if not name:
        raise ConfigError("the witness name is empty (HEADWATER_WITNESS or --witness)")
    return HttpWitness(name, public_key) if is_url(name) else FileWitness(Path(name))
