"""The attribution engine: which training rows most influenced a prediction. This module
reads the store and caches; the maths is scoring.py (pure).

Per model, the stored gradient rows are loaded once into a cached feature matrix (and
reloaded when rows arrive); scores are computed blockwise over it (DESIGN.md, Attribution):

- influence: score_i = q_i φ_iᵀ (C + λI)⁻¹ φ', C the curvature sketch Σ w φφᵀ of the
  version, averaged over the versions that have a test gradient (older versions weighted
  by `decay` per version). With FEATURISATION rows for a version (every training row's
  gradient re-computed at that version) those are used; otherwise each row's latest
  TRAINING_STEP gradient of that version, and C is rescaled to one count per row.
- tracin: score_i = Σ_t η_t q_{i,t} φ_{i,t}·φ', over every step that used row i.

Sign: positive = including the row raised the output f' being explained (the margin of
the explained label, or the regression output). A training row is a *source example*:
the set of source rows it came from through row-wise ops (lineage `direct` rows), so the
same example seen in several batches or epochs is one row of the result.

Runs: everything is scoped to one training run. Two runs may share a model id, version
names, prediction ids and source files; a prediction is scored against the gradient rows,
curvature and tombstones of its own run only, and TracIn only over the versions on the
prediction's version lineage (its version and its parent_version chain in that run).
"""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pyarrow as pa

from headwater.errors import NothingToAttribute, NoTrainingSteps
from headwater.query_service.attribution.scoring import (
    METHODS,
    SPECTRUM_FACTOR,
    AttributionError,
    Block,
    Damping,
    Example,
    Model,
    Result,
    SourceRow,
    TestGradient,
    default_method,
    embedding_of,
    influence_of_block,
    latest_per_example,
    matvec,
    per_example,
    self_influence_scores,
    tracin_scores,
    version_block,
)
from headwater.query_service.lineage.graph import LineageGraph, UnknownNode
from headwater.stream_processors.processors.gradients import NP_DTYPE, part_matrix
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2

