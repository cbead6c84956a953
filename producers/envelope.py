"""The event envelope: ids, per-producer sequence numbers and the SHA-256 hash chain.

Built once here for every transport, so Kafka, gRPC and in-process publishing carry
byte-identical events.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import threading
import time
import uuid

from google.protobuf.message import Message

from headwater.v1 import events_pb2

SCHEMA_VERSION = 1
GENESIS_HASH = bytes(32)

# Payload field name in the Event oneof, per payload message type.
PAYLOAD_FIELDS: dict[type[Message], str] = {
    events_pb2.SourceRegistered: "source_registered",
    events_pb2.OpRecorded: "op_recorded",
    events_pb2.ModelVersionRecorded: "model_version_recorded",
    events_pb2.GradientBatch: "gradient_batch",
    events_pb2.PredictionRecorded: "prediction_recorded",
    events_pb2.ForgetRequested: "forget_requested",
    events_pb2.UnlearningApplied: "unlearning_applied",
}


def event_hash(event: events_pb2.Event) -> bytes:
    """SHA-256 of the event serialized deterministically with its `hash` field empty."""
    stored = event.hash
    event.ClearField("hash")  # cheaper than a copy; restored before returning
    try:
        return hashlib.sha256(event.SerializeToString(deterministic=True)).digest()
    finally:
        if stored:
            event.hash = stored


class _UUID7:
    """UUIDv7 generator, monotonic within the process (a counter fills rand_a)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0

    def __call__(self) -> str:
        with self._lock:
            ms = time.time_ns() // 1_000_000
            if ms <= self._last_ms:
                self._counter += 1
                if self._counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                    self._last_ms += 1
                    self._counter = 0
                ms = self._last_ms
            else:
                self._last_ms = ms
                self._counter = 0
            counter = self._counter
        value = (ms & ((1 << 48) - 1)) << 80
        value |= 0x7 << 76 | counter << 64
        value |= 0b10 << 62 | secrets.randbits(62)
        return str(uuid.UUID(int=value))


new_event_id = _UUID7()


def default_producer_id() -> str:
    """A producer id unique to this process: host, pid and a random suffix.

    A restarted trainer is a new producer with a new chain; reusing an id would make the
    restarted seq look like duplicates to the log verifier.
    """
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


class EnvelopeBuilder:
    """Wraps payloads into chained envelopes for one producer (thread-safe)."""

    def __init__(self, run_id: str, producer_id: str | None = None) -> None:
        if not run_id:
            raise ValueError("run_id must be a non-empty string")
        self.run_id = run_id
        self.producer_id = producer_id or default_producer_id()
        self._seq = 0
        self._prev_hash = GENESIS_HASH
        self._lock = threading.Lock()

    @property
    def seq(self) -> int:
        """The seq of the last event built (0 before the first)."""
        return self._seq

    def wrap(self, payload: Message) -> events_pb2.Event:
        """Return the next event of this producer's chain carrying `payload`."""
        field = PAYLOAD_FIELDS.get(type(payload))
        if field is None:
            names = ", ".join(sorted(t.DESCRIPTOR.name for t in PAYLOAD_FIELDS))
            raise TypeError(
                f"payload must be one of {names}; got {type(payload).__name__}"
            )
        event = events_pb2.Event(
            event_id=new_event_id(),
            schema_version=SCHEMA_VERSION,
            producer_id=self.producer_id,
            run_id=self.run_id,
        )
        getattr(event, field).CopyFrom(payload)
        with self._lock:
            self._seq += 1
            event.seq = self._seq
            event.emitted_at.GetCurrentTime()
            event.prev_hash = self._prev_hash
            event.hash = event_hash(event)
            self._prev_hash = event.hash
        return event
