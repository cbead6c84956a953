"""Training-row digests (multisets of row hashes): which rows a model was trained on,
so a request for rows it never held (or already forgot) is refused; unlearning methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from headwater.errors import RowsNotInTraining
from headwater.producers.unlearning.rows import (
    Rows,
    as_numpy,
)
from headwater.v1 import events_pb2

_METHOD_NAMES = {"auto": events_pb2.UNLEARNING_METHOD_UNSPECIFIED, "newton": events_pb2.NEWTON,
                 "fine_tune": events_pb2.FINE_TUNE, "replay": events_pb2.REPLAY,
                 "partial_replay": events_pb2.PARTIAL_REPLAY}



def parse_method(method: int | str) -> int:
    """`events_pb2.UnlearningMethod` value (0 = auto, NEWTON, FINE_TUNE, REPLAY,
    PARTIAL_REPLAY) or its name."""
    if isinstance(method, str):
        key = method.lower()
        if key not in _METHOD_NAMES:
            raise ValueError(f"method must be one of {', '.join(_METHOD_NAMES)} or an "
                             f"UnlearningMethod value; got {method!r}")
        return _METHOD_NAMES[key]
    if method not in _METHOD_NAMES.values():
        raise ValueError(f"method must be UNLEARNING_METHOD_UNSPECIFIED (0), NEWTON (1), "
                         f"FINE_TUNE (2), REPLAY (3) or PARTIAL_REPLAY (4); got {method!r}")
    return int(method)


# -- training-row digests (multisets of row hashes) ----------------------------------------

def _splitmix64(h: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised (uint64 arithmetic wraps, as intended)."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def row_hashes(x: Any, y: Any) -> np.ndarray:
    """One 64-bit hash per row of (x, y), from the float64 bit patterns of its values: equal
    rows hash equally whatever their dtype was (-0.0 counts as 0.0)."""
    xa, ya = as_numpy(x), as_numpy(y)
    if len(xa) != len(ya):
        raise ValueError(f"x has {len(xa)} rows but y has {len(ya)}")
    h = np.full(len(xa), 0x9E3779B97F4A7C15, dtype=np.uint64)
    for block in (xa.reshape(len(xa), -1), ya.reshape(len(ya), -1)):
        cols = np.asfortranarray(block, dtype=np.float64) + 0.0  # column-contiguous copy
        for j in range(cols.shape[1]):  # chain the columns: order matters, as it should
            h = _splitmix64(h ^ cols[:, j].view(np.uint64))
    return h


@dataclass(frozen=True, eq=False)
class RowDigest:
    """The multiset of training rows a model was trained on, as sorted row hashes (8 bytes a
    row, never the data): lets unlearning check that forget rows were trained on, that the
    retained rows are the rest, and tell a repeated request (rows already forgotten)."""

    hashes: np.ndarray

    @classmethod
    def of(cls, x: Any, y: Any) -> RowDigest:
        return cls(np.sort(row_hashes(x, y)))

    def __len__(self) -> int:
        return len(self.hashes)

    def missing(self, x: Any, y: Any) -> np.ndarray:
        """Boolean per row of (x, y): not covered by the digest. Multiset-aware: a row given
        twice but trained on once is missing the second time."""
        return self._missing(row_hashes(x, y))

    def contains(self, x: Any, y: Any) -> np.ndarray:
        """Boolean per row: still in the training data (False once forgotten)."""
        return ~self.missing(x, y)

    def minus(self, x: Any, y: Any) -> RowDigest:
        """The digest without one occurrence of each row of (x, y) (absent rows are
        ignored)."""
        return self._minus(row_hashes(x, y))

    def check_partition(self, forget: Rows, retain: Rows) -> RowDigest:
        """Raise unless forget ∪ retain is exactly the training multiset; returns the digest
        of what remains (the retained rows)."""
        hf, hr = row_hashes(*forget), row_hashes(*retain)
        gone = self._missing(hf)
        if gone.any():
            rows = np.flatnonzero(gone)
            raise RowsNotInTraining(
                f"{len(rows)} of {len(gone)} forget rows are not in the model's training data "
                f"(never trained on, or already forgotten); first: forget row {rows[0]}", rows)
        rest = self._minus(hf)
        if len(hr) != len(rest) or not np.array_equal(np.sort(hr), rest.hashes):
            extra = int(rest._missing(hr).sum())
            raise ValueError(f"retain must be the training rows minus the forget rows: it has "
                             f"{len(hr)} rows, {len(rest)} expected; {extra} of its rows are "
                             "not among the training rows left once the forget rows go")
        return rest

    def _missing(self, q: np.ndarray) -> np.ndarray:
        order = np.argsort(q, kind="stable")
        sq = q[order]
        # occurrence number of each query row among equal hashes (0 for the first)
        first = np.searchsorted(sq, sq, side="left")
        occurrence = np.empty(len(q), dtype=np.int64)
        occurrence[order] = np.arange(len(q)) - first
        have = (np.searchsorted(self.hashes, q, side="right")
                - np.searchsorted(self.hashes, q, side="left"))
        return np.asarray(occurrence >= have)

    def _minus(self, q: np.ndarray) -> RowDigest:
        values, counts = np.unique(self.hashes, return_counts=True)
        gone, gone_counts = np.unique(q, return_counts=True)
        at = np.searchsorted(values, gone).clip(0, max(len(values) - 1, 0))
        hit = (values[at] == gone) if len(values) else np.zeros(len(gone), dtype=bool)
        counts = counts.copy()
        np.subtract.at(counts, at[hit], gone_counts[hit])
        return RowDigest(np.repeat(values, np.maximum(counts, 0)))