# tombstones of the run's forget requests ('' = stored before tombstones named their run)
_FORGOTTEN_IN_RUN = "run_id IN ({r:String}, '')"


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class AttributionEngine:
    """Caches each model's feature matrix and answers attribution queries over it."""

    def __init__(self, store: Store, *, damping: float = 0.0, decay: float = 1.0,
                 block_rows: int = 65536, damping_factor: float = SPECTRUM_FACTOR) -> None:
        self.store = store
        self.damping = damping  # 0: the version's recorded L2, else the spectrum rule
        self.damping_factor = damping_factor
        self.decay = decay
        self.block_rows = block_rows
        self._models: dict[tuple[str, str], Model] = {}  # (model id, run id) -> model
        self._parents: dict[tuple[str, str], dict[str, str]] = {}  # version -> parent
        self._lock = threading.Lock()

    # -- loading ---------------------------------------------------------------------------

    def run_of(self, model_id: str, run_id: str = "") -> str:
        """`run_id`, or the one run that trained `model_id` (AttributionError when several
        did: the caller must name one)."""
        if run_id:
            return run_id
        runs = [r[0] for r in self.store.query(
            "SELECT DISTINCT run_id FROM gradients WHERE model_id = {m:String} ORDER BY run_id",
            {"m": model_id})]
        if not runs:
            raise NothingToAttribute(f"model {model_id!r} has no stored gradient rows")
        if len(runs) > 1:
            raise AttributionError(
                f"model {model_id!r} was trained in {len(runs)} runs ({', '.join(runs[:5])}"
                f"{', ...' if len(runs) > 5 else ''}); name the run (run_id, --run)")
        return runs[0]

    def model(self, model_id: str, run_id: str = "") -> Model:
        """The cached model of one run (the model's only run when `run_id` is empty),
        reloaded when its stored gradient row count changed."""
        run = self.run_of(model_id, run_id)
        # Stored rows before deduplication: any insert (even a replay) changes it, and it
        # needs no FINAL merge, so checking it costs little on every query.
        # (Forgotten rows count too: a forget request changes what is scored.)
        params = {"m": model_id, "r": run}
        rows = int(self.store.query(
            "SELECT (SELECT count() FROM gradients WHERE model_id = {m:String} "
            "AND run_id = {r:String}) * 1000003 + (SELECT count() FROM forgotten_rows "
            f"WHERE model_id = {{m:String}} AND {_FORGOTTEN_IN_RUN})", params)[0][0])
        with self._lock:
            cached = self._models.get((model_id, run))
            if cached is not None and cached.rows == rows:
                return cached
            if rows < 1000003:
                raise NothingToAttribute(f"model {model_id!r} has no stored gradient rows in "
                                         f"run {run!r}")
            model = self._load(model_id, run, rows)
            if not model.blocks:
                raise NothingToAttribute(f"model {model_id!r} has no gradient rows left in run "
                                         f"{run!r} (all forgotten)")
            self._models[(model_id, run)] = model
            return model

    def _load(self, model_id: str, run: str, rows: int) -> Model:
        params = {"m": model_id, "r": run}
        t = self.store.query_arrow(
            "SELECT model_version, kind, node_id, row, step, learning_rate, loss_weight, "
            "curvature_weight, target, projection_id, dim, dtype, gradient "
            "FROM gradients FINAL WHERE model_id = {m:String} AND run_id = {r:String} "
            "AND kind != 'CURVATURE' AND (node_id, row) NOT IN (SELECT node_id, row "
            f"FROM forgotten_rows WHERE model_id = {{m:String}} AND {_FORGOTTEN_IN_RUN}) "
            "ORDER BY model_version, kind, step, event_id, idx", params)
        version = np.array([_text(v) for v in t["model_version"].to_pylist()], dtype=object)
        kind = np.array([_text(v) for v in t["kind"].to_pylist()], dtype=object)
        node = np.array([_text(v) for v in t["node_id"].to_pylist()], dtype=object)
        row = t["row"].to_numpy().astype(np.int64)
        examples, example_of = self._examples(node, row)
        blocks = []
        for v, k in sorted(set(zip(version, kind, strict=True))):
            sel = np.flatnonzero((version == v) & (kind == k))
            dims = set(t["dim"].take(sel).to_pylist())
            dtypes = {_text(d) for d in t["dtype"].take(sel).to_pylist()}
            projections = {_text(p) for p in t["projection_id"].take(sel).to_pylist()}
            if len(dims) != 1 or len(dtypes) != 1 or len(projections) != 1:
                raise AttributionError(f"model {model_id} version {v}: gradient rows mix "
                                       f"projections/dims ({sorted(projections)}, {dims})")
            grads = t["gradient"].take(sel).combine_chunks()
            _, offsets, data = grads.buffers()
            wide = pa.types.is_large_binary(grads.type)
            start = int(np.frombuffer(offsets, np.int64 if wide else np.int32)[grads.offset])
            dim = dims.pop()
            np_type = NP_DTYPE[dtypes.pop()]
            phi = np.frombuffer(data, np_type, count=len(sel) * dim,
                                offset=start).reshape(len(sel), dim).astype(np.float32)
            col = {c: t[c].take(sel).to_numpy() for c in (
                "loss_weight", "curvature_weight", "learning_rate", "step", "target")}
            blocks.append(Block(v, k, projections.pop(), phi,
                                col["loss_weight"].astype(np.float64),
                                col["curvature_weight"].astype(np.float64),
                                col["learning_rate"].astype(np.float64),
                                col["step"].astype(np.int64), col["target"], example_of[sel]))
        recorded = self.store.query(
            "SELECT version, parent_version, l2_penalty, framework FROM model_versions FINAL "
            "WHERE model_id = {m:String} AND run_id = {r:String} ORDER BY step, recorded_at",
            params)
        versions = [_text(r[0]) for r in recorded]
        self._parents[(model_id, run)] = {_text(r[0]): _text(r[1]) for r in recorded}
        versions += sorted({b.version for b in blocks} - set(versions))
        return Model(model_id, rows, blocks, examples, versions, run_id=run,
                     l2={_text(r[0]): float(r[2]) for r in recorded},
                     framework={_text(r[0]): _text(r[3]) for r in recorded})

    def lineage(self, model: Model, versions: list[str]) -> set[str]:
        """The given versions and their ancestors (parent_version chains) in the model's
        run; a version the run never recorded (no ModelVersionRecorded) stands for every
        version of the run, as there is no chain to follow."""
        parents = self._parents.get((model.model_id, model.run_id), {})
        out: set[str] = set()
        for v in versions:
            if v not in parents:
                return set(model.versions)
            while v and v not in out:
                out.add(v)
                v = parents.get(v, "")
        return out

    def _examples(self, node: np.ndarray, row: np.ndarray) -> tuple[list[Example], np.ndarray]:
        """Group training keys into source examples through lineage (direct rows)."""
        keys, inverse = np.unique(np.stack([node.astype(str), row.astype(str)], 1), axis=0,
                                  return_inverse=True)
        inverse = inverse.ravel()
        graph = LineageGraph(self.store)
        node_ids = sorted(set(keys[:, 0]))
        index = {n: i for i, n in enumerate(node_ids)}
        request = events_pb2.RowKeys(node_ids=node_ids,
                                     node_index=[index[n] for n in keys[:, 0]],
                                     rows=[int(r) for r in keys[:, 1]])
        try:
            traced = graph.trace_rows(request)
        except UnknownNode:
            traced = []  # gradients published without lineage: each key is its own example
        by_key = {(n, r): t for n, r, t in traced}
        examples: list[Example] = []
        ident: dict[tuple, int] = {}
        key_example = np.empty(len(keys), dtype=np.int64)
        for i, (n, r) in enumerate(keys):
            trace = by_key.get((n, int(r)))
            direct = sorted((src, int(x)) for src, rows in (trace.direct if trace else {}).items()
                            for x in rows)
            identity = tuple(direct) if direct else (("key", n), ("row", int(r)))
            if identity not in ident:
                ident[identity] = len(examples)
                sources = []
                for src, x in direct:
                    try:
                        ref = graph.source(src)
                        sources.append(SourceRow(ref.source_id, ref.uri, src, x))
                    except UnknownNode:  # a root never described (e.g. an array)
                        sources.append(SourceRow("", "", src, x))
                examples.append(Example(n, int(r), sources, trace.op_ids if trace else []))
            key_example[i] = ident[identity]
        return examples, key_example[inverse]

    def test_gradients(self, prediction_id: str, run_id: str = ""
                       ) -> tuple[str, list[TestGradient]]:
        """(model id, test gradient per recorded version) of a prediction."""
        model_id, _, tests = self.prediction(prediction_id, run_id)
        return model_id, tests

    def prediction(self, prediction_id: str, run_id: str = ""
                   ) -> tuple[str, str, list[TestGradient]]:
        """(model id, run id, test gradient per recorded version) of a prediction: the one
        recorded in `run_id`, or in the only run that recorded that id (AttributionError
        when several did: prediction ids may recur across runs)."""
        rows = self.store.query(
            "SELECT run_id, model_id, model_version, projection_id, dim, dtype, "
            "hex(test_gradients), gradient_labels FROM predictions FINAL "
            "WHERE prediction_id = {p:String} ORDER BY run_id, recorded_at",
            {"p": prediction_id})
        runs = sorted({r[0] for r in rows})
        if run_id:
            if run_id not in runs:
                raise NothingToAttribute(
                    f"no prediction with id {prediction_id!r} in run {run_id!r}"
                    + (f" (recorded in run(s) {', '.join(runs[:5])})" if runs else ""))
            runs = [run_id]
        elif len(runs) > 1:
            raise AttributionError(
                f"prediction id {prediction_id!r} was recorded in {len(runs)} runs "
                f"({', '.join(runs[:5])}{', ...' if len(runs) > 5 else ''}); name the run "
                "(run_id, --run)")
        rows = [r[1:] for r in rows if r[0] in runs]
        if not rows:
            raise NothingToAttribute(f"no prediction with id {prediction_id!r}")
        out = []
        for _model, version, projection_id, dim, dtype, data, labels in rows:
            if not data:
                raise AttributionError(f"prediction {prediction_id} was recorded without a "
                                       "test gradient")
            phi = np.frombuffer(bytes.fromhex(data), NP_DTYPE[dtype])[:dim].astype(np.float64)
            out.append(TestGradient(version, projection_id, phi, labels[0] if labels else ""))
        return rows[0][0], runs[0], out

    # -- scoring ---------------------------------------------------------------------------

    def curvature(self, model: Model, block: Block) -> np.ndarray:
        """C = Σ w φφᵀ of the block's version and kind from the sketch parts; for a
        FEATURISATION block the version's CURVATURE parts (full softmax Gauss-Newton
        factors) when the trainer published them."""
        if block.kind == "FEATURISATION":
            full = replace(block, kind="CURVATURE")
            c = self._curvature(model, full)
            if model.curvature[(full.version, full.kind, full.projection_id)][1]:
                model.curvature[(block.version, block.kind, block.projection_id)] = \
                    model.curvature[(full.version, full.kind, full.projection_id)]
                return c
        return self._curvature(model, block)

    def _curvature(self, model: Model, block: Block) -> np.ndarray:
        key = (block.version, block.kind, block.projection_id)
        if key not in model.curvature:
            parts = self.store.query(
                "SELECT hex(matrix), rows, dim, layout FROM curvature_parts "
                "WHERE model_id = {m:String} AND run_id IN ({r:String}, '')"
                " AND model_version = {v:String} AND kind = {k:String} "
                "AND projection_id = {p:String}",
                {"m": model.model_id, "r": model.run_id, "v": block.version,
                 "k": block.kind, "p": block.projection_id})
            k = block.phi.shape[1]
            total = np.zeros((k, k))
            counted = 0
            for data, n, dim, layout in parts:
                if dim != k:
                    continue
                total += part_matrix(bytes.fromhex(data), int(n), k, layout)
                counted += int(n)
            removed, n_removed = self._forgotten_curvature(model, block, k)
            model.curvature[key] = (total - removed, counted - n_removed)
        return model.curvature[key][0]

    def _forgotten_curvature(self, model: Model, block: Block, k: int
                             ) -> tuple[np.ndarray, int]:
        """Σ w φφᵀ of the version's forgotten rows in the run: the sketch counted them when
        they arrived; a forget request takes them out again."""
        t = self.store.query_arrow(
            "SELECT curvature_weight, dtype, gradient FROM gradients FINAL "
            "WHERE model_id = {m:String} AND run_id = {r:String} AND model_version = {v:String}"
            " AND kind = {k:String} AND projection_id = {p:String} AND dim = {d:UInt32} AND "
            "(node_id, row) IN (SELECT node_id, row FROM forgotten_rows WHERE model_id = "
            f"{{m:String}} AND {_FORGOTTEN_IN_RUN})",
            {"m": model.model_id, "r": model.run_id, "v": block.version, "k": block.kind,
             "p": block.projection_id, "d": k})
        if t.num_rows == 0:
            return np.zeros((k, k)), 0
        phi = np.stack([np.frombuffer(g, NP_DTYPE[_text(d)]).astype(np.float64) for g, d in
                        zip(t["gradient"].to_pylist(), t["dtype"].to_pylist(), strict=True)])
        w = t["curvature_weight"].to_numpy().astype(np.float64)
        return (phi * w[:, None]).T @ phi, t.num_rows

    def _latest_per_example(self, block: Block) -> np.ndarray:
        return latest_per_example(block)

    def _matvec(self, phi: np.ndarray, u: np.ndarray) -> np.ndarray:
        return matvec(phi, u, self.block_rows)

    def influence(self, model: Model, tests: list[TestGradient], damping: float = 0.0
                  ) -> tuple[np.ndarray, str, float, str]:
        """(scores, versions used, mean λ, where λ came from) of the influence ensemble
        over the tests' versions (Damping: request, setting, recorded L2, spectrum)."""
        scores = np.zeros(len(model.examples))
        total_weight = 0.0
        used = []
        lams: list[float] = []
        sources: set[str] = set()
        rule = Damping(damping or self.damping, self.damping_factor)
        for test in tests:
            try:
                block = self._version_block(model, test.version, test.projection_id)
            except NothingToAttribute:
                continue
            if block.phi.shape[1] != len(test.phi):
                raise AttributionError(f"test gradient has {len(test.phi)} dims; the stored "
                                       f"gradients of {test.version} have {block.phi.shape[1]}")
            c = self.curvature(model, block)
            counted = model.curvature[(block.version, block.kind, block.projection_id)][1]
            c = per_example(block, c, counted)
            lam, source = rule.of(c, model.l2.get(block.version, 0.0))
            lams.append(lam)
            sources.add(source)
            examples, s = influence_of_block(block, c, test.phi, lam, self.block_rows)
            age = len(model.versions) - 1 - (model.versions.index(test.version)
                                             if test.version in model.versions else 0)
            weight = self.decay ** age
            scores += np.bincount(examples, weight * s, len(scores))
            total_weight += weight
            used.append(test.version)
        if not used:
            raise AttributionError("no stored gradient rows at the prediction's model version(s) "
                                   f"{[t.version for t in tests]} with its projection")
        return (scores / total_weight, ",".join(used), float(np.mean(lams)),
                ", ".join(sorted(sources)))

    def tracin(self, model: Model, tests: list[TestGradient]) -> tuple[np.ndarray, str]:
        """TracIn over the training steps of the versions on the tests' version lineage;
        NoTrainingSteps when none was captured with a learning rate (it would score 0)."""
        lineage = self.lineage(model, [t.version for t in tests])
        steps = [b for b in model.blocks if b.version in lineage and b.kind == "TRAINING_STEP"]
        if not any((b.lr != 0).any() for b in steps):
            raise NoTrainingSteps(
                f"tracin needs training-step gradients: model {model.model_id!r} has "
                + ("only FEATURISATION rows" if not steps else
                   "training-step rows with learning_rate 0 only")
                + " on the prediction's version lineage; capture every step with the "
                "optimiser's learning rate (capture(x, y, keys, learning_rate=lr, step=...) "
                "before optimizer.step()), or use method influence")
        scoped = replace(model, blocks=[b for b in model.blocks if b.version in lineage])
        return tracin_scores(scoped, tests, self.block_rows)

    def attribute(self, prediction_id: str = "", *, model_id: str = "",
                  test: TestGradient | None = None, method: str = "influence",
                  damping: float = 0.0, run_id: str = "", versions: int = 0) -> Result:
        """Scores of every source example for a prediction (or a given test gradient),
        over the training rows of the prediction's run (`run_id`, else the prediction's
        or the model's only run). `versions` > 0: influence over the prediction's latest
        that many versions only."""
        if method not in (*METHODS, "default"):
            raise AttributionError(f"method must be one of {', '.join(METHODS)} or default; "
                                   f"got {method!r}")
        if prediction_id:
            model_id, run_id, tests = self.prediction(prediction_id, run_id)
        elif test is not None and model_id:
            tests = [test]
        else:
            raise AttributionError("give a prediction id, or a model id and a test gradient")
        model = self.model(model_id, run_id)
        if method == "default":
            method = default_method(model)
        if method == "influence":
            scores, version, lam, source = self.influence(
                model, tests[-versions:] if versions else tests, damping)
            return Result(method, version, scores, model, lam, source)
        scores, version = self.tracin(model, tests)
        return Result(method, version, scores, model)

    def embedding(self, model: Model, test: TestGradient
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """KNN-Shapley's space: scoring.embedding_of."""
        return embedding_of(model, test)

    def _version_block(self, model: Model, version: str, projection_id: str | None = None
                       ) -> Block:
        return version_block(model, version, projection_id)

    def self_influence(self, model_id: str, version: str = "", damping: float = 0.0,
                       run_id: str = "") -> Result:
        """q_i φ_iᵀ (C + λI)⁻¹ φ_i per example: large values flag likely mislabelled rows."""
        model = self.model(model_id, run_id)
        block = self._version_block(model, version or model.versions[-1])
        c = self.curvature(model, block)
        c = per_example(block, c, model.curvature[(block.version, block.kind,
                                                   block.projection_id)][1])
        lam, source = Damping(damping or self.damping, self.damping_factor).of(
            c, model.l2.get(block.version, 0.0))
        scores = self_influence_scores(model, block, c, lam)
        return Result("self_influence", version, scores, model, lam, source)
