"""Validation of decoded events: each check names the field that is wrong.

Pure functions: an event either passes or yields one reason string, which the sink
stores in dead_letters next to the raw bytes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message

from headwater.errors import InvalidEvent
from headwater.producers.envelope import SCHEMA_VERSION, hash_matches
from headwater.stream_processors.processors.fields import Envelope, read_envelope
from headwater.v1 import events_pb2

MAX_ID_LEN = 256
MAX_TEXT_LEN = 4096  # a free-text field that is not an id (a method's reason, a URI)
MAX_EMITTED_AT = 10_413_791_999  # 2299-12-31T23:59:59Z, the end of ClickHouse DateTime64
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_NP_DTYPE = {events_pb2.FLOAT16: "<f2", events_pb2.FLOAT32: "<f4", events_pb2.FLOAT64: "<f8"}
_ITEM_SIZE = {events_pb2.FLOAT16: 2, events_pb2.FLOAT32: 4, events_pb2.FLOAT64: 8}



@dataclass(frozen=True)
class Limits:
    """Size maxima that bound what one event may cost (settings HEADWATER_MAX_*): every
    size field of an event is checked against them, and an event over one is refused on its
    own with the field named."""

    event_bytes: int = 64 * 1024 * 1024  # one encoded event (the gRPC message cap)
    gradient_dim: int = 4096  # projected gradient width k (the curvature sketch is k x k)
    gradient_rows: int = 65_536  # rows of one GradientBatch / test gradients of a prediction
    op_rows: int = 1_000_000_000  # output rows of one op (row maps and gathers)
    months_per_batch: int = 24  # distinct emitted_at months in one stored batch


DEFAULT_LIMITS = Limits()


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidEvent(message)


def _check_id(name: str, value: str) -> None:
    if not value:
        raise InvalidEvent(f"{name} is empty")
    if len(value) > MAX_ID_LEN:
        raise InvalidEvent(f"{name} is longer than {MAX_ID_LEN} characters")


def _check_finite(name: str, values: Iterable[float]) -> None:
    values = list(values)
    # One C-level sum covers the common case; only a non-finite sum (a NaN/inf inside, or
    # an overflow of huge finite values) needs the element-wise look. (Plain sum: fsum
    # raises OverflowError on huge finite values instead of returning infinity.)
    if not math.isfinite(sum(values)) and not all(math.isfinite(v) for v in values):
        raise InvalidEvent(f"{name} contains NaN or infinity")


_KNOWN: dict[str, frozenset[int]] = {}  # enum full name -> its numbers (enum.values() is a list
# built on every call)


def _check_enum(name: str, enum: EnumTypeWrapper, value: int) -> None:
    """proto3 enums are open: an unknown number decodes fine, so name it here rather than
    let a processor fail on it."""
    known = _KNOWN.get(enum.DESCRIPTOR.full_name)
    if known is None:
        known = _KNOWN[enum.DESCRIPTOR.full_name] = frozenset(enum.values())
    if value not in known:
        raise InvalidEvent(f"{name} is {value}, not a known {enum.DESCRIPTOR.name} value")


def _check_row_keys(name: str, keys: events_pb2.RowKeys) -> int:
    n = len(keys.rows)
    if n and not keys.node_ids:
        raise InvalidEvent(f"{name}.node_ids is empty but rows are given")
    for node in keys.node_ids:
        _check_id(f"{name}.node_ids[]", node)
    if keys.node_index:
        if len(keys.node_index) != n:
            raise InvalidEvent(f"{name}.node_index has {len(keys.node_index)} entries for {n} rows")
        if max(keys.node_index) >= len(keys.node_ids):
            raise InvalidEvent(f"{name}.node_index points past node_ids")
    return n


def _check_matrix(name: str, data: bytes, dtype: int, rows: int, dim: int) -> None:
    size = _ITEM_SIZE.get(dtype)
    if size is None:
        raise InvalidEvent(f"{name}: dtype {dtype} is not FLOAT16/FLOAT32/FLOAT64")
    if len(data) != rows * dim * size:
        raise InvalidEvent(f"{name} has {len(data)} bytes; {rows} rows x dim {dim} x {size} bytes "
                      "expected")
    # One vectorised sum: finite unless a NaN/inf is inside (float64 accumulation of
    # float16/32 data cannot overflow); only float64 data needs the element-wise recheck.
    values = np.frombuffer(data, _NP_DTYPE[dtype])
    if not math.isfinite(values.sum(dtype=np.float64)) and not np.isfinite(values).all():
        raise InvalidEvent(f"{name} contains NaN or infinity")


def _source_registered(p: events_pb2.SourceRegistered, limits: Limits) -> None:
    _check_id("source_registered.source_id", p.source_id)
    _require(bool(p.uri), "source_registered.uri is empty")
    _require(bool(_HEX64.match(p.content_sha256)),
             "source_registered.content_sha256 must be 64 lowercase hex characters")
    for i, col in enumerate(p.schema):
        _require(bool(col.name), f"source_registered.schema[{i}].name is empty")


def _op_recorded(p: events_pb2.OpRecorded, limits: Limits) -> None:
    _check_id("op_recorded.op_id", p.op_id)
    _check_enum("op_recorded.granularity", events_pb2.OpRecorded.Granularity, p.granularity)
    _require(bool(p.op_name), "op_recorded.op_name is empty")
    _check_id("op_recorded.output_node_id", p.output_node_id)
    _require(p.row_map.output_rows <= limits.op_rows,
             f"op_recorded.row_map.output_rows {p.row_map.output_rows} is over the limit of "
             f"{limits.op_rows} (HEADWATER_MAX_OP_ROWS)")
    for seg_i, seg in enumerate(p.row_map.segments):
        where = f"op_recorded.row_map.segments[{seg_i}]"
        _require(seg.input < len(p.input_node_ids), f"{where}.input points past input_node_ids")
        _require(seg.out_start + seg.length <= p.row_map.output_rows,
                 f"{where} covers rows past output_rows={p.row_map.output_rows}")
        _require(seg.WhichOneof("kind") is not None, f"{where} has no kind")
        if seg.HasField("gather"):
            _require(seg.gather.count == seg.length, f"{where}.gather.count != length")
            _require(seg.gather.encoding != 0, f"{where}.gather.encoding is unspecified")
            _check_enum(f"{where}.gather.encoding", events_pb2.RowGather.Encoding,
                        seg.gather.encoding)


def _model_version_recorded(p: events_pb2.ModelVersionRecorded, limits: Limits) -> None:
    _check_id("model_version_recorded.model_id", p.model_id)
    _check_id("model_version_recorded.version", p.version)
    if not (math.isfinite(p.l2_penalty) and p.l2_penalty >= 0):
        raise InvalidEvent(f"model_version_recorded.l2_penalty must be a finite number >= 0; "
                           f"got {p.l2_penalty}")


_PER_ROW = ("loss", "loss_weight", "curvature_weight", "targets")


def _gradient_batch(p: events_pb2.GradientBatch, limits: Limits) -> None:
    # decode_batch runs these only for events gradient_screen.py flags: a new check here
    # needs its flag there (tests/unit/test_gradient_screen.py compares the two paths).
    _check_id("gradient_batch.model_id", p.model_id)
    _check_id("gradient_batch.model_version", p.model_version)
    _check_enum("gradient_batch.kind", events_pb2.GradientBatch.Kind, p.kind)
    _check_enum("gradient_batch.projection.kind", events_pb2.Projection.Kind, p.projection.kind)
    n = _check_row_keys("gradient_batch.row_keys", p.row_keys)
    if n == 0:
        raise InvalidEvent("gradient_batch.row_keys has no rows")
    if n > limits.gradient_rows:
        raise InvalidEvent(f"gradient_batch.row_keys has {n} rows, over the limit of "
                      f"{limits.gradient_rows} (HEADWATER_MAX_GRADIENT_ROWS)")
    if p.dim == 0:
        raise InvalidEvent("gradient_batch.dim must be positive")
    if p.dim > limits.gradient_dim:
        raise InvalidEvent(f"gradient_batch.dim {p.dim} is over the limit of {limits.gradient_dim} "
                      "(HEADWATER_MAX_GRADIENT_DIM)")
    _check_matrix("gradient_batch.gradients", p.gradients, p.dtype, n, p.dim)
    columns = [getattr(p, name) for name in _PER_ROW]
    for name, values in zip(_PER_ROW, columns, strict=True):
        if len(values) not in (0, n):
            raise InvalidEvent(f"gradient_batch.{name} has {len(values)} values for {n} rows")
    # A single sum over every per-row value is finite unless one of them is not.
    if not math.isfinite(p.learning_rate + sum(sum(c) for c in columns)):
        for name, values in zip(_PER_ROW, columns, strict=True):
            _check_finite(f"gradient_batch.{name}", values)
        _check_finite("gradient_batch.learning_rate", [p.learning_rate])


def _prediction_recorded(p: events_pb2.PredictionRecorded, limits: Limits) -> None:
    _check_id("prediction_recorded.prediction_id", p.prediction_id)
    _check_id("prediction_recorded.model_id", p.model_id)
    _check_row_keys("prediction_recorded.input_rows", p.input_rows)
    _check_enum("prediction_recorded.projection.kind", events_pb2.Projection.Kind,
                p.projection.kind)
    if p.test_gradients:
        _require(p.dim > 0, "prediction_recorded.dim must be positive")
        _require(p.dim <= limits.gradient_dim, f"prediction_recorded.dim {p.dim} is over the "
                 f"limit of {limits.gradient_dim} (HEADWATER_MAX_GRADIENT_DIM)")
        rows = max(len(p.gradient_labels), 1)
        _require(rows <= limits.gradient_rows, f"prediction_recorded.gradient_labels has "
                 f"{rows} entries, over the limit of {limits.gradient_rows} "
                 "(HEADWATER_MAX_GRADIENT_ROWS)")
        _check_matrix("prediction_recorded.test_gradients", p.test_gradients, p.dtype, rows,
                      p.dim)
    _check_finite("prediction_recorded.output", p.output)


def _forget_requested(p: events_pb2.ForgetRequested, limits: Limits) -> None:
    _check_id("forget_requested.request_id", p.request_id)
    _check_enum("forget_requested.method", events_pb2.UnlearningMethod, p.method)
    t = p.target
    _require(bool(t.source_ids or t.source_rows or t.row_keys.rows),
             "forget_requested.target names no source, source rows or row keys")
    _check_row_keys("forget_requested.target.row_keys", t.row_keys)
    for i, a in enumerate(p.affected):
        _check_row_keys(f"forget_requested.affected[{i}].rows", a.rows)


def _unlearning_applied(p: events_pb2.UnlearningApplied, limits: Limits) -> None:
    _check_id("unlearning_applied.request_id", p.request_id)
    _require(p.status != 0, "unlearning_applied.status is unspecified")
    _check_enum("unlearning_applied.status", events_pb2.UnlearningApplied.Status, p.status)
    _check_enum("unlearning_applied.method", events_pb2.UnlearningMethod, p.method)
    for name in ("method_reason", "checkpoint_uri"):  # free text: bounded like an error
        _require(len(getattr(p, name)) <= MAX_TEXT_LEN,
                 f"unlearning_applied.{name} is longer than {MAX_TEXT_LEN} characters")
    _require(math.isfinite(p.estimated_replay_seconds) and p.estimated_replay_seconds >= 0,
             "unlearning_applied.estimated_replay_seconds must be a finite number >= 0")
    if p.status == events_pb2.UnlearningApplied.REVERIFIED:
        _reverified(p)


def _reverified(p: events_pb2.UnlearningApplied) -> None:
    """A re-verification removes nothing and runs no method: it only measures a version."""
    _require(bool(p.new_version) and bool(p.previous_version),
             "unlearning_applied: a REVERIFIED outcome names new_version (measured now) and "
             "previous_version (measured last)")
    _require(p.HasField("verification"),
             "unlearning_applied: a REVERIFIED outcome carries its verification")
    ran = [name for name in ("rows_forgotten", "steps_replayed", "estimated_replay_steps",
                             "newton_steps", "fine_tune_steps", "method", "checkpoint_uri")
           if getattr(p, name)]
    _require(not ran, "unlearning_applied: a REVERIFIED outcome removes nothing and runs no "
                      f"method, but sets {', '.join(ran)}")


_PAYLOAD_CHECKS: dict[str, Callable[[Message, Limits], None]] = {
    "source_registered": _source_registered,  # type: ignore[dict-item]
    "op_recorded": _op_recorded,  # type: ignore[dict-item]
    "model_version_recorded": _model_version_recorded,  # type: ignore[dict-item]
    "gradient_batch": _gradient_batch,  # type: ignore[dict-item]
    "prediction_recorded": _prediction_recorded,  # type: ignore[dict-item]
    "forget_requested": _forget_requested,  # type: ignore[dict-item]
    "unlearning_applied": _unlearning_applied,  # type: ignore[dict-item]
}


def validate_event(event: events_pb2.Event, limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise InvalidEvent naming the first field that breaks the v1 contract or a size limit."""
    validate_payload(event, validate_envelope(event), limits)


