"""Seeded gradient projections φ = P g (k×d Rademacher or sparse JL; identity when d <= k).

P is never stored or materialised whole: every entry is a pure function of (seed, kind, k,
column), computed from a counter-based 32-bit hash in integer arithmetic. Any column range of P
can therefore be regenerated on its own, on any machine, in NumPy or on a torch device, bit for
bit (the products then agree to float rounding); projecting a gradient split into column blocks
gives the sum of the block projections. Memory: one [columns, k] tile of P at a time, plus a
bounded cache of generated tiles (CACHE_BYTES; a trainer projects the same columns every
step, and generating P costs ~10x the product) — only for projections whose whole P fits
in it, so large models keep the one-tile bound.

Scaling (both kinds have E[PᵀP] = I, so E[(Px)·(Py)] = x·y):
- rademacher: every entry is ±1/√k with independent fair signs (Achlioptas 2003); the
  inner-product estimate has variance (|x|²|y|² + (x·y)² − 2Σx_i²y_i²)/k.
- sparse_jl: the k rows are cut into s = min(k, 8) near-equal blocks; each column has exactly
  one nonzero ±1/√s in each block, at a hashed row with a hashed sign (Kane–Nelson block
  construction). |P e_c| = 1 exactly; the variance matches the dense kind up to the
  Σx_i²y_i² term, with s nonzeros per column instead of k.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import operator
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from headwater.v1 import events_pb2

KINDS = ("identity", "rademacher", "sparse_jl")
# Part of every projection_id: bump it whenever the matrix a (kind, seed, d, k) denotes changes.
GENERATOR = "headwater.projection/v1"
SPARSE_NNZ = 8  # s: nonzeros per column of a sparse_jl matrix (fewer when k < 8)
MAX_OUTPUT_DIM = 2**31 - 1
TILE_BYTES = 16 * 2**20  # one generated [columns, k] tile of P; bounds the extra memory
TILE_BYTES_CUDA = 64 * 2**20
CACHE_BYTES = 64 * 2**20  # generated tiles kept for reuse, all projections together

_KIND_TO_PROTO = {
    "identity": events_pb2.Projection.IDENTITY,
    "rademacher": events_pb2.Projection.RADEMACHER,
    "sparse_jl": events_pb2.Projection.SPARSE_JL,
}
_PROTO_TO_KIND = {v: k for k, v in _KIND_TO_PROTO.items()}
_KIND_SALT = {"rademacher": 0x52414430, "sparse_jl": 0x534A4C30}
_M32 = 0xFFFFFFFF


# ------------------------------------------------------------------------------------------
# Counter-based hash. Works unchanged on Python ints, NumPy int64 arrays and torch int64
# tensors holding values in [0, 2^32): no intermediate reaches 2^63, so nothing overflows.


def _mul32(x: Any, c: int) -> Any:
    """(x * c) mod 2^32 for 0 <= x, c < 2^32. NumPy uint32 wraps natively; elsewhere (Python
    ints, torch int64 on any device) split c so every partial product stays below 2^49."""
    if isinstance(x, np.ndarray) and x.dtype == np.uint32:
        return x * np.uint32(c)
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _fmix32(h: Any) -> Any:
    """MurmurHash3's 32-bit finaliser: a bijection with full avalanche."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _keys(kind: str, seed: int) -> tuple[int, int, int]:
    """Three 32-bit round keys from (kind, seed); distinct kinds draw independent streams."""
    lo, hi = seed & _M32, seed >> 32
    return tuple(  # type: ignore[return-value]
        _fmix32(_fmix32(_fmix32((_KIND_SALT[kind] + 0x9E3779B9 * i) & _M32) ^ lo) ^ hi)
        for i in (1, 2, 3))


def _hash(counter: Any, keys: tuple[int, int, int]) -> Any:
    """32 random bits per int64 counter (< 2^62), as uint32 (NumPy) or int64 (torch). Three
    keyed rounds, so a new seed is not a mere permutation of the counters (one XOR-keyed round
    would be)."""
    k1, k2, k3 = keys
    lo, hi = counter & _M32, counter >> 32
    if isinstance(counter, np.ndarray):  # same values in uint32, with fewer operations
        lo, hi = lo.astype(np.uint32), hi.astype(np.uint32)
    h = _fmix32(lo ^ k1)
    h = _fmix32(h ^ _fmix32(hi ^ k2))
    return _fmix32(h ^ k3)


