"""Tracked torch tensors: every recorded op's row map resolves each output row to exactly the
source rows it came from (checked against row ids carried through the same ops), autograd
and training work through tracked tensors, and DataLoader batches map to dataset rows."""

from __future__ import annotations

import copy
import json
import math
import pickle
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from support.lineage_oracle import Key, along, expand, obj, reduce_ref, row_sets  # noqa: E402
from support.lineage_oracle import Recorder as ArrayRecorder  # noqa: E402
from support.lineage_oracle import n_rows as _rows  # noqa: E402
from support.lineage_oracle import union as _or  # noqa: E402
from torch.utils.data import Dataset, TensorDataset  # noqa: E402

from headwater.producers.envelope import EnvelopeBuilder  # noqa: E402
from headwater.producers.tracking import TrackedArray, Tracker  # noqa: E402
from headwater.producers.tracking.torch import (  # noqa: E402
    TrackedLoader,
    TrackedTensor,
    row_keys,
    shuffle,
    split,
    to_array,
    track_tensor,
    tracked_loader,
)
from headwater.stream_processors.processors.validate import validate_event  # noqa: E402
from headwater.v1 import events_pb2  # noqa: E402

BATCH_LEVEL = events_pb2.OpRecorded.BATCH_LEVEL


# ---------------------------------------------------------------------------------------
# Helpers: resolution through the captured events, and the brute-force reference


class Recorder(ArrayRecorder):
    """The oracle's Recorder, with sources tracked as tensors."""

    def source(self, values: Any, node_id: str) -> Any:
        t = track_tensor(self.tracker, torch.as_tensor(values), node_id)
        self.sources[node_id] = len(values)
        return t


def kinds(op: events_pb2.OpRecorded) -> list[str]:
    return [str(s.WhichOneof("kind")) for s in op.row_map.segments]


# ---------------------------------------------------------------------------------------
# Property: random pipelines of torch ops resolve exactly like the brute-force reference.
#
# As in test_tracking.py: the reference carries an object array per tensor whose elements
# are the (source, row) sets of their row; each op is applied a second time to it with
# NumPy's equivalent (broadcasting by union), and a result row's set is the union of its
# elements.

Pool = list[tuple[Any, list[frozenset[Key]]]]

UNARY: list[Callable[[Any], Any]] = [
    torch.neg, torch.exp, F.relu, torch.sigmoid, F.gelu, torch.abs, lambda a: a * 2.0,
    lambda a: 1.0 - a, lambda a: a.float().double(), lambda a: a.clone().detach(),
    lambda a: torch.clamp(a, 1.2, 1.8), lambda a: a.contiguous(), lambda a: a.to("cpu"),
    lambda a: F.dropout(a, 0.5, training=True)]


def _pick(data: Any, pool: Pool, label: str,
          ok: Callable[[Any], bool] = lambda a: True) -> tuple[Any, np.ndarray] | None:
    fits = [p for p in pool if ok(p[0])]
    if not fits:
        return None
    t, sets = data.draw(st.sampled_from(fits), label=label)
    if isinstance(t, TrackedTensor) and t.tracker is not None:
        # rows on another dim stay pending (element-level) until used; the reference is
        # row-level, so record them now (their element-level exactness: test_lineage_exact)
        t.node_id  # noqa: B018
    return t, expand(sets, tuple(t.shape))


