"""GradientBatch checks per batch (pure): a fast pass that flags every event the per-event
validator (validate.py) could refuse, with array comparisons and an exponent-bit mask over
the gradient bytes instead of per-event Python. Flagged events then go through the
per-event checks, which give the verdict and the reason naming the field, so both paths
refuse exactly the same events (tests/unit/test_gradient_screen.py checks that on random
corruptions). A new check in validate._gradient_batch needs its flag here too.
"""

from __future__ import annotations

import math
from itertools import chain, compress

import numpy as np

from headwater.stream_processors.processors.fields import GradientFields, columns
from headwater.stream_processors.processors.gradient_columns import ITEM_SIZE, lengths
from headwater.stream_processors.processors.validate import MAX_ID_LEN, Limits
from headwater.v1 import events_pb2

_KINDS = np.array(sorted(events_pb2.GradientBatch.Kind.values()), np.int64)
_PROJECTIONS = np.array(sorted(events_pb2.Projection.Kind.values()), np.int64)
_PER_ROW = ("loss", "loss_weight", "curvature_weight", "targets")
_SIZES = np.array([ITEM_SIZE.get(code, 0) for code in range(max(ITEM_SIZE) + 1)], np.int64)
_EXPONENT = {events_pb2.FLOAT16: ("<u2", np.uint16(0x7C00)),
             events_pb2.FLOAT32: ("<u4", np.uint32(0x7F80_0000)),
             events_pb2.FLOAT64: ("<u8", np.uint64(0x7FF0_0000_0000_0000))}

# Bytes checked per NumPy call: small events are joined up to this size, so the per-call
# cost is shared, while the temporaries stay in cache (one large join is memory-bound).
_CHUNK = 256 * 1024


def _bad_ids(values: tuple[str, ...]) -> np.ndarray:
    size = lengths(values)
    return (size == 0) | (size > MAX_ID_LEN)


def _bad_row_keys(node_ids: tuple, node_index: tuple, n: np.ndarray) -> np.ndarray:
    """Events whose node table is empty or holds a bad id, or whose node_index does not
    give one entry per row, each within the table."""
    n_nodes = lengths(node_ids)
    flagged = n_nodes == 0
    bad_node = _bad_ids(tuple(chain.from_iterable(node_ids)))
    flagged[np.repeat(np.arange(len(n)), n_nodes)[bad_node]] = True
    n_index = lengths(node_index)
    flagged |= (n_index != 0) & (n_index != n)
    if n_index.any():
        owner = np.repeat(np.arange(len(n)), n_index)
        index = np.fromiter(chain.from_iterable(node_index), np.int64, count=len(owner))
        flagged[owner[index >= n_nodes[owner]]] = True
    return flagged


def _non_finite(flagged: np.ndarray, dtype: np.ndarray, data: tuple[bytes, ...]) -> None:
    """Flag events whose gradient bytes hold a NaN or infinity: a float is one exactly
    when its exponent bits are all ones, so an integer mask over the words finds them (no
    float maths, no overflow). Events of one dtype are checked in chunks of ~_CHUNK bytes
    (a chunk with one flags all of its events; the per-event checks then decide)."""
    for code, (bits, mask) in _EXPONENT.items():
        ids = np.flatnonzero((dtype == code) & ~flagged)
        if not len(ids):
            continue
        ends = np.cumsum(lengths(tuple(data[i] for i in ids))) // _CHUNK
        for part in np.split(ids, np.flatnonzero(np.diff(ends)) + 1):
            words = np.frombuffer(b"".join([data[i] for i in part]), bits)
            if np.any((words & mask) == mask):
                flagged[part] = True


def flag_gradient_batches(fields: list[GradientFields], limits: Limits) -> np.ndarray:
    """A boolean per payload (its fields as decode read them): True where the per-event
    checks must decide (the payload may be invalid); every payload the per-event checks
    refuse is flagged."""
    e = len(fields)
    if not e:
        return np.zeros(0, bool)
    of = columns(fields, GradientFields._fields)
    n = lengths(of["rows"])
    dim = np.fromiter(of["dim"], np.int64, count=e)
    dtype = np.fromiter(of["dtype"], np.int64, count=e)
    size = np.where((dtype >= 0) & (dtype < len(_SIZES)),
                    _SIZES[np.clip(dtype, 0, len(_SIZES) - 1)], 0)
    flagged = _bad_ids(of["model_id"]) | _bad_ids(of["model_version"])
    flagged |= ~np.isin(np.fromiter(of["kind"], np.int64, count=e), _KINDS)
    flagged |= ~np.isin(np.fromiter(of["projection_kind"], np.int64, count=e), _PROJECTIONS)
    flagged |= _bad_row_keys(of["node_ids"], of["node_index"], n)
    flagged |= (n == 0) | (n > limits.gradient_rows) | (dim == 0)
    flagged |= (dim > limits.gradient_dim) | (size == 0)
    flagged |= lengths(of["gradients"]) != n * dim * size
    for name in _PER_ROW:
        length = lengths(of[name])
        flagged |= (length != 0) & (length != n)
    flagged |= ~np.isfinite(np.fromiter(of["learning_rate"], np.float64, count=e))
    _non_finite(flagged, dtype, of["gradients"])
    # Per-row values: one sum over all of them (a huge finite sum may overflow, which
    # only flags more events).
    ok = ~flagged
    values = np.fromiter(chain.from_iterable(chain.from_iterable(
        compress(of[name], ok) for name in _PER_ROW)), np.float64)
    with np.errstate(over="ignore"):
        total = values.sum()
    if not math.isfinite(total):
        flagged[ok] = True
    return flagged
