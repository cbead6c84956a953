"""Hostile input through decode -> validate -> EventSink -> chDB (hypothesis).

Every record handed to the sink is either stored or dead-lettered with a reason naming
what was wrong; nothing raises out of the sink; valid neighbours in the same batch are
stored; stored text (SQL-looking included) round-trips byte-exact, which holds only if
every statement binds its values as parameters.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from headwater.producers.envelope import EnvelopeBuilder, event_hash
from headwater.producers.transports.base import Record
from headwater.stream_processors.processors.decode import Rejected, decode_record
from headwater.stream_processors.processors.validate import DEFAULT_LIMITS, MAX_ID_LEN
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2

SQL = [
    "x'); DROP TABLE events; --", "' OR '1'='1", "\"; DELETE FROM sources WHERE 1=1; --",
    "{id:String}", "{{x}}", "\\'; SELECT sleep(3); --", "`events`", "1; DROP DATABASE "
    "headwater", "%s%s%n", "?", "\\", "'\\''", "\x00", "a\x00b", "é\u202e\U0001f4a3", "\r\n",
]
FIELD_SETTINGS = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                 HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.large_base_example])
texts = st.one_of(st.sampled_from(SQL), st.text(max_size=40),
                  st.text(alphabet="x'\";-\\", min_size=1, max_size=20))
big_texts = st.one_of(texts, st.integers(10_000, 1_000_000).map(lambda n: "'" * n))
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
F32_MAX = float(np.finfo(np.float32).max)
extreme_floats = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32),
                           st.sampled_from([0.0, -0.0, F32_MAX, -F32_MAX, 1e-45]))


# -- valid payloads, one of each type -------------------------------------------------------


def _gradient(rows: int = 3, dim: int = 4, dtype: int = events_pb2.FLOAT32
              ) -> events_pb2.GradientBatch:
    np_type = {events_pb2.FLOAT16: "<f2", events_pb2.FLOAT32: "<f4",
               events_pb2.FLOAT64: "<f8"}[dtype]
    return events_pb2.GradientBatch(
        model_id="m", model_version="m@1", step=1, learning_rate=0.1,
        row_keys=events_pb2.RowKeys(node_ids=["train"], rows=list(range(rows))), dim=dim,
        dtype=dtype, gradients=np.linspace(-1, 1, rows * dim).astype(np_type).tobytes(),
        loss=[0.5] * rows, loss_weight=[0.5] * rows, curvature_weight=[0.25] * rows,
        targets=[1.0] * rows, kind=events_pb2.GradientBatch.TRAINING_STEP,
        output_function="margin")


def _valid(kind: str) -> Message:
    """A valid payload of each type (ids made unique so examples never overwrite rows)."""
    tag = uuid.uuid4().hex[:10]
    if kind == "source_registered":
        return events_pb2.SourceRegistered(
            source_id=f"src-{tag}", uri="file:///a.csv", content_sha256="ab" * 32,
            row_count=3, format="csv", origin="test", licence="CC0", node_id=f"node-{tag}",
            schema=[events_pb2.Column(name="age", dtype="int64")], labels={"k": "v"})
    if kind == "op_recorded":
        return events_pb2.OpRecorded(
            op_id=f"op-{tag}", op_name="numpy.take", params_json="{}",
            input_node_ids=[f"in-{tag}"], output_node_id=f"out-{tag}", output_shape=[2],
            row_map=events_pb2.RowMap(output_rows=2, segments=[events_pb2.RowSegment(
                input=0, out_start=0, length=2, range=events_pb2.RowRange(start=0, step=1))]),
            understood=True, code_version="1")
    if kind == "model_version_recorded":
        return events_pb2.ModelVersionRecorded(model_id=f"m-{tag}", version="m@1",
                                               parameter_hash="00" * 32, framework="numpy",
                                               config_json="{}")
    if kind == "gradient_batch":
        return _gradient()
    if kind == "prediction_recorded":
        return events_pb2.PredictionRecorded(
            prediction_id=f"p-{tag}", model_id="m", model_version="m@1", output=[0.2, 0.8],
            predicted_label=1, dim=4, dtype=events_pb2.FLOAT32,
            test_gradients=np.ones(4, "<f4").tobytes(), gradient_labels=["1"])
    if kind == "forget_requested":
        return events_pb2.ForgetRequested(
            request_id=f"r-{tag}", target=events_pb2.ForgetTarget(source_ids=["src-1"]),
            reason="gdpr", requested_by="alice", model_id="m")
    if kind == "unlearning_applied":
        return events_pb2.UnlearningApplied(
            request_id=f"r-{tag}", model_id="m", previous_version="m@1", new_version="m@2",
            status=events_pb2.UnlearningApplied.APPLIED, rows_forgotten=1)
    raise ValueError(kind)


KINDS = ["source_registered", "op_recorded", "model_version_recorded", "gradient_batch",
         "prediction_recorded", "forget_requested", "unlearning_applied"]


def _envelope(payload: Message, builder: EnvelopeBuilder | None = None) -> events_pb2.Event:
    return (builder or EnvelopeBuilder(f"run-{uuid.uuid4().hex[:8]}")).wrap(payload)


def _rehash(event: events_pb2.Event) -> events_pb2.Event:
    """Give a mutated event a correct hash, so validation reaches the mutated field."""
    event.hash = event_hash(event)
    return event


def _record(event: events_pb2.Event) -> Record:
    return Record(event.SerializeToString(deterministic=True), "fuzz", 0,
                  int(uuid.uuid4().int % 2**62))


# -- every string field of a message, set from a strategy -----------------------------------


def _fill_strings(msg: Message, draw: Callable, strategy: st.SearchStrategy) -> None:
    """Set every string (singular, repeated, map) field of msg and its sub-messages."""
    for field in msg.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                values = getattr(msg, field.name)
                values[:] = [draw(strategy) for _ in range(max(len(values), 1))]
            else:
                setattr(msg, field.name, draw(strategy))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            value = getattr(msg, field.name)
            if field.message_type.GetOptions().map_entry:
                value.clear()
                value.update({draw(strategy): draw(strategy) for _ in range(2)})
            elif field.is_repeated:
                for item in value:
                    _fill_strings(item, draw, strategy)
            elif msg.HasField(field.name):
                _fill_strings(value, draw, strategy)


# -- targeted mutations: each names the field the error must mention -----------------------


@dataclass
class Case:
    record: Record
    expect: str | None  # a fragment the dead-letter reason must contain; None: must be stored
    event: events_pb2.Event | None = None


def _case(payload: Message, expect: str | None) -> Case:
    event = _envelope(payload)
    return Case(_record(event), expect, event)


@st.composite
def targeted(draw: Callable) -> Case:
    """A payload broken in one known way (or an extreme but valid one)."""
    bad = draw(NON_FINITE)
    which = draw(st.integers(0, 17))
    g = _gradient(dtype=draw(st.sampled_from([events_pb2.FLOAT16, events_pb2.FLOAT32,
                                              events_pb2.FLOAT64])))
    if which == 0:
        name = draw(st.sampled_from(["loss", "loss_weight", "curvature_weight", "targets"]))
        values = getattr(g, name)
        values[draw(st.integers(0, len(values) - 1))] = bad
        return _case(g, f"gradient_batch.{name} contains NaN or infinity")
    if which == 1:
        g.learning_rate = bad
        return _case(g, "gradient_batch.learning_rate contains NaN or infinity")
    if which == 2:
        arr = np.frombuffer(g.gradients, {1: "<f2", 2: "<f4", 3: "<f8"}[g.dtype]).copy()
        arr[draw(st.integers(0, len(arr) - 1))] = bad
        g.gradients = arr.tobytes()
        return _case(g, "gradient_batch.gradients contains NaN or infinity")
    if which == 3:  # wrong dims vs dtype: bytes for another dtype, or a ragged tail
        g.gradients = g.gradients + draw(st.binary(min_size=1, max_size=7)) if draw(
            st.booleans()) else g.gradients[:-1]
        return _case(g, "gradient_batch.gradients has")
    if which == 4:
        g.dim = draw(st.sampled_from([1, 3, 5, 2**32 - 1]))
        return _case(g, "gradient_batch.gradients has")
    if which == 5:
        g.dim = 0
        return _case(g, "gradient_batch.dim must be positive")
    if which == 6:
        g.dtype = draw(st.sampled_from([0, 4, 17, 2**31 - 1, -5]))
        return _case(g, f"gradient_batch.gradients: dtype {g.dtype} is not")
    if which == 7:
        name = draw(st.sampled_from(["loss", "loss_weight", "curvature_weight", "targets"]))
        getattr(g, name).append(0.5)
        return _case(g, f"gradient_batch.{name} has 4 values for 3 rows")
    if which == 8:
        p = _valid("prediction_recorded")
        p.output.append(bad)
        return _case(p, "prediction_recorded.output contains NaN or infinity")
    if which == 9:
        p = _valid("prediction_recorded")
        p.test_gradients = p.test_gradients[: draw(st.integers(0, 15))] or b"\x00"
        return _case(p, "prediction_recorded.test_gradients has")
    if which == 10:  # an empty required id
        kind, name = draw(st.sampled_from([
            ("source_registered", "source_id"), ("op_recorded", "op_id"),
            ("op_recorded", "output_node_id"), ("model_version_recorded", "model_id"),
            ("gradient_batch", "model_id"), ("prediction_recorded", "prediction_id"),
            ("forget_requested", "request_id"), ("unlearning_applied", "request_id")]))
        p = _valid(kind)
        setattr(p, name, "")
        return _case(p, f"{kind}.{name} is empty")
    if which == 11:  # an id over the limit, SQL-looking
        kind, name = draw(st.sampled_from([
            ("source_registered", "source_id"), ("gradient_batch", "model_version"),
            ("prediction_recorded", "model_id"), ("unlearning_applied", "request_id")]))
        p = _valid(kind)
        setattr(p, name, ("x'); DROP TABLE events; --" * 20)[: MAX_ID_LEN + draw(
            st.integers(1, 100))])
        return _case(p, f"{kind}.{name} is longer than {MAX_ID_LEN}")
    if which == 12:  # unspecified or unknown enum numbers (proto3 enums decode any number)
        number = draw(st.sampled_from([4, 99, 2**31 - 1, -1]))
        kind, name = draw(st.sampled_from([
            ("unlearning_applied", "status"), ("unlearning_applied", "method"),
            ("forget_requested", "method"), ("op_recorded", "granularity"),
            ("gradient_batch", "kind"), ("gradient_batch", "projection.kind"),
            ("prediction_recorded", "projection.kind")]))
        p = _valid(kind)
        owner, attr = (p.projection, "kind") if name == "projection.kind" else (p, name)
        if name == "status" and draw(st.booleans()):
            p.status = 0
            return _case(p, "unlearning_applied.status is unspecified")
        setattr(owner, attr, number)
        return _case(p, f"{kind}.{name} is {number}, not a known")
    if which == 13:  # extreme but valid numbers: stored
        g.learning_rate = draw(extreme_floats)
        g.loss[:] = [draw(extreme_floats) for _ in g.loss]
        g.step = draw(st.integers(0, 2**64 - 1))
        return _case(g, None)
    if which == 14:
        p = _valid("op_recorded")
        p.row_map.segments[0].input = draw(st.integers(1, 2**32 - 1))
        return _case(p, "op_recorded.row_map.segments[0].input points past input_node_ids")
    if which == 15:
        p = _valid("op_recorded")
        p.row_map.segments[0].length = draw(st.integers(3, 2**63))
        return _case(p, "op_recorded.row_map.segments[0] covers rows past output_rows")
    if which == 16:
        p = _valid("source_registered")
        p.content_sha256 = draw(st.sampled_from(["", "AB" * 32, "x'); DROP TABLE events; --"]))
        return _case(p, "source_registered.content_sha256 must be 64 lowercase hex")
    g.row_keys.node_index[:] = [0, 0, draw(st.integers(1, 2**32 - 1))]
    return _case(g, "gradient_batch.row_keys.node_index points past node_ids")


@st.composite
def envelope_breaks(draw: Callable) -> Case:
    """The envelope broken in one known way (hash recomputed unless the hash is the point)."""
    event = _envelope(_valid(draw(st.sampled_from(KINDS))))
    which = draw(st.integers(0, 8))
    expect = {0: "schema_version", 1: "event_id", 2: "producer_id is", 3: "run_id is",
              4: "seq must be >= 1", 5: "emitted_at", 6: "prev_hash has", 7: "payload is missing",
              8: "hash does not match"}[which]
    if which == 0:
        event.schema_version = draw(st.sampled_from([0, 2, 2**32 - 1]))
    elif which == 1:
        event.event_id = draw(texts.filter(lambda s: len(s) != 36))
    elif which == 2:
        event.producer_id = draw(st.sampled_from(["", "p" * (MAX_ID_LEN + 1)]))
    elif which == 3:
        event.run_id = draw(st.sampled_from(["", "x'); DROP TABLE events; --" * 11]))
    elif which == 4:
        event.seq = 0
    elif which == 5:
        event.emitted_at.seconds = draw(st.sampled_from([0, -1, 10_413_792_000, 2**62]))
    elif which == 6:
        event.prev_hash = draw(st.binary(max_size=64).filter(lambda b: len(b) != 32))
    elif which == 7:  # a payload of a type this service does not know (field 30)
        event.ClearField(event.WhichOneof("payload"))
        raw = event.SerializeToString() + b"\xf2\x01\x03abc"
        event = events_pb2.Event.FromString(raw)
    if which != 8:
        _rehash(event)
    else:
        event.seq += 1  # content changed after hashing
    return Case(_record(event), expect, event)


@st.composite
def text_fields(draw: Callable) -> Case:
    """Every string field of a payload and of the envelope set to hostile text."""
    payload = _valid(draw(st.sampled_from(KINDS)))
    _fill_strings(payload, draw, big_texts)
    event = _envelope(payload, EnvelopeBuilder(draw(texts.filter(bool)) or "r",
                                               draw(texts.filter(bool)) or "p"))
    return Case(_record(event), "", event)  # "": either outcome, with a reason if rejected


@st.composite
def raw_bytes(draw: Callable) -> Case:
    """Random bytes, or a valid event truncated, extended or with bytes flipped (positions
    drawn modulo the length: the event's own length varies with its timestamp)."""
    valid = _record(_envelope(_valid(draw(st.sampled_from(KINDS))))).value
    how = draw(st.integers(0, 3))
    if how == 0:
        value = draw(st.binary(max_size=2048))
    elif how == 1:
        value = valid[: draw(st.integers(0, 2**16)) % len(valid)]
    elif how == 2:
        value = valid + draw(st.binary(min_size=1, max_size=64))
    else:
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, 2**16)) % len(data)] = draw(st.integers(0, 255))
        value = bytes(data)
    assume(value != valid)
    return Case(Record(value, "fuzz", 1, int(uuid.uuid4().int % 2**62)), "")