# ------------------------------------------------------------------------------------------
# Tiles: P[:, c0:c1] transposed, as an unscaled [c1 - c0, k] matrix of 0/±1 values.
# Rademacher: column c takes ceil(k/32) hash words at counters c*w .. c*w + w - 1; row r's sign
# is bit r % 32 of word r // 32 (bit 1 -> -1). Sparse JL: column c takes s words at counters
# c*s .. c*s + s - 1; word j puts sign (bit 0) at row start_j + (word >> 1) % size_j. The modulo
# bias is below size_j / 2^31 (under 3e-7 for k = 512).


def _words_per_column(kind: str, k: int) -> int:
    return (k + 31) // 32 if kind == "rademacher" else min(k, SPARSE_NNZ)


def _sparse_blocks(k: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, size) of the s row blocks of a sparse_jl matrix: k split as evenly as possible."""
    s = min(k, SPARSE_NNZ)
    sizes = np.full(s, k // s, dtype=np.int64)
    sizes[: k % s] += 1
    return np.cumsum(sizes) - sizes, sizes


def _tile_numpy(kind: str, keys: tuple[int, int, int], k: int, c0: int, c1: int,
                dtype: np.dtype) -> np.ndarray:
    w = _words_per_column(kind, k)
    words = _hash(np.arange(c0 * w, c1 * w, dtype=np.int64), keys)
    if kind == "rademacher":
        bits = np.unpackbits(words.astype("<u4").view(np.uint8), bitorder="little")
        bits = bits.reshape(c1 - c0, w * 32)[:, :k]
        return np.subtract(1, 2 * bits, dtype=dtype)
    starts, sizes = _sparse_blocks(k)
    words = words.reshape(c1 - c0, w)
    rows = starts + (words >> 1) % sizes
    tile = np.zeros((c1 - c0, k), dtype=dtype)
    flat = (np.arange(c1 - c0, dtype=np.int64)[:, None] * k + rows).ravel()
    tile.ravel()[flat] = (1.0 - 2.0 * (words & 1)).ravel()
    return tile


def _tile_torch(torch: Any, kind: str, keys: tuple[int, int, int], k: int, c0: int, c1: int,
                dtype: Any, device: Any) -> Any:
    w = _words_per_column(kind, k)
    words = _hash(torch.arange(c0 * w, c1 * w, dtype=torch.int64, device=device), keys)
    if kind == "rademacher":
        # Same bits as the NumPy path; reinterpret as int32 to halve the unpacking memory
        # (an arithmetic shift keeps bits 0..31 intact).
        words = (words - ((words >> 31) << 32)).to(torch.int32)
        shifts = torch.arange(32, dtype=torch.int32, device=device)
        bits = ((words.unsqueeze(-1) >> shifts) & 1).reshape(c1 - c0, w * 32)[:, :k]
        return bits.to(dtype).mul_(-2).add_(1)
    j = torch.arange(w, dtype=torch.int64, device=device)  # the blocks of _sparse_blocks(k),
    sizes = k // w + (j < k % w).to(torch.int64)              # built on the device
    starts = j * (k // w) + torch.clamp(j, max=k % w)
    words = words.reshape(c1 - c0, w)
    rows = starts + (words >> 1) % sizes
    tile = torch.zeros((c1 - c0, k), dtype=dtype, device=device)
    return tile.scatter_(1, rows, (1 - 2 * (words & 1)).to(dtype))


# ------------------------------------------------------------------------------------------
# Input handling.


def _torch_of(x: Any) -> Any:
    """The torch module when x is a torch tensor, else None (never imports torch itself)."""
    torch = sys.modules.get("torch")
    return torch if torch is not None and isinstance(x, torch.Tensor) else None


def _as_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got bool {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {type(value).__name__} "
                         f"{repr(value)[:40]}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")
    return v


def _check_matrix(x: Any, what: str) -> Any:
    """x as a 2-D floating array/tensor (NumPy input via np.asarray), or a ValueError."""
    torch = _torch_of(x)
    if torch is None:
        x = np.asarray(x)
        floating = np.issubdtype(x.dtype, np.floating)
    else:
        floating = x.is_floating_point()
    if x.ndim != 2:
        raise ValueError(f"{what} must be 2-D [n, d], got shape {tuple(x.shape)}")
    if not floating:
        raise ValueError(f"{what} must have a floating dtype, got {x.dtype}")
    return x


class _Coverage:
    """Column ranges seen so far; rejects out-of-range or overlapping blocks, reports gaps."""

    def __init__(self, d: int) -> None:
        self.d = d
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, offset: int, width: int) -> None:
        if offset + width > self.d:
            raise ValueError(f"block at column_offset={offset} with {width} columns ends at "
                             f"{offset + width}, past input_dim={self.d}")
        if width == 0:
            return
        i = bisect.bisect_right(self.starts, offset)
        if (i > 0 and self.ends[i - 1] > offset) or (i < len(self.starts)
                                                      and self.starts[i] < offset + width):
            j = i - 1 if i > 0 and self.ends[i - 1] > offset else i
            raise ValueError(f"block [{offset}, {offset + width}) overlaps block "
                             f"[{self.starts[j]}, {self.ends[j]})")
        self.starts.insert(i, offset)
        self.ends.insert(i, offset + width)

    def check_complete(self) -> None:
        edge = 0
        for s, e in zip(self.starts, self.ends, strict=True):
            if s != edge:
                break
            edge = e
        if edge != self.d:
            nxt = next((s for s in self.starts if s > edge), self.d)
            raise ValueError(f"gradient blocks do not cover columns [{edge}, {nxt}) of "
                             f"input_dim={self.d}")


# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Projection:
    """A projection spec; it alone determines the matrix (same spec -> same P everywhere)."""

    kind: str
    seed: int
    input_dim: int
    output_dim: int
    parameters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown projection kind {self.kind!r}; expected one of {KINDS}")
        object.__setattr__(self, "seed", _as_int("seed", self.seed, 0, 2**64 - 1))
        d = _as_int("input_dim", self.input_dim, 1, 2**62)
        k = _as_int("output_dim (k)", self.output_dim, 1, MAX_OUTPUT_DIM)
        if self.kind == "identity" and k != d:
            raise ValueError(f"identity projection needs output_dim == input_dim, got "
                             f"output_dim={k}, input_dim={d}")
        if self.kind != "identity" and d * _words_per_column(self.kind, k) >= 2**62:
            raise ValueError(f"input_dim={d} is too large for output_dim={k}")
        if isinstance(self.parameters, str):
            raise ValueError("parameters must be a sequence of names, not one string")
        params = tuple(self.parameters)
        for p in params:
            if not isinstance(p, str) or not p:
                raise ValueError(f"parameter names must be non-empty strings, got {p!r}")
        if len(set(params)) != len(params):
            dup = sorted({p for p in params if params.count(p) > 1})
            raise ValueError(f"parameter names repeat: {dup}")
        object.__setattr__(self, "input_dim", d)
        object.__setattr__(self, "output_dim", k)
        object.__setattr__(self, "parameters", params)

    @property
    def projection_id(self) -> str:
        """Stable hex digest of the generator version and every other field."""
        spec = [GENERATOR, self.kind, self.seed, self.input_dim, self.output_dim,
                list(self.parameters)]
        blob = json.dumps(spec, separators=(",", ":"), ensure_ascii=True).encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    @property
    def scale(self) -> float:
        """The magnitude of P's nonzero entries: 1/√k (rademacher), 1/√s (sparse_jl), 1."""
        if self.kind == "identity":
            return 1.0
        nonzeros = min(self.output_dim, SPARSE_NNZ) if self.kind == "sparse_jl" else self.output_dim
        return float(1.0 / np.sqrt(nonzeros))

    def to_proto(self) -> events_pb2.Projection:
        return events_pb2.Projection(
            projection_id=self.projection_id, kind=_KIND_TO_PROTO[self.kind], seed=self.seed,
            input_dim=self.input_dim, output_dim=self.output_dim, parameters=self.parameters)

    @classmethod
    def from_proto(cls, msg: events_pb2.Projection) -> Projection:
        """Rebuild the spec; a non-empty projection_id must match the one recomputed here."""
        if msg.kind not in _PROTO_TO_KIND:
            raise ValueError(f"Projection.kind {msg.kind} is not IDENTITY, RADEMACHER or "
                             "SPARSE_JL")
        p = cls(_PROTO_TO_KIND[msg.kind], msg.seed, msg.input_dim, msg.output_dim,
                tuple(msg.parameters))
        if msg.projection_id and msg.projection_id != p.projection_id:
            raise ValueError(f"Projection.projection_id {msg.projection_id!r} does not match "
                             f"its fields (expected {p.projection_id!r} from {GENERATOR}); "
                             "altered, or made by another generator version")
        return p

    def columns(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """P[:, start:stop] as a dense float64 [k, stop - start] array (for checks; small d)."""
        stop = self.input_dim if stop is None else stop
        if not 0 <= start <= stop <= self.input_dim:
            raise ValueError(f"columns [{start}, {stop}) not within [0, {self.input_dim}]")
        if self.kind == "identity":
            return np.eye(self.input_dim, stop - start, k=-start)
        tile = _tile_numpy(self.kind, _keys(self.kind, self.seed), self.output_dim, start, stop,
                           np.dtype(np.float64))
        return tile.T * self.scale

    def project(self, grads: Any) -> Any:
        """grads [n, d] -> float32 [n, k]; NumPy in, NumPy out; torch in, torch out (same
        device)."""
        grads = _check_matrix(grads, "gradients")
        if grads.shape[1] != self.input_dim:
            raise ValueError(f"gradients have d={grads.shape[1]} columns but the projection's "
                             f"input_dim is {self.input_dim}")
        return self.project_blocks([(0, grads)])

    def project_blocks(self, blocks: Iterable[tuple[int, Any]]) -> Any:
        """Σ_b P[:, o_b:o_b+d_b] g_b over (column_offset o_b, array [n, d_b]) blocks that must
        tile [0, input_dim) exactly; equals project() of their concatenation."""
        acc: _Accumulator | None = None
        cover = _Coverage(self.input_dim)
        for i, item in enumerate(blocks):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise ValueError(f"block {i} must be a (column_offset, array) pair, got "
                                 f"{type(item).__name__}")
            offset, block = item
            offset = _as_int(f"block {i} column_offset", offset, 0, self.input_dim)
            block = _check_matrix(block, f"block {i} (column_offset={offset})")
            if acc is None:
                acc = _Accumulator(self, block)
            acc.check_compatible(block, i)
            cover.add(offset, block.shape[1])
            acc.add(offset, block)
        if acc is None:
            raise ValueError(f"no gradient blocks given for input_dim={self.input_dim}")
        cover.check_complete()
        return acc.result()


class _TileCache:
    """Least-recently-used generated tiles, keyed by everything that determines them and
    bounded in bytes (set `CACHE_BYTES = 0` to turn it off)."""

    def __init__(self) -> None:
        from collections import OrderedDict

        self._tiles: OrderedDict[tuple, Any] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple, make: Any, args: tuple) -> Any:
        """The tile for `key`, made by make(*args) on a miss."""
        tile = self._tiles.get(key)
        if tile is not None:
            self._tiles.move_to_end(key)
            return tile
        tile = make(*args)
        self._tiles[key] = tile
        self._bytes += _nbytes(tile)
        while self._bytes > CACHE_BYTES and self._tiles:
            _, old = self._tiles.popitem(last=False)
            self._bytes -= _nbytes(old)
        return tile

    def clear(self) -> None:
        self._tiles.clear()
        self._bytes = 0


