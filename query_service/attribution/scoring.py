"""The attribution maths, pure: NumPy over the cached feature matrix, no store, no I/O
(the engine in engine.py loads the matrices and calls these).

- influence: score_i = q_i φ_iᵀ (C + λI)⁻¹ φ', each example's latest row of a version.
- tracin: score_i = Σ_t η_t q_{i,t} φ_{i,t}·φ', over every step that used row i.
- self-influence: q_i φ_iᵀ (C + λI)⁻¹ φ_i, large for likely mislabelled rows.

The shapes (Block, Model, TestGradient, Result) are the engine's cache and its answers.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from headwater.errors import AttributionError, NothingToAttribute

if TYPE_CHECKING:
    from headwater.query_service.lineage.graph import LineageGraph

METHODS = ("influence", "tracin")
AGGREGATIONS = ("row", "source", "source_file", "op")




@dataclass(frozen=True)
class SourceRow:
    source_id: str
    uri: str
    node_id: str
    row: int


@dataclass
class Example:
    """One source example: its first training key, its source rows and op chain."""

    node_id: str
    row: int
    sources: list[SourceRow]
    op_ids: list[str]


@dataclass
class Block:
    """Gradient rows of one (version, kind): the cached feature matrix."""

    version: str
    kind: str
    projection_id: str
    phi: np.ndarray  # [n, k] float32
    q: np.ndarray
    w: np.ndarray
    lr: np.ndarray
    step: np.ndarray
    target: np.ndarray
    example: np.ndarray  # [n] index into Model.examples
    latest: np.ndarray | None = None  # each example's latest row (cached)


@dataclass
class Model:
    model_id: str
    rows: int
    blocks: list[Block]
    examples: list[Example]
    versions: list[str]  # in recorded order
    curvature: dict[tuple[str, str, str], tuple[np.ndarray, int]] = field(default_factory=dict)
    run_id: str = ""  # the training run these rows are of (models are scoped by run)
    l2: dict[str, float] = field(default_factory=dict)  # version -> recorded L2 penalty
    framework: dict[str, str] = field(default_factory=dict)  # version -> framework


@dataclass(frozen=True)
class TestGradient:
    version: str
    projection_id: str
    phi: np.ndarray  # [k]
    label: str


@dataclass
class Result:
    method: str
    model_version: str
    scores: np.ndarray  # [examples]
    model: Model
    damping: float = 0.0  # influence: λ used (mean over the ensembled versions)
    damping_source: str = ""

    def ranked(self, k: int, sign: int) -> list[tuple[Example, float]]:
        """The k examples with the largest scores of one sign (+1: most helpful, raised
        the output; -1: most harmful, lowered it), strongest first; zeros never."""
        signed = sign * self.scores
        idx = np.flatnonzero(signed > 0)
        k = min(k, len(idx))
        if k == 0:
            return []
        idx = idx[np.argpartition(-signed[idx], k - 1)[:k]]
        idx = idx[np.argsort(-signed[idx], kind="stable")]
        return [(self.model.examples[i], float(self.scores[i])) for i in idx]

    def top(self, k: int) -> list[tuple[Example, float]]:
        """The k examples with the largest |score| (both directions), largest first."""
        k = min(k, len(self.scores))
        idx = np.argpartition(-np.abs(self.scores), k - 1)[:k] if k else np.array([], int)
        idx = idx[np.argsort(-np.abs(self.scores[idx]), kind="stable")]
        return [(self.model.examples[i], float(self.scores[i])) for i in idx]

    def groups(self, by: str, graph: LineageGraph) -> list[tuple[str, str, float, int]]:
        """(key, label, summed score, examples) per source / file / op, largest |score|
        first. An example built from two sources counts fully for each of them."""
        totals: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        labels: dict[str, str] = {}
        for ex, score in zip(self.model.examples, self.scores, strict=True):
            if by == "op":
                keys = {o: graph.op(o).op_name for o in ex.op_ids}
            elif by == "source":
                keys = {s.source_id: s.uri for s in ex.sources}
            else:
                keys = {s.uri: s.uri for s in ex.sources}
            for key, label in keys.items():
                totals[key] += float(score)
                counts[key] += 1
                labels[key] = label
        order = sorted(totals, key=lambda key: -abs(totals[key]))
        return [(key, labels[key], totals[key], counts[key]) for key in order]


def unsign(phi: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Binary margin gradients are s·∇(logit) with s = ±1 by label; return ∇(logit)."""
    return phi * np.where(np.asarray(labels) > 0, 1.0, -1.0)[:, None].astype(phi.dtype)


def latest_per_example(block: Block) -> np.ndarray:
    """Row indices: each example's latest row in the block (ordered by step); cached."""
    if block.latest is not None:
        return block.latest
    order = np.lexsort((block.step, block.example))
    ex = block.example[order]
    last = np.ones(len(ex), dtype=bool)
    last[:-1] = ex[1:] != ex[:-1]
    block.latest = order[last]
    return block.latest


def matvec(phi: np.ndarray, u: np.ndarray, block_rows: int) -> np.ndarray:
    """phi @ u, `block_rows` rows at a time (bounded temporaries)."""
    out = np.empty(len(phi))
    for start in range(0, len(phi), block_rows):
        out[start:start + block_rows] = phi[start:start + block_rows] @ u
    return out


SPECTRUM_FACTOR = 1.0  # λ = this × the mean eigenvalue of C when no L2 was recorded


