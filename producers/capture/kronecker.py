"""The factored (Kronecker, LoGra-style) projection of layer gradients, and its k budget.

A layer whose per-sample gradient is G = Σ_t δ_t a_tᵀ (nn.Linear: one t; Conv2d via unfold:
one t per output position; a carries a trailing 1 when the bias is captured, so db is G's
last column) is projected without forming G:

    φ_layer = vec(P_rows G P_colsᵀ) = vec(Σ_t (P_rows δ_t)(P_cols a_t)ᵀ),   row-major,

which equals (P_rows ⊗ P_cols) vec(G): a k_rows·k_cols × rows·cols matrix with E[PᵀP] = I.
Each factor is a seeded Rademacher k × d matrix with its rows orthonormalised and scaled by
√(d/k) (the identity where k equals the dimension): orthonormal rows keep inner products
better than independent ones when k is a fair fraction of d (the error variance falls from
about 1/k to 1/k − 1/d), which a factor's small sides usually are. φ is the concatenation
of the layers' blocks. The spec alone determines every matrix, so a KroneckerProjection
rebuilt from its proto projects test gradients the same way.

Pure: NumPy only (the torch capture turns the factors into tensors once).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from headwater.producers.capture.projection import GENERATOR, Projection, make_projection
from headwater.v1 import events_pb2

KIND = "kronecker"
SIDES = "rademacher-orthonormal-rows"  # how factor matrices are made (in projection_id)
ROW_SKEW = 2  # k_rows ≈ ROW_SKEW · k_cols: the output-gradient side gets the larger share


@dataclass(frozen=True)
class Factor:
    """One layer's block: G is rows × cols (cols counts the bias column when `bias`)."""

    layer: str
    rows: int
    cols: int
    k_rows: int
    k_cols: int
    bias: bool

    def __post_init__(self) -> None:
        if not self.layer:
            raise ValueError("factor layer name must be non-empty")
        for name in ("rows", "cols", "k_rows", "k_cols"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"factor {self.layer!r}: {name} must be a positive integer, "
                                 f"got {v!r}")
        if self.k_rows > self.rows or self.k_cols > self.cols:
            raise ValueError(f"factor {self.layer!r}: k_rows x k_cols = {self.k_rows} x "
                             f"{self.k_cols} exceeds the gradient's {self.rows} x {self.cols}")
        if self.bias and self.cols < 2:
            raise ValueError(f"factor {self.layer!r}: a bias column needs cols >= 2")

    @property
    def size(self) -> int:
        """Gradient entries of the layer (weight and bias)."""
        return self.rows * self.cols

    @property
    def k(self) -> int:
        return self.k_rows * self.k_cols


def _side(spec: Projection) -> np.ndarray:
    """One factor matrix: the seeded Rademacher rows of `spec`, orthonormalised (Householder
    QR, signs fixed so the result is a function of the spec) and scaled by √(d/k), so that
    E[PᵀP] = I still holds (the sign-symmetric distribution makes E[PᵀP] a multiple of I;
    its trace is d). Householder Q is orthonormal even where the ±1 rows are dependent."""
    p = spec.columns()
    if spec.kind == "identity":
        return p
    k, d = p.shape
    q, r = np.linalg.qr(p.T)  # p.T = q r, q [d, k] with orthonormal columns
    q *= np.where(np.diag(r) < 0, -1.0, 1.0)  # QR's column signs are arbitrary: make r ≥ 0
    return np.sqrt(d / k) * q.T


