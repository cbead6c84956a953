"""Data sources: describe them as `SourceRegistered`, or load them as tracked data.

    x = load_csv(tracker, "train.csv", columns=["age", "dose"], licence="CC-BY-4.0")
    y = track_array(tracker, labels, uri="memory://hospital_a/labels")
    frame = track_dataframe(tracker, df, uri="memory://hospital_a/visits")  # TrackedFrame

`describe_*` (csv, parquet, npy, array, dataframe, tensor) give the event: URI, content
SHA-256, row count, schema (name, dtype, personal), format, size and origin/licence text.
The id is derived from URI + content hash, so the same data always gets the same id, and
the source's lineage node is its id (`node_id == source_id`). Hashing needs bounded memory:
files are read in 1 MiB blocks; arrays and tensors are hashed a chunk of rows at a time
(canonical little-endian bytes after a header of dtype and shape, so equal bytes of another
dtype or shape differ); DataFrames column by column (raw bytes of NumPy numeric columns,
`pandas.util.hash_pandas_object` values of the others: deterministic, 64 bits per value).
In-memory data has no path: callers name it with a URI such as `memory://hospital_a`.

`load_*` / `track_*` describe, publish the event through `tracker.emit`, and return the
data tracked: CSV/Parquet columns as a 2-D numeric TrackedArray (all columns at the source
node; a subset through one `headwater.select_columns` op with column lineage), .npy and
arrays as a TrackedArray, DataFrames as a `frames.TrackedFrame`. Tensors are registered
as tensors but returned as a TrackedArray over `tensor.detach().cpu().numpy()` (sharing
memory with a CPU tensor); tensor-level tracking belongs to `producers/tracking/torch/`.
With tracker granularity "off" the event is still published (audits need sources) and
plain data is returned. Unsupported dtypes fail before anything is published: non-numeric
columns name the column and its dtype; arrays follow `Tracker.array`.
pandas and torch are imported only by the functions that need them.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.producers.tracking import Tracker
from headwater.producers.tracking.frames import (
    TrackedFrame,
    check_numeric,
    identity_columns,
    identity_rows,
    record_op,
)
from headwater.v1 import events_pb2

if TYPE_CHECKING:
    import pandas as pd
    import torch

CHUNK = 1 << 20  # 1 MiB: hashing memory stays bounded whatever the data size
Names = Sequence[str]


# ---------------------------------------------------------------------------------------
# Hashing


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def source_id_for(uri: str, content_sha256: str) -> str:
    """Stable id: the same file (same URI, same bytes) always gets the same id."""
    return "src-" + hashlib.sha256(f"{uri}\0{content_sha256}".encode()).hexdigest()[:24]


def _canonical(dtype: np.dtype) -> np.dtype:
    """The little-endian form of a dtype, so the hash does not depend on the machine."""
    return dtype.newbyteorder("<") if dtype.str.startswith(">") else dtype


def _header(descr: Any, shape: tuple[int, ...]) -> bytes:
    return json.dumps({"dtype": descr, "shape": list(shape)}).encode() + b"\n"


def _rows_per_chunk(row_bytes: int) -> int:
    return max(1, CHUNK // max(1, row_bytes))


def _update_rows(digest: Any, arr: np.ndarray) -> None:
    """Feed arr's canonical bytes, C order, a chunk of rows (about 1 MiB) at a time."""
    dtype = _canonical(arr.dtype)
    step = _rows_per_chunk(arr.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64)))
    for start in range(0, arr.shape[0], step):
        digest.update(np.ascontiguousarray(arr[start:start + step], dtype=dtype).data)


def array_sha256(arr: np.ndarray) -> str:
    """SHA-256 of dtype + shape + the canonical bytes (object arrays cannot be hashed)."""
    if arr.dtype.hasobject:
        raise TypeError(f"cannot hash an array of dtype {arr.dtype}: it holds Python "
                        "objects, not bytes")
    digest = hashlib.sha256(_header(np.lib.format.dtype_to_descr(_canonical(arr.dtype)),
                                    arr.shape))
    _update_rows(digest, arr)
    return digest.hexdigest()