@dataclass(frozen=True)
class Damping:
    """Where λ comes from, in order: `value` (the request, else the server setting), the L2
    penalty recorded with the model version, else `factor` × the mean eigenvalue of C
    (trace / k), the data-driven rule benchmarks/attribution_lds.py measured
    (docs/attribution.md, "Damping")."""

    value: float = 0.0
    factor: float = SPECTRUM_FACTOR

    def of(self, c: np.ndarray, l2: float = 0.0) -> tuple[float, str]:
        """(λ, where it came from) for curvature `c` of a version with recorded `l2`."""
        if self.value:
            return self.value, "request"
        if l2:
            return l2, "recorded l2"
        mean_eig = max(float(np.trace(c)) / len(c), 1e-12)
        return self.factor * mean_eig, f"{self.factor:g} x mean eigenvalue"


def damping_for(c: np.ndarray, *dampings: float) -> float:
    """The first non-zero damping given, else the spectrum rule (Damping)."""
    return Damping(next((d for d in dampings if d), 0.0)).of(c)[0]


ONE_PASS = 1.5  # training-step rows per example at most: a one-pass (streaming) learner


def default_method(model: Model) -> str:
    """The method a request without one gets, by measured LDS (docs/attribution.md,
    "Default method"): `tracin` for a one-pass learner (its training steps captured with a
    learning rate, each example used about once: a stream), where it beat influence at the
    final model by 0.2 LDS on both measured streams; `influence` otherwise (converged convex
    models: exact; multi-epoch networks: above TracIn, gradient dot and TRAK)."""
    steps = [b for b in model.blocks if b.kind == "TRAINING_STEP" and (b.lr != 0).any()]
    uses = sum(len(b.example) for b in steps) / max(len(model.examples), 1)
    return "tracin" if steps and uses <= ONE_PASS else "influence"


def version_block(model: Model, version: str, projection_id: str | None = None) -> Block:
    """The block scoring uses at `version`: FEATURISATION rows when recorded, else
    TRAINING_STEP rows (NotFound when neither)."""
    blocks = [b for b in model.blocks if b.version == version
              and (projection_id is None or b.projection_id == projection_id)]
    block = next((b for b in blocks if b.kind == "FEATURISATION"), None) or \
        next((b for b in blocks if b.kind == "TRAINING_STEP"), None)
    if block is None:
        raise NothingToAttribute(f"model {model.model_id} has no gradient rows at version "
                       f"{version!r}" + (" with that projection" if projection_id else ""))
    return block


def influence_of_block(block: Block, c: np.ndarray, test_phi: np.ndarray, lam: float,
                       block_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(example index, score) of each example's latest row in `block` for one test
    gradient; `c` the block's curvature (already one count per example), `lam` the
    damping."""
    sel = latest_per_example(block)
    u = np.linalg.solve(c + lam * np.eye(len(c)), test_phi)
    # score every stored row (no copy of the matrix), keep each example's latest
    s = matvec(block.phi, u.astype(np.float32), block_rows)[sel] * block.q[sel]
    return block.example[sel], s


def per_example(block: Block, c: np.ndarray, counted: int) -> np.ndarray:
    """The curvature of a TRAINING_STEP block rescaled to one count per example (a row
    used in several steps of the version was counted once per use)."""
    if block.kind == "TRAINING_STEP" and counted:
        return c * (len(latest_per_example(block)) / counted)
    return c


def tracin_scores(model: Model, tests: list[TestGradient], block_rows: int
                  ) -> tuple[np.ndarray, str]:
    """Σ_t η_t q_{i,t} φ_{i,t}·φ'_t per example over the TRAINING_STEP rows (each version's
    own test gradient, else the latest); (scores, the latest test's version)."""
    by_version = {t.version: t for t in tests}
    latest = tests[-1]
    scores = np.zeros(len(model.examples))
    for block in model.blocks:
        if block.kind != "TRAINING_STEP":
            continue
        test = by_version.get(block.version, latest)
        if test.projection_id != block.projection_id:
            continue
        s = matvec(block.phi, test.phi.astype(np.float32), block_rows) * block.q * block.lr
        scores += np.bincount(block.example, s, len(scores))
    return scores, latest.version


def self_influence_scores(model: Model, block: Block, c: np.ndarray, lam: float
                          ) -> np.ndarray:
    """q_i φ_iᵀ (C + λI)⁻¹ φ_i of each example's latest row in `block` (0 elsewhere)."""
    sel = latest_per_example(block)
    inv = np.linalg.inv(c + lam * np.eye(len(c)))
    phi = block.phi[sel].astype(np.float64)
    s = np.einsum("ij,jk,ik->i", phi, inv, phi) * block.q[sel]
    scores = np.zeros(len(model.examples))
    scores[block.example[sel]] = s
    return scores


def embedding_of(model: Model, test: TestGradient
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(features, labels, example index, binary) of each example's latest row at the
    test's version: the space KNN-Shapley measures distance in. For a binary margin
    model φ = ±∇(logit) by label; the sign is removed so that neighbours are rows
    with similar inputs, not rows with the same label."""
    block = version_block(model, test.version, test.projection_id)
    sel = latest_per_example(block)
    y = block.target[sel]
    if np.isnan(y).any():
        raise AttributionError("KNN-Shapley needs labels: some gradient rows were "
                               "published without targets")
    binary = bool(np.isin(block.target, (0.0, 1.0)).all())
    phi = block.phi[sel]
    return (unsign(phi, y) if binary else phi), y, block.example[sel], binary
