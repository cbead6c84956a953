"""Anchoring the log outside the store: signed head-hash checkpoints kept by a witness.

A checkpoint says "producer P's chain had reached seq N with hash H at time T", signed with
an Ed25519 key: the witness key (`audit checkpoint`), or P's own registered key (a head the
producer attested through Compliance.AttestHead). Written to a witness the operator cannot
rewrite, it lets `audit verify` find a deleted or rewritten tail: the stored event at seq N
must still exist with hash H.

Witnesses: `FileWitness`, a local append-only JSON-lines file (one checkpoint a line,
written with O_APPEND), anchors only as far as the file is out of the operator's reach; on
the operator's own disk it shows the mechanism, not independence. A second party's
endpoint (`headwater witness serve`, witness_server.py; client in witness_client.py) keeps
its own store and countersigns. Not implemented (absent, see docs/compliance.md):
object-store witnesses with object lock.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from headwater.errors import ConfigError
from headwater.producers.head_signing import head_bytes
from headwater.query_service.compliance.signing import key_id
from headwater.stream_processors.log_integrity import LogReport


@dataclass(frozen=True)
class Checkpoint:
    """One producer's chain head as seen at `written_at`, signed by `key_id`."""

    producer_id: str
    run_id: str
    seq: int
    head_hash: str  # hex
    written_at: str  # ISO 8601 UTC
    key_id: str = ""
    signature: str = ""  # base64 Ed25519 over signed_bytes()
    timestamp: str = ""  # base64 RFC 3161 TimeStampResp over the signed checkpoint (timestamps.py)

    def signed_bytes(self) -> bytes:
        """What the signature covers: the same bytes a producer's HeadSigner signs."""
        return head_bytes(self.producer_id, self.run_id, self.seq, self.head_hash,
                          self.written_at, self.key_id)


class Witness(Protocol):
    """Where checkpoints are kept: appended, never rewritten."""

    def append(self, checkpoints: list[Checkpoint]) -> None: ...

    def read(self) -> list[Checkpoint]: ...


def append_lines(path: Path, records: list[dict]) -> None:
    """Append one JSON object a line to `path`, on disk (fsync) before this returns: a
    witness keeps nothing it has not written."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


class FileWitness:
    """A local append-only JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, checkpoints: list[Checkpoint]) -> None:
        append_lines(self.path, [asdict(c) for c in checkpoints])

    def read(self) -> list[Checkpoint]:
        if not self.path.is_file():
            raise ConfigError(f"witness file {self.path} does not exist")
        out = []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(Checkpoint(**json.loads(line)))
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"witness file {self.path} line {n}: not a checkpoint "
                                  f"({exc})") from None
        return out


def signed(producer_id: str, run_id: str, seq: int, head_hash: str, now: str,
           key: Ed25519PrivateKey) -> Checkpoint:
    """A checkpoint of one chain head signed with `key`."""
    c = Checkpoint(producer_id, run_id, seq, head_hash, now, key_id(key.public_key()))
    return replace(c, signature=base64.b64encode(key.sign(c.signed_bytes())).decode())


def checkpoints(log: LogReport, key: Ed25519PrivateKey, now: str) -> list[Checkpoint]:
    """One signed checkpoint per producer chain of a verified log."""
    return [signed(p.producer_id, p.run_id, p.last_seq, p.head_hash.hex(), now, key)
            for p in log.producers]


@dataclass(frozen=True)
class Trusted:
    """A key checkpoints may be signed with; `producer_id` set: only for that producer."""

    key: Ed25519PublicKey
    producer_id: str | None = None


def signature_problem(c: Checkpoint, trusted: dict[str, Trusted]) -> str | None:
    """Why `c` is not validly signed by a trusted key (None: it is)."""
    trust = trusted.get(c.key_id)
    if trust is None:
        return f"signed by key {c.key_id or '(none)'}, which is not trusted"
    if trust.producer_id is not None and trust.producer_id != c.producer_id:
        return f"signed by the key of producer {trust.producer_id}, not of {c.producer_id}"
    try:
        trust.key.verify(base64.b64decode(c.signature, validate=True), c.signed_bytes())
    except (InvalidSignature, ValueError):
        return f"the signature by key {c.key_id} does not verify (edited after signing?)"
    return None


def check_witness(found: list[Checkpoint], stored: dict[tuple[str, int], str],
                  trusted: dict[str, Trusted]) -> list[str]:
    """Failures (pure): checkpoints not signed by a trusted key (by key id), and
    checkpointed heads the store no longer holds. `stored`: (producer id, seq) -> hex hash
    of the stored event."""
    failures, signed_ok = [], []
    for c in found:
        why = signature_problem(c, trusted)
        if why:
            failures.append(f"checkpoint of {c.producer_id} seq {c.seq} ({c.written_at}): {why}")
        else:
            signed_ok.append(c)
    return failures + missing_heads(signed_ok, stored)


def missing_heads(found: list[Checkpoint], stored: dict[tuple[str, int], str]) -> list[str]:
    """Failures (pure): witnessed heads the store no longer holds, or holds with another
    hash (the chain's tail deleted or rewritten after the checkpoint)."""
    failures = []
    for c in found:
        where = f"checkpoint of {c.producer_id} seq {c.seq} ({c.written_at})"
        have = stored.get((c.producer_id, c.seq))
        if have is None:
            failures.append(f"{where}: the store no longer holds seq {c.seq}: the chain's "
                            "tail was deleted after the checkpoint")
        elif have != c.head_hash:
            failures.append(f"{where}: stored hash {have[:16]}… differs from the "
                            f"checkpointed {c.head_hash[:16]}…: the tail was rewritten")
    return failures