def tensor_sha256(tensor: torch.Tensor) -> str:
    """SHA-256 like `array_sha256` (equal for `t` and `t.numpy()`), copying at most a chunk
    of rows off the device at a time; bfloat16 is hashed as its raw 16-bit words."""
    import torch

    t = tensor.detach()
    bf16 = t.dtype == torch.bfloat16
    np_dtype = np.dtype(np.int16) if bf16 else _torch_numpy_dtype(t.dtype)
    descr = "bfloat16" if bf16 else np.lib.format.dtype_to_descr(_canonical(np_dtype))
    digest = hashlib.sha256(_header(descr, tuple(t.shape)))
    step = _rows_per_chunk(t.element_size() * int(np.prod(t.shape[1:], dtype=np.int64)))
    for start in range(0, t.shape[0], step):
        part = t[start:start + step].cpu().contiguous()
        values = (part.view(torch.int16) if bf16 else part).numpy()
        digest.update(np.ascontiguousarray(values, dtype=_canonical(values.dtype)).data)
    return digest.hexdigest()


def dataframe_sha256(df: pd.DataFrame) -> str:
    """SHA-256 over column names, dtypes and values, column by column (index excluded:
    rows are positions). NumPy numeric columns contribute their canonical bytes; other
    columns their `hash_pandas_object` values."""
    import pandas as pd

    digest = hashlib.sha256(json.dumps({
        "columns": [str(c) for c in df.columns], "dtypes": [str(d) for d in df.dtypes],
        "rows": len(df)}).encode() + b"\n")
    for j, name in enumerate(df.columns):
        col = df.iloc[:, j]
        if isinstance(col.dtype, np.dtype) and col.dtype.kind in "biufcmM":
            _update_rows(digest, col.to_numpy())
            continue
        step = CHUNK // 8
        for start in range(0, len(col), step):
            try:
                hashed = pd.util.hash_pandas_object(col.iloc[start:start + step], index=False)
            except TypeError as e:
                raise TypeError(f"column {name!r} (dtype {col.dtype}) holds values pandas "
                                f"cannot hash: {e}") from e
            digest.update(hashed.to_numpy(dtype="<u8").data)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# Describing sources


def _source(uri: str, sha: str, rows: int, schema: list[tuple[str, str]], fmt: str,
            size: int, origin: str, licence: str, personal: Names,
            where: str) -> events_pb2.SourceRegistered:
    """The event, after checking that every personal column is in the schema."""
    personal = (personal,) if isinstance(personal, str) else tuple(personal)
    names = [n for n, _ in schema]
    unknown = sorted(set(personal) - set(names))
    if unknown:
        raise ValueError(f"personal columns {unknown} are not columns of {where} "
                         f"(columns: {names})")
    source_id = source_id_for(uri, sha)
    return events_pb2.SourceRegistered(
        source_id=source_id, uri=uri, content_sha256=sha, row_count=rows,
        schema=[events_pb2.Column(name=n, dtype=t, personal=n in personal) for n, t in schema],
        format=fmt, size_bytes=size, origin=origin, licence=licence, node_id=source_id)


def _existing(path: str | Path) -> Path:
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"source file {path} does not exist")
    return path


def _memory_uri(uri: str, what: str) -> str:
    if not uri:
        raise ValueError(f"{what} needs uri= naming the data, e.g. 'memory://hospital_a': "
                         "in-memory data has no file path, and the URI is part of its id")
    if not urlsplit(uri).scheme:
        raise ValueError(f"uri {uri!r} has no scheme: use e.g. 'memory://{uri}'")
    return uri


