"""Hostile requests against a running `headwater serve`: every RPC of every service.

Requests are generated from the message descriptors (random field values, unknown enum
numbers, huge and SQL-looking strings, NaN/inf, odd bytes), plus raw malformed bytes on
the wire. The server must answer each with a status (OK, or a clear client-side code
with a message), never INTERNAL/UNKNOWN, never hang past the deadline, and stay healthy.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Serve
from headwater.producers import GrpcTransport, Publisher
from headwater.producers.envelope import EnvelopeBuilder
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

DEADLINE = 30.0  # seconds per call: a hang shows up as DEADLINE_EXCEEDED
CLEAR = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
         grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
         grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED,
         grpc.StatusCode.ALREADY_EXISTS}
MODEL, VERSION, PREDICTION, NODE, SOURCE = "fuzz-model", "fuzz-model@1", "fuzz-p1", \
    "fuzz-seeded-rows", "fuzz-src"
# Names the fuzzer may use, so requests reach past "not found". The seeded model's rows
# live on a node it never names: a fuzzed event re-registering that node with fewer rows
# would break attribution of the model (FAILED_PRECONDITION) and void the health check.
KNOWN = [MODEL, VERSION, PREDICTION, "fuzz-node", SOURCE, "run-fuzz"]
SQL = ["x'); DROP TABLE events; --", "' OR '1'='1", "{id:String}", "SELECT sleep(3)",
       "1; DROP DATABASE headwater", "\\", "\x00", "é\u202e"]
METHODS: list[MethodDescriptor] = [
    m for s in query_pb2.DESCRIPTOR.services_by_name.values() for m in s.methods]
FUZZ = settings(max_examples=12, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


# -- the server, seeded with a small model so real queries have something to find ----------


def _seed(target: str) -> None:
    rows, dim = 16, 4
    rng = np.random.default_rng(0)
    with Publisher(GrpcTransport(target), run_id="run-fuzz") as pub:
        pub.publish(events_pb2.SourceRegistered(
            source_id=SOURCE, uri="file:///fuzz.csv", content_sha256="cd" * 32,
            row_count=rows, format="csv", node_id=NODE))
        pub.publish(events_pb2.ModelVersionRecorded(model_id=MODEL, version=VERSION, step=1))
        pub.publish(events_pb2.GradientBatch(
            model_id=MODEL, model_version=VERSION, step=1, learning_rate=0.1,
            row_keys=events_pb2.RowKeys(node_ids=[NODE], rows=list(range(rows))), dim=dim,
            dtype=events_pb2.FLOAT32,
            gradients=rng.standard_normal(rows * dim).astype("<f4").tobytes(),
            loss_weight=[0.5] * rows, curvature_weight=[0.25] * rows,
            targets=[float(i % 2) for i in range(rows)],
            kind=events_pb2.GradientBatch.FEATURISATION))
        pub.publish(events_pb2.PredictionRecorded(
            prediction_id=PREDICTION, model_id=MODEL, model_version=VERSION, output=[0.3],
            dim=dim, dtype=events_pb2.FLOAT32, gradient_labels=["1"],
            test_gradients=rng.standard_normal(dim).astype("<f4").tobytes()))


SERVER_LOG: list[str] = []  # serve's output, drained so a full pipe never blocks it
HISTORY: list[str] = []  # the calls made, newest last, shown when a property fails


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    s = Serve(Path(tmp_path_factory.mktemp("fuzz-serve")) / "data")
    s.start()
    assert s.proc is not None and s.proc.stdout is not None
    drain = threading.Thread(target=lambda out: SERVER_LOG.extend(out), args=(s.proc.stdout,),
                             daemon=True)
    drain.start()
    try:
        _seed(s.target)
        yield s
    finally:
        s.stop()
        drain.join(10)


@pytest.fixture(scope="module")
def channel(server: Serve) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(server.target, [("grpc.max_send_message_length", 64 << 20),
                                               ("grpc.max_receive_message_length", 64 << 20)])
    yield ch
    ch.close()


# -- requests built from descriptors ---------------------------------------------------------

texts = st.one_of(st.sampled_from(KNOWN), st.sampled_from(SQL), st.text(max_size=30),
                  st.integers(1000, 200_000).map(lambda n: "x'" * n))
floats64 = st.one_of(st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1e308]))
floats32 = st.one_of(st.floats(width=32), st.sampled_from([math.nan, math.inf, 0.0]))
blobs = st.one_of(
    st.binary(max_size=64),
    st.integers(0, 64).map(lambda n: np.full(n, np.nan, "<f4").tobytes()),
    st.integers(1, 8).map(lambda n: np.ones(n, "<f4").tobytes()),
    st.integers(1, 8).map(lambda n: np.ones(n, "<f2").tobytes()),
    st.just(b"\x00" * 4 * 1_000_000),
)


def _ints(bits: int, signed: bool) -> st.SearchStrategy[int]:
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return st.one_of(st.integers(max(lo, -2), 20), st.integers(lo, hi), st.sampled_from([lo, hi]))


_SCALARS: dict[int, st.SearchStrategy] = {
    FieldDescriptor.TYPE_DOUBLE: floats64, FieldDescriptor.TYPE_FLOAT: floats32,
    FieldDescriptor.TYPE_INT64: _ints(64, True), FieldDescriptor.TYPE_SINT64: _ints(64, True),
    FieldDescriptor.TYPE_SFIXED64: _ints(64, True), FieldDescriptor.TYPE_UINT64: _ints(64, False),
    FieldDescriptor.TYPE_FIXED64: _ints(64, False), FieldDescriptor.TYPE_INT32: _ints(32, True),
    FieldDescriptor.TYPE_SINT32: _ints(32, True), FieldDescriptor.TYPE_SFIXED32: _ints(32, True),
    FieldDescriptor.TYPE_UINT32: _ints(32, False), FieldDescriptor.TYPE_FIXED32: _ints(32, False),
    FieldDescriptor.TYPE_BOOL: st.booleans(), FieldDescriptor.TYPE_STRING: texts,
    FieldDescriptor.TYPE_BYTES: blobs,
}


def _value(field: FieldDescriptor, draw: Callable, depth: int):
    if field.type == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return draw(st.one_of(st.sampled_from(known), _ints(32, True)))
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _message(field.message_type, draw, depth + 1)
    return draw(_SCALARS[field.type])


def _message(desc: Descriptor, draw: Callable, depth: int = 0) -> Message:
    """A message of type desc with a random subset of its fields set to random values."""
    msg = message_factory.GetMessageClass(desc)()
    if depth > 3:
        return msg
    for field in desc.fields:
        if not draw(st.booleans()):
            continue
        target = getattr(msg, field.name) if field.is_repeated or \
            field.type == FieldDescriptor.TYPE_MESSAGE else None
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions(
                ).map_entry:
            key_f, val_f = field.message_type.fields_by_name["key"], \
                field.message_type.fields_by_name["value"]
            for _ in range(draw(st.integers(0, 3))):
                k = _value(key_f, draw, depth)
                if val_f.type == FieldDescriptor.TYPE_MESSAGE:
                    target[k].CopyFrom(_value(val_f, draw, depth))
                else:
                    target[k] = _value(val_f, draw, depth)
        elif field.is_repeated:
            items = [_value(field, draw, depth) for _ in range(draw(st.integers(0, 3)))]
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                for item in items:
                    target.add().CopyFrom(item)
            else:
                target.extend(items)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            target.CopyFrom(_value(field, draw, depth))
        else:
            setattr(msg, field.name, _value(field, draw, depth))
    return msg


@st.composite
def ingest_batches(draw: Callable) -> query_pb2.EventBatch:
    """Event batches mixing garbage, valid events and valid envelopes of random payloads."""
    builder = EnvelopeBuilder(f"run-fuzz-{uuid.uuid4().hex[:6]}")
    events = []
    for _ in range(draw(st.integers(0, 4))):
        how = draw(st.integers(0, 2))
        if how == 0:
            events.append(draw(blobs))
        else:
            payload_field = draw(st.sampled_from(list(events_pb2.Event.DESCRIPTOR.oneofs_by_name[
                "payload"].fields)))
            payload = _message(payload_field.message_type, draw, 1) if how == 1 else \
                events_pb2.SourceRegistered(source_id=draw(texts) or "s", uri=draw(texts) or "u",
                                            content_sha256="ef" * 32, origin=draw(texts))
            events.append(builder.wrap(payload).SerializeToString(deterministic=True))
    return query_pb2.EventBatch(events=events)


def requests_for(method: MethodDescriptor) -> st.SearchStrategy[list[Message]]:
    """The request messages of one call (0-3 for a client stream, else exactly one)."""
    one = ingest_batches() if method.input_type.full_name == "headwater.v1.EventBatch" else \
        st.composite(lambda draw: _message(method.input_type, draw))()
    return st.lists(one, min_size=0, max_size=3) if method.client_streaming else \
        st.lists(one, min_size=1, max_size=1)


# -- calling and judging ------------------------------------------------------------------


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _invoke(channel: grpc.Channel, method: MethodDescriptor, requests: list[Message],
            serializer: Callable | None = None) -> tuple[grpc.StatusCode, str, list[Message]]:
    """Call one RPC whatever its shape; (status code, details, responses)."""
    response_cls = message_factory.GetMessageClass(method.output_type)
    ser = serializer or (lambda m: m.SerializeToString())
    kind = (method.client_streaming, method.server_streaming)
    factory = {(False, False): channel.unary_unary, (True, False): channel.stream_unary,
               (False, True): channel.unary_stream, (True, True): channel.stream_stream}[kind]
    call = factory(_path(method), request_serializer=ser,
                   response_deserializer=response_cls.FromString)
    arg = iter(requests) if method.client_streaming else requests[0]
    HISTORY.append(f"{_path(method)} {str(requests)[:300]!r}")
    try:
        out = call(arg, timeout=DEADLINE)
        responses = list(out) if method.server_streaming else [out]
        return grpc.StatusCode.OK, "", responses
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", []


def _judge(code: grpc.StatusCode, details: str, what: str) -> None:
    assert code == grpc.StatusCode.OK or code in CLEAR, \
        f"{what}: {code.name}: {details}\nserve log:\n{''.join(SERVER_LOG[-60:])}\n" \
        f"last calls:\n" + "\n".join(HISTORY[-6:])
    if code != grpc.StatusCode.OK:
        assert details.strip(), f"{what}: {code.name} without a message"


def _accepted_ids(responses: list[Message]) -> list[str]:
    return [a.event_id for r in responses for a in r.acks
            if a.status == query_pb2.EventAck.ACCEPTED]


def _sql(channel: grpc.Channel, sql: str, **params: str) -> list:
    import json

    resp = query_pb2_grpc.QueryStub(channel).Sql(
        query_pb2.SqlRequest(sql=sql, parameters=params, max_rows=100_000), timeout=DEADLINE)
    return json.loads(resp.rows_json)


def _assert_healthy(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                       timeout=DEADLINE)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    answer = query_pb2_grpc.AttributionStub(channel).Attribute(
        query_pb2.AttributeRequest(prediction_id=PREDICTION, top_k=5), timeout=DEADLINE)
    assert len(answer.rows) == 5 and all(math.isfinite(r.score) for r in answer.rows)
    assert _sql(channel, "SELECT count() FROM sources FINAL WHERE source_id = {s:String}",
                s=SOURCE) == [[1]]


# -- the properties ------------------------------------------------------------------------


def test_every_method_is_fuzzed() -> None:
    names = {_path(m) for m in METHODS}
    assert {"/headwater.v1.Ingest/Publish", "/headwater.v1.Attribution/Value",
            "/headwater.v1.Unlearning/Status", "/headwater.v1.Query/Sql"} <= names
    services = query_pb2.DESCRIPTOR.services_by_name.values()
    assert len(names) == sum(len(s.methods) for s in services) == 21


ACCEPTED: list[str] = []  # event ids the fuzzed Ingest calls were told are stored


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.full_name.split(".", 2)[-1])
def test_generated_requests_get_a_clear_status(channel: grpc.Channel,
                                               method: MethodDescriptor) -> None:
    @FUZZ
    @given(requests=requests_for(method))
    def one(requests: list[Message]) -> None:
        code, details, responses = _invoke(channel, method, requests)
        _judge(code, details, _path(method))
        if method.containing_service.name == "Ingest" and code == grpc.StatusCode.OK:
            ACCEPTED.extend(_accepted_ids(responses))

    one()


@settings(max_examples=60, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(METHODS), raw=st.one_of(
    st.binary(max_size=256), st.sampled_from([b"\xff" * 10, b"\x0a\xff\xff\xff\xff\x0f",
                                              b"\x08" + b"\xff" * 11, b"\x12\x05abc"])))
def test_malformed_bytes_on_the_wire_never_hang_or_crash(channel: grpc.Channel, method,
                                                         raw: bytes) -> None:
    """Undecodable request bytes get INVALID_ARGUMENT from the server's decoding interceptor;
    whatever does parse must get a clear status like any other request."""
    code, details, _ = _invoke(channel, method, [raw], serializer=lambda b: b)
    _judge(code, details, f"{_path(method)} with raw bytes {raw[:40]!r}")


def test_undecodable_request_is_invalid_argument(channel: grpc.Channel) -> None:
    method = query_pb2.DESCRIPTOR.services_by_name["Query"].methods_by_name["Sql"]
    code, details, _ = _invoke(channel, method, [b"\x0a\xff\xff\xff\xff\x0f"],
                               serializer=lambda b: b)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid message" in details


def test_lineage_overwritten_under_a_model_is_a_clear_precondition(server: Serve,
                                                                 channel: grpc.Channel) -> None:
    """Found by the fuzzer: an event re-registering a training node with fewer rows made
    every Attribute of the model fail with UNKNOWN (BadRowKey escaped the engine)."""
    grads = np.ones(8, "<f4").tobytes()
    with Publisher(GrpcTransport(server.target), run_id="run-poison") as pub:
        pub.publish(events_pb2.SourceRegistered(source_id="poison-a", uri="file:///a",
                                                content_sha256="aa" * 32, row_count=2,
                                                node_id="poison-node"))
        pub.publish(events_pb2.GradientBatch(
            model_id="poison-model", model_version="v", dim=4, dtype=events_pb2.FLOAT32,
            gradients=grads, row_keys=events_pb2.RowKeys(node_ids=["poison-node"], rows=[0, 1]),
            kind=events_pb2.GradientBatch.FEATURISATION))
        pub.publish(events_pb2.SourceRegistered(source_id="poison-b", uri="file:///b",
                                                content_sha256="bb" * 32, row_count=0,
                                                node_id="poison-node"))
    method = query_pb2.DESCRIPTOR.services_by_name["Attribution"].methods_by_name["Attribute"]
    test = query_pb2.TestGradient(model_id="poison-model", model_version="v", dim=4,
                                  dtype=events_pb2.FLOAT32, gradient=grads[:16])
    code, details, _ = _invoke(channel, method, [query_pb2.AttributeRequest(test_gradient=test)])
    assert code == grpc.StatusCode.FAILED_PRECONDITION, (code, details)
    assert "do not fit the stored lineage" in details and "poison-node" in details


def test_server_is_healthy_after_the_fuzzing_and_kept_what_it_accepted(
        channel: grpc.Channel) -> None:
    """Runs last in this module: health, a real query, and every acked event stored once."""
    _assert_healthy(channel)
    valid = EnvelopeBuilder("run-fuzz-final").wrap(events_pb2.ModelVersionRecorded(
        model_id="x'); DROP TABLE events; --", version="v")).SerializeToString()
    method = query_pb2.DESCRIPTOR.services_by_name["Ingest"].methods_by_name["PublishBatch"]
    code, details, responses = _invoke(channel, method, [query_pb2.EventBatch(
        events=[b"garbage", valid])])
    assert code == grpc.StatusCode.OK, details
    ACCEPTED.extend(_accepted_ids(responses))
    assert len(_accepted_ids(responses)) == 1
    stored = _sql(channel, "SELECT count(), uniqExact(event_id) FROM events FINAL "
                           "WHERE has(splitByChar(',', {ids:String}), event_id)",
                  ids=",".join(ACCEPTED))
    assert stored == [[len(set(ACCEPTED)), len(set(ACCEPTED))]]
