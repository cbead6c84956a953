"""The canonical event encoding (docs/wire-contract.md) that any implementation can produce.

`reference_encoding` below is the rule as docs/wire-contract.md writes it, coded from the
descriptors alone (it shares nothing with producers/envelope.py); events built by other
serializers (protoc --encode, hand-built wire bytes with an explicit empty `hash`, unsorted
map entries, unpacked repeated fields, fields out of number order) verify when their hash is
taken over that encoding.
"""

from __future__ import annotations

import hashlib
import math
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from unit.test_validate import _gradients

from headwater.producers.envelope import (
    PAYLOAD_FIELDS,
    EnvelopeBuilder,
    canonical_bytes,
    event_hash,
    hash_matches,
)
from headwater.producers.transports.base import Record
from headwater.stream_processors.processors.decode import Accepted, Rejected, decode_record
from headwater.v1 import events_pb2

ROOT = Path(__file__).resolve().parents[2]
F = FieldDescriptor


# --- the rule, from docs/wire-contract.md -------------------------------------------------

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32/int64/enum: ten bytes of two's complement
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


_FIXED = {F.TYPE_DOUBLE: ("<d", 1), F.TYPE_FLOAT: ("<f", 5), F.TYPE_FIXED64: ("<Q", 1),
          F.TYPE_SFIXED64: ("<q", 1), F.TYPE_FIXED32: ("<I", 5), F.TYPE_SFIXED32: ("<i", 5)}


def _scalar(field: FieldDescriptor, value: Any) -> tuple[int, bytes]:
    """(wire type, value bytes) of one non-message value."""
    if field.type in _FIXED:
        fmt, wire = _FIXED[field.type]
        return wire, struct.pack(fmt, value)
    if field.type in (F.TYPE_STRING, F.TYPE_BYTES):
        data = value.encode() if isinstance(value, str) else value
        return 2, _varint(len(data)) + data
    if field.type in (F.TYPE_SINT32, F.TYPE_SINT64):
        return 0, _varint(value << 1 ^ value >> 63)
    return 0, _varint(int(value))  # int32/64, uint32/64, bool, enum


def _is_default(value: Any) -> bool:
    """Implicit-presence default: zero (all bits: -0.0 is written), empty, false."""
    if isinstance(value, float):
        return value == 0 and not math.copysign(1, value) < 0
    return not value


def _field(field: FieldDescriptor, value: Any) -> bytes:
    if field.type == F.TYPE_MESSAGE:
        body = reference_encoding(value)
        return _key(field.number, 2) + _varint(len(body)) + body
    wire, data = _scalar(field, value)
    return _key(field.number, wire) + data


def reference_encoding(message: Message) -> bytes:
    """Fields in number order; implicit-presence scalars omitted at their default; message
    fields and oneof members written when set; repeated numbers packed; map entries sorted
    by key (strings by UTF-8 bytes), each entry writing key (1) and value (2) always."""
    out = bytearray()
    descriptor: Descriptor = message.DESCRIPTOR
    for field in sorted(descriptor.fields, key=lambda f: f.number):
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields
            for key in sorted(value, key=lambda k: k.encode() if isinstance(k, str) else k):
                entry = _field(key_field, key) + _field(value_field, value[key])
                out += _key(field.number, 2) + _varint(len(entry)) + entry
        elif field.is_repeated:
            if field.type in (F.TYPE_STRING, F.TYPE_BYTES, F.TYPE_MESSAGE):
                for item in value:
                    out += _field(field, item)
            elif len(value):
                packed = b"".join(_scalar(field, item)[1] for item in value)
                out += _key(field.number, 2) + _varint(len(packed)) + packed
        elif field.has_presence:
            if message.HasField(field.name):
                out += _field(field, value)
        elif not _is_default(value):
            out += _field(field, value)
    return bytes(out)


# --- events with every field set ------------------------------------------------------------

def _fill(message: Message, variant: int, depth: int = 0) -> None:
    """Set every field of `message` (the first member of each oneof, recursively)."""
    for field in message.DESCRIPTOR.fields:
        if field.containing_oneof is not None and \
                field is not field.containing_oneof.fields[variant % len(
                    field.containing_oneof.fields)]:
            continue
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key in ("b", "ab", "a", "", "é", "z" * 3):
                value[key] = f"v{key}" if variant % 2 else ""
        elif field.type == F.TYPE_MESSAGE:
            if depth < 4:
                subs = [value.add() for _ in range(2)] if field.is_repeated \
                    else [value]
                for sub in subs:
                    sub.SetInParent()
                    _fill(sub, variant, depth + 1)
        else:
            sample = _sample(field, variant)
            if field.is_repeated:
                value.extend([sample, sample])
            else:
                setattr(message, field.name, sample)


