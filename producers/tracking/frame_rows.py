"""Tracked DataFrame ops that reorder, drop, stack or aggregate rows: sort_values,
drop_duplicates, sample, reset_index, concat and groupby(...).agg (TrackedFrame methods and
`concat` delegate here). Each runs the pandas op once on the frame with its row positions
carried as an extra column, so the recorded row map is exactly where each output row came
from, whatever pandas did (stable sorts, ties, `keep=`, random states)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from headwater.producers import rowmap
from headwater.producers.tracking.frames import (
    TrackedFrame,
    identity_columns,
    identity_rows,
    record_op,
)
from headwater.v1 import events_pb2

if TYPE_CHECKING:
    import pandas as pd

MAX_GROUP_ROWS = 4096  # larger groups: each aggregate row is recorded as all rows
AGGREGATION = "AGGREGATION"


def _carry(frame: TrackedFrame) -> str:
    used = {str(c) for c in frame.columns}
    name = "__hw_pos"
    while name in used:
        name += "_"
    return name


def _through(frame: TrackedFrame, fn: Callable[[pd.DataFrame], pd.DataFrame]
             ) -> tuple[pd.DataFrame, np.ndarray]:
    """(fn's result without the carried column, the input position of each output row)."""
    carry = _carry(frame)
    out = fn(frame.df.assign(**{carry: np.arange(len(frame), dtype=np.int64)}))
    pos = out[carry].to_numpy(dtype=np.int64)
    return out.drop(columns=[carry]), pos


def _gathered(frame: TrackedFrame, out: pd.DataFrame, pos: np.ndarray, op_name: str,
              params: dict[str, Any]) -> TrackedFrame:
    names = [str(c) for c in out.columns]
    node = record_op(frame.tracker, op_name, params, [frame.node_id], out.shape,
                     rowmap.from_indices(0, pos) if len(pos) else [],
                     identity_columns(names), names)
    return TrackedFrame(out, node, frame.tracker)


def sort_values(frame: TrackedFrame, by: Any, **kwargs: Any) -> TrackedFrame:
    """`df.sort_values(by, ...)` (rows reordered: one gather)."""
    if kwargs.get("axis", 0) not in (0, "index") or kwargs.get("inplace"):
        raise ValueError("sort_values: only axis=0 and not inplace are tracked")
    frame._check_columns(by if isinstance(by, (list, tuple)) else [by])
    out, pos = _through(frame, lambda d: d.sort_values(by, **kwargs))
    return _gathered(frame, out, pos, "pandas.DataFrame.sort_values",
                     {"by": [str(b) for b in (by if isinstance(by, (list, tuple)) else [by])],
                      **{k: str(v) for k, v in kwargs.items()}})


def drop_duplicates(frame: TrackedFrame, subset: Any = None, keep: Any = "first",
                    ignore_index: bool = False) -> TrackedFrame:
    """`df.drop_duplicates(subset, keep=...)`: the kept rows (one gather)."""
    cols = frame.columns if subset is None else frame._check_columns(
        subset if isinstance(subset, (list, tuple)) else [subset])
    out, pos = _through(frame, lambda d: d.drop_duplicates(
        subset=cols, keep=keep, ignore_index=ignore_index))
    return _gathered(frame, out, pos, "pandas.DataFrame.drop_duplicates",
                     {"subset": [str(c) for c in cols], "keep": str(keep)})


def sample(frame: TrackedFrame, n: int | None = None, frac: float | None = None,
           replace: bool = False, weights: Any = None, random_state: Any = None,
           ignore_index: bool = False) -> TrackedFrame:
    """`df.sample(...)`: the drawn rows (one gather; repeats when `replace`)."""
    if weights is not None and not isinstance(weights, str):
        weights = np.asarray(weights)  # positional, not aligned on the index
    out, pos = _through(frame, lambda d: d.sample(
        n=n, frac=frac, replace=replace, weights=weights, random_state=random_state,
        ignore_index=ignore_index))
    seed = random_state if isinstance(random_state, (int, np.integer)) else None
    return _gathered(frame, out, pos, "pandas.DataFrame.sample",
                     {"n": n, "frac": frac, "replace": replace, "random_state": seed})


def reset_index(frame: TrackedFrame, drop: bool = False) -> TrackedFrame:
    """`df.reset_index(drop=...)`: rows unchanged; without `drop` the old index becomes
    columns that come from no input column (mapped to none)."""
    out = frame.df.reset_index(drop=drop)
    old = {str(c) for c in frame.columns}
    names = [str(c) for c in out.columns]
    columns = identity_columns([c for c in names if c in old])
    node = record_op(frame.tracker, "pandas.DataFrame.reset_index", {"drop": drop},
                     [frame.node_id], out.shape, identity_rows(len(out)), columns, names)
    return TrackedFrame(out, node, frame.tracker)


def concat(frames: Sequence[TrackedFrame], axis: int | str = 0,
           ignore_index: bool = False) -> TrackedFrame:
    """`pd.concat(frames)`: rows stacked in order (axis 0), or frames side by side
    (axis 1, only when their indexes are equal: pandas would align rows by label)."""
    import pandas as pd

    frames = list(frames)
    if not frames or not all(isinstance(f, TrackedFrame) for f in frames):
        raise TypeError("concat needs a non-empty sequence of TrackedFrames")
    tracker = frames[0].tracker
    if any(f.tracker is not tracker for f in frames):
        raise ValueError("the frames belong to different trackers")
    nodes: list[str] = []
    for f in frames:
        if f.node_id not in nodes:
            nodes.append(f.node_id)
    side = axis in (1, "columns")
    if side and any(not f.df.index.equals(frames[0].df.index) for f in frames):
        raise ValueError("concat(axis=1) of frames with different indexes aligns rows by "
                         "label: reset_index(drop=True) on each first")
    out = pd.concat([f.df for f in frames], axis=1 if side else 0, ignore_index=ignore_index)
    if side and out.columns.duplicated().any():
        raise ValueError("concat(axis=1) would repeat column labels: rename them first")
    segments: list[events_pb2.RowSegment] = []
    columns: list[events_pb2.ColumnMapping] = []
    offset = 0
    for f in frames:
        i = nodes.index(f.node_id)
        if side:
            if i not in {s.input for s in segments} and len(f):
                segments.append(rowmap.identity(i, len(f)))
        elif len(f):
            segments.append(rowmap.identity(i, len(f), out_start=offset))
        offset += len(f)
        columns += [events_pb2.ColumnMapping(output_column=str(c), input=i,
                                             input_columns=[str(c)], transformation="IDENTITY")
                    for c in f.columns]
    node = record_op(tracker, "pandas.concat", {"axis": 1 if side else 0}, nodes, out.shape,
                     segments, columns, [str(c) for c in out.columns])
    return TrackedFrame(out, node, tracker)


def groupby_agg(frame: TrackedFrame, by: Any, func: Any = None, *, sort: bool = True,
                dropna: bool = True, **named: Any) -> TrackedFrame:
    """`df.groupby(by, as_index=False).agg(func or **named)`: one output row per group,
    made from every row of its group (an aggregate row: its row map lists the group's
    rows, one gather per position within the group; groups of more than MAX_GROUP_ROWS
    rows are recorded as all rows, understood=False)."""
    keys = frame._check_columns(by if isinstance(by, (list, tuple)) else [by])
    carry = _carry(frame)
    df = frame.df.assign(**{carry: np.arange(len(frame), dtype=np.int64)})
    grouped = df.groupby(keys, sort=sort, dropna=dropna, as_index=False)
    members = grouped[carry].agg(list)[carry].tolist()  # input rows of each output row
    values = frame.df.groupby(keys, sort=sort, dropna=dropna, as_index=False)
    out = values.agg(func, **named) if func is not None else values.agg(**named)
    if len(out) != len(members):
        raise ValueError("groupby(...).agg gave a row count other than the groups'")
    sizes = np.array([len(m) for m in members], dtype=np.int64)
    names = [str(c) for c in out.columns]
    key_names = {str(k) for k in keys}
    inputs = {str(x) for x in frame.columns}
    source_of = {str(o): str(spec[0]) for o, spec in named.items()
                 if isinstance(spec, tuple) and spec}  # total=("v", "sum")
    columns = []
    for c, raw in zip(names, out.columns, strict=True):
        src = source_of.get(c, str(raw[0]) if isinstance(raw, tuple) else c)
        columns.append(events_pb2.ColumnMapping(
            output_column=c, input=0, input_columns=[src] if src in inputs else [],
            transformation="IDENTITY" if c in key_names else AGGREGATION))
    params = {"by": [str(k) for k in keys], "groups": len(members)}
    if len(members) and sizes.max() > MAX_GROUP_ROWS:
        reason = f"op not understood: a group of more than {MAX_GROUP_ROWS} rows"
        node = record_op(frame.tracker, "pandas.DataFrameGroupBy.agg", params,
                         [frame.node_id], out.shape, [rowmap.all_rows(0, len(out), reason)],
                         columns, names)
        return TrackedFrame(out, node, frame.tracker)
    k = int(sizes.max()) if len(members) else 0
    table = np.empty((len(members), k), dtype=np.int64)
    for g, rows in enumerate(members):  # pad each group with its first row (a union)
        table[g, :len(rows)] = rows
        table[g, len(rows):] = rows[0]
    segments = [seg for j in range(k) for seg in rowmap.from_indices(0, table[:, j])]
    node = record_op(frame.tracker, "pandas.DataFrameGroupBy.agg", params, [frame.node_id],
                     out.shape, segments, columns, names)
    return TrackedFrame(out, node, frame.tracker)


class TrackedGroupBy:
    """`frame.groupby(by)`: only `.agg(...)` is tracked (see `groupby_agg`)."""

    __slots__ = ("_by", "_dropna", "_frame", "_sort")

    def __init__(self, frame: TrackedFrame, by: Any, sort: bool = True, dropna: bool = True):
        self._frame, self._by, self._sort, self._dropna = frame, by, sort, dropna

    def agg(self, func: Any = None, **named: Any) -> TrackedFrame:
        return groupby_agg(self._frame, self._by, func, sort=self._sort, dropna=self._dropna,
                           **named)

    aggregate = agg
