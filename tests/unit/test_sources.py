"""Sources: SourceRegistered for CSV/Parquet/npy/arrays/DataFrames/tensors (hashes equal
hashlib over the bytes, stable ids, rows, schema, personal columns), bounded-memory
hashing, the loaders' tracked results and their lineage, and clear errors."""

from __future__ import annotations

import hashlib
import re
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from headwater.producers.envelope import EnvelopeBuilder
from headwater.producers.tracking import TrackedArray, Tracker, sources
from headwater.producers.tracking.frames import TrackedFrame
from headwater.producers.tracking.sources import (
    CHUNK,
    describe_array,
    describe_csv,
    describe_dataframe,
    describe_npy,
    describe_parquet,
    describe_tensor,
    load_csv,
    load_csv_frame,
    load_npy,
    load_parquet,
    load_parquet_frame,
    track_array,
    track_dataframe,
    track_tensor,
)
from headwater.stream_processors.processors.validate import validate_event
from headwater.v1 import events_pb2


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def schema(src: events_pb2.SourceRegistered) -> list[tuple[str, str, bool]]:
    return [(c.name, c.dtype, c.personal) for c in src.schema]


def recorder(granularity: str = "every_op") -> tuple[list[Any], Tracker]:
    events: list[Any] = []
    return events, Tracker(events.append, granularity=granularity, code_version="t1")


@pytest.fixture()
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "people.csv"
    path.write_text('age,dose,name\n40,1.5,"Smith, A"\n25,,B\n\n33,2.0,C\n')
    return path


@pytest.fixture()
def parquet_file(tmp_path: Path) -> Path:
    path = tmp_path / "t.parquet"
    pd.DataFrame({"a": [1, 2, 3], "b": [0.5, None, 2.5], "s": ["x", "y", "z"],
                  "f": np.array([1, 2, 3], dtype=np.float32)}).to_parquet(path)
    return path


# ---------------------------------------------------------------------------------------
# Files


def test_csv_description(csv_file: Path) -> None:
    src = describe_csv(csv_file, origin="hospital A export", licence="CC-BY-4.0",
                       personal=("name",))
    assert src.content_sha256 == sha(csv_file) and src.format == "csv"
    assert src.row_count == 3  # the blank line is not a row; the quoted comma is one field
    assert schema(src) == [("age", "int64", False), ("dose", "float64", False),
                           ("name", "string", True)]
    assert src.uri == csv_file.resolve().as_uri() and src.size_bytes == csv_file.stat().st_size
    assert (src.origin, src.licence) == ("hospital A export", "CC-BY-4.0")
    assert src.node_id == src.source_id
    again = describe_csv(str(csv_file), origin="other text")
    assert again.source_id == src.source_id  # same file, same id (text is not content)


def test_parquet_description(parquet_file: Path) -> None:
    src = describe_parquet(parquet_file, personal=["s"])
    assert src.content_sha256 == sha(parquet_file) and src.format == "parquet"
    assert src.row_count == 3
    assert schema(src) == [("a", "int64", False), ("b", "float64", False),
                           ("s", "string", True), ("f", "float32", False)]
    assert describe_parquet(parquet_file).source_id == src.source_id


def test_npy_description(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.arange(12, dtype=np.float32).reshape(4, 3))
    src = describe_npy(path, columns=["a", "b", "c"], personal="b")
    assert src.content_sha256 == sha(path) and (src.format, src.row_count) == ("npy", 4)
    assert schema(src) == [("a", "float32", False), ("b", "float32", True),
                           ("c", "float32", False)]
    images = tmp_path / "img.npy"
    np.save(images, np.zeros((5, 2, 3), dtype=np.uint8))
    assert schema(describe_npy(images)) == [("value", "uint8[2,3]", False)]
    records = tmp_path / "rec.npy"
    np.save(records, np.zeros(2, dtype=[("age", "<i4"), ("w", "<f8")]))
    assert schema(describe_npy(records)) == [("age", "int32", False), ("w", "float64", False)]
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 2)))
    assert describe_npy(empty).row_count == 0