_CACHE = _TileCache()


def _nbytes(tile: Any) -> int:
    return int(tile.nbytes) if hasattr(tile, "nbytes") else tile.element_size() * tile.nelement()


class _Accumulator:
    """Sums tile products X[:, c0:c1] @ P[:, c0:c1]ᵀ into an [n, k] buffer on X's backend."""

    def __init__(self, proj: Projection, first: Any) -> None:
        self.proj, self.n = proj, first.shape[0]
        self.torch = _torch_of(first)
        self.keys = _keys(proj.kind, proj.seed) if proj.kind != "identity" else (0, 0, 0)
        k = proj.output_dim
        if self.torch is None:
            self.device = None
            self.out: Any = np.zeros((self.n, k), dtype=np.float64)  # [n, k]: cheap to widen
            self.budget = TILE_BYTES
        else:
            t = self.torch
            self.device = first.device
            # float64 only where asked for: some devices (MPS) have no float64.
            dtype = t.float64 if first.dtype == t.float64 else t.float32
            self.out = t.zeros((self.n, k), dtype=dtype, device=self.device)
            self.budget = TILE_BYTES_CUDA if self.device.type == "cuda" else TILE_BYTES

    def check_compatible(self, block: Any, i: int) -> None:
        torch = _torch_of(block)
        if (torch is None) != (self.torch is None):
            raise ValueError(f"block {i} mixes NumPy arrays and torch tensors; give one kind")
        if torch is not None and block.device != self.device:
            raise ValueError(f"block {i} is on {block.device}, block 0 on {self.device}")
        if block.shape[0] != self.n:
            raise ValueError(f"block {i} has {block.shape[0]} rows, block 0 has {self.n}")

    def _compute(self, x: Any) -> Any:
        """x in the compute dtype: float64 stays, every other float becomes float32 (sums of
        millions of fp16/bf16 products would overflow or lose all precision)."""
        if self.torch is None:
            return x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)
        t = self.torch
        return x if x.dtype in (t.float32, t.float64) else x.to(t.float32)

    def add(self, offset: int, block: Any) -> None:
        ctx = self.torch.no_grad() if self.torch is not None else contextlib.nullcontext()
        with ctx:
            self._add(offset, block)

    def _add(self, offset: int, block: Any) -> None:
        p, width = self.proj, block.shape[1]
        if p.kind == "identity":
            self.out[:, offset:offset + width] = block
            return
        wide = block.dtype == (np.float64 if self.torch is None else self.torch.float64)
        itemsize = 8 if wide else 4
        step = max(1, self.budget // (p.output_dim * itemsize))  # tile columns
        for a in range(0, width, step):
            b = min(width, a + step)
            x = self._compute(block[:, a:b])
            c0, c1 = offset + a, offset + b
            make: Callable[..., Any]
            args: tuple[Any, ...]
            if self.torch is None:
                make, args = _tile_numpy, (p.kind, self.keys, p.output_dim, c0, c1, x.dtype)
            else:
                make, args = _tile_torch, (self.torch, p.kind, self.keys, p.output_dim, c0, c1,
                                           x.dtype, self.device)
            if p.output_dim * p.input_dim * itemsize <= CACHE_BYTES:  # all of P fits
                key = (p.kind, self.keys, p.output_dim, c0, c1, str(x.dtype), str(self.device))
                tile = _CACHE.get(key, make, args)
            else:
                tile = make(*args)
            self.out += x @ tile

    def result(self) -> Any:
        out = self.out * self.proj.scale
        if self.torch is None:
            finite = bool(np.isfinite(out).all())
        else:
            finite = bool(self.torch.isfinite(out).all())  # one scalar sync, not a data copy
        if not finite:
            rows = np.asarray(
                (~np.isfinite(out)).any(axis=1) if self.torch is None
                else (~self.torch.isfinite(out)).any(dim=1).cpu()).nonzero()[0]
            raise ValueError(f"gradients give non-finite projections in rows "
                             f"{rows[:10].tolist()}{' ...' if rows.size > 10 else ''} "
                             "(NaN/inf in the input, or float overflow)")
        if self.torch is None:
            return out.astype(np.float32)
        return out.to(self.torch.float32)


def make_projection(input_dim: int, k: int = 512, seed: int = 0, kind: str = "rademacher",
                    parameters: Iterable[str] = ()) -> Projection:
    """The projection for d = input_dim selected parameters: identity when d <= k (then
    output_dim = d), else the seeded k×d `kind` ("rademacher" or "sparse_jl") matrix.
    kind="identity" keeps all d coordinates whatever k is."""
    if kind not in KINDS:
        raise ValueError(f"unknown projection kind {kind!r}; expected one of {KINDS}")
    d = _as_int("input_dim", input_dim, 1, 2**62)
    k = _as_int("k", k, 1, MAX_OUTPUT_DIM)
    if isinstance(parameters, str):
        raise ValueError("parameters must be a sequence of names, not one string")
    params = tuple(parameters)
    if kind == "identity" or d <= k:
        return Projection("identity", seed, d, d, params)
    return Projection(kind, seed, d, k, params)


def project(projection: Projection, grads: Any) -> Any:
    """Functional form of Projection.project."""
    return projection.project(grads)


def project_blocks(projection: Projection, blocks: Iterable[tuple[int, Any]]) -> Any:
    """Functional form of Projection.project_blocks."""
    return projection.project_blocks(blocks)
