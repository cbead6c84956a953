"""The fields decode reads once (processors/fields.py) and the per-kind hand-off of a batch
to the derived processors (derived.PAYLOADS): what the sink gives each processor yields
exactly the rows the whole batch would, for a batch holding every payload kind."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from headwater.producers.envelope import EnvelopeBuilder
from headwater.producers.transports.base import Record
from headwater.stream_processors.processors.decode import Accepted, decode_batch
from headwater.stream_processors.processors.derived import DERIVED, PAYLOADS
from headwater.stream_processors.processors.fields import read_envelope, read_gradient
from headwater.stream_processors.sink import _of_kinds
from headwater.v1 import events_pb2

_KEYS = events_pb2.RowKeys(node_ids=["n0", "n1"], node_index=[1, 0], rows=[4, 5])


def _payloads() -> list[tuple[str, object]]:
    return [
        ("source_registered", events_pb2.SourceRegistered(source_id="s", uri="u",
                                                          content_sha256="0" * 64)),
        ("op_recorded", events_pb2.OpRecorded(op_id="o", op_name="f", output_node_id="n")),
        ("model_version_recorded", events_pb2.ModelVersionRecorded(model_id="m", version="v")),
        ("gradient_batch", events_pb2.GradientBatch(
            model_id="m", model_version="v", row_keys=_KEYS, dim=2,
            dtype=events_pb2.FLOAT32, gradients=np.ones(4, "<f4").tobytes(), loss=[1, 2])),
        ("prediction_recorded", events_pb2.PredictionRecorded(prediction_id="p",
                                                              model_id="m")),
        ("forget_requested", events_pb2.ForgetRequested(
            request_id="r", target=events_pb2.ForgetTarget(source_ids=["s"]),
            affected=[events_pb2.AffectedRows(rows=_KEYS, via="row")])),
        ("unlearning_applied", events_pb2.UnlearningApplied(
            request_id="r", status=events_pb2.UnlearningApplied.APPLIED)),
    ]


def _batch() -> list[Accepted]:
    env = EnvelopeBuilder("fields-test", "run-f")
    events = [env.wrap(p) for _, p in _payloads() for _ in range(2)]
    return [Accepted(i, Record(e.SerializeToString()), e) for i, e in enumerate(events)]


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return sink.getvalue().to_pybytes()


def test_every_payload_kind_goes_to_a_processor() -> None:
    kinds = {f.name for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields}
    assert kinds == {k for ks in PAYLOADS.values() for k in ks} == {k for k, _ in _payloads()}
    assert set(PAYLOADS) == set(DERIVED)


@pytest.mark.parametrize("table", list(DERIVED))
def test_a_processor_given_its_kinds_alone_builds_the_whole_batchs_rows(table: str) -> None:
    batch = _batch()
    by_kind: dict[str | None, list[Accepted]] = {}
    for a in batch:
        by_kind.setdefault(a.envelope.kind, []).append(a)
    given = _of_kinds(batch, by_kind, PAYLOADS[table])
    assert all(a.envelope.kind in PAYLOADS[table] for a in given)
    whole, alone = DERIVED[table](batch), DERIVED[table](given)
    assert whole.num_rows > 0  # the batch does reach this table
    assert _ipc(alone) == _ipc(whole)  # bytes: NaN fills compare equal


def test_fields_are_read_from_the_event_when_not_given() -> None:
    batch = _batch()
    grad = next(a for a in batch if a.envelope.kind == "gradient_batch")
    assert grad.envelope == read_envelope(grad.event)
    assert grad.gradient == read_gradient(grad.event.gradient_batch)
    assert all(a.gradient is None for a in batch if a.envelope.kind != "gradient_batch")
    e = grad.event
    assert (grad.envelope.event_id, grad.envelope.seq, grad.envelope.hash) == (
        e.event_id, e.seq, e.hash)
    assert grad.envelope.emitted_us == e.emitted_at.seconds * 1_000_000 + \
        e.emitted_at.nanos // 1000


def test_decode_gives_the_same_fields_it_checked() -> None:
    records = [a.record for a in _batch()]
    accepted, rejected = decode_batch(records)
    assert not rejected and len(accepted) == len(records)
    for a in accepted:
        assert a.envelope == read_envelope(a.event)
        if a.envelope.kind == "gradient_batch":
            assert a.gradient == read_gradient(a.event.gradient_batch)
