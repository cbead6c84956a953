"""GradientBatch checks per batch (pure): a fast pass that flags every event the per-event
validator (validate.py) could refuse, with array comparisons and an exponent-bit mask over
the gradient bytes instead of per-event Python. Flagged events then go through the
per-event checks, which give the verdict and the reason naming the field, so both paths
refuse exactly the same events (tests/unit/test_gradient_screen.py checks that on random
corruptions). A new check in validate._gradient_batch needs its flag here too.
"""

from __future__ import annotations

import math
from itertools import chain

import numpy as np

from headwater.stream_processors.processors.gradient_columns import ITEM_SIZE
from headwater.stream_processors.processors.validate import MAX_ID_LEN, Limits
from headwater.v1 import events_pb2

_KINDS = frozenset(events_pb2.GradientBatch.Kind.values())
_PROJECTIONS = frozenset(events_pb2.Projection.Kind.values())
_PER_ROW = ("loss", "loss_weight", "curvature_weight", "targets")
_EXPONENT = {events_pb2.FLOAT16: ("<u2", np.uint16(0x7C00)),
             events_pb2.FLOAT32: ("<u4", np.uint32(0x7F80_0000)),
             events_pb2.FLOAT64: ("<u8", np.uint64(0x7FF0_0000_0000_0000))}


def _plain_ok(p: events_pb2.GradientBatch) -> bool:
    """The checks that are a few comparisons each: ids, enums, row keys' node table."""
    keys = p.row_keys
    n = len(keys.rows)
    if not (0 < len(p.model_id) <= MAX_ID_LEN and 0 < len(p.model_version) <= MAX_ID_LEN
            and p.kind in _KINDS and p.projection.kind in _PROJECTIONS and keys.node_ids
            and all(0 < len(node) <= MAX_ID_LEN for node in keys.node_ids)):
        return False
    index = keys.node_index
    return not index or (len(index) == n and max(index) < len(keys.node_ids))


# Bytes checked per NumPy call: small events are joined up to this size, so the per-call
# cost is shared, while the temporaries stay in cache (one large join is memory-bound).
_CHUNK = 256 * 1024


class _FiniteScan:
    """Finds events whose gradient bytes hold a NaN or infinity: a float is one exactly
    when its exponent bits are all ones, so an integer mask over the words finds them (no
    float maths, no overflow). Events are checked in chunks of one dtype."""

    def __init__(self, flagged: np.ndarray) -> None:
        self.flagged = flagged
        self.pending: dict[int, tuple[list[int], list[bytes], int]] = {}

    def add(self, i: int, dtype: int, data: bytes) -> None:
        if dtype not in _EXPONENT or len(data) % ITEM_SIZE[dtype]:
            return  # refused on its size already
        ids, chunk, size = self.pending.get(dtype, ([], [], 0))
        ids.append(i)
        chunk.append(data)
        self.pending[dtype] = (ids, chunk, size + len(data))
        if size + len(data) >= _CHUNK:
            self.check(dtype)

    def check(self, dtype: int) -> None:
        ids, chunk, _ = self.pending.pop(dtype)
        bits, mask = _EXPONENT[dtype]
        words = np.frombuffer(chunk[0] if len(chunk) == 1 else b"".join(chunk), bits)
        if np.any((words & mask) == mask):
            self.flagged[ids] = True

    def finish(self) -> None:
        for dtype in list(self.pending):
            self.check(dtype)


def flag_gradient_batches(ps: list[events_pb2.GradientBatch], limits: Limits) -> np.ndarray:
    """A boolean per payload: True where the per-event checks must decide (the payload may
    be invalid); every payload the per-event checks refuse is flagged."""
    e = len(ps)
    flagged = np.fromiter((not _plain_ok(p) for p in ps), bool, count=e)
    n = np.fromiter((len(p.row_keys.rows) for p in ps), np.int64, count=e)
    dim = np.fromiter((p.dim for p in ps), np.int64, count=e)
    dtype = np.fromiter((p.dtype for p in ps), np.int64, count=e)
    size = np.fromiter((ITEM_SIZE.get(d, 0) for d in dtype), np.int64, count=e)
    nbytes = np.empty(e, np.int64)
    scan = _FiniteScan(flagged)
    for i, p in enumerate(ps):
        data = p.gradients  # each read of a bytes field copies it: read once
        nbytes[i] = len(data)
        scan.add(i, p.dtype, data)
    scan.finish()
    flagged |= (n == 0) | (n > limits.gradient_rows) | (dim == 0)
    flagged |= (dim > limits.gradient_dim) | (size == 0) | (nbytes != n * dim * size)
    for name in _PER_ROW:
        length = np.fromiter((len(getattr(p, name)) for p in ps), np.int64, count=e)
        flagged |= (length != 0) & (length != n)
    lr = np.fromiter((p.learning_rate for p in ps), np.float64, count=e)
    flagged |= ~np.isfinite(lr)
    # Per-row values: one sum over all of them (a huge finite sum may overflow, which
    # only flags more events).
    ok = np.flatnonzero(~flagged)
    values = np.fromiter(chain.from_iterable(
        getattr(ps[i], name) for i in ok for name in _PER_ROW), np.float64)
    with np.errstate(over="ignore"):
        total = values.sum()
    if not math.isfinite(total):
        flagged[ok] = True
    return flagged
