"""Tracked pandas DataFrames: column selection, row filters, merges and `to_array` as ops
(sort_values, drop_duplicates, sample, reset_index, groupby(...).agg and concat: frame_rows.py).

    frame = track_dataframe(tracker, df, uri="memory://patients")   # see sources.py
    visits = track_dataframe(tracker, other, uri="memory://visits")
    joined = frame.merge(visits, on="patient_id", how="left")       # one op, two inputs
    x = joined[joined.df["age"] > 30].to_array(["age", "dose"])      # a TrackedArray

A `TrackedFrame` holds a DataFrame, the lineage node of its rows and the tracker; it is
not a DataFrame subclass (pandas has no protocol for intercepting its methods), so only
the operations below are tracked: everything else is done on `frame.df` and re-tracked.
Rows are positions (0..len-1), whatever the index labels. Each op records one
`OpRecorded` with a compressed row map (`rowmap` ranges and gathers) and a ColumnMapping
per output column. Frame ops are dataset-level: they are recorded at granularity
"every_op" (EVERY_OP) and "batch" (BATCH_LEVEL); with "off" there are no TrackedFrames.

A merge's row map gives, for each output row, the left row (input 0) and the right row
(input 1) it was built from; where a left/right/outer join found no partner, that side
has no segment covering the row (see `pair_rowmap_bytes`). A side without gaps is one
`rowmap.from_indices` (ranges, zstd gathers); a side with gaps needs segments that stop
at every gap, so its size grows with the number of arithmetic pieces between gaps: up to
~17 bytes a row when matched rows interleave with unmatched ones at random (the wire
format has no "no row" marker inside a gather).

pandas is imported lazily: this module (and `record_op`, used by the file loaders) works
without it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from headwater.producers import rowmap
from headwater.producers.tracking import TrackedArray, Tracker
from headwater.v1 import events_pb2

if TYPE_CHECKING:
    import pandas as pd

HOWS = ("inner", "left", "right", "outer", "cross")
NUMERIC_KINDS = "biufc"  # bool, signed, unsigned, float, complex: what loads as numbers
IDENTITY = "IDENTITY"


def check_numeric(dtype: Any, what: str) -> None:
    """Raise a TypeError naming `what` and its dtype unless the dtype holds numbers."""
    kind = getattr(dtype, "kind", "O")
    if kind not in NUMERIC_KINDS:
        raise TypeError(f"{what} has dtype {dtype}, which cannot become a tracked numeric "
                        "array (supported: bool, integer, float, complex)")


def record_op(tracker: Tracker, op_name: str, params: dict[str, Any], inputs: Sequence[str],
              shape: tuple[int, ...],
              rows: Sequence[events_pb2.RowSegment] | bytes,
              columns: Sequence[events_pb2.ColumnMapping] = (),
              output_columns: Sequence[str] = ()) -> str:
    """Emit one understood OpRecorded with column lineage; return its output node id.
    `rows`: the row map's segments, or the encoded RowMap (parsed once, in place).
    Stamped BATCH_LEVEL at granularity "batch", else EVERY_OP (module docstring)."""
    n_out = shape[0] if shape else 1
    node = tracker.new_node_id()
    # the tracker names node k "{prefix}-n{k}" and its op "{prefix}-op{k}": same shape here
    prefix, _, k = node.rpartition("-n")
    granularity = (events_pb2.OpRecorded.BATCH_LEVEL if tracker.granularity == "batch"
                   else events_pb2.OpRecorded.EVERY_OP)
    op = events_pb2.OpRecorded(
        op_id=f"{prefix}-op{k}", op_name=op_name, params_json=json.dumps(params),
        input_node_ids=list(inputs), output_node_id=node, output_shape=list(shape),
        code_version=tracker.code_version, understood=True, columns=columns,
        granularity=granularity, output_columns=list(output_columns))
    if isinstance(rows, bytes):
        op.row_map.MergeFromString(rows)
        if op.row_map.output_rows != n_out:
            raise ValueError(f"row map has {op.row_map.output_rows} output rows; shape {shape}")
    else:
        op.row_map.output_rows = n_out
        op.row_map.segments.extend(rows)
    tracker.emit(op)
    tracker.ops_recorded += 1
    return node


def identity_columns(names: Sequence[str], input_index: int = 0
                     ) -> list[events_pb2.ColumnMapping]:
    """Output column c <- column c of input `input_index`, unchanged."""
    return [events_pb2.ColumnMapping(output_column=n, input=input_index, input_columns=[n],
                                     transformation=IDENTITY) for n in names]


def identity_rows(n: int) -> list[events_pb2.RowSegment]:
    return [rowmap.identity(0, n)] if n else []


class TrackedFrame:
    """A DataFrame whose rows (positions) are the lineage node `node_id` of `tracker`."""

    __slots__ = ("_df", "_node", "_tracker")

    def __init__(self, df: pd.DataFrame, node_id: str, tracker: Tracker):
        import pandas as pd

        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"TrackedFrame holds a pandas DataFrame; got {type(df).__name__}")
        if not isinstance(tracker, Tracker):
            raise TypeError(f"tracker must be a Tracker; got {type(tracker).__name__}")
        if tracker.granularity == "off":
            raise ValueError("the tracker's granularity is 'off' (nothing is recorded): "
                             "use the DataFrame itself")
        if not node_id:
            raise ValueError("node_id is empty")
        duplicated = df.columns[df.columns.duplicated()].tolist()
        if duplicated:
            raise ValueError(f"column labels must be unique to track columns; "
                             f"duplicated: {duplicated}")
        self._df, self._node, self._tracker = df, node_id, tracker

    @property
    def df(self) -> pd.DataFrame:
        """The data (not a copy: changing it in place makes the recorded lineage wrong)."""
        return self._df

    @property
    def node_id(self) -> str:
        return self._node

    @property
    def tracker(self) -> Tracker:
        return self._tracker

    @property
    def columns(self) -> list[Any]:
        return list(self._df.columns)

    @property
    def shape(self) -> tuple[int, int]:
        return self._df.shape

    def __len__(self) -> int:
        return len(self._df)

    def __repr__(self) -> str:
        return f"TrackedFrame(rows={len(self)}, columns={self.columns}, node_id={self._node!r})"

    def _derive(self, df: pd.DataFrame, op_name: str, params: dict[str, Any],
                inputs: Sequence[str], segments: Sequence[events_pb2.RowSegment],
                columns: Sequence[events_pb2.ColumnMapping]) -> TrackedFrame:
        node = record_op(self._tracker, op_name, params, inputs, df.shape, segments, columns,
                         [str(c) for c in df.columns])
        return TrackedFrame(df, node, self._tracker)

    # -- selection ---------------------------------------------------------------------

    def __getitem__(self, key: Any) -> TrackedFrame:
        """`frame[["a", "b"]]` selects columns; `frame[mask]` keeps the rows where a
        boolean mask (array, or Series on the frame's index) is true."""
        if isinstance(key, str):
            raise TypeError(f"frame[{key!r}] would be an untracked Series: use "
                            f"frame[[{key!r}]] for a one-column TrackedFrame")
        if isinstance(key, (list, tuple)) and all(not isinstance(k, (bool, np.bool_))
                                                  for k in key):
            return self.select(list(key))
        return self.filter(key)

    def select(self, columns: Sequence[Any]) -> TrackedFrame:
        """These columns, in this order (identity row map, IDENTITY column mappings)."""
        cols = self._check_columns(columns)
        names = [str(c) for c in cols]
        return self._derive(self._df[cols], "pandas.DataFrame.__getitem__",
                            {"columns": names}, [self._node], identity_rows(len(self)),
                            identity_columns(names))

    def filter(self, mask: Any) -> TrackedFrame:
        """The rows where `mask` is true (one gather/range row map). A tracked mask is an
        input of the op without row segments: it selects rows, it is not their data."""
        keep = self._mask(mask)
        rows = np.flatnonzero(keep)
        inputs = [self._node]
        if isinstance(mask, TrackedArray) and mask.tracker is self._tracker:
            mask_node = mask.node_id
            if mask_node != self._node:
                inputs.append(mask_node)
        names = [str(c) for c in self._df.columns]
        return self._derive(self._df.iloc[rows], "pandas.DataFrame.__getitem__",
                            {"mask": True, "kept": int(rows.size)}, inputs,
                            rowmap.from_indices(0, rows), identity_columns(names))

    def _mask(self, mask: Any) -> np.ndarray:
        index = getattr(mask, "index", None)
        if index is not None and not index.equals(self._df.index):
            raise ValueError("the mask Series' index differs from the frame's index: row "
                             "filters are positional here; pass mask.to_numpy()")
        keep = np.asarray(mask)
        if keep.dtype != np.bool_:
            raise TypeError(f"a row mask must be boolean; got dtype {keep.dtype} (missing "
                            "values in a nullable boolean mask? fill them first)")
        if keep.shape != (len(self),):
            raise ValueError(f"a row mask must have shape ({len(self)},); got {keep.shape}")
        return keep

    def _check_columns(self, columns: Sequence[Any]) -> list[Any]:
        cols = list(columns)
        missing = [c for c in cols if c not in self._df.columns]
        if missing:
            raise KeyError(f"columns {missing} are not in the frame (columns: {self.columns})")
        if len(set(cols)) != len(cols):
            raise ValueError(f"columns are repeated in {cols}")
        return cols

    # -- to NumPy ----------------------------------------------------------------------

    def to_array(self, columns: Sequence[Any] | None = None, dtype: Any = float) -> Any:
        """The columns (all by default) as a 2-D TrackedArray of `dtype`: one op with an
        identity row map and IDENTITY column mappings. Missing values become NaN (a
        float dtype) or raise (other dtypes)."""
        cols = self._check_columns(self.columns if columns is None else columns)
        target = np.dtype(dtype)
        check_numeric(target, "the requested array dtype")
        for c in cols:
            check_numeric(self._df[c].dtype, f"column {c!r}")
        part = self._df[cols]
        if target.kind in "fc":
            values = part.to_numpy(dtype=target, na_value=np.nan)
        else:
            if part.isna().to_numpy().any():
                raise ValueError(f"columns {cols} have missing values, which {target} cannot "
                                 "hold: use a float dtype or fill them first")
            values = part.to_numpy(dtype=target)
        names = [str(c) for c in cols]
        node = record_op(self._tracker, "pandas.DataFrame.to_numpy",
                         {"columns": names, "dtype": target.name}, [self._node], values.shape,
                         identity_rows(len(self)), identity_columns(names), names)
        return self._tracker.array(values, node_id=node)

    # -- row order, duplicates, samples, groups (frame_rows.py) --------------------------

    def sort_values(self, by: Any, **kwargs: Any) -> TrackedFrame:
        """`df.sort_values(by, ...)`, recorded as one gather."""
        from headwater.producers.tracking import frame_rows
        return frame_rows.sort_values(self, by, **kwargs)

    def drop_duplicates(self, subset: Any = None, keep: Any = "first",
                        ignore_index: bool = False) -> TrackedFrame:
        """`df.drop_duplicates(...)`, recorded as one gather of the kept rows."""
        from headwater.producers.tracking import frame_rows
        return frame_rows.drop_duplicates(self, subset, keep, ignore_index)

    def sample(self, n: int | None = None, frac: float | None = None, replace: bool = False,
               weights: Any = None, random_state: Any = None,
               ignore_index: bool = False) -> TrackedFrame:
        """`df.sample(...)`, recorded as one gather of the drawn rows."""
        from headwater.producers.tracking import frame_rows
        return frame_rows.sample(self, n, frac, replace, weights, random_state, ignore_index)

    def reset_index(self, drop: bool = False) -> TrackedFrame:
        """`df.reset_index(drop=...)`: same rows (identity)."""
        from headwater.producers.tracking import frame_rows
        return frame_rows.reset_index(self, drop)

    def groupby(self, by: Any, sort: bool = True, dropna: bool = True) -> Any:
        """`df.groupby(by)`; its `.agg(...)` records one aggregate row per group."""
        from headwater.producers.tracking import frame_rows
        return frame_rows.TrackedGroupBy(self, by, sort, dropna)

    # -- merge -------------------------------------------------------------------------

    def merge(self, right: TrackedFrame, *, how: str = "inner", on: Any = None,
              left_on: Any = None, right_on: Any = None,
              suffixes: tuple[str, str] = ("_x", "_y")) -> TrackedFrame:
        """`merge(self, right, ...)`: see the module function."""
        return merge(self, right, how=how, on=on, left_on=left_on, right_on=right_on,
                     suffixes=suffixes)


def merge(left: TrackedFrame, right: TrackedFrame, *, how: str = "inner", on: Any = None,
          left_on: Any = None, right_on: Any = None,
          suffixes: tuple[str, str] = ("_x", "_y")) -> TrackedFrame:
    """`pandas.merge` on key columns (or how="cross"), recorded as ONE op with inputs
    (left, right): output row r <- its left row and its right row (see module docstring).
    Keys must be named (`on`, or `left_on` with `right_on`); index joins are not tracked."""
    if not isinstance(left, TrackedFrame) or not isinstance(right, TrackedFrame):
        bad = type(right if isinstance(left, TrackedFrame) else left).__name__
        raise TypeError(f"merge needs two TrackedFrames (track a DataFrame with "
                        f"sources.track_dataframe); got {bad}")
    if left.tracker is not right.tracker:
        raise ValueError("the frames belong to different trackers")
    if how not in HOWS:
        raise ValueError(f"how must be one of {', '.join(HOWS)}; got {how!r}")
    lkeys, rkeys = _keys(left, right, how, on, left_on, right_on)
    lcarry, rcarry = _carry_names(left.columns + right.columns)
    ldf = left.df.assign(**{lcarry: np.arange(len(left), dtype=np.int64)})
    rdf = right.df.assign(**{rcarry: np.arange(len(right), dtype=np.int64)})
    if how == "cross":
        out = ldf.merge(rdf, how="cross", suffixes=suffixes)
    else:
        out = ldf.merge(rdf, how=how, left_on=lkeys, right_on=rkeys, suffixes=suffixes,
                        sort=False)
    lpos, rpos = _positions(out[lcarry]), _positions(out[rcarry])
    out = out.drop(columns=[lcarry, rcarry])
    same = left.node_id == right.node_id  # a self-join: one input node
    inputs = [left.node_id] if same else [left.node_id, right.node_id]
    r_in = 0 if same else 1
    row_map = pair_rowmap_bytes(len(out), [(0, lpos), (r_in, rpos)])
    columns = _merge_columns(left.columns, right.columns, lkeys, rkeys, suffixes, r_in,
                             list(out.columns))
    params = {"how": how, "left_on": [str(k) for k in lkeys],
              "right_on": [str(k) for k in rkeys], "suffixes": list(suffixes)}
    node = record_op(left.tracker, "pandas.merge", params, inputs, out.shape, row_map,
                     columns, [str(c) for c in out.columns])
    return TrackedFrame(out, node, left.tracker)


LONG_RUN = 64  # covered runs at least this long may be gathered (rowmap.from_indices)


def pair_rowmap(n_out: int, sides: Sequence[tuple[int, np.ndarray]]) -> events_pb2.RowMap:
    """`pair_rowmap_bytes` as a message."""
    return events_pb2.RowMap.FromString(pair_rowmap_bytes(n_out, sides))


def pair_rowmap_bytes(n_out: int, sides: Sequence[tuple[int, np.ndarray]]) -> bytes:
    """Row map of `n_out` output rows where, for each (input, pos) side, output row r <-
    pos[r] if pos[r] >= 0; rows with pos[r] < 0 (no partner) get no segment of that side.

    A side with no gaps is `rowmap.from_indices` (ranges and zstd gathers). With gaps,
    segments must stop at every gap, so the covered rows are cut, with NumPy, into
    arithmetic pieces (ranges, hand-encoded in bulk); a long covered run that is mostly
    not arithmetic is gathered instead (one `from_indices` call per such run).
    """
    parts = [events_pb2.RowMap(output_rows=n_out).SerializeToString()]
    for i, pos in sides:
        pos = np.asarray(pos, dtype=np.int64)
        if pos.shape != (n_out,):
            raise ValueError(f"side {i} has {pos.shape} positions for {n_out} output rows")
        parts.append(_side_bytes(i, pos))
    return b"".join(parts)


def _side_bytes(i: int, pos: np.ndarray) -> bytes:
    """RowMap.segments entries (encoded) for one side of `pair_rowmap`."""
    if (pos >= 0).all():
        return events_pb2.RowMap(segments=rowmap.from_indices(i, pos)).SerializeToString()
    at = np.flatnonzero(pos >= 0)  # covered output rows
    m = at.size
    if m == 0:
        return b""
    p = pos[at]
    d = np.diff(p)  # d[j - 1] = p[j] - p[j - 1]
    contiguous = at[1:] == at[:-1] + 1  # [j - 1]: rows j - 1 and j are adjacent outputs
    # j extends the piece holding j - 1 when they are adjacent and either j - 1 starts a
    # run (two rows are always arithmetic) or j keeps the step from j - 2 to j - 1
    prev_run_start = np.concatenate(([True], ~contiguous[:-1])) if m > 1 else contiguous
    steady = np.concatenate(([False], d[1:] == d[:-1])) if m > 1 else contiguous
    join = np.concatenate(([False], contiguous & (prev_run_start | steady)))
    piece = np.flatnonzero(~join)
    piece_len = np.diff(np.append(piece, m))
    run = np.flatnonzero(np.concatenate(([True], ~contiguous)))
    run_len = np.diff(np.append(run, m))
    pieces_per_run = np.bincount(np.searchsorted(run, piece, side="right") - 1,
                                 minlength=run.size)
    gathered = (run_len >= LONG_RUN) & (pieces_per_run * 8 > run_len)
    out: list[bytes] = []
    if gathered.any():
        for r in np.flatnonzero(gathered).tolist():
            a, b = int(run[r]), int(run[r] + run_len[r])
            out.append(events_pb2.RowMap(segments=rowmap.from_indices(
                i, p[a:b], out_start=int(at[a]))).SerializeToString())
        in_gathered = np.repeat(gathered, run_len)[piece]
        piece, piece_len = piece[~in_gathered], piece_len[~in_gathered]
    step = np.where(piece_len > 1, np.append(d, 0)[piece], 1)
    out.append(encode_ranges(i, at[piece], piece_len, p[piece], step))
    return b"".join(out)


def encode_ranges(i: int, out_start: np.ndarray, length: np.ndarray, start: np.ndarray,
                  step: np.ndarray) -> bytes:
    """Range segments `out_start[s] + k <- start[s] + k * step[s]` (k < length[s]) as
    encoded RowMap.segments entries, built with NumPy (no per-segment Python objects)."""
    u64 = [np.asarray(v, dtype=np.int64).view(np.uint64)  # int64 fields: two's complement
           for v in (out_start, length, start, step)]
    n = u64[0].size
    index = np.full(n, i, dtype=np.uint64)
    range_len = 2 + _varint_len(u64[2]) + _varint_len(u64[3])
    body_len = (4 + _varint_len(index) + _varint_len(u64[0]) + _varint_len(u64[1])
                + _varint_len(range_len) + range_len)
    # field tags: RowMap.segments = 2 (bytes); RowSegment input 1, out_start 2, length 3,
    # range 4 (bytes); RowRange start 1, step 2
    return _encode_columns([0x12, body_len, 0x08, index, 0x10, u64[0], 0x18, u64[1], 0x22,
                            range_len, 0x08, u64[2], 0x10, u64[3]], n)


_VARINT_STEPS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)


