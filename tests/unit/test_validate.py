"""Bad events are rejected with a reason naming the field; good ones pass."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.producers.envelope import EnvelopeBuilder, event_hash
from headwater.producers.transports.base import Record
from headwater.stream_processors.processors.decode import Accepted, Rejected, decode_record
from headwater.v1 import events_pb2


def _gradients(n: int = 3, k: int = 4) -> events_pb2.GradientBatch:
    return events_pb2.GradientBatch(
        model_id="m", model_version="v1", step=1, learning_rate=0.1,
        row_keys=events_pb2.RowKeys(node_ids=["train"], rows=list(range(n))), dim=k,
        dtype=events_pb2.FLOAT32, gradients=np.ones((n, k), "<f4").tobytes(),
        loss=[0.5] * n, loss_weight=[0.5] * n, curvature_weight=[0.25] * n,
    )


def _encode(event: events_pb2.Event, rehash: bool = True) -> Record:
    if rehash:
        event.hash = event_hash(event)
    return Record(event.SerializeToString(deterministic=True))


def _reason(record: Record) -> str:
    result = decode_record(0, record)
    assert isinstance(result, Rejected), "expected a rejection"
    return result.error


def test_valid_event_is_accepted() -> None:
    event = EnvelopeBuilder("r").wrap(_gradients())
    assert isinstance(decode_record(0, _encode(event, rehash=False)), Accepted)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda e: setattr(e, "schema_version", 2), "schema_version 2 is not supported"),
        (lambda e: setattr(e, "event_id", "x'; DROP TABLE events; --"),
         "event_id .* is not a UUID"),
        (lambda e: setattr(e, "run_id", ""), "run_id is empty"),
        (lambda e: setattr(e, "producer_id", "p" * 300), "producer_id is longer"),
        (lambda e: setattr(e, "seq", 0), "seq must be >= 1"),
        (lambda e: setattr(e, "prev_hash", b"x"), "prev_hash has 1 bytes"),
        (lambda e: e.ClearField("gradient_batch"), "payload is missing"),
        (lambda e: setattr(e.gradient_batch, "dim", 5), "gradient_batch.gradients has 48 bytes"),
        (lambda e: e.gradient_batch.loss.append(float("nan")), "gradient_batch.loss has 4 values"),
        (lambda e: setattr(e.gradient_batch, "learning_rate", float("inf")),
         "learning_rate contains NaN"),
        (lambda e: e.gradient_batch.row_keys.node_index.extend([0, 0, 5]),
         "node_index points past"),
    ],
)
def test_invalid_envelope_or_payload_is_named(mutate, reason: str) -> None:
    event = EnvelopeBuilder("r").wrap(_gradients())
    mutate(event)
    assert pytest.importorskip("re").search(reason, _reason(_encode(event)))


def test_nan_in_loss_is_rejected() -> None:
    event = EnvelopeBuilder("r").wrap(_gradients())
    event.gradient_batch.loss[1] = float("nan")
    assert "gradient_batch.loss contains NaN" in _reason(_encode(event))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_gradients_are_rejected(bad: float) -> None:
    batch = _gradients()
    grads = np.ones((3, 4), "<f4")
    grads[2, 1] = bad
    batch.gradients = grads.tobytes()
    event = EnvelopeBuilder("r").wrap(batch)
    assert "gradient_batch.gradients contains NaN or infinity" in _reason(
        _encode(event, rehash=False))


def test_altered_event_fails_its_hash() -> None:
    event = EnvelopeBuilder("r").wrap(_gradients())
    event.gradient_batch.step = 99
    assert "hash does not match" in _reason(_encode(event, rehash=False))


def test_source_hash_must_be_hex() -> None:
    event = EnvelopeBuilder("r").wrap(events_pb2.SourceRegistered(
        source_id="s", uri="file:///a.csv", content_sha256="XYZ"))
    assert "content_sha256 must be 64 lowercase hex" in _reason(_encode(event, rehash=False))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_crash_the_decoder(data: bytes) -> None:
    result = decode_record(0, Record(data))
    assert isinstance(result, (Accepted, Rejected))
    if isinstance(result, Rejected):
        assert result.error


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=2000), st.binary(min_size=1, max_size=8))
def test_corrupted_valid_events_are_rejected_or_still_valid(pos: int, junk: bytes) -> None:
    raw = bytearray(_encode(EnvelopeBuilder("r").wrap(_gradients()), rehash=False).value)
    pos = pos % len(raw)
    raw[pos:pos + len(junk)] = junk
    result = decode_record(0, Record(bytes(raw)))
    if isinstance(result, Accepted):  # only if the bytes still hash to the recorded hash
        assert event_hash(result.event) == result.event.hash


def test_an_empty_message_is_called_empty() -> None:
    """A Kafka message with no value (a tombstone, a producer bug) parses as an empty Event;
    the reason must say it was empty, not that schema_version 0 is unsupported."""
    reason = _reason(Record(b""))
    assert reason.startswith("empty message"), reason