# -- the property ---------------------------------------------------------------------------


def _check_batch(store: Store, cases: list[Case]) -> None:
    """Ingest [valid, *cases, valid]; check every outcome against the store."""
    first, last = (_case(_valid(k), None) for k in ("source_registered", "gradient_batch"))
    batch = [first, *cases, last]
    acks = EventSink(store, "fuzz").ingest([c.record for c in batch])  # must not raise
    assert [a.index for a in acks] == list(range(len(batch)))
    latest = _latest_by_key([events_pb2.Event.FromString(c.record.value)
                             for c, a in zip(batch, acks, strict=True) if a.accepted])
    for case, ack in zip(batch, acks, strict=True):
        raw = case.record.value
        if case.expect is None:
            assert ack.accepted, f"a valid event was rejected: {ack.error}"
        elif case.expect:
            assert not ack.accepted, f"accepted, expected a rejection naming {case.expect!r}"
            assert case.expect in ack.error, (case.expect, ack.error)
        if ack.accepted:
            _assert_stored(store, ack.event_id, raw, ack.event_id in latest)
        else:
            assert ack.error.strip(), "rejected without a reason"
            _assert_dead_lettered(store, case.record, ack.error)


def _latest_by_key(events: list[events_pb2.Event]) -> set[str]:
    """Ids of the events whose derived row is the table's row for its key: a later event
    of the same batch with the same key (source_id; model_id, version) replaces it there."""
    last: dict[tuple, str] = {}
    for e in events:
        if e.WhichOneof("payload") == "source_registered":
            last[("s", e.source_registered.source_id)] = e.event_id
        elif e.WhichOneof("payload") == "model_version_recorded":
            m = e.model_version_recorded
            last[("m", m.model_id, m.version)] = e.event_id
    return set(last.values())