def _varint_len(v: np.ndarray) -> np.ndarray:
    """Bytes of each value's base-128 varint (7 bits a byte)."""
    return np.searchsorted(_VARINT_STEPS, np.asarray(v).astype(np.uint64), side="right") + 1


def _encode_columns(columns: list[Any], n: int) -> bytes:
    """n messages laid end to end, each the concatenation of the columns' entries: an int
    is one constant byte (a field tag), an array one varint per message."""
    varints = {j: np.asarray(c).astype(np.uint64) for j, c in enumerate(columns)
               if not isinstance(c, int)}
    lens = {j: _varint_len(v) for j, v in varints.items()}
    size = np.full(n, len(columns) - len(varints), dtype=np.int64)
    for ln in lens.values():
        size += ln
    buf = np.zeros(int(size.sum()), dtype=np.uint8)
    at = np.cumsum(size) - size  # where each message starts
    for j, c in enumerate(columns):
        if j not in varints:
            buf[at] = c
            at = at + 1
            continue
        v, ln = varints[j], lens[j]
        for k in range(int(ln.max(initial=0))):
            sel = ln > k
            if sel.all():
                rows, part, part_len = at, v, ln
            else:
                rows, part, part_len = at[sel], v[sel], ln[sel]
            more = (part_len > k + 1).astype(np.uint64) << np.uint64(7)  # 0x80: more follow
            buf[rows + k] = ((part >> np.uint64(7 * k)) & np.uint64(0x7F)) | more
        at = at + ln
    return buf.tobytes()