def _apply(data: Any, pool: Pool) -> bool:  # noqa: C901 - one branch per op kind
    """Draw one supported op over the pool; add its result(s). False: nothing applied."""
    kind = data.draw(st.sampled_from([
        "unary", "binary", "binary_row", "normalise", "reduce", "argmax", "slice", "indices",
        "mask", "int", "tuple", "ellipsis", "newaxis", "cat", "cat1", "stack", "split",
        "unbind", "index_select", "gather", "take", "masked_select", "nonzero", "reshape",
        "flatten", "unsqueeze", "transpose", "permute3", "flip", "roll", "repeat",
        "repeat_interleave", "diff", "matmul", "linear", "softmax", "sort", "cumsum1",
        "expand", "pad", "topk", "where"]), label="op")
    got = _pick(data, pool, "x", lambda a: a.ndim >= 1 and a.shape[0] >= 1)
    if got is None:
        return False
    x, ref = got
    n, nd = x.shape[0], x.ndim
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    results: list[tuple[Any, np.ndarray]] = []
    if kind == "unary":
        results.append((data.draw(st.sampled_from(UNARY))(x), ref))
    elif kind in ("binary", "where"):
        def fits(a: Any) -> bool:
            try:
                return torch.broadcast_shapes(a.shape, x.shape) == x.shape
            except RuntimeError:
                return False
        other = _pick(data, pool, "y", fits)
        assert other is not None  # x itself fits
        y, yref = other
        f = data.draw(st.sampled_from(["add", "rsub", "maximum"]))
        if kind == "where":
            results.append((torch.where(x > 1.5, x, y), _or(ref, yref)))
        elif f == "add":
            results.append((x + y, _or(ref, yref)))
        elif f == "rsub":
            results.append((y - x, _or(yref, ref)))
        else:
            results.append((torch.maximum(x, y), _or(ref, yref)))
    elif kind == "binary_row":  # a 1-D operand along the columns: each row uses all of it
        if nd != 2:
            return False
        c = x.shape[1]
        other = _pick(data, pool, "y", lambda a: a.ndim == 1 and len(a) >= c)
        if other is None:
            return False
        y, yref = other
        results.append((x * y[:c], _or(ref, yref[:c])))
    elif kind == "normalise":
        m = reduce_ref(ref, 0)
        results.append(((x - x.mean(0)) / x.std(0), _or(ref, m)))
    elif kind == "reduce":
        f = data.draw(st.sampled_from(["sum", "mean", "max", "std", "logsumexp", "amax"]))
        dim = data.draw(st.sampled_from([0, -1, None] + ([1] if nd > 1 else [])))
        keep = data.draw(st.booleans())
        if dim is None:
            if f in ("logsumexp", "amax"):
                return False
            results.append((getattr(x, f)(), reduce_ref(ref, None)))
        else:
            out = getattr(x, f)(dim=dim, keepdim=keep)
            results.append((out.values if f == "max" else out, reduce_ref(ref, dim, keep)))
    elif kind == "argmax":
        results.append((x.argmax(dim=0).double(), reduce_ref(ref, 0)))
    elif kind == "slice":
        start = data.draw(st.none() | st.integers(-n - 2, n + 2))
        stop = data.draw(st.none() | st.integers(-n - 2, n + 2))
        step = data.draw(st.sampled_from([None, 1, 2, 3, 7]))
        cut = slice(start, stop, step)
        results.append((x[cut], ref[cut]))
    elif kind == "indices":
        idx = rng.permutation(n) if data.draw(st.booleans()) else rng.integers(
            -n, n, size=data.draw(st.integers(1, 2 * n + 5)))
        key: Any = idx.tolist() if data.draw(st.booleans()) else torch.as_tensor(idx)
        results.append((x[key], ref[idx]))
    elif kind == "mask":
        mask = rng.random(n) < 0.5
        mask[rng.integers(0, n)] = True
        results.append((x[torch.as_tensor(mask)], ref[mask]))
    elif kind == "int":
        i = data.draw(st.integers(-n, n - 1))
        results.append((x[i], obj(ref[i])))
    elif kind == "tuple":
        if nd < 2:
            return False
        c = x.shape[1]
        first = data.draw(st.sampled_from(["slice", "int", "indices"]))
        pair = [0] * n if first == "indices" else [0, 0]  # broadcasts with the rows key
        second: Any = data.draw(st.sampled_from([slice(None), slice(0, 1), 0, c - 1, pair]))
        if first == "indices":
            rows_np = np.arange(n)[::-1].copy()
            row_key: Any = torch.as_tensor(rows_np)
        else:
            rows_np = row_key = (slice(None, None, 2) if first == "slice"
                                 else data.draw(st.integers(-n, n - 1)))
        results.append((x[row_key, second], obj(ref[rows_np, second])))
    elif kind == "ellipsis":
        results.append((x[..., :1], ref[..., :1]) if nd > 1 else (x[...], ref[...]))
    elif kind == "newaxis":
        results.append((x[None], ref[None]) if data.draw(st.booleans())
                       else (x[:, None], ref[:, None]))
    elif kind in ("cat", "cat1", "stack"):
        if kind == "cat":
            other = _pick(data, pool, "y", lambda a: a.ndim == nd and a.shape[1:] == x.shape[1:])
        elif kind == "cat1":
            other = _pick(data, pool, "y", lambda a: a.ndim == nd and nd >= 2
                          and a.shape[0] == n and a.shape[2:] == x.shape[2:])
        else:
            other = _pick(data, pool, "y", lambda a: a.shape == x.shape)
        if other is None:
            return False
        y, yref = other
        if kind == "cat":
            f = data.draw(st.sampled_from(["cat", "concat", "vstack"] if nd >= 2
                                          else ["cat", "hstack"]))
            results.append((getattr(torch, f)([x, y]), np.concatenate([ref, yref])))
        elif kind == "cat1":
            f = data.draw(st.sampled_from(["cat", "hstack", "column_stack"]))
            t = torch.cat([x, y], dim=1) if f == "cat" else getattr(torch, f)([x, y])
            results.append((t, np.concatenate([ref, yref], axis=1)))
        else:
            dim = data.draw(st.sampled_from([0, 1, -1]))
            results.append((torch.stack([x, y], dim=dim), np.stack([ref, yref], axis=dim)))
    elif kind == "split":
        k = data.draw(st.integers(1, 4))
        how = data.draw(st.sampled_from(["split", "chunk", "tensor_split", "indices"]))
        if how == "split":
            parts, refs = x.split(k), [ref[i:i + k] for i in range(0, n, k)]
        elif how == "chunk":
            size = math.ceil(n / k)
            parts, refs = torch.chunk(x, k), [ref[i:i + size] for i in range(0, n, size)]
        elif how == "tensor_split":
            parts, refs = torch.tensor_split(x, k), np.array_split(ref, k)
        else:
            bounds = sorted(rng.integers(0, n + 1, size=k).tolist())
            parts, refs = torch.tensor_split(x, bounds), np.split(ref, bounds)
        results.extend(zip(parts, refs, strict=True))
    elif kind == "unbind":
        results.extend((p, obj(ref[i])) for i, p in enumerate(x.unbind(0)))
    elif kind == "index_select":
        dim = data.draw(st.sampled_from([0] + ([1] if nd > 1 else [])))
        idx = rng.integers(0, x.shape[dim], size=data.draw(st.integers(1, 12)))
        out = torch.index_select(x, dim, torch.as_tensor(idx))
        results.append((out, ref[idx] if dim == 0 else ref[:, idx]))
    elif kind == "gather":
        if nd != 2:
            return False
        dim = data.draw(st.sampled_from([0, 1]))
        shape = (int(rng.integers(1, n + 3)), x.shape[1]) if dim == 0 else (
            n, int(rng.integers(1, 5)))
        idx = rng.integers(0, x.shape[dim], size=shape)
        results.append((torch.gather(x, dim, torch.as_tensor(idx)),
                        np.take_along_axis(ref, idx, axis=dim)))
    elif kind == "take":
        idx = rng.integers(-x.numel(), x.numel(), size=data.draw(st.integers(1, 10)))
        results.append((torch.take(x, torch.as_tensor(idx)), ref.ravel()[idx]))
    elif kind == "masked_select":
        mask = rng.random(tuple(x.shape)) < 0.5
        results.append((torch.masked_select(x, torch.as_tensor(mask)), ref[mask]))
    elif kind == "nonzero":
        coords = np.argwhere(np.asarray(x.detach()) > 1.5)
        sets = [ref[tuple(c)] for c in coords]
        results.append((torch.nonzero(x > 1.5).double(), expand(sets, (len(coords), nd))))
    elif kind == "reshape":  # (size // m, m): rows merge, split or straddle
        size = x.numel()
        m = data.draw(st.sampled_from([d for d in range(1, size + 1) if size % d == 0]))
        new: tuple[int, ...] = (size // m, m) if data.draw(st.booleans()) else (size // m, m, 1)
        f = data.draw(st.sampled_from(["reshape", "view"]))
        t = x.reshape(new) if f == "reshape" else x.contiguous().view(new)
        results.append((t, ref.reshape(new)))
    elif kind == "flatten":
        t = x.flatten() if data.draw(st.booleans()) else x.ravel()
        results.append((t, ref.reshape(-1)))
    elif kind == "unsqueeze":
        results.append((x.unsqueeze(0), ref[None]) if data.draw(st.booleans())
                       else (x.unsqueeze(-1).squeeze(-1).unsqueeze(1), ref[:, None]))
    elif kind == "transpose":
        if nd != 2:
            return False
        f = data.draw(st.sampled_from(["T", "t", "transpose", "permute", "mT", "movedim"]))
        t = {"T": lambda: x.T, "t": lambda: x.t(), "transpose": lambda: x.transpose(0, 1),
             "permute": lambda: x.permute(1, 0), "mT": lambda: x.mT,
             "movedim": lambda: torch.movedim(x, 0, 1)}[f]()
        results.append((t, ref.T))
    elif kind == "permute3":  # dim 0 stays: rows keep their lineage
        x3, r3 = x.reshape(n, -1, 1), ref.reshape(n, -1, 1)
        results.append((x3.permute(0, 2, 1), r3.transpose(0, 2, 1)))
    elif kind == "flip":
        f = data.draw(st.sampled_from(["flip0", "flip-1", "flipud"]))
        if f == "flip0":
            results.append((torch.flip(x, [0]), np.flip(ref, 0)))
        elif f == "flipud":
            results.append((torch.flipud(x), np.flip(ref, 0)))
        else:
            results.append((x.flip(-1), np.flip(ref, -1)))
    elif kind == "roll":
        shift = data.draw(st.integers(-40, 40))
        results.append((torch.roll(x, shift, 0), np.roll(ref, shift, 0)))
    elif kind == "repeat":
        r = data.draw(st.integers(1, 3))
        how = data.draw(st.sampled_from(["repeat", "tile", "lead"]))
        if how == "repeat":
            reps = (r,) + (1,) * (nd - 1)
            results.append((x.repeat(*reps), np.tile(ref, reps)))
        elif how == "tile":
            results.append((torch.tile(x, (r,)), np.tile(ref, (r,))))
        else:
            reps = (r,) + (1,) * nd
            results.append((x.repeat(*reps), np.tile(ref, reps)))
    elif kind == "repeat_interleave":
        r = data.draw(st.integers(1, 3))
        if data.draw(st.booleans()):
            results.append((torch.repeat_interleave(x, r, dim=0), np.repeat(ref, r, axis=0)))
        else:
            results.append((torch.repeat_interleave(x, r), np.repeat(ref, r)))
    elif kind == "diff":
        if n < 2:
            return False
        results.append((torch.diff(x, dim=0), _or(ref[1:], ref[:-1])))
    elif kind == "matmul":
        if nd != 2:
            return False
        if data.draw(st.booleans()):  # x.T @ x: every output row holds every row of x
            full = reduce_ref(ref, None)[()]
            expect = np.empty((x.shape[1], x.shape[1]), dtype=object)
            expect.fill(full)
            results.append((x.T @ x, expect))
        else:  # against a plain (untracked) weight: rows of x
            w = torch.ones(x.shape[1], 3, dtype=x.dtype)
            results.append((x @ w, np.broadcast_to(reduce_ref(ref, 1, True), (n, 3)).copy()))
    elif kind == "linear":
        if nd != 2:
            return False
        layer = torch.nn.Linear(x.shape[1], 2, dtype=x.dtype)
        results.append((layer(x), np.broadcast_to(reduce_ref(ref, 1, True), (n, 2)).copy()))
    elif kind == "softmax":
        dim = data.draw(st.sampled_from([0, -1]))
        results.append((F.softmax(x, dim=dim), along(ref, dim)))
    elif kind == "sort":
        dim = data.draw(st.sampled_from([0, -1]))
        results.append((torch.sort(x, dim=dim).values, along(ref, dim)))
    elif kind == "topk":
        k = data.draw(st.integers(1, n))
        results.append((x.topk(k, dim=0).values,
                        np.broadcast_to(reduce_ref(ref, 0, True), (k, *x.shape[1:])).copy()))
    elif kind == "cumsum1":
        if nd != 2:
            return False
        results.append((torch.cumsum(x, dim=1), along(ref, 1)))
    elif kind == "expand":
        results.append((x[:1].expand(*x.shape), np.broadcast_to(ref[:1], x.shape).copy()))
    elif kind == "pad":
        if nd != 2:
            return False
        before, after = data.draw(st.integers(-1, 2)), data.draw(st.integers(0, 2))
        t = F.pad(x, (0, 0, before, after))
        sets = ([frozenset()] * max(0, before) + row_sets(ref)[max(0, -before):]
                + [frozenset()] * after)
        results.append((t, expand(sets, tuple(t.shape))))
    for t, r in results:
        assert isinstance(t, TrackedTensor), (kind, type(t))
        assert tuple(t.shape) == r.shape, (kind, t.shape, r.shape)
        pool.append((t, row_sets(r)))
    return True


@pytest.mark.filterwarnings("ignore::UserWarning")  # std() of one row
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_pipelines_resolve_like_brute_force(data: Any) -> None:
    rec = Recorder()
    pool: Pool = []
    cols = data.draw(st.integers(1, 4), label="cols")
    for s in range(data.draw(st.integers(1, 2), label="sources")):
        rows = data.draw(st.integers(1, 30), label="rows")
        shape = (rows, cols) if data.draw(st.booleans()) else (rows,)
        values = np.random.default_rng(s).uniform(1.0, 2.0, size=shape)
        node = f"src-{s}"
        pool.append((rec.source(values, node), [frozenset({(node, r)}) for r in range(rows)]))
    steps = data.draw(st.integers(3, 8), label="ops")
    applied = 0
    for _ in range(steps * 3):
        applied += _apply(data, pool)
        if applied == steps:
            break
    for t, sets in pool:
        if t.numel() and _rows(t):
            assert rec.resolve(t) == [set(r) for r in sets]
    for op in rec.events:
        assert op.understood, op.op_name
    assert len({op.op_id for op in rec.events}) == len(rec.events)
    assert len({op.output_node_id for op in rec.events}) == len(rec.events)


# ---------------------------------------------------------------------------------------
# Each op kind


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def _x(rec: Recorder, rows: int = 6, cols: int = 3, node: str = "src-x") -> Any:
    return rec.source(torch.arange(rows * cols, dtype=torch.float64).reshape(rows, cols) + 1.0,
                      node)


def _each(node: str, rows: Iterable[int]) -> list[set[Key]]:
    return [{(node, r)} for r in rows]


def _all_of(node: str, n: int, times: int) -> list[set[Key]]:
    return [{(node, r) for r in range(n)}] * times


D = torch.float64
CASES: list[tuple[str, Callable[[Any], Any], Any]] = [
    ("matmul plain weight", lambda x: x @ torch.ones(3, 2, dtype=D), _each("src-x", range(6))),
    ("F.linear", lambda x: F.linear(x, torch.ones(4, 3, dtype=D), torch.ones(4, dtype=D)),
     _each("src-x", range(6))),
    ("conv1d batched", lambda x: F.conv1d(x.reshape(6, 1, 3), torch.ones(2, 1, 2, dtype=D)),
     _each("src-x", range(6))),
    ("conv1d unbatched", lambda x: F.conv1d(x, torch.ones(2, 6, 2, dtype=D)),
     _all_of("src-x", 6, 2)),
    ("max_pool1d", lambda x: F.max_pool1d(x.reshape(6, 1, 3), 2), _each("src-x", range(6))),
    ("layer_norm", lambda x: F.layer_norm(x, (3,)), _each("src-x", range(6))),
    ("batch_norm training", lambda x: F.batch_norm(x, None, None, training=True),
     _all_of("src-x", 6, 6)),
    ("batch_norm eval", lambda x: F.batch_norm(x, torch.zeros(3, dtype=D),
                                               torch.ones(3, dtype=D)), _each("src-x", range(6))),
    ("sdpa batched", lambda x: F.scaled_dot_product_attention(*[x.reshape(6, 1, 3)] * 3),
     _each("src-x", range(6))),
    ("sdpa positions", lambda x: F.scaled_dot_product_attention(x, x, x),
     _all_of("src-x", 6, 6)),
    ("mse none", lambda x: F.mse_loss(x, torch.zeros(6, 3, dtype=D), reduction="none"),
     _each("src-x", range(6))),
    ("cross_entropy mean", lambda x: F.cross_entropy(x, torch.zeros(6, dtype=torch.long)),
     _all_of("src-x", 6, 1)),
    ("cross_entropy none", lambda x: F.cross_entropy(x, torch.zeros(6, dtype=torch.long),
                                                     reduction="none"), _each("src-x", range(6))),
    ("softmax dim 1", lambda x: F.softmax(x, dim=1), _each("src-x", range(6))),
    ("log_softmax dim 0", lambda x: torch.log_softmax(x, 0), _all_of("src-x", 6, 6)),
    ("normalize dim 0", lambda x: F.normalize(x, dim=0), _all_of("src-x", 6, 6)),
    ("glu rows", lambda x: F.glu(x, dim=0), [{("src-x", r), ("src-x", r + 3)} for r in range(3)]),
    ("topk dim 1", lambda x: x.topk(2, dim=1).indices, _each("src-x", range(6))),
    ("where(cond)", lambda x: torch.where(x > 10)[0], _each("src-x", [3, 3, 4, 4, 4, 5, 5, 5])),
    ("argwhere", lambda x: torch.argwhere(x > 13), _each("src-x", [4, 4, 5, 5, 5])),
    ("tensor_split indices", lambda x: torch.tensor_split(x, [1, 4])[1], _each("src-x", [1, 2, 3])),
    ("vsplit", lambda x: torch.vsplit(x, [2])[1], _each("src-x", range(2, 6))),
    ("hsplit", lambda x: torch.hsplit(x, [1])[1], _each("src-x", range(6))),
    ("unbind dim 1", lambda x: x.unbind(1)[2], _each("src-x", range(6))),
    ("unbind rows", lambda x: list(x)[4], _each("src-x", [4, 4, 4])),
    ("outer", lambda x: torch.outer(x[:, 0], torch.ones(5, dtype=D)), _each("src-x", range(6))),
    ("dot", lambda x: torch.dot(x[:, 0], x[:, 1]), _all_of("src-x", 6, 1)),
    ("cdist", lambda x: torch.cdist(x, x[:2]), [{("src-x", r), ("src-x", 0), ("src-x", 1)}
                                                for r in range(6)]),
    ("broadcast_tensors", lambda x: torch.broadcast_tensors(x, x[:1])[1], _each("src-x", [0] * 6)),
    ("expand_as", lambda x: x[4:5].expand_as(x), _each("src-x", [4] * 6)),
    ("dstack", lambda x: torch.dstack([x, x]), _each("src-x", range(6))),
    ("dtype view", lambda x: x.view(torch.int64), _each("src-x", range(6))),
    ("unflatten", lambda x: x.unflatten(1, (3, 1)), _each("src-x", range(6))),
    ("movedim rows stay", lambda x: torch.movedim(x.reshape(6, 3, 1), 1, 2),
     _each("src-x", range(6))),
    ("pad rows", lambda x: F.pad(x, (0, 0, 2, 0)), [set(), set(), *_each("src-x", range(6))]),
    ("take_along_dim flat", lambda x: torch.take_along_dim(x, torch.tensor([16, 0])),
     _each("src-x", [5, 0])),
    ("gather rows", lambda x: torch.gather(x, 0, torch.tensor([[5, 0, 0]])),
     [{("src-x", 5), ("src-x", 0)}]),
    ("data", lambda x: x.data, _each("src-x", range(6))),
    ("one_hot", lambda x: F.one_hot(x[:, 0].long() % 4), _each("src-x", range(6))),
    ("embedding", lambda x: F.embedding(x[:, 0].long() % 4, torch.ones(4, 2, dtype=D)),
     _each("src-x", range(6))),
    ("std_mean", lambda x: torch.std_mean(x, dim=1)[1], _each("src-x", range(6))),
    ("max(dim) indices", lambda x: x.max(0).indices, _all_of("src-x", 6, 3)),
    ("quantile q vector", lambda x: torch.quantile(x, torch.tensor([0.1, 0.9], dtype=D), dim=1),
     _all_of("src-x", 6, 2)),
]


@pytest.mark.parametrize("name, call, expect", CASES, ids=[c[0] for c in CASES])
def test_op_row_maps(rec: Recorder, name: str, call: Callable[[Any], Any], expect: Any) -> None:
    out = call(_x(rec))
    assert isinstance(out, TrackedTensor), type(out)
    assert rec.resolve(out) == expect
    assert all(op.understood for op in rec.events), [
        op.op_name for op in rec.events if not op.understood]


def test_op_names(rec: Recorder) -> None:
    x = _x(rec)
    for f, name in [(lambda: x + 1, "torch.Tensor.add"), (lambda: torch.add(x, 1), "torch.add"),
                    (lambda: x[0], "torch.Tensor.__getitem__"),
                    (lambda: 1 - x, "torch.Tensor.__rsub__"),
                    (lambda: F.relu(x), "torch.nn.functional.relu"),
                    (lambda: x.T.node_id, "torch.Tensor.T"),  # pending: recorded when used
                    (lambda: torch.cat([x, x]), "torch.cat"),
                    (lambda: F.linear(x, torch.ones(2, 3, dtype=D)), "torch.nn.functional.linear"),
                    (lambda: torch.linalg.qr(x).Q, "torch.linalg.qr"),
                    (lambda: torch.special.erfcx(x), "torch.special.erfcx"),
                    (lambda: torch.fft.rfft(x), "torch.fft.rfft"),
                    (lambda: x.unique(), "torch.Tensor.unique")]:
        f()
        assert rec.last().op_name == name
        assert rec.last().code_version == "t1"


def test_model_parameters_are_constants_and_index_tensors_select(rec: Recorder) -> None:
    x = _x(rec)
    w = rec.source(torch.ones(3, 2, dtype=D), "src-w")
    proj = x @ w  # a tracked right operand: every output row uses all its rows
    assert rec.resolve(proj)[3] == {("src-x", 3), ("src-w", 0), ("src-w", 1), ("src-w", 2)}
    picked = x[x[:, 0] > 6]  # a mask derived from x: an input of the op, but it selects
    op = rec.last()
    assert len(op.input_node_ids) == 2 and {s.input for s in op.row_map.segments} == {0}
    assert rec.resolve(picked) == _each("src-x", (2, 3, 4, 5))
    order = torch.argsort(x[:, 1], descending=True)
    assert rec.resolve(torch.index_select(x, 0, order)) == _each("src-x", range(5, -1, -1))
    assert len(rec.last().input_node_ids) == 2
    y = x.to(rec.source(torch.zeros(2, dtype=torch.float32), "src-ref"))  # a dtype reference
    assert y.dtype == torch.float32 and rec.resolve(y) == _each("src-x", range(6))
    assert rec.last().input_node_ids[1] == "src-ref"
    assert all(op.understood for op in rec.events)


@pytest.mark.parametrize("call, name", [
    (lambda x: torch.fft.fft(x), "torch.fft.fft"),
    (lambda x: torch.cumsum(x, 0), "torch.cumsum"),
    (lambda x: torch.linalg.qr(x)[0], "torch.linalg.qr"),
    (lambda x: torch.einsum("ij->ji", x), "torch.einsum"),
    (lambda x: torch.kron(x, x), "torch.kron"),
    (lambda x: x.unique(), "torch.Tensor.unique"),
    (lambda x: torch.trapezoid(x, dim=0), "torch.trapezoid"),
])
def test_not_understood_is_recorded_as_all_rows(rec: Recorder, call: Callable[[Any], Any],
                                                 name: str) -> None:
    x = _x(rec)
    out = call(x)
    assert isinstance(out, TrackedTensor)  # the output stays tracked
    op = next(op for op in rec.events if not op.understood)
    assert op.op_name == name and list(op.input_node_ids) == ["src-x"]
    assert kinds(op) == ["all_rows"]
    reason = op.row_map.segments[0].all_rows.reason
    assert reason.startswith("op not understood") and name in reason
    every = {("src-x", r) for r in range(6)}
    assert all(r == every for r in rec.resolve(out))
    later = out[:1] * 2  # and is tracked onwards
    assert rec.resolve(later) == [every]


def test_unmapped_inputs_are_never_dropped(rec: Recorder) -> None:
    x, other = _x(rec), _x(rec, node="src-o")
    out = torch.index_put(x, (torch.tensor([0]),), other[0])  # not understood: both inputs
    op = rec.last()
    assert op.op_name == "torch.index_put" and not op.understood
    assert len(op.input_node_ids) == 2 and op.input_node_ids[0] == "src-x"
    assert all(s.WhichOneof("kind") == "all_rows" for s in op.row_map.segments)
    assert rec.resolve(out)[5] == {("src-x", r) for r in range(6)} | {("src-o", 0)}


# ---------------------------------------------------------------------------------------
# In place, no-ops, conversions, plumbing


def test_in_place_ops_rebind_the_tensor(rec: Recorder) -> None:
    x = _x(rec)
    y = x[:3].clone()
    before = y.node_id
    y += 1.0
    assert y.node_id != before and rec.last().op_name == "torch.Tensor.add_"
    assert rec.resolve(y) == _each("src-x", range(3))
    y.mul_(x[5:6])  # a one-row operand broadcast to every row
    assert rec.resolve(y) == [{("src-x", r), ("src-x", 5)} for r in range(3)]
    F.relu(y, inplace=True)
    assert rec.last().op_name == "torch.nn.functional.relu" and rec.last().understood
    y.copy_(x[3:])  # old values gone: now x's rows 3..5
    assert rec.resolve(y) == _each("src-x", (3, 4, 5))
    other = _x(rec, node="src-o")
    y[1] = other[2]  # a whole row replaced: exactly the value's row (issue 22)
    assert rec.last().op_name == "torch.Tensor.__setitem__" and rec.last().understood
    assert rec.resolve(y) == [{("src-x", 3)}, {("src-o", 2)}, {("src-x", 5)}]
    z = x[:3].clone()
    z[0] = 7.0  # an untracked value: a constant row; the others keep their lineage
    assert rec.last().understood and rec.resolve(z) == [set(), {("src-x", 1)}, {("src-x", 2)}]
    z[z > 8] = 0.0  # a tracked mask only selects
    assert rec.last().understood and rec.resolve(z)[2] == {("src-x", 2)}
    c = x[:2].clone()
    torch.add(x[2:4], 1.0, out=c)  # out=: c's old rows are not inputs
    assert rec.resolve(c) == _each("src-x", (2, 3))
    plain = torch.zeros(2, 3, dtype=D)
    assert type(torch.add(x[:2], 1.0, out=plain)) is torch.Tensor  # untracked out: leaves
    c.zero_()
    assert rec.resolve(c) == [set(), set()] and rec.last().understood


def test_no_op_returns_the_same_tensor_without_event(rec: Recorder) -> None:
    x = _x(rec)
    assert x.double() is x and x.contiguous() is x and x.to(D) is x and x.cpu() is x
    assert rec.events == []
    assert len(x) == 6 and x.shape == (6, 3) and x.dim() == 2 and x.numel() == 18
    assert float(x[0, 0]) == 1.0 and x.tolist()[0] == [1.0, 2.0, 3.0]
    assert type(torch.zeros_like(x)) is torch.Tensor and type(x.new_ones(2)) is torch.Tensor
    assert type(x.numpy()) is np.ndarray


def test_autograd_through_tracked_tensors(rec: Recorder) -> None:
    values = torch.randn(6, 3, dtype=D, generator=torch.Generator().manual_seed(0))
    w = torch.randn(3, 2, dtype=D, requires_grad=True)
    x = rec.source(values.clone(), "src-x").requires_grad_()
    loss = (torch.tanh(x @ w) * x[:, :2]).sum() / x.std()
    loss.backward()
    plain_x = values.clone().requires_grad_()
    plain_w = w.detach().clone().requires_grad_()
    (torch.tanh(plain_x @ plain_w) * plain_x[:, :2]).sum().div(plain_x.std()).backward()
    assert isinstance(loss, TrackedTensor) and x.grad is not None and w.grad is not None
    assert type(x.grad) is torch.Tensor  # gradients are not tracked
    torch.testing.assert_close(x.grad, plain_x.grad)
    torch.testing.assert_close(w.grad, plain_w.grad)


def test_conversions_keep_nodes() -> None:
    rec = Recorder()
    arr = rec.tracker.array(np.arange(12.0).reshape(6, 2), node_id="src-a")
    t = track_tensor(rec.tracker, arr)
    assert isinstance(t, TrackedTensor) and t.node_id == "src-a" and rec.events == []
    t[0, 0] = 100.0  # shares memory with the array (and records one op)
    assert arr[0, 0] == 100.0
    part = t[2:]
    back = to_array(part)
    assert isinstance(back, TrackedArray) and back.node_id == part.node_id
    assert track_tensor(rec.tracker, t) is t
    with pytest.raises(ValueError, match="already tracked"):
        track_tensor(rec.tracker, t, "other-node")
    src = events_pb2.SourceRegistered(source_id="src-abc", row_count=4)
    assert track_tensor(rec.tracker, torch.zeros(4, 2), source=src).node_id == "src-abc"
    with pytest.raises(ValueError, match="row_count=4 but the tensor has 5 rows"):
        track_tensor(rec.tracker, torch.zeros(5, 2), source=src)
    with pytest.raises(ValueError, match="node_id or source"):
        track_tensor(rec.tracker, torch.zeros(4, 2), "n", source=src)
    with pytest.raises(ValueError, match="at least one dimension"):
        track_tensor(rec.tracker, torch.tensor(1.0))
    fresh = track_tensor(rec.tracker, [[1.0, 2.0]])
    assert fresh.node_id.startswith(rec.tracker._prefix)
    with pytest.raises(TypeError, match="TrackedTensor"):
        row_keys(torch.zeros(2))
    keys = row_keys(arr)  # arrays too
    assert list(keys.node_ids) == ["src-a"]


def test_repr_pickle_deepcopy_grad(rec: Recorder) -> None:
    x = _x(rec)
    assert "node_id='src-x'" in repr(x) and "TrackedTensor(" in repr(x)
    assert type(pickle.loads(pickle.dumps(x))) is torch.Tensor  # node ids are process-local
    c = copy.deepcopy(x)
    assert isinstance(c, TrackedTensor) and c.tracker is rec.tracker
    assert rec.last().op_name == "torch.Tensor.__deepcopy__"
    assert rec.resolve(c) == _each("src-x", range(6))
    assert x.grad is None


def test_events_validate_in_envelopes(rec: Recorder) -> None:
    x = _x(rec, rows=30, cols=2)
    y = (x - x.mean(0)) / x.std(0)
    z = torch.cat([y.flip(0), x[torch.randperm(30)]])
    torch.fft.fft(z)
    for b in tracked_loader(rec.tracker, z, 8, shuffle=True):
        row_keys(b)
    builder = EnvelopeBuilder("run-1")
    for op in rec.events:
        event = builder.wrap(op)
        validate_event(event)
        assert event.op_recorded == op and op.code_version == "t1"


# ---------------------------------------------------------------------------------------
# Granularity


def test_granularity_off_records_nothing() -> None:
    rec = Recorder("off")
    x = track_tensor(rec.tracker, torch.arange(10.0).reshape(5, 2))
    assert type(x) is torch.Tensor
    y = (x - x.mean(0))[1:]
    train, test = split(rec.tracker, y, test_size=2, seed=0)
    batches = list(tracked_loader(rec.tracker, TensorDataset(train, train[:, 0]), 2))
    assert type(batches[0][0]) is torch.Tensor and type(test) is torch.Tensor
    assert rec.events == []
    with pytest.raises(TypeError, match="off"):
        row_keys(batches[0][0])


def test_granularity_batch_records_only_dataset_ops() -> None:
    rec = Recorder("batch")
    x = rec.source(torch.arange(20.0).reshape(10, 2), "src-x")
    direct = list(tracked_loader(rec.tracker, x, 4, shuffle=True, seed=0))
    assert [op.op_name for op in rec.events] == ["headwater.batch"] * 3
    assert rec.resolve(direct[0]) == _each("src-x", (int(v) // 2 for v in direct[0][:, 0]))
    rec.events.clear()
    y = (x - x.mean(0)) / x.std(0)
    z = F.relu(y[::2])
    assert isinstance(z, TrackedTensor) and rec.events == []  # torch ops: no events
    (batch,) = list(tracked_loader(rec.tracker, z, 5))
    names = [op.op_name for op in rec.events]
    assert names == ["headwater.unrecorded_ops", "headwater.batch"]
    assert not rec.events[0].understood
    assert all(op.granularity == BATCH_LEVEL for op in rec.events)
    every = {("src-x", r) for r in range(10)}  # conservative: all rows of the source
    assert rec.resolve(batch) == [every] * 5


# ---------------------------------------------------------------------------------------
# Datasets: loader batches, splits, training


def _dataset(rec: Recorder, n: int = 50) -> tuple[Any, Any]:
    """Features whose column 0 is the row id, and labels 10 * row id."""
    x = torch.stack([torch.arange(n, dtype=D), torch.ones(n, dtype=D)], dim=1)
    return rec.source(x, "src-x"), rec.source(torch.arange(n) * 10, "src-y")


def test_loader_batches_map_to_dataset_rows(rec: Recorder) -> None:
    x, y = _dataset(rec)
    loader = tracked_loader(rec.tracker, TensorDataset(x, y), batch_size=16, shuffle=True,
                            seed=3)
    assert isinstance(loader, TrackedLoader) and len(loader) == 4
    epoch = list(loader)
    assert [len(xb) for xb, _ in epoch] == [16, 16, 16, 2]
    assert len(rec.events) == 8 and all(
        op.op_name == "headwater.batch" and op.granularity == BATCH_LEVEL and op.understood
        for op in rec.events)
    seen: list[int] = []
    for xb, yb in epoch:
        ids = [int(v) for v in xb[:, 0]]
        assert rec.resolve(xb) == _each("src-x", ids)
        assert rec.resolve(yb) == _each("src-y", ids)  # same rows
        assert [int(v) for v in yb] == [10 * i for i in ids]
        keys = row_keys(xb)
        assert list(keys.node_ids) == [xb.node_id] and list(keys.rows) == list(range(len(xb)))
        seen += ids
    assert sorted(seen) == list(range(50)) and seen != list(range(50))
    params = json.loads(rec.events[2].params_json)
    assert params == {"batch": 1, "epoch": 0, "batch_size": 16, "shuffle": True, "seed": 3,
                      "tensor": 0}
    again = [int(v) for xb, _ in tracked_loader(rec.tracker, TensorDataset(x, y), 16,
                                               shuffle=True, seed=3) for v in xb[:, 0]]
    assert again == seen  # seeded
    workers = [int(v) for xb, _ in tracked_loader(rec.tracker, TensorDataset(x, y), 16,
                                                 shuffle=True, seed=3, num_workers=2)
               for v in xb[:, 0]]
    assert workers == seen  # worker processes draw the same rows
    second = [int(v) for xb, _ in loader for v in xb[:, 0]]
    assert second != seen and sorted(second) == list(range(50))  # a new epoch's order
    ordered = list(tracked_loader(rec.tracker, x, 16, drop_last=True))
    assert len(ordered) == 3 and rec.resolve(ordered[2]) == _each("src-x", range(32, 48))
    assert kinds(rec.last()) == ["range"]  # sequential batches are one range segment


def test_loader_over_plain_tensors_and_general_datasets(rec: Recorder) -> None:
    plain = TensorDataset(torch.arange(8.0).reshape(4, 2), torch.arange(4))
    rec.sources.update({"src-plain": 4, "src-items": 7})
    (xb, yb), = list(tracked_loader(rec.tracker, plain, 4, shuffle=True, seed=0,
                                    node_id="src-plain"))
    assert rec.resolve(xb) == _each("src-plain", (int(v) // 2 for v in xb[:, 0]))
    assert rec.resolve(yb) == _each("src-plain", (int(v) for v in yb))

    class Items(Dataset[Any]):
        def __len__(self) -> int:
            return 7

        def __getitem__(self, i: int) -> Any:
            return {"x": torch.full((3,), float(i)), "id": i, "name": f"r{i}"}

    batches = list(tracked_loader(rec.tracker, Items(), 3, shuffle=True, seed=1,
                                  node_id="src-items"))
    assert [len(b["x"]) for b in batches] == [3, 3, 1]
    for b in batches:
        ids = [int(v) for v in b["id"]]
        assert [int(v) for v in b["x"][:, 0]] == ids and b["name"] == [f"r{i}" for i in ids]
        assert rec.resolve(b["x"]) == _each("src-items", ids)
        assert rec.resolve(b["id"]) == _each("src-items", ids)
    with pytest.raises(ValueError, match="batch_size"):
        tracked_loader(rec.tracker, plain, 0)
    with pytest.raises(ValueError, match="sampler or shuffle"):
        tracked_loader(rec.tracker, plain, 2, shuffle=True, sampler=range(4))
    with pytest.raises(TypeError, match="map-style dataset"):
        tracked_loader(rec.tracker, 5, 2)


def test_split_and_shuffle_match_the_numpy_tracker(rec: Recorder) -> None:
    x, y = _dataset(rec)
    train, test = split(rec.tracker, TensorDataset(x, y), test_size=0.2, seed=7)
    assert [op.op_name for op in rec.events] == ["headwater.split"] * 4
    assert json.loads(rec.last().params_json) == {"test_size": 0.2, "seed": 7, "part": "test",
                                                  "tensor": 1}
    assert isinstance(train, TensorDataset) and len(train) == 40 and len(test) == 10
    _, arr_test = rec.tracker.split(np.arange(50), 0.2, seed=7)  # the NumPy tracker's rows
    ids = [int(v) for v in test.tensors[0][:, 0]]
    assert ids == arr_test.tolist() and rec.resolve(test.tensors[1]) == _each("src-y", ids)
    batches = list(tracked_loader(rec.tracker, train, 16, shuffle=True, seed=1))
    xb = batches[1][0]  # two dataset ops deep: batch -> split -> source
    assert rec.resolve(xb) == _each("src-x", (int(v) for v in xb[:, 0]))
    mixed = shuffle(rec.tracker, x, seed=2)
    assert [int(v) for v in mixed[:, 0]] == list(np.random.default_rng(2).permutation(50))
    with pytest.raises(ValueError, match="test_size"):
        split(rec.tracker, x, test_size=1.5)
    with pytest.raises(TypeError, match="TensorDataset"):
        split(rec.tracker, [1, 2, 3])


def _train(granularity: str) -> tuple[list[float], Recorder, Any, Any]:
    rec = Recorder(granularity)
    g = torch.Generator().manual_seed(0)
    features = torch.randn(96, 4, generator=g)
    labels = (features[:, 0] + features[:, 1] > 0).long()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    data = TensorDataset(track_tensor(rec.tracker, features, "src-x"),
                         track_tensor(rec.tracker, labels, "src-x"))  # same rows
    rec.sources["src-x"] = 96
    losses = []
    xb = None
    for epoch in range(6):
        for xb, yb in tracked_loader(rec.tracker, data, 32, shuffle=True, seed=epoch):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses, rec, model, xb


def test_tiny_model_trains_on_tracked_batches() -> None:
    losses, rec, model, xb = _train("every_op")
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    assert losses == _train("off")[0]  # tracking changes nothing numerically
    assert all(type(p) is torch.nn.Parameter and type(p.grad) is torch.Tensor
               for p in model.parameters())
    names = {op.op_name for op in rec.events}
    assert {"headwater.batch", "torch.nn.functional.linear", "torch.nn.functional.relu",
            "torch.nn.functional.cross_entropy"} <= names
    assert all(op.understood for op in rec.events)
    logits = model(xb)  # rows of the output are rows of the batch
    assert rec.resolve(logits) == rec.resolve(xb)


# ---------------------------------------------------------------------------------------
# Cost


def _chain(x: Any) -> Any:
    for _ in range(5):
        x = x * 1.0001
        x = x + 0.5
    return x


@pytest.mark.slow
@pytest.mark.parametrize("n", [1_000, 1_000_000])
def test_per_op_overhead(n: int) -> None:
    """µs per op of a 10-op elementwise chain, tracked vs plain (printed, loose bound)."""
    count = [0]
    tracker = Tracker(lambda e: count.__setitem__(0, count[0] + 1))
    plain = torch.rand(n)
    tracked = track_tensor(tracker, plain.clone())
    reps = 2000 if n == 1_000 else 20

    def per_op(x: Any) -> float:
        best = math.inf
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(reps):
                _chain(x)
            best = min(best, (time.perf_counter() - start) / reps / 10 * 1e6)
        return best

    base, cost = per_op(plain), per_op(tracked)
    print(f"\nn={n}: plain {base:.2f} us/op, tracked {cost:.2f} us/op, "
          f"overhead {cost - base:.2f} us/op")
    assert count[0] == 10 * 5 * reps
    assert cost - base < 100
