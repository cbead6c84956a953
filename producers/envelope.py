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


def canonical_bytes(event: events_pb2.Event) -> bytes:
    """The event's canonical encoding (docs/wire-contract.md), which its hash covers.

    Protobuf's deterministic encoding of the parsed event, except map entries, which are
    written in key order (UTF-8 byte order) here: upb orders a key after every longer key
    it is a prefix of ("ab" before "a"), an order no other implementation reproduces.
    """
    labels = (event.source_registered.labels
              if event.WhichOneof("payload") == "source_registered" else None)
    if labels is None or len(labels) < 2:  # no order to choose: upb's bytes are canonical
        return event.SerializeToString(deterministic=True)
    source = events_pb2.SourceRegistered()
    source.CopyFrom(event.source_registered)
    source.ClearField("labels")
    entries = b"".join(_map_entry(_LABELS, key, labels[key])
                       for key in sorted(labels, key=lambda k: k.encode()))
    body = _insert_field(source.SerializeToString(deterministic=True), _LABELS, entries)
    envelope = events_pb2.Event()
    envelope.CopyFrom(event)
    envelope.ClearField("source_registered")
    field = _SOURCE_REGISTERED
    return _insert_field(envelope.SerializeToString(deterministic=True), field,
                         _tag(field, 2) + _varint(len(body)) + body)


def event_hash(event: events_pb2.Event) -> bytes:
    """SHA-256 of the event's canonical encoding with its `hash` field empty."""
    stored = event.hash
    event.ClearField("hash")  # cheaper than a copy; restored before returning
    try:
        return hashlib.sha256(canonical_bytes(event)).digest()
    finally:
        if stored:
            event.hash = stored


def hash_matches(event: events_pb2.Event, expected: bytes | None = None) -> bool:
    """Whether `expected` (default `event.hash`) is the event's hash: canonical, or (events
    published before the canonical form was written down) over Python protobuf's
    deterministic bytes, which differ only in the order of map keys that prefix others."""
    expected = event.hash if expected is None else expected
    if event_hash(event) == expected:
        return True
    if event.WhichOneof("payload") != "source_registered" or \
            len(event.source_registered.labels) < 2:
        return False
    legacy = events_pb2.Event()
    legacy.CopyFrom(event)
    legacy.ClearField("hash")
    return hashlib.sha256(legacy.SerializeToString(deterministic=True)).digest() == expected


_PAYLOAD_BY_NUMBER = {f.number: f.name for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name[
    "payload"].fields}


def peek(encoded: bytes) -> tuple[str, str | None]:
    """(event_id, payload field name) of an encoded Event, read from its top-level fields
    without decoding the payload; ("", None) for bytes that are not one."""
    event_id, payload, pos = "", None, 0
    try:
        while pos < len(encoded):
            key, start = _read_varint(encoded, pos)
            pos = _skip(encoded, start, key)
            number = key >> 3
            if number == 1 and key & 7 == 2:
                length, at = _read_varint(encoded, start)
                event_id = encoded[at:at + length].decode()
            elif number in _PAYLOAD_BY_NUMBER:
                payload = _PAYLOAD_BY_NUMBER[number]
    except (IndexError, ValueError, UnicodeDecodeError):
        return "", None
    return (event_id, payload) if pos == len(encoded) else ("", None)


# Field numbers the canonical encoder writes itself (the only map in events.proto).
_LABELS = events_pb2.SourceRegistered.DESCRIPTOR.fields_by_name["labels"].number
_SOURCE_REGISTERED = events_pb2.Event.DESCRIPTOR.fields_by_name["source_registered"].number


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _map_entry(number: int, key: str, value: str) -> bytes:
    """One map<string, string> entry: key (1) and value (2) always written, even empty."""
    k, v = key.encode(), value.encode()
    entry = b"\x0a" + _varint(len(k)) + k + b"\x12" + _varint(len(v)) + v
    return _tag(number, 2) + _varint(len(entry)) + entry


def _insert_field(encoded: bytes, number: int, field: bytes) -> bytes:
    """`field` (complete tag-value records of field `number`) placed in `encoded` before the
    first record of a higher field number, so the records stay in number order."""
    pos = 0
    while pos < len(encoded):
        start = pos
        key, pos = _read_varint(encoded, pos)
        if key >> 3 > number:
            return encoded[:start] + field + encoded[start:]
        pos = _skip(encoded, pos, key)
    return encoded + field


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def _skip(data: bytes, pos: int, key: int) -> int:
    """The position after the value of the record whose tag `key` ends at `pos`."""
    wire_type = key & 7
    if wire_type == 0:
        return _read_varint(data, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 2:
        length, pos = _read_varint(data, pos)
        return pos + length
    if wire_type == 5:
        return pos + 4
    if wire_type == 3:  # a group (kept as an unknown field): skip to its end tag
        while True:
            inner, pos = _read_varint(data, pos)
            if inner & 7 == 4:
                return pos
            pos = _skip(data, pos, inner)
    raise ValueError(f"wire type {wire_type} in an encoded message")  # upb never writes one


_RANDOM_POOL = 8 * 512  # bytes of the OS's CSPRNG read at once: 512 ids' random bits


class _UUID7:
    """UUIDv7 generator, monotonic within the process (a counter fills rand_a); rand_b comes
    from the OS's CSPRNG, read 4 KiB at a time (a getrandom call per id cost 0.7-6 µs here,
    more than the rest of the id), and discarded in a forked child, which must not repeat
    its parent's bits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0
        self._pool, self._used = b"", 0
        os.register_at_fork(after_in_child=self._forget_pool)

    def _forget_pool(self) -> None:
        self._lock = threading.Lock()  # a lock held by another thread at the fork stays held
        self._pool, self._used = b"", 0

    def __call__(self) -> str:
        with self._lock:
            if self._used >= len(self._pool):
                self._pool, self._used = os.urandom(_RANDOM_POOL), 0
            random_b = int.from_bytes(self._pool[self._used:self._used + 8], "big") >> 2
            self._used += 8
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
        value |= 0b10 << 62 | random_b
        h = f"{value:032x}"  # str(uuid.UUID(int=value)), without building the object
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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

    def head(self) -> tuple[int, bytes]:
        """(seq, hash) of the last event built: where the chain goes on."""
        with self._lock:
            return self._seq, self._prev_hash

    def resume(self, seq: int, prev_hash: bytes) -> None:
        """Go on from another builder's head (the chain handed between a trainer and its
        publishing worker process, one writer at a time)."""
        with self._lock:
            self._seq, self._prev_hash = seq, prev_hash

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
            # the clock to the microsecond, as Timestamp.GetCurrentTime() (through datetime)
            # sets it, read without building a datetime
            now_us = time.time_ns() // 1000
            event.emitted_at.seconds, micros = divmod(now_us, 1_000_000)
            event.emitted_at.nanos = micros * 1000
            event.prev_hash = self._prev_hash
            event.hash = event_hash(event)
            self._prev_hash = event.hash
        return event