def test_file_hash_is_streamed_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.npy"
    np.save(path, np.random.default_rng(0).random((5 * CHUNK // 8 // 4, 4)))  # ~5 MiB
    assert path.stat().st_size > 4 * CHUNK
    tracemalloc.start()
    try:
        src = describe_npy(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert src.content_sha256 == sha(path)
    assert peak < 2.5 * CHUNK, f"hashing a {path.stat().st_size} B file peaked at {peak} B"


# ---------------------------------------------------------------------------------------
# In-memory data


def test_array_hash_covers_dtype_shape_and_bytes() -> None:
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    src = describe_array(a, uri="memory://a", columns=["w", "x", "y", "z"], personal=["z"])
    assert (src.format, src.row_count, src.size_bytes) == ("array", 3, a.nbytes)
    assert schema(src)[-1] == ("z", "int64", True)
    assert describe_array(a.copy(), uri="memory://a").source_id == src.source_id
    assert describe_array(a.reshape(4, 3), uri="memory://a").content_sha256 != \
        src.content_sha256  # same bytes, other shape
    assert describe_array(a.view(np.float64), uri="memory://a").content_sha256 != \
        src.content_sha256  # same bytes, other dtype
    assert describe_array(a, uri="memory://b").source_id != src.source_id
    # the layout in memory does not matter: non-contiguous and big-endian hash the same
    f = np.asfortranarray(a)
    assert describe_array(f, uri="memory://a").content_sha256 == src.content_sha256
    assert describe_array(a.astype(">i8"), uri="memory://a").content_sha256 == \
        src.content_sha256
    assert describe_array(a[:, ::2], uri="memory://a").content_sha256 == \
        describe_array(a[:, ::2].copy(), uri="memory://a").content_sha256


def test_array_hash_is_bounded_in_memory() -> None:
    big = np.ones((1 << 20, 2))[:, ::-1]  # 16 MiB, not contiguous: chunks are copied
    tracemalloc.start()
    try:
        digest = sources.array_sha256(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest == sources.array_sha256(np.ascontiguousarray(big))
    assert peak < 2.5 * CHUNK, f"hashing a {big.nbytes} B array peaked at {peak} B"


def test_dataframe_description() -> None:
    df = pd.DataFrame({"id": [1, 2, 3], "w": [0.5, np.nan, 1.5], "name": ["a", "b", None],
                       "c": pd.Categorical(["x", "y", "x"])})
    src = describe_dataframe(df, uri="memory://visits", personal=["name"])
    assert (src.format, src.row_count) == ("dataframe", 3)
    assert schema(src) == [("id", "int64", False), ("w", "float64", False),
                           ("name", "string", True), ("c", "category", False)]
    assert describe_dataframe(df.copy(), uri="memory://visits").source_id == src.source_id
    changed = df.copy()
    changed.loc[2, "name"] = "c"
    assert describe_dataframe(changed, uri="memory://visits").content_sha256 != \
        src.content_sha256
    renamed = df.rename(columns={"w": "weight"})
    assert describe_dataframe(renamed, uri="memory://visits").content_sha256 != \
        src.content_sha256
    reindexed = df.set_axis([7, 8, 9])  # rows are positions: the index is not content
    assert describe_dataframe(reindexed, uri="memory://visits").source_id == src.source_id


def test_tensor_description() -> None:
    t = torch.arange(6, dtype=torch.float32).reshape(3, 2).requires_grad_()
    src = describe_tensor(t, uri="memory://t", columns=["a", "b"])
    assert (src.format, src.row_count, src.size_bytes) == ("tensor", 3, 24)
    assert schema(src) == [("a", "float32", False), ("b", "float32", False)]
    assert src.content_sha256 == describe_array(t.detach().numpy(),
                                                uri="memory://t").content_sha256
    half = describe_tensor(t.detach().to(torch.bfloat16), uri="memory://t")
    assert schema(half)[0][1] == "bfloat16" and half.content_sha256 != src.content_sha256
    with pytest.raises(TypeError, match="layout"):
        describe_tensor(t.detach().to_sparse(), uri="memory://t")
    with pytest.raises(ValueError, match="0-dimensional"):
        describe_tensor(torch.tensor(1.0), uri="memory://t")


# ---------------------------------------------------------------------------------------
# Loaders


def test_load_csv_all_columns_sits_at_the_source_node(tmp_path: Path) -> None:
    path = tmp_path / "n.csv"
    path.write_text("a,b\n1,2\n3,4\n5,\n")
    events, tracker = recorder()
    x = load_csv(tracker, path)
    (src,) = events
    assert isinstance(src, events_pb2.SourceRegistered) and src.row_count == 3
    assert isinstance(x, TrackedArray) and x.node_id == src.node_id == src.source_id
    np.testing.assert_array_equal(np.asarray(x), [[1, 2], [3, 4], [5, np.nan]])
    y = load_csv(tracker, path)  # same file twice: same source, same node
    assert events[1].source_id == src.source_id and y.node_id == x.node_id
    with pytest.raises(ValueError, match="missing values"):
        load_csv(tracker, path, dtype=np.int64)


def test_load_csv_columns_go_through_one_select_op(csv_file: Path) -> None:
    events, tracker = recorder()
    x = load_csv(tracker, csv_file, columns=["dose", "age"], dtype=np.float32)
    src, op = events
    assert x.dtype == np.float32 and x.shape == (3, 2)
    np.testing.assert_array_equal(np.asarray(x), [[1.5, 40], [np.nan, 25], [2.0, 33]])
    assert op.op_name == "headwater.select_columns"
    assert list(op.input_node_ids) == [src.node_id] and op.output_node_id == x.node_id
    assert list(op.output_columns) == ["dose", "age"]
    assert [(c.output_column, c.input_columns[0], c.transformation) for c in op.columns] == \
        [("dose", "dose", "IDENTITY"), ("age", "age", "IDENTITY")]
    (seg,) = op.row_map.segments
    assert (seg.length, seg.range.start, seg.range.step) == (3, 0, 1)
    builder = EnvelopeBuilder("run-1")
    for e in events:
        validate_event(builder.wrap(e))


def test_load_parquet(parquet_file: Path) -> None:
    events, tracker = recorder()
    x = load_parquet(tracker, parquet_file, columns=["f", "b", "a"])
    np.testing.assert_array_equal(np.asarray(x), [[1, 0.5, 1], [2, np.nan, 2], [3, 2.5, 3]])
    assert events[0].content_sha256 == sha(parquet_file)
    assert events[1].op_name == "headwater.select_columns"
    ints = load_parquet(tracker, parquet_file, columns=["a"], dtype=np.int32)
    assert ints.dtype == np.int32 and ints[:, 0].tolist() == [1, 2, 3]
    with pytest.raises(TypeError, match="column 'f' of t.parquet has dtype float32.*rounding"):
        load_parquet(tracker, parquet_file, columns=["f"], dtype=np.int64)
    with pytest.raises(TypeError, match="column 's' of t.parquet has dtype string"):
        load_parquet(tracker, parquet_file)


def test_load_npy_array_and_tensor(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    values = np.arange(8.0).reshape(4, 2)
    np.save(path, values)
    events, tracker = recorder()
    x = load_npy(tracker, path, mmap_mode="r")
    assert x.node_id == events[-1].node_id and np.array_equal(np.asarray(x), values)
    assert load_npy(tracker, path).node_id == x.node_id
    a = track_array(tracker, values, uri="memory://v", origin="simulated")
    assert a.node_id == events[-1].source_id and events[-1].origin == "simulated"
    assert np.shares_memory(a, values)
    t = torch.ones(3, 2)
    tt = track_tensor(tracker, t, uri="memory://t")
    assert events[-1].format == "tensor" and tt.node_id == events[-1].node_id
    assert np.shares_memory(tt, t.numpy())
    head = x[:3]
    z = tt + head  # tracked NumPy ops over loaded sources keep both lineages
    assert list(events[-2].input_node_ids) == [x.node_id]
    assert set(events[-1].input_node_ids) == {tt.node_id, head.node_id}
    assert z.shape == (3, 2)


def test_frame_loaders(csv_file: Path, parquet_file: Path) -> None:
    events, tracker = recorder()
    frame = load_csv_frame(tracker, csv_file, personal=["name"])
    assert isinstance(frame, TrackedFrame) and frame.node_id == events[0].node_id
    assert frame.df["name"].tolist() == ["Smith, A", "B", "C"]
    part = load_parquet_frame(tracker, parquet_file, columns=["s", "a"])
    assert part.columns == ["s", "a"] and events[-1].op_name == "pandas.DataFrame.__getitem__"
    assert events[-1].input_node_ids == [events[-2].node_id]
    df = pd.DataFrame({"k": [1, 2]})
    assert track_dataframe(tracker, df, uri="memory://k").df is df


def test_granularity_off_still_registers_sources(csv_file: Path) -> None:
    events, tracker = recorder("off")
    x = load_csv(tracker, csv_file, columns=["age"])
    a = track_array(tracker, np.zeros(2), uri="memory://z")
    assert type(x) is np.ndarray and type(a) is np.ndarray
    assert [type(e).__name__ for e in events] == ["SourceRegistered"] * 2


def test_batch_granularity_select_op_is_batch_level(csv_file: Path) -> None:
    events, tracker = recorder("batch")
    load_csv(tracker, csv_file, columns=["age"])
    assert events[-1].granularity == events_pb2.OpRecorded.BATCH_LEVEL


# ---------------------------------------------------------------------------------------
# Errors


def test_clear_errors(tmp_path: Path, csv_file: Path) -> None:
    _, tracker = recorder()
    with pytest.raises(FileNotFoundError, match="missing.csv does not exist"):
        describe_csv(tmp_path / "missing.csv")
    with pytest.raises(FileNotFoundError, match="missing.parquet does not exist"):
        load_parquet(tracker, tmp_path / "missing.parquet")
    with pytest.raises(ValueError, match=r"personal columns \['ssn'\] are not columns of "
                                         "people.csv"):
        describe_csv(csv_file, personal=["ssn"])
    with pytest.raises(ValueError, match=r"personal columns \['ssn'\].*memory://m"):
        describe_array(np.zeros((2, 2)), uri="memory://m", personal=["ssn"])
    with pytest.raises(KeyError, match=r"\['weight'\] are not in people.csv"):
        load_csv(tracker, csv_file, columns=["age", "weight"])
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_text("a,b\n")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        describe_parquet(not_parquet)
    with pytest.raises(ValueError, match="mmap_mode"):
        load_npy(tracker, tmp_path / "x.npy", mmap_mode="w+")  # type: ignore[arg-type]
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty: a header row is expected"):
        describe_csv(empty)


@pytest.mark.parametrize("describe", [describe_array, describe_dataframe, describe_tensor])
def test_in_memory_sources_need_a_uri(describe: Any) -> None:
    data = {describe_array: np.zeros(2), describe_dataframe: pd.DataFrame({"a": [1]}),
            describe_tensor: torch.zeros(2)}[describe]
    with pytest.raises(ValueError, match=r"needs uri=.*memory://hospital_a"):
        describe(data)
    with pytest.raises(ValueError, match="no scheme: use e.g. 'memory://hospital_a'"):
        describe(data, uri="hospital_a")


@pytest.mark.parametrize("values", [
    np.array(["a", "b"]), np.array([b"a", b"b"]), np.array([{}, 1], dtype=object),
    np.zeros(2, dtype=[("a", "<i4")]),
])
def test_tracker_array_refuses_unsupported_dtypes(values: np.ndarray) -> None:
    for granularity in ("every_op", "off"):
        events, tracker = recorder(granularity)
        with pytest.raises(TypeError, match="cannot track an array of dtype "
                           + re.escape(str(values.dtype))):
            tracker.array(values)
        with pytest.raises(TypeError, match=re.escape(f"dtype {values.dtype}")):
            track_array(tracker, values, uri="memory://bad")
        assert events == []  # nothing published for data that cannot be tracked
    ok = recorder()[1].array(np.array(["2024-01-01"], dtype="datetime64[D]"))
    assert isinstance(ok, TrackedArray)


def test_unsupported_files_and_tensors(tmp_path: Path, csv_file: Path) -> None:
    events, tracker = recorder()
    with pytest.raises(TypeError, match="column 'name' of people.csv has dtype string"):
        load_csv(tracker, csv_file)
    objects = tmp_path / "obj.npy"
    np.save(objects, np.array([{}, []], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="without pickle"):
        load_npy(tracker, objects)
    scalar = tmp_path / "scalar.npy"
    np.save(scalar, np.float64(1.0))
    with pytest.raises(ValueError, match="0-dimensional"):
        describe_npy(scalar)
    with pytest.raises(ValueError, match="2 column names given"):
        describe_array(np.zeros((2, 3)), uri="memory://a", columns=["a", "b"])
    with pytest.raises(TypeError, match="bfloat16 cannot be tracked"):
        track_tensor(tracker, torch.zeros(2, dtype=torch.bfloat16), uri="memory://h")
    with pytest.raises(TypeError, match="Python objects"):
        describe_array(np.array([{}, 1], dtype=object), uri="memory://o")
    with pytest.raises(ValueError, match="duplicated column names"):
        describe_dataframe(pd.DataFrame([[1, 2]], columns=["a", "a"]), uri="memory://d")
    assert events == []