def _assert_stored(store: Store, event_id: str, raw: bytes, derived: bool) -> None:
    event = events_pb2.Event.FromString(raw)
    assert event.event_id == event_id
    rows = store.query("SELECT hex(raw), hex(producer_id), hex(run_id) FROM events "
                       "WHERE event_id = {e:String}", {"e": event_id})
    assert rows == [(raw.hex().upper(), event.producer_id.encode().hex().upper(),
                     event.run_id.encode().hex().upper())]
    if not derived:
        return
    if event.WhichOneof("payload") == "source_registered":
        s = event.source_registered
        got = store.query(
            "SELECT hex(source_id), hex(uri), hex(format), hex(origin), hex(licence), "
            "hex(node_id), mapKeys(labels), mapValues(labels), hex(schema_json) FROM sources "
            "WHERE event_id = {e:String}", {"e": event_id})
        assert len(got) == 1
        expected = [getattr(s, f).encode().hex().upper()
                    for f in ("source_id", "uri", "format", "origin", "licence", "node_id")]
        assert list(got[0][:6]) == expected
        assert dict(zip(got[0][6], got[0][7], strict=True)) == dict(s.labels)
    elif event.WhichOneof("payload") == "model_version_recorded":
        m = event.model_version_recorded
        got = store.query("SELECT hex(model_id), hex(version), hex(config_json), "
                          "hex(checkpoint_uri) FROM model_versions WHERE event_id = {e:String}",
                          {"e": event_id})
        assert got == [tuple(getattr(m, f).encode().hex().upper() for f in
                             ("model_id", "version", "config_json", "checkpoint_uri"))]


