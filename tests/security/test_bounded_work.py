"""Issue 14, row 8: no single event costs more than its size warrants. Every size field is
checked against a configured maximum (refused per event, the field named, the rest of the
batch stored), and a curvature part is never larger than the rows it sums."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from conftest import Serve
from headwater.producers.envelope import EnvelopeBuilder, event_hash
from headwater.producers.transports.base import Record
from headwater.producers.transports.grpc import GrpcTransport
from headwater.stream_processors.processors.gradients import part_matrix
from headwater.stream_processors.processors.validate import Limits
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2


def _batch(rows: int, dim: int, version: str = "v1", seed: int = 0,
           data: bytes | None = None) -> events_pb2.GradientBatch:
    if data is None:
        data = np.random.default_rng(seed).normal(size=(rows, dim)).astype("<f4").tobytes()
    return events_pb2.GradientBatch(
        model_id="clf", model_version=version, step=1, learning_rate=0.1,
        row_keys=events_pb2.RowKeys(node_ids=["node-a"], rows=list(range(rows))), dim=dim,
        dtype=events_pb2.FLOAT32, gradients=data,
        curvature_weight=list(np.linspace(0.1, 0.3, rows)) if rows else [])


def _raw(event: events_pb2.Event) -> bytes:
    return event.SerializeToString(deterministic=True)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"chdb://{tmp_path / 'clickhouse'}")
    s.migrate()
    yield s
    s.close()


def test_row_8_zero_rows_and_huge_dims_are_refused_alone(store: Store) -> None:
    """168 bytes once built a 4000 x 4000 float64 matrix; dim 2^31 failed the whole batch."""
    env = EnvelopeBuilder("run-bounds", "trainer-bounds")
    empty = env.wrap(_batch(0, 4000, data=b""))
    wide = env.wrap(_batch(1, 2 ** 31, data=b"\0" * 16))
    good = env.wrap(_batch(8, 16))
    acks = EventSink(store, "grpc").ingest([Record(_raw(e)) for e in (empty, wide, good)])
    assert [a.accepted for a in acks] == [False, False, True]
    assert "gradient_batch.row_keys has no rows" in acks[0].error
    assert "gradient_batch.dim 2147483648 is over the limit of 4096" in acks[1].error
    assert "HEADWATER_MAX_GRADIENT_DIM" in acks[1].error
    assert store.query("SELECT count() FROM events")[0][0] == 1
    assert store.query("SELECT max(length(matrix)) FROM curvature_parts")[0][0] < 16 * 16 * 8


@pytest.mark.parametrize("limits, event, field", [
    (Limits(gradient_rows=4), _batch(5, 8), "gradient_batch.row_keys has 5 rows"),
    (Limits(gradient_dim=8), _batch(2, 9), "gradient_batch.dim 9"),
    (Limits(event_bytes=400), _batch(8, 16), "HEADWATER_MAX_EVENT_BYTES"),
    (Limits(gradient_dim=8), events_pb2.PredictionRecorded(
        prediction_id="p", model_id="clf", dim=9, dtype=events_pb2.FLOAT32,
        test_gradients=b"\0" * 36), "prediction_recorded.dim 9"),
    (Limits(op_rows=10), events_pb2.OpRecorded(
        op_id="op", granularity=events_pb2.OpRecorded.EVERY_OP, op_name="take",
        output_node_id="n1", row_map=events_pb2.RowMap(output_rows=11)),
     "op_recorded.row_map.output_rows 11"),
])
def test_each_size_field_has_a_maximum(store: Store, limits: Limits, event, field: str) -> None:
    env = EnvelopeBuilder("run-max", "trainer-max")
    bad, good = env.wrap(event), env.wrap(_batch(2, 4))
    acks = EventSink(store, "grpc", limits).ingest([Record(_raw(bad)), Record(_raw(good))])
    assert not acks[0].accepted and field in acks[0].error
    assert acks[1].accepted
    assert store.query("SELECT count() FROM dead_letters WHERE error LIKE {f:String}",
                       {"f": f"%{field}%"})[0][0] == 1


def test_a_curvature_part_costs_no_more_than_its_rows(store: Store) -> None:
    """One row of width 1024 is stored as its 1 + 1024 values, not 1024^2; many rows as the
    matrix's upper triangle (k(k+1)/2 values); both give the same Σ w φφᵀ."""
    env = EnvelopeBuilder("run-sketch", "trainer-sketch")
    small, big = _batch(1, 1024, "small"), _batch(64, 16, "big", seed=1)
    EventSink(store, "grpc").ingest([Record(_raw(env.wrap(b))) for b in (small, big)])
    stored = {v: (layout, size) for v, layout, size in store.query(
        "SELECT model_version, layout, length(matrix) FROM curvature_parts")}
    assert stored == {"small": ("rows", (1 + 1024) * 8), "big": ("upper", 16 * 17 // 2 * 8)}
    for batch in (small, big):
        data, rows, dim, layout = store.query(
            "SELECT hex(matrix), rows, dim, layout FROM curvature_parts "
            "WHERE model_version = {v:String}", {"v": batch.model_version})[0]
        phi = np.frombuffer(batch.gradients, "<f4").reshape(len(batch.row_keys.rows), dim)
        phi = phi.astype(np.float64)
        w = np.asarray(batch.curvature_weight)
        np.testing.assert_allclose(part_matrix(bytes.fromhex(data), rows, dim, layout),
                                   (phi * w[:, None]).T @ phi, rtol=1e-12)


def test_a_batch_spanning_too_many_months_stores_what_fits(store: Store) -> None:
    """ClickHouse refuses an insert touching too many partitions (months): the events past
    the limit are refused one by one and the rest stored, instead of the batch failing."""
    env = EnvelopeBuilder("run-months", "trainer-months")
    events = []
    for month in range(30):
        e = env.wrap(events_pb2.ModelVersionRecorded(model_id="clf", version=f"v{month}"))
        e.emitted_at.FromDatetime(datetime(2027 + month // 12, month % 12 + 1, 3,
                                           tzinfo=timezone.utc))
        e.hash = event_hash(e)
        events.append(e)
    acks = EventSink(store, "grpc", Limits(months_per_batch=24)).ingest(
        [Record(_raw(e)) for e in events])
    assert [a.accepted for a in acks] == [True] * 24 + [False] * 6
    assert "HEADWATER_MAX_MONTHS_PER_BATCH" in acks[-1].error
    assert store.query("SELECT uniqExact(toYYYYMM(emitted_at)) FROM events")[0][0] == 24


def test_the_limits_are_settings_of_serve(tmp_path: Path) -> None:
    """HEADWATER_MAX_GRADIENT_DIM reaches the running server; the refusal names it."""
    serve = Serve(tmp_path / "data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HEADWATER_MAX_GRADIENT_DIM", "64")
        serve.start()
    try:
        env = EnvelopeBuilder("run-serve-max", "trainer-serve-max")
        transport = GrpcTransport(serve.target)
        for b in (_batch(2, 65), _batch(2, 64)):
            e = env.wrap(b)
            transport.send(e.run_id, e.event_id, _raw(e))
        with pytest.raises(Exception, match="gradient_batch.dim 65 is over the limit of 64"):
            transport.flush()
        transport.close()
        done = serve.cli("sql", "SELECT count() FROM events", "--format", "csv")
        assert done.stdout.splitlines()[-1] == "1"
    finally:
        serve.stop()