def validate_payload(event: events_pb2.Event, kind: str, limits: Limits = DEFAULT_LIMITS
                     ) -> None:
    """The checks of the event's payload (`kind`, its oneof field name) alone."""
    _PAYLOAD_CHECKS[kind](getattr(event, kind), limits)


def validate_envelope(event: events_pb2.Event) -> str:
    """Raise InvalidEvent naming the first envelope field that is wrong (the hash included);
    return the payload's oneof field name."""
    return check_envelope(read_envelope(event), event)


def check_envelope(env: Envelope, event: events_pb2.Event) -> str:
    """validate_envelope on the envelope's fields already read (`env`, of `event`)."""
    # Plain `if` tests: this runs for every event, and messages are built only on failure.
    if env.schema_version != SCHEMA_VERSION:
        raise InvalidEvent(f"schema_version {env.schema_version} is not supported (this "
                      f"service reads {SCHEMA_VERSION})")
    if _UUID.match(env.event_id) is None:
        raise InvalidEvent(f"event_id {env.event_id[:80]!r} is not a UUID in canonical text form")
    _check_id("producer_id", env.producer_id)
    _check_id("run_id", env.run_id)
    if env.seq < 1:
        raise InvalidEvent("seq must be >= 1")
    if env.emitted_s <= 0:
        raise InvalidEvent("emitted_at is not set")
    if env.emitted_s > MAX_EMITTED_AT:
        raise InvalidEvent("emitted_at is after 2299-12-31, outside the log's DateTime64 range")
    if len(env.prev_hash) != 32:
        raise InvalidEvent(f"prev_hash has {len(env.prev_hash)} bytes, not 32")
    if len(env.hash) != 32:
        raise InvalidEvent(f"hash has {len(env.hash)} bytes, not 32")
    if env.kind is None:
        raise InvalidEvent("payload is missing (or of a type this service does not know)")
    if not hash_matches(event, env.hash):
        raise InvalidEvent("hash does not match the event's content (corrupted or altered in "
                      "transit)")
    return env.kind