def _assert_dead_lettered(store: Store, record: Record, error: str) -> None:
    digest = hashlib.sha256(record.value).hexdigest()
    rows = store.query("SELECT hex(raw), error FROM dead_letters WHERE topic = {t:String} AND "
                       "partition = {p:Int32} AND offset = {o:Int64}",
                       {"t": record.topic, "p": record.partition, "o": record.offset})
    assert rows, f"rejected record (sha256 {digest}) is not in dead_letters"
    assert rows[0] == (record.value.hex().upper(), error)


@FIELD_SETTINGS
@given(cases=st.lists(targeted(), min_size=1, max_size=4))
def test_broken_payloads_are_dead_lettered_naming_the_field(store: Store, cases) -> None:
    _check_batch(store, cases)


@FIELD_SETTINGS
@given(cases=st.lists(envelope_breaks(), min_size=1, max_size=4))
def test_broken_envelopes_are_dead_lettered_naming_the_field(store: Store, cases) -> None:
    _check_batch(store, cases)


@FIELD_SETTINGS
@given(cases=st.lists(text_fields(), min_size=1, max_size=3))
def test_hostile_text_in_every_field_is_stored_verbatim_or_rejected(store: Store, cases) -> None:
    _check_batch(store, cases)
    # the statements the text imitates did nothing: every table is still there
    assert store.query("SELECT count() FROM system.tables WHERE database = {d:String} AND "
                       "name IN ('events', 'sources', 'dead_letters')",
                       {"d": store.database}) == [(3,)]


