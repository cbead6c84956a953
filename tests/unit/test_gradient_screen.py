"""The batch decoder (GradientBatch payloads screened per batch) refuses exactly the events
the per-event decoder refuses, with the same reasons, whatever the corruption and whatever
else shares the batch; and the batch-built gradient rows and sketch parts are those of the
events one by one."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.producers.envelope import EnvelopeBuilder, event_hash
from headwater.producers.transports.base import Record
from headwater.stream_processors.processors.decode import Accepted, decode_batch, decode_record
from headwater.stream_processors.processors.gradients import gradient_rows, part_matrix
from headwater.stream_processors.processors.sketch import curvature_parts
from headwater.v1 import events_pb2

DTYPES = [(events_pb2.FLOAT16, "<f2"), (events_pb2.FLOAT32, "<f4"),
          (events_pb2.FLOAT64, "<f8")]


def _payload(rng: np.random.Generator, n: int, k: int, dtype: int, np_type: str,
             weights: bool) -> events_pb2.GradientBatch:
    p = events_pb2.GradientBatch(
        model_id="m", model_version=f"v{int(rng.integers(2))}", step=int(rng.integers(9)),
        learning_rate=0.1, dim=k, dtype=dtype,
        row_keys=events_pb2.RowKeys(node_ids=["a", "b"], rows=rng.integers(0, 99, n).tolist()),
        gradients=rng.standard_normal((n, k)).astype(np_type).tobytes(),
    )
    p.row_keys.node_index.extend(rng.integers(0, 2, n).tolist())
    if weights:
        p.loss.extend(rng.random(n).tolist())
        p.loss_weight.extend(rng.random(n).tolist())
        p.curvature_weight.extend(rng.random(n).tolist())
        p.targets.extend(rng.random(n).tolist())
    return p


def _poke(data: bytes, at: int, value: float, np_type: str) -> bytes:
    arr = np.frombuffer(data, np_type).copy()
    arr[at % len(arr)] = value
    return arr.tobytes()


CORRUPTIONS = {
    "none": lambda p, t: None,
    "nan gradient": lambda p, t: setattr(p, "gradients", _poke(p.gradients, 3, math.nan, t)),
    "inf gradient": lambda p, t: setattr(p, "gradients", _poke(p.gradients, 1, -math.inf, t)),
    "huge finite": lambda p, t: setattr(p, "gradients", _poke(p.gradients, 0, 6e4, t)),
    "short bytes": lambda p, t: setattr(p, "gradients", p.gradients[:-1]),
    "dim": lambda p, t: setattr(p, "dim", p.dim + 1),
    "no dim": lambda p, t: setattr(p, "dim", 0),
    "dtype": lambda p, t: setattr(p, "dtype", 9),
    "no rows": lambda p, t: (p.row_keys.ClearField("rows"), p.row_keys.ClearField("node_index")),
    "index past": lambda p, t: p.row_keys.node_index.__setitem__(0, 7),
    "index short": lambda p, t: p.row_keys.node_index.pop(),
    "no nodes": lambda p, t: p.row_keys.ClearField("node_ids"),
    "empty node": lambda p, t: p.row_keys.node_ids.append(""),
    "model id": lambda p, t: setattr(p, "model_id", ""),
    "long version": lambda p, t: setattr(p, "model_version", "v" * 300),
    "kind": lambda p, t: setattr(p, "kind", 77),
    "projection kind": lambda p, t: setattr(p.projection, "kind", 99),
    "loss count": lambda p, t: p.loss.append(0.5),
    "nan weight": lambda p, t: p.curvature_weight.append(math.nan) if not p.curvature_weight
    else p.curvature_weight.__setitem__(0, math.nan),
    "inf target": lambda p, t: p.targets.extend([math.inf] * len(p.row_keys.rows))
    if not p.targets else p.targets.__setitem__(0, math.inf),
    "nan learning rate": lambda p, t: setattr(p, "learning_rate", math.nan),
    "huge per-row": lambda p, t: p.targets.extend([1e308] * len(p.row_keys.rows))
    if not p.targets else p.targets.__setitem__(0, 1e308),
}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       corruptions=st.lists(st.sampled_from(sorted(CORRUPTIONS)), min_size=1, max_size=12))
def test_batch_verdicts_are_the_per_event_verdicts(seed: int, corruptions: list[str]) -> None:
    rng = np.random.default_rng(seed)
    env = EnvelopeBuilder("r")
    records = []
    for name in corruptions:
        dtype, np_type = DTYPES[int(rng.integers(3))]
        p = _payload(rng, int(rng.integers(1, 6)), int(rng.integers(1, 5)), dtype, np_type,
                     bool(rng.integers(2)))
        CORRUPTIONS[name](p, np_type)
        event = env.wrap(p)
        event.hash = event_hash(event)  # the corruption is in the content, not in transit
        records.append(Record(event.SerializeToString(deterministic=True)))
    accepted, rejected = decode_batch(records)
    one_by_one = [decode_record(i, r) for i, r in enumerate(records)]
    assert sorted((a.index, "ok") for a in accepted) + sorted(
        (r.index, r.error) for r in rejected) == sorted(
        (x.index, "ok") for x in one_by_one if isinstance(x, Accepted)) + sorted(
        (x.index, x.error) for x in one_by_one if not isinstance(x, Accepted))
    for name, x in zip(corruptions, one_by_one, strict=True):
        if name == "none":
            assert isinstance(x, Accepted)


def _same(a: pa.Table, b: pa.Table) -> None:
    assert a.schema == b.schema
    for col in a.column_names:
        x, y = a[col].to_pylist(), b[col].to_pylist()
        assert [str(v) for v in x] == [str(v) for v in y], col  # str: NaN equals NaN


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), events=st.integers(1, 40))
def test_batch_rows_and_sketch_are_the_events_one_by_one(seed: int, events: int) -> None:
    rng = np.random.default_rng(seed)
    env = EnvelopeBuilder("r")
    batch = []
    for i in range(events):
        dtype, np_type = DTYPES[int(rng.integers(3))]
        p = _payload(rng, int(rng.integers(1, 9)), 6, dtype, np_type, bool(rng.integers(2)))
        batch.append(Accepted(i, Record(b""), env.wrap(p)))
    _same(gradient_rows(batch), pa.concat_tables([gradient_rows([a]) for a in batch]))
    whole = curvature_parts(batch, set(), 0)
    singles = [curvature_parts([a], set(), 0) for a in batch]
    for row in whole.to_pylist():
        total = part_matrix(row["matrix"], row["rows"], row["dim"], row["layout"])
        parts = [s.to_pylist()[0] for s in singles
                 if s.to_pylist()[0]["model_version"] == row["model_version"]]
        expected = sum(part_matrix(s["matrix"], s["rows"], s["dim"], s["layout"])
                       for s in parts)
        assert row["rows"] == sum(s["rows"] for s in parts)
        assert sorted(row["event_ids"]) == sorted(e for s in parts for e in s["event_ids"])
        np.testing.assert_allclose(total, expected, rtol=1e-12, atol=1e-12)