def _keys(left: TrackedFrame, right: TrackedFrame, how: str, on: Any, left_on: Any,
          right_on: Any) -> tuple[list[Any], list[Any]]:
    if how == "cross":
        if on is not None or left_on is not None or right_on is not None:
            raise ValueError("how='cross' takes no on/left_on/right_on")
        return [], []
    if on is not None:
        if left_on is not None or right_on is not None:
            raise ValueError("give on=, or left_on= with right_on=, not both")
        lkeys = rkeys = _as_list(on)
    elif left_on is not None and right_on is not None:
        lkeys, rkeys = _as_list(left_on), _as_list(right_on)
    else:
        raise ValueError("merge needs on=, or left_on= with right_on= (key columns are "
                         "never guessed), or how='cross'")
    if not lkeys or len(lkeys) != len(rkeys):
        raise ValueError(f"left_on {lkeys} and right_on {rkeys} must be non-empty and of "
                         "equal length")
    for side, keys, frame in (("left", lkeys, left), ("right", rkeys, right)):
        missing = [k for k in keys if k not in frame.df.columns]
        if missing:
            raise KeyError(f"merge keys {missing} are not columns of the {side} frame "
                           f"(columns: {frame.columns})")
    return lkeys, rkeys


def _as_list(keys: Any) -> list[Any]:
    return list(keys) if isinstance(keys, (list, tuple)) else [keys]