@FIELD_SETTINGS
@given(cases=st.lists(raw_bytes(), min_size=1, max_size=6))
def test_random_and_mutated_bytes_never_crash_the_sink(store: Store, cases) -> None:
    _check_batch(store, cases)


@settings(max_examples=15, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(6)), dupes=st.lists(st.integers(0, 5), max_size=6))
def test_duplicate_and_out_of_order_seqs_are_stored_once_each(store: Store, order,
                                                              dupes) -> None:
    """The sink stores what arrives (ordering is the log verifier's concern); a duplicate
    of an event already stored collapses onto it, so each event is stored exactly once."""
    builder = EnvelopeBuilder(f"run-{uuid.uuid4().hex[:8]}")
    events = [builder.wrap(_valid(KINDS[i % len(KINDS)])) for i in range(6)]
    records = [Record(e.SerializeToString(deterministic=True)) for e in events]
    batch = [records[i] for i in order] + [records[i] for i in dupes]
    acks = EventSink(store, "fuzz").ingest(batch)
    assert all(a.accepted for a in acks), [a.error for a in acks if not a.accepted]
    rows = store.query("SELECT seq, count() FROM events FINAL WHERE run_id = {r:String} "
                       "GROUP BY seq ORDER BY seq", {"r": builder.run_id})
    assert rows == [(s, 1) for s in range(1, 7)]


def test_events_over_the_size_limit_are_rejected_before_parsing() -> None:
    result = decode_record(0, Record(b"\x00" * (DEFAULT_LIMITS.event_bytes + 1)))
    assert isinstance(result, Rejected)
    assert f"limit is {DEFAULT_LIMITS.event_bytes} (HEADWATER_MAX_EVENT_BYTES)" in result.error


def test_huge_valid_fields_are_stored(store: Store) -> None:
    """Multi-megabyte text and gradients, well inside the limits, go through whole."""
    src = _valid("source_registered")
    src.origin = "x'); DROP TABLE events; --" * 200_000  # 5.2 MB of SQL-looking text
    g = _gradient(rows=512, dim=1024)  # 2 MiB of float32
    _check_batch(store, [_case(src, None), _case(g, None)])
