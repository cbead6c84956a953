"""Event validation (stream_processors/processors/validate.py) at each limit's edge (at the
limit passes, one past fails) and for every payload's checks, each with the exact field
named. Written against the mutants of the module that the decoder tests let through
(issue 25, `make mutate`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timezone

import numpy as np
import pytest

from conftest import REPO
from headwater.errors import InvalidEvent
from headwater.producers.envelope import EnvelopeBuilder, event_hash
from headwater.stream_processors.processors import validate as va
from headwater.v1 import events_pb2

LIMITS = va.Limits(gradient_dim=8, gradient_rows=4, op_rows=100)


def _wrap(payload) -> events_pb2.Event:
    return EnvelopeBuilder("run-v", "producer-v").wrap(payload)


def _check(event: events_pb2.Event, rehash: bool = True) -> str | None:
    if rehash:
        event.hash = event_hash(event)
    try:
        va.validate_event(event, LIMITS)
    except InvalidEvent as exc:
        return str(exc)
    return None


def _gradients(n: int = 3, k: int = 4, dtype: int = events_pb2.FLOAT32,
               **fields) -> events_pb2.GradientBatch:
    np_dtype = {events_pb2.FLOAT16: "<f2", events_pb2.FLOAT32: "<f4",
                events_pb2.FLOAT64: "<f8"}[dtype]
    base = dict(model_id="m", model_version="v1", step=1, learning_rate=0.1,
                row_keys=events_pb2.RowKeys(node_ids=["train"], rows=list(range(n))), dim=k,
                dtype=dtype, gradients=np.ones((n, k), np_dtype).tobytes(),
                loss=[0.5] * n, loss_weight=[0.5] * n, curvature_weight=[0.25] * n)
    base.update(fields)
    return events_pb2.GradientBatch(**base)


def _prediction(**fields) -> events_pb2.PredictionRecorded:
    base = dict(prediction_id="p", model_id="m", dim=4, dtype=events_pb2.FLOAT32,
                test_gradients=np.ones(4, "<f4").tobytes(), output=[0.3])
    base.update(fields)
    return events_pb2.PredictionRecorded(**base)


def _op(**fields) -> events_pb2.OpRecorded:
    base = dict(op_id="o", op_name="numpy.take", output_node_id="n1", input_node_ids=["n0"],
                row_map=events_pb2.RowMap(output_rows=10, segments=[events_pb2.RowSegment(
                    input=0, out_start=0, length=10,
                    range=events_pb2.RowRange(start=0, step=1))]))
    base.update(fields)
    return events_pb2.OpRecorded(**base)


def _source(**fields) -> events_pb2.SourceRegistered:
    base = dict(source_id="s", uri="file:///d.csv", content_sha256="a" * 64)
    base.update(fields)
    return events_pb2.SourceRegistered(**base)


def _forget(**fields) -> events_pb2.ForgetRequested:
    base = dict(request_id="f", target=events_pb2.ForgetTarget(source_ids=["s"]))
    base.update(fields)
    return events_pb2.ForgetRequested(**base)


def _applied(**fields) -> events_pb2.UnlearningApplied:
    base = dict(request_id="f", status=events_pb2.UnlearningApplied.Status.values()[1])
    base.update(fields)
    return events_pb2.UnlearningApplied(**base)


def _version(**fields) -> events_pb2.ModelVersionRecorded:
    base = dict(model_id="m", version="v1")
    base.update(fields)
    return events_pb2.ModelVersionRecorded(**base)


@pytest.mark.parametrize("payload", [_gradients(), _prediction(), _op(), _source(), _forget(),
                                     _applied(), _version(), _gradients(4, 8),
                                     _gradients(1, 1, events_pb2.FLOAT16),
                                     _gradients(2, 2, events_pb2.FLOAT64),
                                     _prediction(gradient_labels=["a", "b", "c", "d"],
                                                 test_gradients=np.ones(16, "<f4").tobytes())],
                         ids=lambda p: type(p).__name__)
def test_valid_payloads_pass(payload) -> None:
    assert _check(_wrap(payload), rehash=False) is None


def _envelope(change: Callable[[events_pb2.Event], None]) -> str | None:
    event = _wrap(_version())
    change(event)
    return _check(event)


def test_envelope_edges() -> None:
    assert _envelope(lambda e: setattr(e, "schema_version", 0)) == \
        f"schema_version 0 is not supported (this service reads {va.SCHEMA_VERSION})"
    assert _envelope(lambda e: setattr(e, "event_id", "A" * 100)) == \
        f"event_id {'A' * 80!r} is not a UUID in canonical text form"
    assert _envelope(lambda e: setattr(e, "producer_id", "p" * va.MAX_ID_LEN)) is None
    assert _envelope(lambda e: setattr(e, "producer_id", "p" * (va.MAX_ID_LEN + 1))) == \
        f"producer_id is longer than {va.MAX_ID_LEN} characters"
    assert _envelope(lambda e: setattr(e, "producer_id", "")) == "producer_id is empty"
    assert _envelope(lambda e: setattr(e, "run_id", "")) == "run_id is empty"
    assert _envelope(lambda e: setattr(e, "seq", 1)) is None
    assert _envelope(lambda e: setattr(e, "seq", 0)) == "seq must be >= 1"
    assert _envelope(lambda e: e.emitted_at.FromSeconds(0)) == "emitted_at is not set"
    assert _envelope(lambda e: e.emitted_at.FromSeconds(1)) is None
    assert _envelope(lambda e: e.emitted_at.FromSeconds(va.MAX_EMITTED_AT)) is None
    assert _envelope(lambda e: e.emitted_at.FromSeconds(va.MAX_EMITTED_AT + 1)) == \
        "emitted_at is after 2299-12-31, outside the log's DateTime64 range"
    assert _envelope(lambda e: setattr(e, "prev_hash", b"x" * 33)) == \
        "prev_hash has 33 bytes, not 32"
    event = _wrap(_version())
    event.hash = b"h" * 31
    assert _check(event, rehash=False) == "hash has 31 bytes, not 32"
    event = _wrap(_version())
    event.model_version_recorded.version = "v2"
    assert _check(event, rehash=False) == ("hash does not match the event's content "
                                           "(corrupted or altered in transit)")
    assert _envelope(lambda e: e.ClearField("model_version_recorded")) == \
        "payload is missing (or of a type this service does not know)"


PAYLOAD_CASES = [
    (_source(source_id=""), "source_registered.source_id is empty"),
    (_source(uri=""), "source_registered.uri is empty"),
    (_source(content_sha256="A" * 64),
     "source_registered.content_sha256 must be 64 lowercase hex characters"),
    (_source(content_sha256="a" * 63),
     "source_registered.content_sha256 must be 64 lowercase hex characters"),
    (_source(schema=[events_pb2.Column(name="a"), events_pb2.Column()]),
     "source_registered.schema[1].name is empty"),
    (_op(op_id=""), "op_recorded.op_id is empty"),
    (_op(granularity=99), "op_recorded.granularity is 99, not a known Granularity value"),
    (_op(op_name=""), "op_recorded.op_name is empty"),
    (_op(output_node_id=""), "op_recorded.output_node_id is empty"),
    (_op(row_map=events_pb2.RowMap(output_rows=101)),
     "op_recorded.row_map.output_rows 101 is over the limit of 100 (HEADWATER_MAX_OP_ROWS)"),
    (_op(input_node_ids=[]), "op_recorded.row_map.segments[0].input points past "
                             "input_node_ids"),
    (_op(row_map=events_pb2.RowMap(output_rows=9, segments=[events_pb2.RowSegment(
        input=0, out_start=0, length=10, range=events_pb2.RowRange(step=1))])),
     "op_recorded.row_map.segments[0] covers rows past output_rows=9"),
    (_op(row_map=events_pb2.RowMap(output_rows=10, segments=[events_pb2.RowSegment(
        input=0, out_start=0, length=10)])), "op_recorded.row_map.segments[0] has no kind"),
    (_op(row_map=events_pb2.RowMap(output_rows=10, segments=[events_pb2.RowSegment(
        input=0, length=10, gather=events_pb2.RowGather(count=9, encoding=1))])),
     "op_recorded.row_map.segments[0].gather.count != length"),
    (_op(row_map=events_pb2.RowMap(output_rows=10, segments=[events_pb2.RowSegment(
        input=0, length=10, gather=events_pb2.RowGather(count=10))])),
     "op_recorded.row_map.segments[0].gather.encoding is unspecified"),
    (_op(row_map=events_pb2.RowMap(output_rows=10, segments=[events_pb2.RowSegment(
        input=0, length=10, gather=events_pb2.RowGather(count=10, encoding=77))])),
     "op_recorded.row_map.segments[0].gather.encoding is 77, not a known Encoding value"),
    (_version(model_id=""), "model_version_recorded.model_id is empty"),
    (_version(version=""), "model_version_recorded.version is empty"),
    (_version(l2_penalty=-0.5),
     "model_version_recorded.l2_penalty must be a finite number >= 0; got -0.5"),
    (_version(l2_penalty=float("inf")),
     "model_version_recorded.l2_penalty must be a finite number >= 0; got inf"),
    (_gradients(model_id=""), "gradient_batch.model_id is empty"),
    (_gradients(model_version=""), "gradient_batch.model_version is empty"),
    (_gradients(kind=42), "gradient_batch.kind is 42, not a known Kind value"),
    (_gradients(projection=events_pb2.Projection(kind=42)),
     "gradient_batch.projection.kind is 42, not a known Kind value"),
    (_gradients(row_keys=events_pb2.RowKeys()), "gradient_batch.row_keys has no rows"),
    (_gradients(row_keys=events_pb2.RowKeys(rows=[0, 1, 2])),
     "gradient_batch.row_keys.node_ids is empty but rows are given"),
    (_gradients(row_keys=events_pb2.RowKeys(node_ids=["a", ""], rows=[0, 1, 2])),
     "gradient_batch.row_keys.node_ids[] is empty"),
    (_gradients(row_keys=events_pb2.RowKeys(node_ids=["a"], rows=[0, 1, 2], node_index=[0])),
     "gradient_batch.row_keys.node_index has 1 entries for 3 rows"),
    (_gradients(row_keys=events_pb2.RowKeys(node_ids=["a", "b"], rows=[0, 1, 2],
                                            node_index=[0, 1, 2])),
     "gradient_batch.row_keys.node_index points past node_ids"),
    (_gradients(5, 4, gradients=np.ones((5, 4), "<f4").tobytes(), loss=[], loss_weight=[],
                curvature_weight=[]),
     "gradient_batch.row_keys has 5 rows, over the limit of 4 (HEADWATER_MAX_GRADIENT_ROWS)"),
    (_gradients(dim=0), "gradient_batch.dim must be positive"),
    (_gradients(3, 9), "gradient_batch.dim 9 is over the limit of 8 "
                       "(HEADWATER_MAX_GRADIENT_DIM)"),
    (_gradients(dtype=events_pb2.FLOAT32, gradients=b"\0" * 47),
     "gradient_batch.gradients has 47 bytes; 3 rows x dim 4 x 4 bytes expected"),
    (_gradients(loss=[0.5]), "gradient_batch.loss has 1 values for 3 rows"),
    (_gradients(targets=[1.0, 0.0]), "gradient_batch.targets has 2 values for 3 rows"),
    (_gradients(curvature_weight=[0.1, float("nan"), 0.1]),
     "gradient_batch.curvature_weight contains NaN or infinity"),
    (_gradients(loss_weight=[0.1, 0.1, float("-inf")]),
     "gradient_batch.loss_weight contains NaN or infinity"),
    (_gradients(targets=[1e308, 1e308, 1.0]), None),  # a huge but finite sum is fine
    (_gradients(learning_rate=float("nan")),
     "gradient_batch.learning_rate contains NaN or infinity"),
    (_prediction(prediction_id=""), "prediction_recorded.prediction_id is empty"),
    (_prediction(model_id=""), "prediction_recorded.model_id is empty"),
    (_prediction(input_rows=events_pb2.RowKeys(rows=[1])),
     "prediction_recorded.input_rows.node_ids is empty but rows are given"),
    (_prediction(projection=events_pb2.Projection(kind=42)),
     "prediction_recorded.projection.kind is 42, not a known Kind value"),
    (_prediction(dim=0), "prediction_recorded.dim must be positive"),
    (_prediction(dim=9, test_gradients=np.ones(9, "<f4").tobytes()),
     "prediction_recorded.dim 9 is over the limit of 8 (HEADWATER_MAX_GRADIENT_DIM)"),
    (_prediction(gradient_labels=list("abcde"), test_gradients=np.ones(20, "<f4").tobytes()),
     "prediction_recorded.gradient_labels has 5 entries, over the limit of 4 "
     "(HEADWATER_MAX_GRADIENT_ROWS)"),
    (_prediction(dtype=9), "prediction_recorded.test_gradients: dtype 9 is not "
                           "FLOAT16/FLOAT32/FLOAT64"),
    (_prediction(test_gradients=np.array([1, np.nan, 1, 1], "<f4").tobytes()),
     "prediction_recorded.test_gradients contains NaN or infinity"),
    (_prediction(output=[0.1, float("inf")]), "prediction_recorded.output contains NaN or "
                                              "infinity"),
    (_prediction(test_gradients=b"", dim=0), None),  # no test gradients: dim not needed
    (_forget(request_id=""), "forget_requested.request_id is empty"),
    (_forget(method=42), "forget_requested.method is 42, not a known UnlearningMethod value"),
    (_forget(target=events_pb2.ForgetTarget()),
     "forget_requested.target names no source, source rows or row keys"),
    (_forget(target=events_pb2.ForgetTarget(row_keys=events_pb2.RowKeys(rows=[1]))),
     "forget_requested.target.row_keys.node_ids is empty but rows are given"),
    (_forget(target=events_pb2.ForgetTarget(row_keys=events_pb2.RowKeys(node_ids=["n"],
                                                                        rows=[1]))), None),
    (_applied(request_id=""), "unlearning_applied.request_id is empty"),
    (_applied(status=0), "unlearning_applied.status is unspecified"),
    (_applied(status=42), "unlearning_applied.status is 42, not a known Status value"),
    (_applied(method=42), "unlearning_applied.method is 42, not a known UnlearningMethod value"),
]


@pytest.mark.parametrize(("payload", "message"), PAYLOAD_CASES,
                         ids=lambda v: v if isinstance(v, str) else None)
def test_each_payload_check_names_its_field(payload, message: str | None) -> None:
    assert _check(_wrap(payload), rehash=False) == message


def test_forget_requests_check_the_affected_rows() -> None:
    bad = _forget()
    bad.affected.add().rows.CopyFrom(events_pb2.RowKeys(rows=[3]))
    assert _check(_wrap(bad), rehash=False) == \
        "forget_requested.affected[0].rows.node_ids is empty but rows are given"


@pytest.mark.parametrize("dtype", [events_pb2.FLOAT16, events_pb2.FLOAT32, events_pb2.FLOAT64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_gradient_of_any_width_is_named(dtype: int, bad: float) -> None:
    np_dtype = {events_pb2.FLOAT16: "<f2", events_pb2.FLOAT32: "<f4",
                events_pb2.FLOAT64: "<f8"}[dtype]
    values = np.ones((2, 3), np_dtype)
    values[1, 2] = bad
    payload = _gradients(2, 3, dtype, gradients=values.tobytes())
    assert _check(_wrap(payload), rehash=False) == \
        "gradient_batch.gradients contains NaN or infinity"
    huge = np.full((2, 3), 1e308, "<f8").tobytes() if dtype == events_pb2.FLOAT64 else None
    if huge:
        assert _check(_wrap(_gradients(2, 3, dtype, gradients=huge)), rehash=False) is None


def test_limits_at_their_edge_pass() -> None:
    edge = _op(row_map=events_pb2.RowMap(output_rows=100))
    assert _check(_wrap(edge), rehash=False) is None
    four = _gradients(4, 8)
    assert _check(_wrap(four), rehash=False) is None
    assert va.DEFAULT_LIMITS == va.Limits()


def test_the_timestamp_bound_is_the_last_second_of_2299() -> None:
    assert datetime.fromtimestamp(va.MAX_EMITTED_AT, timezone.utc) == \
        datetime(2299, 12, 31, 23, 59, 59, tzinfo=timezone.utc)


def test_default_limits_are_the_documented_defaults_and_fixed() -> None:
    docs = (REPO / "docs" / "configuration.md").read_text()
    documented = {name: int(value) for name, value in
                  re.findall(r"\| `HEADWATER_MAX_(\w+)` \| `(\d+)` \|", docs)}
    limits = va.Limits()
    assert {"EVENT_BYTES": limits.event_bytes, "GRADIENT_DIM": limits.gradient_dim,
            "GRADIENT_ROWS": limits.gradient_rows, "OP_ROWS": limits.op_rows,
            "MONTHS_PER_BATCH": limits.months_per_batch}.items() <= documented.items()
    with pytest.raises(AttributeError):
        limits.gradient_dim = 1  # type: ignore[misc]


def test_prediction_dims_at_their_edges_pass() -> None:
    for dim in (1, LIMITS.gradient_dim):
        payload = _prediction(dim=dim, test_gradients=np.ones(dim, "<f4").tobytes())
        assert _check(_wrap(payload), rehash=False) is None, dim


@pytest.mark.parametrize("name", ["method_reason", "checkpoint_uri"])
def test_applied_free_text_is_bounded(name: str) -> None:
    assert _check(_wrap(_applied(**{name: "x" * va.MAX_TEXT_LEN})), rehash=False) is None
    assert _check(_wrap(_applied(**{name: "x" * (va.MAX_TEXT_LEN + 1)})), rehash=False) == \
        f"unlearning_applied.{name} is longer than {va.MAX_TEXT_LEN} characters"


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf")])
def test_applied_replay_estimate_is_a_finite_non_negative_number(seconds: float) -> None:
    assert _check(_wrap(_applied(estimated_replay_seconds=0.0)), rehash=False) is None
    assert _check(_wrap(_applied(estimated_replay_seconds=seconds)), rehash=False) == \
        "unlearning_applied.estimated_replay_seconds must be a finite number >= 0"