def describe_csv(path: str | Path, *, origin: str = "", licence: str = "",
                 personal: Names = ()) -> events_pb2.SourceRegistered:
    """A SourceRegistered for a CSV file with a header row (dtypes guessed from the first
    data row; blank lines are not rows)."""
    path = _existing(path)
    with path.open(newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path} is empty: a header row is expected") from None
        first = next((row for row in reader if row), None)
        rows = (1 if first is not None else 0) + sum(1 for row in reader if row)
    dtypes = [_csv_dtype(v) for v in first] if first else ["string"] * len(header)
    if len(dtypes) != len(header):
        raise ValueError(f"{path.name}: the first data row has {len(dtypes)} fields but the "
                         f"header has {len(header)}")
    return _source(path.as_uri(), file_sha256(path), rows, list(zip(header, dtypes,
                                                                    strict=True)),
                   "csv", path.stat().st_size, origin, licence, personal, path.name)


def _csv_dtype(value: str) -> str:
    for cast, name in ((int, "int64"), (float, "float64")):
        try:
            cast(value)
            return name
        except ValueError:
            pass
    return "string"


def describe_parquet(path: str | Path, *, origin: str = "", licence: str = "",
                     personal: Names = ()) -> events_pb2.SourceRegistered:
    """A SourceRegistered for a Parquet file: rows and schema from its footer metadata."""
    import pyarrow.parquet as pq

    path = _existing(path)
    try:
        with pq.ParquetFile(path) as f:
            rows = f.metadata.num_rows
            schema = [(field.name, _arrow_dtype_name(field.type)) for field in f.schema_arrow]
    except pa.ArrowInvalid as e:
        raise ValueError(f"{path} is not a readable Parquet file: {e}") from e
    return _source(path.as_uri(), file_sha256(path), rows, schema, "parquet",
                   path.stat().st_size, origin, licence, personal, path.name)


def describe_npy(path: str | Path, *, columns: Names | None = None, origin: str = "",
                 licence: str = "", personal: Names = ()) -> events_pb2.SourceRegistered:
    """A SourceRegistered for a .npy file: shape and dtype from its header (memory-mapped,
    no data read). Column names: `columns`, else see `array_schema`."""
    path = _existing(path)
    try:
        mapped = np.lib.format.open_memmap(path, mode="r")
    except ValueError as e:  # bad magic, or an object array (pickled: never loaded)
        raise ValueError(f"{path} is not a .npy array that can be loaded without pickle: "
                         f"{e}") from e
    shape, dtype = mapped.shape, mapped.dtype
    del mapped
    schema = array_schema(dtype, shape, columns, path.name)
    return _source(path.as_uri(), file_sha256(path), shape[0], schema, "npy",
                   path.stat().st_size, origin, licence, personal, path.name)


def describe_array(values: Any, *, uri: str = "", columns: Names | None = None,
                   origin: str = "", licence: str = "",
                   personal: Names = ()) -> events_pb2.SourceRegistered:
    """A SourceRegistered for an in-memory NumPy array (rows = axis 0) named by `uri`."""
    uri = _memory_uri(uri, "describe_array")
    arr = np.asarray(values)
    schema = array_schema(arr.dtype, arr.shape, columns, uri)
    return _source(uri, array_sha256(arr), arr.shape[0], schema, "array", arr.nbytes, origin,
                   licence, personal, uri)


def describe_tensor(tensor: torch.Tensor, *, uri: str = "", columns: Names | None = None,
                    origin: str = "", licence: str = "",
                    personal: Names = ()) -> events_pb2.SourceRegistered:
    """A SourceRegistered for a dense torch tensor (rows = dim 0) named by `uri`."""
    import torch

    uri = _memory_uri(uri, "describe_tensor")
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"describe_tensor needs a torch.Tensor; got {type(tensor).__name__}")
    if tensor.layout != torch.strided:
        raise TypeError(f"tensor layout {tensor.layout} is not supported: convert with "
                        ".to_dense()")
    name = str(tensor.dtype).removeprefix("torch.")
    shape = tuple(tensor.shape)
    schema = array_schema(name, shape, columns, uri)
    return _source(uri, tensor_sha256(tensor), shape[0], schema, "tensor",
                   tensor.numel() * tensor.element_size(), origin, licence, personal, uri)