def _carry_names(taken: list[Any]) -> tuple[str, str]:
    """Column names for carried row positions that clash with no frame column."""
    used = {str(c) for c in taken}
    stem = "__hw_row"
    while f"{stem}_left" in used or f"{stem}_right" in used:
        stem += "_"
    return f"{stem}_left", f"{stem}_right"


def _positions(carried: Any) -> np.ndarray:
    """Carried row positions as int64, -1 where the join found no row on that side."""
    values = carried.to_numpy(dtype=np.float64, na_value=np.nan)  # exact below 2**53 rows
    return np.where(np.isnan(values), -1, values).astype(np.int64)


def _merge_columns(lcols: list[Any], rcols: list[Any], lkeys: list[Any], rkeys: list[Any],
                   suffixes: tuple[str, str], r_in: int,
                   out_cols: list[Any]) -> list[events_pb2.ColumnMapping]:
    """Which input column each output column holds, by pandas' naming rule: a key named
    the same on both sides is one output column fed by both inputs; other names present
    on both sides get the suffixes."""
    shared = {lk for lk, rk in zip(lkeys, rkeys, strict=True) if lk == rk}
    overlap = (set(lcols) & set(rcols)) - shared
    mappings: list[events_pb2.ColumnMapping] = []
    named: set[str] = set()
    for cols, side, suffix in ((lcols, 0, suffixes[0]), (rcols, r_in, suffixes[1])):
        for c in cols:
            out = f"{c}{suffix or ''}" if c in overlap else c
            named.add(str(out))
            mappings.append(events_pb2.ColumnMapping(
                output_column=str(out), input=side, input_columns=[str(c)],
                transformation=IDENTITY))
    if named != {str(c) for c in out_cols}:  # a pandas naming case the rule does not cover
        raise ValueError(f"cannot attribute merge output columns {sorted(map(str, out_cols))} "
                         f"to input columns (expected {sorted(named)}): rename clashing "
                         "columns before merging")
    return mappings
