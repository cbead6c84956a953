"""Making tracked tensors and the dataset-level ops on them: `track_tensor`, `to_array`,
`row_keys`, `split`/`shuffle` of tensors and TensorDatasets, and `tracked_loader` (a torch
DataLoader whose batches are TrackedTensors made by one BATCH_LEVEL op each)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    TensorDataset,
    default_collate,
)

from headwater.producers.tracking.array import TrackedArray
from headwater.producers.tracking.segments import all_rows, n_rows, rows_segments
from headwater.producers.tracking.torch.tensor import (
    BATCH_LEVEL,
    NoSubclass,
    Tensor,
    TrackedTensor,
    node_of,
    record,
    shape_of,
)
from headwater.producers.tracking.tracker import Tracker
from headwater.producers.tracking.tracker import row_keys as array_row_keys
from headwater.v1 import events_pb2

# ---------------------------------------------------------------------------------------
# Making tracked tensors, conversions, row keys


def track_tensor(tracker: Tracker, values: Any, node_id: str | None = None, *,
                 source: events_pb2.SourceRegistered | None = None) -> Any:
    """`values` as a TrackedTensor (no copy when already a tensor or a NumPy array) holding
    the rows of `source` (its node_id, else its source_id), of `node_id`, or of a fresh node.
    A TrackedArray keeps its node (same rows: no event); a TrackedTensor is returned as is.
    With granularity "off" a plain tensor is returned."""
    if isinstance(values, TrackedTensor):
        with NoSubclass():
            if tracker._off:
                return values.as_subclass(Tensor)
        given = _given_node(source, node_id, n_rows(shape_of(values)))
        if given is not None and given != values._hw_node:
            raise ValueError(f"tensor is already tracked as {values._hw_node!r}; "
                             f"got node {given!r}")
        return values
    if isinstance(values, TrackedArray) and values.tracker is not None:
        given = _given_node(source, node_id, n_rows(values.shape))
        node = values.tracker.node_of(values)
        if given is not None and given != node:
            raise ValueError(f"array is already tracked as {node!r}; got node {given!r}")
        node_id, source = node, None
    tensor = values if isinstance(values, Tensor) else torch.as_tensor(
        np.asarray(values) if isinstance(values, np.ndarray) else values)
    if tensor.ndim == 0:
        raise ValueError("a tracked tensor needs at least one dimension (dim 0 = rows)")
    node = _given_node(source, node_id, tensor.shape[0])
    if tracker._off:
        return tensor
    out = tensor.as_subclass(TrackedTensor)
    out._hw_tracker = tracker
    out._hw_node = node or tracker.new_node_id()
    return out


def _given_node(source: events_pb2.SourceRegistered | None, node_id: str | None,
                rows: int) -> str | None:
    """The node named by `source` or `node_id` (checked against the row count)."""
    if source is None:
        return node_id
    if node_id is not None:
        raise ValueError("give node_id or source, not both")
    node = source.node_id or source.source_id
    if not node:
        raise ValueError("source has neither node_id nor source_id")
    if source.row_count and source.row_count != rows:
        raise ValueError(f"source {node} has row_count={source.row_count} but the tensor "
                         f"has {rows} rows")
    return node


def to_array(t: Any) -> Any:
    """A TrackedTensor as a TrackedArray of the same node (same rows, no event)."""
    node = node_of(t)
    with NoSubclass():
        values = t.detach().cpu().numpy()
    return cast(Tracker, t._hw_tracker).array(values, node_id=node)


def row_keys(batch: Any) -> events_pb2.RowKeys:
    """Training-row keys of a tracked batch (tensor or array): (node, 0..len-1)."""
    if isinstance(batch, TrackedArray):
        return array_row_keys(batch)
    if not isinstance(batch, TrackedTensor) or batch._hw_tracker is None:
        raise TypeError("row_keys needs a TrackedTensor or TrackedArray (is the tracker's "
                        "granularity 'off'?)")
    return events_pb2.RowKeys(node_ids=[node_of(batch)], rows=range(n_rows(shape_of(batch))))


# ---------------------------------------------------------------------------------------
# Dataset-level ops: splits, shuffles, DataLoader batches (recorded as BATCH_LEVEL)


def _tensors_of(tracker: Tracker, data: Any, node_id: str | None,
                source: events_pb2.SourceRegistered | None) -> tuple[list[Any], bool]:
    """(tracked tensors, one_tensor) of a tensor or a TensorDataset. Plain tensors share one
    node (they are columns of the same dataset rows): `source`/`node_id`, else a fresh one."""
    if isinstance(data, Tensor):
        tensors, single = [data], True
    elif isinstance(data, TensorDataset):
        tensors, single = list(data.tensors), False
    else:
        raise TypeError(f"expected a tensor or a TensorDataset; got {type(data).__name__}")
    if not tensors or any(t.ndim == 0 for t in tensors):
        raise ValueError("dataset tensors need at least one dimension (dim 0 = rows)")
    n = n_rows(shape_of(tensors[0]))
    if any(n_rows(shape_of(t)) != n for t in tensors):
        raise ValueError(f"dataset tensors disagree on the row count: "
                         f"{[n_rows(shape_of(t)) for t in tensors]}")
    shared = None
    out = []
    for t in tensors:
        if not isinstance(t, TrackedTensor):
            shared = shared or _given_node(source, node_id, n) or tracker.new_node_id()
            t = track_tensor(tracker, t, shared)
        out.append(t)
    return out, single


def _dataset_op(tracker: Tracker, x: Any, rows: np.ndarray, op_name: str,
                params: dict[str, Any]) -> Any:
    """x[rows] recorded as one BATCH_LEVEL gather op (plain with granularity "off")."""
    index = torch.as_tensor(rows, dtype=torch.long)
    with NoSubclass():
        result = x[index.to(x.device)]
        if tracker._off or not isinstance(x, TrackedTensor):
            return result.as_subclass(Tensor)
        return record(tracker, result, op_name, json.dumps(params), [node_of(x)],
                       rows_segments(0, rows), True, BATCH_LEVEL)


def _per_tensor(tracker: Tracker, tensors: list[Any], single: bool, rows: np.ndarray,
                op_name: str, params: dict[str, Any]) -> Any:
    parts = [_dataset_op(tracker, t, rows, op_name, params if single else {**params, "tensor": p})
             for p, t in enumerate(tensors)]
    return parts[0] if single else TensorDataset(*parts)


def split(tracker: Tracker, data: Any, test_size: float | int = 0.25, seed: int | None = 0,
          *, node_id: str | None = None, source: events_pb2.SourceRegistered | None = None
          ) -> tuple[Any, Any]:
    """(train, test) rows of a tensor or TensorDataset after a seeded permutation, exactly
    as `Tracker.split` cuts arrays (same rows for the same seed): one op per tensor and part.
    Returns tensors, or TensorDatasets of tracked tensors."""
    tensors, single = _tensors_of(tracker, data, node_id, source)
    train_rows, test_rows = tracker.split(np.arange(n_rows(shape_of(tensors[0]))), test_size,
                                          seed)
    params = {"test_size": test_size, "seed": seed}
    return (_per_tensor(tracker, tensors, single, train_rows, "headwater.split",
                        {**params, "part": "train"}),
            _per_tensor(tracker, tensors, single, test_rows, "headwater.split",
                        {**params, "part": "test"}))


def shuffle(tracker: Tracker, data: Any, seed: int | None = 0, *, node_id: str | None = None,
            source: events_pb2.SourceRegistered | None = None) -> Any:
    """Rows of a tensor or TensorDataset in `Tracker.shuffle`'s seeded order."""
    tensors, single = _tensors_of(tracker, data, node_id, source)
    rows = tracker.shuffle(np.arange(n_rows(shape_of(tensors[0]))), seed)
    return _per_tensor(tracker, tensors, single, rows, "headwater.shuffle", {"seed": seed})