def _sample(field: FieldDescriptor, variant: int) -> Any:
    if field.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return (1.5, -0.0, float("inf"), -2.25)[variant % 4]
    if field.type == F.TYPE_STRING:
        return f"{field.name}-{variant}-ü"
    if field.type == F.TYPE_BYTES:
        return bytes([variant, 0, 255])
    if field.type == F.TYPE_BOOL:
        return True
    if field.type == F.TYPE_ENUM:
        return field.enum_type.values[-1].number
    if field.type in (F.TYPE_INT32, F.TYPE_INT64, F.TYPE_SINT32, F.TYPE_SINT64):
        return (-3 if variant % 2 else 300)
    return 2**31 + variant if field.type in (F.TYPE_UINT64, F.TYPE_FIXED64) else 300 + variant


def _events() -> list[events_pb2.Event]:
    events = []
    for payload_type in PAYLOAD_FIELDS:
        for variant in range(4):
            payload = payload_type()
            _fill(payload, variant)
            events.append(EnvelopeBuilder("run-canon", "p-canon").wrap(payload))
    return events


@pytest.mark.parametrize("event", _events(), ids=lambda e: e.WhichOneof("payload"))
def test_the_canonical_encoding_is_the_documented_rule(event: events_pb2.Event) -> None:
    assert canonical_bytes(event) == reference_encoding(event)
    unhashed = events_pb2.Event()
    unhashed.CopyFrom(event)
    unhashed.ClearField("hash")
    assert event.hash == event_hash(event) == hashlib.sha256(
        reference_encoding(unhashed)).digest()
    assert hash_matches(event)


def test_every_map_in_the_event_log_is_one_the_encoder_orders() -> None:
    """producers/envelope.py writes map entries itself (upb's order is not the rule's): a new
    map field in events.proto needs the same there, or this fails."""
    maps = []

    def walk(descriptor: Descriptor, seen: set[str]) -> None:
        if descriptor.full_name in seen:
            return
        seen.add(descriptor.full_name)
        for field in descriptor.fields:
            if field.message_type is None:
                continue
            if field.message_type.GetOptions().map_entry:
                maps.append(f"{descriptor.name}.{field.name}")
            else:
                walk(field.message_type, seen)

    walk(events_pb2.Event.DESCRIPTOR, set())
    assert maps == ["SourceRegistered.labels"]


def _accepted(data: bytes) -> events_pb2.Event:
    result = decode_record(0, Record(data))
    assert isinstance(result, Accepted), getattr(result, "error", result)
    return result.event


def _len_field(number: int, data: bytes) -> bytes:
    return _key(number, 2) + _varint(len(data)) + data


def _entry(key: str, value: str) -> bytes:
    return _len_field(11, _len_field(1, key.encode()) + _len_field(2, value.encode()))


def test_hand_built_bytes_with_an_explicit_empty_hash_and_unsorted_map_verify() -> None:
    """What protobufjs writes: fields in its own order, `hash` written empty, map entries in
    insertion order, a default scalar written explicitly. The producer hashes the canonical
    bytes (written out here by hand from docs/wire-contract.md), not its own."""
    prev = bytes(32)
    sha = b"0" * 64
    source = (_len_field(3, sha) + _len_field(1, b"src") + _len_field(2, b"file:///s")
              + _key(4, 0) + _varint(0)  # row_count = 0, written explicitly
              + _entry("b", "2") + _entry("ab", "") + _entry("a", "1"))
    stamp = _key(1, 0) + _varint(1_700_000_000) + _key(2, 0) + _varint(5)
    envelope = (_key(5, 0) + _varint(1) + _len_field(1, b"0190f2a4-52b1-7c3e-8a5d-3b6c2f1e9d01")
                + _key(2, 0) + _varint(1) + _len_field(3, b"node-producer")
                + _len_field(4, b"run-js") + _len_field(6, stamp) + _len_field(7, prev))
    foreign = envelope + _len_field(8, b"") + _len_field(16, source)
    canonical = (_len_field(1, b"0190f2a4-52b1-7c3e-8a5d-3b6c2f1e9d01") + _key(2, 0) + b"\x01"
                 + _len_field(3, b"node-producer") + _len_field(4, b"run-js")
                 + _key(5, 0) + b"\x01" + _len_field(6, stamp) + _len_field(7, prev)
                 + _len_field(16, _len_field(1, b"src") + _len_field(2, b"file:///s")
                              + _len_field(3, sha) + _entry("a", "1") + _entry("ab", "")
                              + _entry("b", "2")))
    digest = hashlib.sha256(canonical).digest()
    event = _accepted(foreign + _len_field(8, digest))  # the last `hash` written wins
    assert canonical_bytes(_without_hash(event)) == canonical
    # the old rule's trap: hashing the bytes as written is refused, naming the hash
    wrong = hashlib.sha256(foreign).digest()
    refused = decode_record(0, Record(foreign + _len_field(8, wrong)))
    assert isinstance(refused, Rejected) and "hash does not match" in refused.error