def _side_seed(seed: int, index: int, side: str) -> int:
    """64-bit seed of one factor matrix, from the projection seed, layer index and side."""
    digest = hashlib.sha256(f"{GENERATOR}/kronecker/{seed}/{index}/{side}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass(frozen=True)
class KroneckerProjection:
    """A factored projection spec (kind "kronecker"): the seed and one Factor per layer."""

    seed: int
    factors: tuple[Factor, ...]
    parameters: tuple[str, ...] = ()

    kind = KIND

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) \
                or not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2^64), got {self.seed!r}")
        factors = tuple(self.factors)
        if not factors:
            raise ValueError("a Kronecker projection needs at least one layer factor")
        names = [f.layer for f in factors]
        if len(set(names)) != len(names):
            repeated = sorted(n for n in set(names) if names.count(n) > 1)
            raise ValueError(f"factor layer names repeat: {repeated}")
        object.__setattr__(self, "factors", factors)
        object.__setattr__(self, "parameters", tuple(self.parameters))

    @property
    def input_dim(self) -> int:
        return sum(f.size for f in self.factors)

    @property
    def output_dim(self) -> int:
        return sum(f.k for f in self.factors)

    @property
    def projection_id(self) -> str:
        """Stable hex digest of the generator version and every field."""
        spec = [GENERATOR, KIND, SIDES, self.seed, list(self.parameters),
                [[f.layer, f.rows, f.cols, f.k_rows, f.k_cols, f.bias] for f in self.factors]]
        blob = json.dumps(spec, separators=(",", ":"), ensure_ascii=True).encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    def matrices(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Dense float64 (P_rows [k_rows, rows], P_cols [k_cols, cols]) of factor `index`:
        the identity where k equals the dimension."""
        f = self.factors[index]
        return (_side(make_projection(f.rows, f.k_rows, _side_seed(self.seed, index, "rows"))),
                _side(make_projection(f.cols, f.k_cols, _side_seed(self.seed, index, "cols"))))

    def to_proto(self) -> events_pb2.Projection:
        return events_pb2.Projection(
            projection_id=self.projection_id, kind=events_pb2.Projection.KRONECKER,
            seed=self.seed, input_dim=self.input_dim, output_dim=self.output_dim,
            parameters=self.parameters,
            factors=[events_pb2.ProjectionFactor(layer=f.layer, rows=f.rows, columns=f.cols,
                                                 k_rows=f.k_rows, k_columns=f.k_cols,
                                                 bias=f.bias) for f in self.factors])

    @classmethod
    def from_proto(cls, msg: events_pb2.Projection) -> KroneckerProjection:
        """Rebuild the spec; a non-empty projection_id must match the one recomputed here."""
        if msg.kind != events_pb2.Projection.KRONECKER:
            raise ValueError(f"Projection.kind {msg.kind} is not KRONECKER")
        p = cls(msg.seed, tuple(Factor(f.layer, f.rows, f.columns, f.k_rows, f.k_columns,
                                       f.bias) for f in msg.factors), tuple(msg.parameters))
        if msg.input_dim != p.input_dim or msg.output_dim != p.output_dim:
            raise ValueError(f"Projection input_dim/output_dim {msg.input_dim}/{msg.output_dim}"
                             f" do not match its factors ({p.input_dim}/{p.output_dim})")
        if msg.projection_id and msg.projection_id != p.projection_id:
            raise ValueError(f"Projection.projection_id {msg.projection_id!r} does not match "
                             f"its fields (expected {p.projection_id!r} from {GENERATOR})")
        return p

    def project(self, grads: Any) -> np.ndarray:
        """Dense per-sample gradients [n, input_dim] in parameter order (each layer's weight
        row-major, then its bias) -> float32 [n, k]: the reference the factored capture
        must equal, and the way to project a gradient formed some other way."""
        g = np.asarray(grads, dtype=np.float64)
        if g.ndim != 2 or g.shape[1] != self.input_dim:
            raise ValueError(f"gradients must be [n, {self.input_dim}], got shape {g.shape}")
        out, offset = [], 0
        for i, f in enumerate(self.factors):
            w_cols = f.cols - 1 if f.bias else f.cols
            weight = g[:, offset:offset + f.rows * w_cols].reshape(-1, f.rows, w_cols)
            offset += f.rows * w_cols
            if f.bias:
                weight = np.concatenate([weight, g[:, offset:offset + f.rows, None]], axis=2)
                offset += f.rows
            p_rows, p_cols = self.matrices(i)
            out.append((p_rows @ weight @ p_cols.T).reshape(len(g), -1))
        return np.concatenate(out, axis=1).astype(np.float32)


def plan_factors(layers: Sequence[tuple[str, int, int, bool]], k: int,
                 shapes: dict[str, tuple[int, int]] | None = None) -> tuple[Factor, ...]:
    """Split a budget of k projected values over layers (name, rows, cols, bias).

    Layers given in `shapes` take their (k_rows, k_cols). The rest share what is left
    evenly, smallest first, so a layer that needs less than its share (its whole gradient
    fits) is kept exact and hands the remainder on. Within a share b the output-gradient
    side gets the larger part, k_rows ≈ √(2b) and k_cols ≈ b / k_rows, each capped at its
    dimension (a classifier's few logit rows stay whole): δ differs from row to row far more
    than a layer's inputs do, and on the digits MLP this split beat near-square and
    input-heavy ones (docs/attribution.md, the k budget).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    shapes = dict(shapes or {})
    if unknown := set(shapes) - {name for name, *_ in layers}:
        raise ValueError(f"factor shapes name unknown layers {sorted(unknown)}; the captured "
                         f"layers are {[name for name, *_ in layers]}")
    chosen: dict[str, tuple[int, int]] = {}
    for name, rows, cols, _ in layers:
        if name in shapes:
            kr, kc = shapes[name]
            if not (1 <= kr <= rows and 1 <= kc <= cols):
                raise ValueError(f"factor shape for {name!r} must be within 1..{rows} x "
                                 f"1..{cols}, got {kr} x {kc}")
            chosen[name] = (kr, kc)
    left = k - sum(a * b for a, b in chosen.values())
    rest = sorted((lay for lay in layers if lay[0] not in chosen), key=lambda t: t[1] * t[2])
    if rest and left < len(rest):
        raise ValueError(f"k={k} leaves {max(left, 0)} values for {len(rest)} layers "
                         f"({[n for n, *_ in rest]}); each needs at least 1")
    for i, (name, rows, cols, _) in enumerate(rest):
        share = left // (len(rest) - i)
        chosen[name] = _shape(rows, cols, share)
        left -= chosen[name][0] * chosen[name][1]
    return tuple(Factor(name, rows, cols, *chosen[name], bias)
                 for name, rows, cols, bias in layers)


def _shape(rows: int, cols: int, budget: int) -> tuple[int, int]:
    """(k_rows, k_cols) with k_rows * k_cols <= budget for one layer."""
    if rows * cols <= budget:
        return rows, cols
    kr = min(rows, max(1, math.isqrt(ROW_SKEW * budget)))
    kc = min(cols, max(1, budget // kr))
    kr = min(rows, max(1, budget // kc))  # a capped side hands its slack to the other
    return kr, kc


def factors_of(layers: Iterable[Factor]) -> list[str]:
    """'layer: k_rows x k_cols of rows x cols' lines, for messages and docs."""
    return [f"{f.layer}: {f.k_rows} x {f.k_cols} of {f.rows} x {f.cols}"
            + (" (bias column)" if f.bias else "") for f in layers]