def describe_dataframe(df: pd.DataFrame, *, uri: str = "", origin: str = "",
                       licence: str = "", personal: Names = ()) -> events_pb2.SourceRegistered:
    """A SourceRegistered for a pandas DataFrame (one Column per column) named by `uri`."""
    import pandas as pd

    uri = _memory_uri(uri, "describe_dataframe")
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"describe_dataframe needs a pandas DataFrame; got {type(df).__name__}")
    names = [str(c) for c in df.columns]
    if len(set(names)) != len(names):
        raise ValueError(f"DataFrame {uri} has duplicated column names: {names}")
    schema = [(n, _pandas_dtype_name(d)) for n, d in zip(names, df.dtypes, strict=True)]
    size = int(df.memory_usage(index=False, deep=False).sum())
    return _source(uri, dataframe_sha256(df), len(df), schema, "dataframe", size, origin,
                   licence, personal, uri)


def array_schema(dtype: np.dtype | str, shape: tuple[int, ...], columns: Names | None,
                 where: str) -> list[tuple[str, str]]:
    """(name, dtype) columns of an array: a structured dtype's fields; a 2-D array's
    columns "0", "1", ...; else one column "value" (dtype `float32[28,28]` when each row is
    itself an array). `columns` renames them (same count)."""
    if not shape:
        raise ValueError(f"{where} is 0-dimensional: a source needs rows (axis 0)")
    fields = getattr(dtype, "names", None)
    name = dtype if isinstance(dtype, str) else _numpy_dtype_name(dtype)
    if fields and isinstance(dtype, np.dtype) and len(shape) == 1:
        schema = [(f, _numpy_dtype_name(dtype[f])) for f in fields]
    elif len(shape) == 2:
        schema = [(str(j), name) for j in range(shape[1])]
    else:
        inner = f"[{','.join(str(d) for d in shape[1:])}]" if len(shape) > 2 else ""
        schema = [("value", name + inner)]
    if columns is None:
        return schema
    names = [columns] if isinstance(columns, str) else list(columns)
    if len(names) != len(schema):
        raise ValueError(f"{len(names)} column names given for {where}, which has "
                         f"{len(schema)} columns")
    return [(n, t) for n, (_, t) in zip(names, schema, strict=True)]


def _numpy_dtype_name(dtype: np.dtype) -> str:
    if dtype.kind in "biufcmM":
        return dtype.name
    return {"U": "string", "T": "string", "S": "bytes", "O": "object"}.get(dtype.kind,
                                                                           str(dtype))


def _pandas_dtype_name(dtype: Any) -> str:
    if isinstance(dtype, np.dtype):
        return _numpy_dtype_name(dtype)
    name = str(dtype)
    return "string" if name in ("str", "string") else name


def _arrow_dtype_name(t: pa.DataType) -> str:
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return np.dtype(t.to_pandas_dtype()).name
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    return str(t)


def _torch_numpy_dtype(dtype: torch.dtype) -> np.dtype:
    import torch

    try:
        return torch.empty(0, dtype=dtype).numpy().dtype
    except TypeError as e:
        raise TypeError(f"tensor dtype {dtype} has no NumPy equivalent: {e}") from e


# ---------------------------------------------------------------------------------------
# Loading as tracked data


def load_csv(tracker: Tracker, path: str | Path, *, columns: Names | None = None,
             dtype: Any = float, origin: str = "", licence: str = "",
             personal: Names = ()) -> Any:
    """Register a CSV file and return its columns (all, or `columns` in that order) as a
    2-D TrackedArray of `dtype`. Every selected column must be numeric; empty fields are
    NaN (a float dtype) or an error."""
    import pyarrow.csv as pacsv

    source = describe_csv(path, origin=origin, licence=licence, personal=personal)
    path = Path(path).resolve()
    names = [c.name for c in source.schema]
    selected = _select(names, columns, path.name)
    table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                           convert_options=pacsv.ConvertOptions(include_columns=selected))
    values = _table_array(table, selected, np.dtype(dtype), path.name)
    return _finish_array(tracker, values, source, None if selected == names else selected)