class _Rows(Dataset[Any]):
    """Rows of plain tensors, fetched a batch at a time (DataLoader calls __getitems__)."""

    def __init__(self, tensors: list[Tensor]):
        self.tensors = tensors

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    def __getitem__(self, i: int) -> Any:
        return self.__getitems__([i])

    def __getitems__(self, rows: list[int]) -> Any:
        index = torch.as_tensor(rows, dtype=torch.long)
        return index, tuple(t[index] for t in self.tensors)


def _as_is(batch: Any) -> Any:
    return batch


class _Indexed(Dataset[Any]):
    """A map-style dataset whose samples carry their index."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return i, self.dataset[i]


class _IndexedCollate:
    """Collates (index, sample) pairs into (indices, collate(samples))."""

    def __init__(self, collate: Callable[[list[Any]], Any]):
        self.collate = collate

    def __call__(self, samples: list[tuple[int, Any]]) -> Any:
        return (torch.as_tensor([i for i, _ in samples], dtype=torch.long),
                self.collate([s for _, s in samples]))


class TrackedLoader:
    """A torch DataLoader over dataset rows whose batch tensors are TrackedTensors, each
    made by one BATCH_LEVEL `headwater.batch` op mapping batch rows to the sampler's
    dataset rows. See `tracked_loader`."""

    def __init__(self, tracker: Tracker, data: Any, batch_size: int = 1,
                 shuffle: bool = False, seed: int | None = 0, drop_last: bool = False, *,
                 node_id: str | None = None,
                 source: events_pb2.SourceRegistered | None = None,
                 sampler: Sampler[int] | None = None, **loader_kwargs: Any):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
        if sampler is not None and shuffle:
            raise ValueError("give a sampler or shuffle=True, not both")
        for bad in ("batch_sampler", "batch_size", "shuffle"):
            if bad in loader_kwargs:
                raise ValueError(f"{bad} is not a DataLoader option of tracked_loader")
        self.tracker = tracker
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch = 0
        if isinstance(data, (Tensor, TensorDataset)):
            self._tensors, self._single = _tensors_of(tracker, data, node_id, source)
            with NoSubclass():
                plain = [t.as_subclass(Tensor) for t in self._tensors]
            dataset: Any = _Rows(plain)
            if "collate_fn" in loader_kwargs:
                raise ValueError("collate_fn is only for general datasets; tensors and "
                                 "TensorDatasets are batched by indexing")
            collate: Any = _as_is
            self._node: str | None = None
        elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
            self._tensors, self._single = [], False
            self._node = _given_node(source, node_id, len(data)) or tracker.new_node_id()
            dataset = _Indexed(data)
            collate = _IndexedCollate(loader_kwargs.pop("collate_fn", None)
                                      or default_collate)
        else:
            raise TypeError(f"expected a tensor, a TensorDataset or a map-style dataset; "
                            f"got {type(data).__name__}")
        n = len(dataset)
        if sampler is None:
            generator = torch.Generator()
            if seed is not None:
                generator.manual_seed(seed)
            sampler = (RandomSampler(range(n), generator=generator) if shuffle
                       else SequentialSampler(range(n)))
        self.loader = DataLoader(dataset, batch_sampler=BatchSampler(
            sampler, batch_size, drop_last), collate_fn=collate, **loader_kwargs)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        for b, (index, batch) in enumerate(self.loader):
            rows = index.numpy()
            params = {"batch": b, "epoch": epoch, "batch_size": self.batch_size,
                      "shuffle": self.shuffle, "seed": self.seed}
            if self._node is None:
                parts = [self._batch_op(t, p, rows, params) for p, t in enumerate(batch)]
                yield parts[0] if self._single else tuple(parts)
            else:
                yield self._wrap_general(batch, rows, params, [0])

    def _batch_op(self, part: Tensor, p: int, rows: np.ndarray, params: dict[str, Any]
                  ) -> Any:
        if self.tracker._off:
            return part
        node = node_of(self._tensors[p])
        with NoSubclass():
            return record(self.tracker, part, "headwater.batch",
                           json.dumps({**params, "tensor": p}), [node],
                           rows_segments(0, rows), True, BATCH_LEVEL)

    def _wrap_general(self, batch: Any, rows: np.ndarray, params: dict[str, Any],
                      counter: list[int]) -> Any:
        """Every tensor of a collated batch: its rows are the sampled dataset rows."""
        if isinstance(batch, Tensor):
            if self.tracker._off:
                return batch
            p = counter[0]
            counter[0] += 1
            n = n_rows(shape_of(batch))
            ok = n == len(rows)
            segments = rows_segments(0, rows) if ok else (
                [all_rows(0, n, "op not understood: headwater.batch (tensor rows are not the "
                            "samples)")] if n else [])
            with NoSubclass():
                return record(self.tracker, batch.as_subclass(Tensor), "headwater.batch",
                               json.dumps({**params, "tensor": p}), [cast(str, self._node)],
                               segments, ok, BATCH_LEVEL)
        if isinstance(batch, dict):
            return {k: self._wrap_general(v, rows, params, counter) for k, v in batch.items()}
        if isinstance(batch, (tuple, list)):
            parts = [self._wrap_general(v, rows, params, counter) for v in batch]
            return tuple(parts) if isinstance(batch, tuple) else parts
        return batch


def tracked_loader(tracker: Tracker, data: Any, batch_size: int = 1, shuffle: bool = False,
                   seed: int | None = 0, drop_last: bool = False, **kwargs: Any
                   ) -> TrackedLoader:
    """Batches of a tensor, a TensorDataset (yields tuples (x, y, ...), all tracked with the
    same rows) or a map-style dataset (give `node_id`/`source` for its rows), drawn by a
    torch DataLoader (seeded RandomSampler when `shuffle`); other keyword arguments go to
    the DataLoader (num_workers, pin_memory, collate_fn for general datasets, sampler)."""
    return TrackedLoader(tracker, data, batch_size, shuffle, seed, drop_last, **kwargs)

