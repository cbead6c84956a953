"""A second party's witness log (pure): which signed chain-head checkpoints it accepts, and
the countersigned receipts it keeps for them.

The witness holds, per producer chain, every head it accepted. It refuses a checkpoint not
signed by a key it trusts, one whose `written_at` is far from its own clock (a backdated or
replayed checkpoint), and one that shortens a chain it holds (a lower seq than its newest)
or rewrites it (the same seq with another hash). Each accepted checkpoint gets a receipt:
the checkpoint, the witness's own time, the receipt's index and the digest of the receipt
before it (the witness's own log is a hash chain too), signed with the witness's Ed25519
key. An auditor trusts the witness's public key, not the operator's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from headwater.errors import RequestError
from headwater.query_service.compliance.signing import key_id
from headwater.query_service.compliance.witness import Checkpoint, Trusted, signature_problem

GENESIS = "0" * 64
MAX_ID_CHARS = 256  # producer and run ids
MAX_TOKEN_CHARS = 12_000  # an RFC 3161 response with its certificates, base64
HEX64 = re.compile(r"[0-9a-f]{64}")


class WitnessRefused(RequestError):
    """A checkpoint the witness will not hold; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Receipt:
    """The witness's countersignature: it held `checkpoint` at `received_at`."""

    index: int
    checkpoint: Checkpoint
    received_at: str  # ISO 8601 UTC, the witness's clock
    prev_receipt: str  # digest of receipt index - 1 (GENESIS for the first)
    witness_key_id: str
    signature: str = ""  # base64 Ed25519 over signed_bytes()

    def signed_bytes(self) -> bytes:
        body = {"index": self.index, "checkpoint": asdict(self.checkpoint),
                "received_at": self.received_at, "prev_receipt": self.prev_receipt,
                "witness_key_id": self.witness_key_id}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> str:
        """What the next receipt names: SHA-256 of the signed bytes and the signature."""
        return hashlib.sha256(self.signed_bytes() + self.signature.encode()).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def receipt_from(data: Any) -> Receipt:
    """A receipt from its JSON object; RequestError naming what is wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("checkpoint"), dict):
        raise RequestError("a receipt must be an object with a checkpoint object")
    try:
        return Receipt(**{**data, "checkpoint": checkpoint_from(data["checkpoint"])})
    except TypeError as exc:
        raise RequestError(f"not a receipt: {exc}") from None


def checkpoint_from(data: Any) -> Checkpoint:
    """A checkpoint from its JSON object, every field checked; WitnessRefused (400) naming
    the first field that is wrong."""
    if not isinstance(data, dict):
        raise WitnessRefused("a checkpoint must be a JSON object", 400)
    wanted = {"producer_id": str, "run_id": str, "seq": int, "head_hash": str,
              "written_at": str, "key_id": str, "signature": str, "timestamp": str}
    extra = sorted(set(data) - set(wanted))
    if extra:
        raise WitnessRefused(f"unknown checkpoint field(s): {', '.join(extra)}", 400)
    data = {"timestamp": "", **data}  # optional: an RFC 3161 token
    for name, kind in wanted.items():
        value = data.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise WitnessRefused(f"checkpoint field {name} must be a {kind.__name__}", 400)
    c = Checkpoint(**data)
    for name in ("producer_id", "run_id"):
        if not 0 < len(getattr(c, name)) <= MAX_ID_CHARS:
            raise WitnessRefused(f"checkpoint field {name} must have 1 to {MAX_ID_CHARS} "
                                 "characters", 400)
    if not 1 <= c.seq < 2**63:
        raise WitnessRefused(f"checkpoint field seq must be 1 to 2^63-1, got {c.seq}", 400)
    if not HEX64.fullmatch(c.head_hash):
        raise WitnessRefused("checkpoint field head_hash must be 64 lower-case hex digits",
                             400)
    if len(c.key_id) > 64 or len(c.signature) > 128 or len(c.timestamp) > MAX_TOKEN_CHARS:
        raise WitnessRefused("checkpoint field key_id, signature or timestamp is too long",
                             400)
    parse_time(c.written_at, "written_at")
    return c


def parse_time(text: str, name: str) -> datetime:
    """An ISO 8601 time with a zone (Z allowed); WitnessRefused (400) otherwise."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise WitnessRefused(f"checkpoint field {name} is not an ISO 8601 time: "
                             f"{text[:40]!r}", 400) from None
    if when.tzinfo is None:
        raise WitnessRefused(f"checkpoint field {name} has no time zone: {text[:40]!r}", 400)
    return when


def iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class WitnessLog:
    """The receipts a witness holds and the rules for adding to them."""

    key: Ed25519PrivateKey
    trusted: dict[str, Trusted]
    max_skew_s: float = 300.0
    receipts: list[Receipt] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.key_id = key_id(self.key.public_key())
        self._newest: dict[str, Receipt] = {}
        self._by_signature: dict[str, Receipt] = {}
        for r in self.receipts:
            self._hold(r)

    def _hold(self, r: Receipt) -> None:
        self._newest[r.checkpoint.producer_id] = r
        self._by_signature[r.checkpoint.signature] = r

    def accept(self, found: list[Checkpoint], now: datetime,
               keep: Callable[[list[Receipt]], None] | None = None
               ) -> list[tuple[Receipt, bool]]:
        """Receipts for `found`, all or none: (receipt, newly added). A checkpoint already
        held byte for byte gets its first receipt back (not added again); any refusal
        raises WitnessRefused and adds nothing. `keep(new receipts)` stores them first: when
        it raises, nothing is added here either (memory never runs ahead of the store)."""
        newest = dict(self._newest)
        made: list[Receipt] = []
        out = []
        for c in found:
            held = self._by_signature.get(c.signature)
            if held is not None and held.checkpoint == c:
                out.append((held, False))
                continue
            self._check(c, newest.get(c.producer_id), now)
            prev = made[-1] if made else (self.receipts[-1] if self.receipts else None)
            r = self._sign(Receipt(len(self.receipts) + len(made), c, iso(now),
                                   prev.digest() if prev else GENESIS, self.key_id))
            made.append(r)
            newest[c.producer_id] = r
            out.append((r, True))
        if made and keep is not None:
            keep(made)
        for r in made:
            self.receipts.append(r)
            self._hold(r)
        return out

    def _check(self, c: Checkpoint, held: Receipt | None, now: datetime) -> None:
        why = signature_problem(c, self.trusted)
        if why:
            raise WitnessRefused(f"checkpoint of {c.producer_id} seq {c.seq}: {why}", 403)
        skew = abs((now - parse_time(c.written_at, "written_at")).total_seconds())
        if skew > self.max_skew_s:
            raise WitnessRefused(f"checkpoint of {c.producer_id} seq {c.seq}: written_at "
                                 f"{c.written_at} is {skew:.0f} s from the witness's clock "
                                 f"(at most {self.max_skew_s:g} s): replayed or backdated",
                                 409)
        if held is None:
            return
        h = held.checkpoint
        if c.seq < h.seq:
            raise WitnessRefused(f"checkpoint of {c.producer_id} seq {c.seq} shortens the "
                                 f"chain: the witness holds seq {h.seq} (receipt {held.index})",
                                 409)
        if c.seq == h.seq and c.head_hash != h.head_hash:
            raise WitnessRefused(f"checkpoint of {c.producer_id} seq {c.seq} rewrites the "
                                 f"chain: the witness holds hash {h.head_hash[:16]}… at that "
                                 f"seq (receipt {held.index})", 409)

    def _sign(self, r: Receipt) -> Receipt:
        return replace(r, signature=base64.b64encode(self.key.sign(r.signed_bytes())).decode())


def receipt_problem(r: Receipt, witness_key: Ed25519PublicKey) -> str | None:
    """Why `r` is not signed by the witness key (None: it is)."""
    where = f"witness receipt {r.index} ({r.checkpoint.producer_id} seq {r.checkpoint.seq})"
    kid = key_id(witness_key)
    if r.witness_key_id != kid:
        return f"{where}: signed by key {r.witness_key_id}, not the trusted witness key {kid}"
    try:
        witness_key.verify(base64.b64decode(r.signature, validate=True), r.signed_bytes())
    except (InvalidSignature, ValueError):
        return f"{where}: the witness signature does not verify"
    return None


def check_receipts(receipts: list[Receipt], witness_key: Ed25519PublicKey) -> list[str]:
    """Failures (pure): a receipt not signed by the witness key, or a break in the
    witness's own chain of receipts (one removed, reordered or edited)."""
    failures = []
    prev = GENESIS
    for i, r in enumerate(receipts):
        why = receipt_problem(r, witness_key)
        if why:
            failures.append(why)
        if r.index != i or r.prev_receipt != prev:
            failures.append(f"witness receipt {r.index}: the witness's receipt chain breaks "
                            f"here (expected index {i} after digest {prev[:16]}…): receipts "
                            "were removed, reordered or edited")
        prev = r.digest()
    return failures