def load_parquet(tracker: Tracker, path: str | Path, *, columns: Names | None = None,
                 dtype: Any = float, origin: str = "", licence: str = "",
                 personal: Names = ()) -> Any:
    """Like `load_csv`, for a Parquet file (only the selected columns are read)."""
    import pyarrow.parquet as pq

    source = describe_parquet(path, origin=origin, licence=licence, personal=personal)
    path = Path(path).resolve()
    names = [c.name for c in source.schema]
    selected = _select(names, columns, path.name)
    table = pq.read_table(path, columns=selected)
    values = _table_array(table, selected, np.dtype(dtype), path.name)
    return _finish_array(tracker, values, source, None if selected == names else selected)


def load_npy(tracker: Tracker, path: str | Path, *, columns: Names | None = None,
             mmap_mode: Literal["r", "c"] | None = None, origin: str = "", licence: str = "",
             personal: Names = ()) -> Any:
    """Register a .npy file and return its array tracked (`mmap_mode` as in `np.load`;
    pickled object arrays are refused). `columns` names its columns in the schema.
    mmap_mode: None (read into memory), "r" (read-only map) or "c" (copy-on-write map)."""
    if mmap_mode not in (None, "r", "c"):
        raise ValueError(f"mmap_mode must be None, 'r' or 'c' (the file is never written); "
                         f"got {mmap_mode!r}")
    source = describe_npy(path, columns=columns, origin=origin, licence=licence,
                          personal=personal)
    values = np.load(Path(path).resolve(), mmap_mode=mmap_mode, allow_pickle=False)
    return _finish_array(tracker, values, source, None)


def track_array(tracker: Tracker, values: Any, *, uri: str = "",
                columns: Names | None = None, origin: str = "", licence: str = "",
                personal: Names = ()) -> Any:
    """Register an in-memory array under `uri` and return it tracked (no copy)."""
    arr = np.asarray(values)
    source = describe_array(arr, uri=uri, columns=columns, origin=origin, licence=licence,
                            personal=personal)
    return _finish_array(tracker, arr, source, None)


def track_tensor(tracker: Tracker, tensor: torch.Tensor, *, uri: str = "",
                 columns: Names | None = None, origin: str = "", licence: str = "",
                 personal: Names = ()) -> Any:
    """Register a tensor under `uri` (format "tensor") and return a TrackedArray of
    `tensor.detach().cpu().numpy()` at the source node (shares memory with a CPU tensor)."""
    source = describe_tensor(tensor, uri=uri, columns=columns, origin=origin, licence=licence,
                             personal=personal)
    t = tensor.detach().cpu()
    try:
        values = t.numpy()
    except TypeError as e:
        raise TypeError(f"tensor dtype {t.dtype} cannot be tracked as a NumPy array ({e}); "
                        "convert it first, e.g. tensor.float()") from e
    return _finish_array(tracker, values, source, None)


def track_dataframe(tracker: Tracker, df: pd.DataFrame, *, uri: str = "", origin: str = "",
                    licence: str = "", personal: Names = ()) -> Any:
    """Register a DataFrame under `uri` and return it as a TrackedFrame at the source node
    (the DataFrame itself with granularity "off")."""
    source = describe_dataframe(df, uri=uri, origin=origin, licence=licence, personal=personal)
    return _finish_frame(tracker, df, source, None)


def load_csv_frame(tracker: Tracker, path: str | Path, *, columns: Names | None = None,
                   origin: str = "", licence: str = "", personal: Names = ()) -> Any:
    """Register a CSV file and return it (or `columns`) as a TrackedFrame read by
    `pandas.read_csv` with its default dtypes: any column types."""
    import pandas as pd

    source = describe_csv(path, origin=origin, licence=licence, personal=personal)
    names = [c.name for c in source.schema]
    selected = _select(names, columns, Path(path).name)
    df = pd.read_csv(Path(path).resolve(), usecols=selected)[selected]
    return _finish_frame(tracker, df, source, None if selected == names else selected)


