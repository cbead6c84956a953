"""A producer signing its own chain heads with its Ed25519 key (Compliance.AttestHead).

The signed head is the seq and hash this producer's EnvelopeBuilder computed, so the
signature says "I, the holder of this key, had emitted exactly this chain up to here". The
server keeps it only when the key is the one registered for the producer (role admin,
Compliance.RegisterProducerKey) and its store holds that event with that hash.

When: at every flush and close, and after every `every_events` events or `every_seconds`
seconds (whichever first; the transport is flushed first, so the head is stored when it is
attested). Where: over the gRPC transport's own channel (its TLS and token), or, for other
transports (Kafka, local), through a query endpoint named by `attest_target` /
HEADWATER_ATTEST_TARGET. There a head may reach the endpoint before the consumer stored
it; such a head stays pending and is retried at the next point, and `close` retries it
for up to `store_wait` seconds before raising PublishError.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from headwater.errors import ConfigError, PublishError
from headwater.v1 import events_pb2, query_pb2

KEY_FILE_ENV = "HEADWATER_PRODUCER_KEY_FILE"
TARGET_ENV = "HEADWATER_ATTEST_TARGET"
Attest = Callable[[query_pb2.AttestHeadRequest], object]


def key_id(key: Ed25519PublicKey) -> str:
    """The first 16 hex digits of SHA-256 over the raw public key (how keys are named)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def head_bytes(producer_id: str, run_id: str, seq: int, head_hash: str, written_at: str,
               kid: str) -> bytes:
    """The bytes a head signature covers: canonical JSON of every field but the signature
    (the witness's Checkpoint signs the same)."""
    body = {"head_hash": head_hash, "key_id": kid, "producer_id": producer_id,
            "run_id": run_id, "seq": seq, "written_at": written_at}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_head(key: Ed25519PrivateKey, producer_id: str, run_id: str, seq: int,
              head_hash: str, written_at: str) -> query_pb2.AttestHeadRequest:
    """The AttestHead request for one head, signed with `key`."""
    import base64

    kid = key_id(key.public_key())
    signature = key.sign(head_bytes(producer_id, run_id, seq, head_hash, written_at, kid))
    return query_pb2.AttestHeadRequest(
        producer_id=producer_id, run_id=run_id, seq=seq, head_hash=head_hash,
        written_at=written_at, key_id=kid, signature=base64.b64encode(signature).decode())


def load_key(key: Ed25519PrivateKey | str | Path) -> Ed25519PrivateKey:
    """An Ed25519 private key, or one read from an unencrypted PEM file."""
    if isinstance(key, Ed25519PrivateKey):
        return key
    path = Path(key)
    if not path.is_file():
        raise ConfigError(f"producer signing key {path} does not exist")
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"producer signing key {path}: not an unencrypted PEM private "
                          f"key ({exc})") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(f"producer signing key {path}: an Ed25519 key is needed, not "
                          f"{type(loaded).__name__}")
    return loaded


class HeadSigner:
    """Signs the latest head of one producer's chain and sends it, when due."""

    def __init__(self, key: Ed25519PrivateKey, attest: Attest, *, every_events: int = 1000,
                 every_seconds: float = 60.0, store_wait: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if every_events < 1 or every_seconds <= 0:
            raise ConfigError(f"head signing needs every_events >= 1 and every_seconds > 0, "
                              f"got {every_events} and {every_seconds}")
        self._key, self._attest = key, attest
        self._every_events, self._every_seconds = every_events, every_seconds
        self._store_wait, self._clock = store_wait, clock
        self._lock = threading.Lock()
        self._head: tuple[str, str, int, str] | None = None  # producer, run, seq, hash hex
        self._since = 0
        self._last_at = clock()
        self.attested_seq = 0

    def observe(self, event: events_pb2.Event) -> bool:
        """Note `event` as the newest head; True when a head is due to be attested."""
        with self._lock:
            self._head = (event.producer_id, event.run_id, event.seq, event.hash.hex())
            self._since += 1
            return (self._since >= self._every_events
                    or self._clock() - self._last_at >= self._every_seconds)

    def attest(self, final: bool = False) -> int:
        """Sign and send the newest head (once per head); the seq attested (0: none).
        `final`: retry a head the store does not hold yet for up to `store_wait` s."""
        with self._lock:
            head = self._head
            if head is None or head[2] == self.attested_seq:
                return self.attested_seq
            self._since, self._last_at = 0, self._clock()
        import grpc  # here: witness.py (pure) imports this module for head_bytes

        now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        request = sign_head(self._key, *head, now)
        deadline = time.monotonic() + (self._store_wait if final else 0)
        while True:
            try:
                self._attest(request)
                break
            except grpc.RpcError as exc:
                details = exc.details() or ""  # type: ignore[attr-defined]
                pending = "no stored event" in details
                if pending and time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                if pending and not final:
                    return self.attested_seq  # not stored yet: retried at the next point
                raise PublishError(f"the server refused the signed head of {head[0]} seq "
                                   f"{head[2]}: {exc.code().name} {details}") from None  # type: ignore[attr-defined]
        with self._lock:
            self.attested_seq = max(self.attested_seq, head[2])
        return head[2]


def signer_for(transport: object, signing_key: Ed25519PrivateKey | str | Path | None, *,
               attest_target: str | None = None, every_events: int = 1000,
               every_seconds: float = 60.0) -> HeadSigner | None:
    """The head signer of a Publisher: None when no key is given (nor
    HEADWATER_PRODUCER_KEY_FILE set). Sends to `attest_target` when given, else through the
    transport's `attest_head` (the gRPC transport), else to HEADWATER_ATTEST_TARGET (a
    channel with HEADWATER_TOKEN and the TLS settings); none of these: ConfigError."""
    key_source = signing_key if signing_key is not None else os.environ.get(KEY_FILE_ENV)
    if not key_source:
        return None
    key = load_key(key_source)
    own = getattr(transport, "attest_head", None)
    target = attest_target or (None if callable(own) else os.environ.get(TARGET_ENV))
    if target:
        from headwater.producers.transports.channel import open_channel, security_from_env
        from headwater.v1 import query_pb2_grpc

        security = security_from_env()

        def attest(request: query_pb2.AttestHeadRequest) -> object:
            # a channel per head (one every N events / T s): nothing left open at close
            with open_channel(target, security) as channel:
                return query_pb2_grpc.ComplianceStub(channel).AttestHead(request, timeout=30)
    elif callable(own):
        attest = own
    else:
        raise ConfigError(f"a producer signing key needs a query endpoint to attest heads "
                          f"to: {type(transport).__name__} has none; pass attest_target or "
                          f"set {TARGET_ENV}")
    return HeadSigner(key, attest, every_events=every_events, every_seconds=every_seconds)