def test_unpacked_repeated_numbers_verify_as_packed() -> None:
    """Protobuf parsers accept repeated numbers unpacked; the canonical form packs them."""
    payload = _gradients(n=3)
    payload.ClearField("loss")
    event = EnvelopeBuilder("run-unpacked", "p").wrap(payload)
    loss = struct.pack("<f", 0.5)
    foreign = _without_hash(event).SerializeToString() + _len_field(
        19, (_key(9, 5) + loss) * 3)  # three loss values, one record each
    parsed = events_pb2.Event.FromString(foreign)
    digest = hashlib.sha256(reference_encoding(parsed)).digest()
    event = _accepted(foreign + _len_field(8, digest))
    assert list(event.gradient_batch.loss) == [0.5, 0.5, 0.5]


def _without_hash(event: events_pb2.Event) -> events_pb2.Event:
    copy = events_pb2.Event()
    copy.CopyFrom(event)
    copy.ClearField("hash")
    return copy


def test_protoc_encoded_events_verify() -> None:
    """protoc --encode (C++ protobuf) writes map entries in text order, not sorted."""
    protoc_include = Path(__import__("grpc_tools").__file__).parent / "_proto"
    text = """event_id: "0190f2a4-52b1-7c3e-8a5d-3b6c2f1e9d02" schema_version: 1
        producer_id: "protoc" run_id: "run-protoc" seq: 1
        emitted_at {{ seconds: 1700000000 }}
        prev_hash: "{}"
        source_registered {{ source_id: "s" uri: "file:///s.csv" row_count: 3
          content_sha256: "{}"
          labels {{ key: "team" value: "x" }} labels {{ key: "owner" value: "y" }}
          labels {{ key: "te" value: "" }} labels {{ key: "a" value: "z" }} }}
    """.format("\\000" * 32, "0" * 64)
    encoded = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}",
         f"-I{protoc_include}", "--encode=headwater.v1.Event", "headwater/v1/events.proto"],
        input=text.encode(), capture_output=True, check=True).stdout
    parsed = events_pb2.Event.FromString(encoded)
    assert list(parsed.source_registered.labels) != sorted(parsed.source_registered.labels) \
        or encoded != reference_encoding(parsed)  # protoc did not already write the rule
    digest = hashlib.sha256(reference_encoding(parsed)).digest()
    event = _accepted(encoded + _len_field(8, digest))
    assert event.source_registered.labels["te"] == ""


def test_events_hashed_by_earlier_python_producers_still_verify() -> None:
    """Before the rule was written down the hash covered upb's deterministic bytes, which
    put "ab" before "a"; such stored events keep verifying (validate and the log check)."""
    source = events_pb2.SourceRegistered(source_id="s", uri="file:///s", row_count=1,
                                         content_sha256="0" * 64)
    source.labels.update({"a": "1", "ab": "2"})
    event = EnvelopeBuilder("run-legacy", "p").wrap(source)
    event.ClearField("hash")
    legacy = hashlib.sha256(event.SerializeToString(deterministic=True)).digest()
    assert legacy != event_hash(event)  # the two orders do differ here
    event.hash = legacy
    assert hash_matches(event)
    _accepted(event.SerializeToString())
    event.source_registered.labels["a"] = "changed"
    assert not hash_matches(event)