def load_parquet_frame(tracker: Tracker, path: str | Path, *, columns: Names | None = None,
                       origin: str = "", licence: str = "", personal: Names = ()) -> Any:
    """Register a Parquet file and return it (or `columns`) as a TrackedFrame."""
    import pandas as pd

    source = describe_parquet(path, origin=origin, licence=licence, personal=personal)
    names = [c.name for c in source.schema]
    selected = _select(names, columns, Path(path).name)
    df = pd.read_parquet(Path(path).resolve(), columns=selected)
    return _finish_frame(tracker, df, source, None if selected == names else selected)


def _select(names: list[str], columns: Names | None, where: str) -> list[str]:
    if len(set(names)) != len(names):
        raise ValueError(f"{where} has duplicated column names: {names}")
    if columns is None:
        return list(names)
    selected = [columns] if isinstance(columns, str) else list(columns)
    unknown = [c for c in selected if c not in names]
    if unknown:
        raise KeyError(f"columns {unknown} are not in {where} (columns: {names})")
    if len(set(selected)) != len(selected):
        raise ValueError(f"columns are repeated in {selected}")
    return selected


def _table_array(table: pa.Table, selected: list[str], target: np.dtype,
                 where: str) -> np.ndarray:
    """The selected Arrow columns as an (n, k) array of `target`; a clear error for a
    non-numeric column, missing values an integer/bool target cannot hold, or a cast
    that would lose its kind (float -> int)."""
    check_numeric(target, "the requested array dtype")
    out = np.empty((table.num_rows, len(selected)), dtype=target)
    for j, name in enumerate(selected):
        col = table.column(name)
        t = col.type
        numeric = (pa.types.is_integer(t) or pa.types.is_floating(t)
                   or pa.types.is_boolean(t) or pa.types.is_null(t))
        if not numeric:
            raise TypeError(f"column {name!r} of {where} has dtype {_arrow_dtype_name(t)}: "
                            "only numeric columns load as a tracked array (load it as a "
                            "frame instead)")
        if target.kind in "fc":
            out[:, j] = pc.cast(col, pa.float64(), safe=False).to_numpy()  # nulls -> NaN
            continue
        if col.null_count:
            raise ValueError(f"column {name!r} of {where} has {col.null_count} missing "
                             f"values, which dtype {target} cannot hold: use a float dtype")
        values = col.to_numpy()
        if not np.can_cast(values.dtype, target, "same_kind"):
            raise TypeError(f"column {name!r} of {where} has dtype {values.dtype}, which "
                            f"dtype {target} cannot hold without rounding: use a float dtype")
        out[:, j] = values
    return out


def _finish_array(tracker: Tracker, values: np.ndarray, source: events_pb2.SourceRegistered,
                  selected: list[str] | None) -> Any:
    """Publish the source and return the values at its node (or, for a column subset,
    at the output of one select op). Tracker.array checks dtype and rows first."""
    tracked = tracker.array(values, source=source)  # raises before anything is published
    tracker.emit(source)
    if selected is None or tracker.granularity == "off":
        return tracked
    node = record_op(tracker, "headwater.select_columns", {"columns": selected},
                     [source.node_id], values.shape, identity_rows(len(values)),
                     identity_columns(selected), selected)
    return tracker.array(values, node_id=node)


def _finish_frame(tracker: Tracker, df: pd.DataFrame, source: events_pb2.SourceRegistered,
                  selected: list[str] | None) -> Any:
    if len(df) != source.row_count:
        raise ValueError(f"{source.uri} has {source.row_count} rows but pandas read "
                         f"{len(df)}")
    if tracker.granularity == "off":
        tracker.emit(source)
        return df
    frame = TrackedFrame(df, source.node_id, tracker)  # checks before publishing
    tracker.emit(source)
    if selected is None:
        return frame
    return frame.select(selected)
