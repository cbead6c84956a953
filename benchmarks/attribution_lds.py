"""LDS of Headwater's attribution against retraining (ground truth, never our estimates),
measured as a user meets it: every trainer publishes to `headwater serve` (a child process)
over gRPC with the SDK, and every score comes back through Attribution.AttributeAll.

    python benchmarks/attribution_lds.py              # full: 100 subsets per task
    python benchmarks/attribution_lds.py --fast --json

Tasks (the same checkpoints and subsets for every method of a task):

1. breast-cancer logistic regression (L2, trained to convergence by Newton's method),
   FEATURISATION gradients at the trained version; published twice: with its L2 recorded
   (ModelVersionRecorded.l2_penalty) and without (the spectrum rule). Side by side: exact
   influence (closed form), gradient dot (q_i ∇f_i·∇f'), traceprop when installed.
2. digits MLP (64-32-10, SGD, fixed epochs and seeds): TRAINING_STEP gradients every step, a
   model version every epoch, featurisation and predictions at the last 1/5/10 versions;
   the default method, tracin, gradient dot (influence with λ → ∞) and TRAK (traker) on
   the same checkpoints.
3. drifting streams (synthetic, 3 classes, a decision boundary that turns by 60° along the
   stream, a block of noisy labels in the middle; one pass of online SGD) for two learners,
   multiclass logistic regression (LinearCapture) and an MLP (TorchCapture): capture every
   step, a version every 10 steps; default, tracin and influence at the final model.

`--sweep` also queries influence at multiples of the default λ (the request's `damping`),
the measurement behind the spectrum rule (docs/attribution.md, "Damping").

Ground truth: retrain the same recipe on random 50% subsets (streams keep their order);
for each test point the LDS is the Spearman correlation, over subsets, between Σ_{i∈S}
score_i and the retrained output (the margin of the true label); reported as the mean over
test points. Random scores give an LDS of about 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headwater.producers.capture import LinearCapture
from headwater.producers.publisher import Publisher
from headwater.producers.tracking import Tracker, row_keys

VERSIONS = (1, 5, 10)


@dataclass(frozen=True)
class Capture:
    """How the MLP tasks capture gradients: a TorchCapture mode and factored shapes."""

    mode: str = "auto"
    factor_shapes: dict[str, tuple[int, int]] | None = None

    @property
    def label(self) -> str:
        shapes = ";".join(f"{n}={r}x{c}" for n, (r, c) in (self.factor_shapes or {}).items())
        return self.mode + (f"[{shapes}]" if shapes else "")


CAPTURES = [Capture()]  # the MLP tasks' captures (--capture; the streams use the first)

# -- LDS ------------------------------------------------------------------------------------


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (ordinal ranks; 0 when either side is constant)."""
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra @ ra) * (rb @ rb))
    return float((ra @ rb) / denom) if denom > 0 else 0.0


def lds(scores: np.ndarray, truth: np.ndarray, masks: np.ndarray) -> float:
    """Mean over test points of Spearman(Σ_{i∈S} score_i, retrained output).
    scores [tests, train], truth [subsets, tests], masks [subsets, train]."""
    return float(np.mean(lds_points(scores, truth, masks)))


def lds_points(scores: np.ndarray, truth: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per test point Spearman(Σ_{i∈S} score_i, retrained output): lds() is their mean."""
    if scores.shape != (truth.shape[1], masks.shape[1]):
        raise ValueError(f"scores must be [tests={truth.shape[1]}, train={masks.shape[1]}]; "
                         f"got {scores.shape}")
    predicted = masks.astype(float) @ scores.T  # [subsets, tests]
    return np.array([spearman(predicted[:, j], truth[:, j]) for j in range(truth.shape[1])])


def paired_difference(a: np.ndarray, b: np.ndarray, reps: int = 2000, seed: int = 0
                      ) -> tuple[float, float]:
    """(mean of a - b, its standard error by bootstrap over test points): per-point LDS of
    two captures scored on the same subsets and test points, so the noise mostly cancels."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(diff), size=(reps, len(diff)))
    return float(diff.mean()), float(diff[idx].mean(axis=1).std(ddof=1))


def half_masks(subsets: int, n: int, seed: int) -> np.ndarray:
    """[subsets, n] boolean masks, each selecting n // 2 rows uniformly at random."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((subsets, n), dtype=bool)
    for s in range(subsets):
        masks[s, rng.choice(n, n // 2, replace=False)] = True
    return masks


def _split_rows(n: int, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows Tracker.split gives (same seeded permutation), for the labels."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = math.ceil(test_size * n)
    return perm[n_test:], perm[:n_test]


def _die_with_parent() -> None:
    """In the serve child (Linux): SIGTERM when this benchmark dies, even by SIGKILL, so a
    killed run leaves no server behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Service:
    """`headwater serve` in a child process on a free loopback port, stopped by its pid:
    trainers publish to it over gRPC, scores come from Attribution.AttributeAll."""

    def __init__(self, work: Path) -> None:
        import grpc

        from headwater.v1 import query_pb2_grpc

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.target = f"127.0.0.1:{port}"
        self.log = open(work / "serve.log", "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "headwater.cli", "serve", "--data-dir", str(work / "data"),
             "--listen", self.target], stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"headwater serve exited ({self.proc.returncode}); see "
                                   f"{work / 'serve.log'}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("headwater serve did not listen within 120 s")
            time.sleep(0.2)
        channel = grpc.insecure_channel(self.target, options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        self.stub = query_pb2_grpc.AttributionStub(channel)

    def publisher(self, run_id: str) -> Publisher:
        from headwater.producers.transports.grpc import GrpcTransport

        return Publisher(GrpcTransport(self.target), run_id=run_id)

    def scores(self, ids: Sequence[str], root_to_train: np.ndarray, **request: Any
               ) -> tuple[np.ndarray, dict[str, Any]]:
        """([tests, train] scores of every training row, {method, damping, ms per query})
        from AttributeAll per prediction id; each result row is placed at the training
        index of its (single) source row."""
        from headwater.v1 import query_pb2

        out = np.zeros((len(ids), int(root_to_train.max()) + 1))
        info: dict[str, Any] = {}
        list(self.stub.AttributeAll(query_pb2.AttributeRequest(prediction_id=ids[0],
                                                               **request), timeout=600))
        t0 = time.perf_counter()  # warm: the first call loaded the model's matrix
        for j, pid in enumerate(ids):
            for chunk in self.stub.AttributeAll(query_pb2.AttributeRequest(
                    prediction_id=pid, **request), timeout=600):
                info.setdefault("method", chunk.method)
                info.setdefault("damping", []).append(chunk.damping)
                for r in chunk.rows:
                    if len(r.sources) != 1:
                        raise ValueError("a result row does not trace to one source row")
                    out[j, root_to_train[r.sources[0].row]] = r.score
        info["query_ms"] = (time.perf_counter() - t0) / len(ids) * 1000
        info["damping"] = float(np.mean(info["damping"]))
        return out, info

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def measure(figures: dict, name: str, service: Service, ids: Sequence[str],
            root_to_train: np.ndarray, truth: np.ndarray, masks: np.ndarray,
            **request: Any) -> np.ndarray:
    """LDS of one method through the RPC into figures[name] (with its λ and ms/query)."""
    scores, info = service.scores(ids, root_to_train, **request)
    figures[name] = {"lds": lds(scores, truth, masks), **info}
    return scores


def sweep(figures: dict, prefix: str, service: Service, ids: Sequence[str],
          root_to_train: np.ndarray, truth: np.ndarray, masks: np.ndarray,
          **request: Any) -> None:
    """Influence at multiples of the default λ of the first prediction (request damping)."""
    from headwater.v1 import query_pb2

    base = service.stub.Attribute(query_pb2.AttributeRequest(
        prediction_id=ids[0], method=query_pb2.INFLUENCE, **request), timeout=600).damping
    for factor in SWEEP:
        measure(figures, f"{prefix} λ×{factor:g}", service, ids, root_to_train, truth,
                masks, method=query_pb2.INFLUENCE, damping=base * factor, **request)


SWEEP = (0.01, 0.1, 1.0, 10.0, 100.0)
DOT = 1e12  # influence with this damping is q_i ∇f_i·∇f' / λ: the gradient dot product


# -- 1. breast-cancer logistic regression ---------------------------------------------------


def fit_logreg(x: np.ndarray, y: np.ndarray, lam: float, iters: int = 50) -> np.ndarray:
    """argmin Σ ℓ_i + λ/2 |θ|² over θ = (coef, intercept) by Newton's method."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    theta = np.zeros(xb.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(xb @ theta)))
        g = xb.T @ (p - y) + lam * theta
        h = (xb * (p * (1 - p))[:, None]).T @ xb + lam * np.eye(len(theta))
        step = np.linalg.solve(h, g)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return theta


def traceprop_logreg_scores(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray,
                            yte: np.ndarray, theta: np.ndarray) -> dict[str, Any]:
    """traceprop 0.7.0 through its public API: per-sample loss gradients logged with
    TrainingContext.log_gradient (its NumPy path), test-loss gradients scored by
    AttributionEngine with its "dot" and "trak" estimators. {estimator: [tests, train]}."""
    try:
        import traceprop as tp
    except ImportError as exc:
        return {"error": f"traceprop is not installed ({exc}); pip install traceprop==0.7.0"}

    def loss_grads(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        xb = np.hstack([x, np.ones((len(x), 1))])
        return (1.0 / (1.0 + np.exp(-(xb @ theta))) - y)[:, None] * xb  # ∇θ BCE

    out: dict[str, Any] = {"version": getattr(tp, "__version__", "?")}
    t0 = time.perf_counter()
    with tp.training_context(source_id="breast_cancer") as ctx:  # default proj_dim=4096
        for i, g in enumerate(loss_grads(xtr, ytr)):
            ctx.log_gradient(g, sample_index=i)
    out["capture_s"] = time.perf_counter() - t0
    tests = loss_grads(xte, yte)
    for estimator in ("dot", "trak"):
        t0 = time.perf_counter()
        engine = tp.attribution_engine(ctx.gradient_store, estimator=estimator)
        scores = engine.attribute_scores_batch(tests)
        if scores is None or scores.shape != (len(xte), len(xtr)):
            out[estimator] = f"no scores (got {None if scores is None else scores.shape})"
            continue
        # traceprop scores φ_i·φ' of loss gradients: positive = raises the test margin
        out[estimator] = np.asarray(scores, dtype=np.float64)
        out[f"{estimator}_query_ms"] = (time.perf_counter() - t0) / len(xte) * 1000
    return out


def breast_cancer_lds(service: Service, subsets: int, lam: float, tests: int, seed: int,
                      do_sweep: bool) -> dict:
    from sklearn.datasets import load_breast_cancer

    from headwater.v1 import query_pb2

    data = load_breast_cancer()
    x_raw, y_all = data.data, data.target.astype(float)
    out: dict[str, Any] = {}
    theta = np.zeros(0)
    t0 = time.perf_counter()
    for model_id, l2 in (("logreg", lam), ("logreg-plain", 0.0)):
        with service.publisher(f"lds-{model_id}") as publisher:
            tracker = Tracker(publisher.publish)
            x = tracker.array(x_raw)
            x = (x - x.mean(0)) / x.std(0)  # tracked standardisation
            train, test = tracker.split(x, test_size=0.2, seed=seed)
            tr_rows, te_rows = _split_rows(len(x_raw), 0.2, seed)
            y_train, y_test = y_all[tr_rows], y_all[te_rows]
            xtr, xte = np.asarray(train), np.asarray(test)
            theta = fit_logreg(xtr, y_train, lam)
            capture = LinearCapture(publisher.publish, model_id, xtr.shape[1])
            capture.set_parameters(theta[:-1], theta[-1])
            capture.record_version(step=1, config={"lambda": lam}, l2_penalty=l2)
            capture.capture(xtr, y_train, row_keys(train), learning_rate=0.0,
                            featurisation=True)
            chosen = np.random.default_rng(seed).choice(len(xte), size=min(tests, len(xte)),
                                                        replace=False)
            for j in chosen:
                capture.record_prediction(xte[j], label=int(y_test[j]),
                                          prediction_id=f"{model_id}-{j}")
            publisher.flush()
    out["capture_s"] = time.perf_counter() - t0
    root_to_train = np.full(len(x_raw), -1)
    root_to_train[tr_rows] = np.arange(len(tr_rows))

    masks = half_masks(subsets, len(xtr), seed + 1)
    truth = np.zeros((subsets, len(chosen)))
    sign = 2 * y_test[chosen] - 1
    t0 = time.perf_counter()
    for s in range(subsets):
        th = fit_logreg(xtr[masks[s]], y_train[masks[s]], lam)
        truth[s] = sign * (xte[chosen] @ th[:-1] + th[-1])
    out["retrain_s"] = time.perf_counter() - t0
    out.update({"subsets": subsets, "test_points": len(chosen), "train_rows": len(xtr),
                "lambda": lam})
    methods: dict[str, Any] = {}
    ids = [f"logreg-{j}" for j in chosen]
    plain = [f"logreg-plain-{j}" for j in chosen]
    measure(methods, "default (L2 recorded)", service, ids, root_to_train, truth, masks)
    measure(methods, "default (no L2 recorded: spectrum rule)", service, plain,
            root_to_train, truth, masks)
    measure(methods, "gradient dot (influence, λ→∞)", service, ids, root_to_train, truth,
            masks, method=query_pb2.INFLUENCE, damping=DOT)
    if do_sweep:
        sweep(methods, "influence, no L2:", service, plain, root_to_train, truth, masks)
    # exact influence, closed form at the trained θ: q_i ∇f_iᵀ (Σ w ∇f∇fᵀ + λI)⁻¹ ∇f'
    xb = np.hstack([xtr, np.ones((len(xtr), 1))])
    s_tr = 2 * y_train - 1
    p = 1.0 / (1.0 + np.exp(-(s_tr * (xb @ theta))))
    grads = xb * s_tr[:, None]
    h = (xb * (p * (1 - p))[:, None]).T @ xb + lam * np.eye(xb.shape[1])
    test_grads = np.hstack([xte[chosen], np.ones((len(chosen), 1))]) * sign[:, None]
    exact = (test_grads @ np.linalg.solve(h, grads.T)) * (1 - p)
    methods["exact influence (closed form, local)"] = {"lds": lds(exact, truth, masks)}
    peer = traceprop_logreg_scores(xtr, y_train, xte[chosen], y_test[chosen], theta)
    for estimator in ("dot", "trak"):
        got = peer.get(estimator, peer.get("error"))
        if isinstance(got, np.ndarray):
            methods[f"traceprop {estimator}"] = {
                "lds": lds(got, truth, masks), "query_ms": peer[f"{estimator}_query_ms"]}
        else:
            methods[f"traceprop {estimator}"] = {"error": str(got)}
    out["methods"] = methods
    return out


# -- torch MLP: one recipe, traced once and retrained as a stack of models -----------------


@dataclass(frozen=True)
class Recipe:
    """The training recipe shared by the traced run and every retrained subset model."""

    hidden: int = 32
    epochs: int = 20
    batch: int = 32
    lr: float = 0.1
    seed: int = 0
    shuffle: bool = True  # False: the stream's order, one pass


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the batch order of one epoch (the traced run's Tracker.batches seed)."""
    return seed * 1000 + epoch


def make_mlp(n_in: int, hidden: int, n_out: int, seed: int) -> Any:
    """Linear -> ReLU -> Linear with torch's default initialisation under `seed`."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, n_out))


def stack_parameters(models: Sequence[Any]) -> list[Any]:
    """[W1, b1, W2, b2] of the models stacked along a new first axis (copies)."""
    import torch

    return [torch.stack([dict(m.named_parameters())[name].detach().clone() for m in models])
            for name in ("0.weight", "0.bias", "2.weight", "2.bias")]


def stack_logits(params: Sequence[Any], x: Any) -> Any:
    """Logits [S, B, C] of S stacked MLPs on inputs x [S, B, n_in]."""
    import torch

    w1, b1, w2, b2 = params
    h = torch.relu(torch.baddbmm(b1[:, None, :], x, w1.transpose(1, 2)))
    return torch.baddbmm(b2[:, None, :], h, w2.transpose(1, 2))


def true_margin(logits: Any, y: Any) -> Any:
    """logit_y - logsumexp(other logits) = log p_y - log(1 - p_y), over the last axis."""
    import torch

    own = logits.gather(-1, y[..., None]).squeeze(-1)
    others = logits.scatter(-1, y[..., None], float("-inf"))
    return own - torch.logsumexp(others, dim=-1)


def batch_orders(recipe: Recipe, rows: np.ndarray, seeds: np.ndarray) -> Iterator[np.ndarray]:
    """Per epoch: [S, m] row order of each model; rows [S, m] are its rows (ascending or
    stream order), seeds [S] its base seed. Shuffling is Tracker.batches' permutation."""
    for e in range(recipe.epochs):
        if not recipe.shuffle:
            yield rows
            continue
        yield np.stack([r[np.random.default_rng(epoch_seed(int(s), e)).permutation(len(r))]
                        for r, s in zip(rows, seeds, strict=True)])


def train_stack(params: list[Any], x: Any, y: Any, orders: Iterator[np.ndarray],
                recipe: Recipe) -> list[Any]:
    """Mini-batch SGD on the mean cross-entropy of each of S models at once (the recipe the
    traced run follows with torch.optim.SGD): the summed loss has per-model gradients."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    params = [p.detach().clone().requires_grad_(True) for p in params]
    for order in orders:
        idx_all = torch.as_tensor(order)
        for start in range(0, order.shape[1], recipe.batch):
            idx = idx_all[:, start:start + recipe.batch]
            logits = stack_logits(params, x[idx])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[idx].reshape(-1),
                                   reduction="sum") / idx.shape[1]
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    p -= recipe.lr * g
    return [p.detach() for p in params]


def retrain_margins(init: list[Any], x: np.ndarray, y: np.ndarray, masks: np.ndarray,
                    x_test: np.ndarray, y_test: np.ndarray, recipe: Recipe,
                    chunk: int = 50) -> np.ndarray:
    """[subsets, tests] true-label margins of the recipe retrained on each masked subset.
    init: stacked initial parameters, one model (shared) or one per subset."""
    import torch

    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
    xq = torch.as_tensor(x_test, dtype=torch.float32)
    yq = torch.as_tensor(y_test, dtype=torch.long)
    out = np.zeros((len(masks), len(x_test)))
    for a in range(0, len(masks), chunk):
        part = masks[a:a + chunk]
        rows = np.stack([np.flatnonzero(m) for m in part])  # keeps the stream's order
        seeds = recipe.seed + 1 + np.arange(a, a + len(part))
        start = [p.expand(len(part), *p.shape[1:]) if p.shape[0] == 1 else p[a:a + len(part)]
                 for p in init]
        trained = train_stack(start, xt, yt, batch_orders(recipe, rows, seeds), recipe)
        with torch.no_grad():
            logits = stack_logits(trained, xq.expand(len(part), *xq.shape))
            out[a:a + len(part)] = true_margin(logits, yq.expand(len(part), -1)).numpy()
    return out


def traced_training(publisher: Publisher, tracker: Tracker, train: Any, y_train: np.ndarray,
                    x_test: np.ndarray, y_test: np.ndarray, recipe: Recipe, *, model_id: str,
                    k: int, version_every: int, featurise_last: int,
                    predict: Callable[[int, int], list[str]], capture: Capture | None = None
                    ) -> tuple[Any, Any, list[dict], list[str]]:
    """Train an MLP on tracked rows `train` with torch.optim.SGD, capturing per-sample
    gradients every step (TorchCapture, before optimizer.step), recording a model version
    every `version_every` steps and after the last; at the last `featurise_last` versions
    re-compute every training row's gradient (FEATURISATION) and keep a checkpoint.
    predict(version_index, versions_total) names the prediction ids recorded for each test
    point at that version (true label); `capture` picks the TorchCapture mode and factor
    shapes (default: --capture's first). Returns (model, initial model, checkpoints, ids)."""
    import copy

    import torch
    import torch.nn.functional as F  # noqa: N812

    from headwater.producers.capture.torch import TorchCapture

    x_all = torch.as_tensor(np.asarray(train), dtype=torch.float32)
    y_all = torch.as_tensor(y_train, dtype=torch.long)
    xq = torch.as_tensor(x_test, dtype=torch.float32)
    model = make_mlp(x_all.shape[1], recipe.hidden, int(y_all.max()) + 1, recipe.seed)
    init = copy.deepcopy(model)
    how = capture or CAPTURES[0]
    capture = TorchCapture(publisher.publish, model, model_id, k=k, mode=how.mode,
                           factor_shapes=how.factor_shapes)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr)
    n = len(y_all)
    steps = recipe.epochs * math.ceil(n / recipe.batch)
    marks = sorted(set(range(0, steps, version_every)) | {steps})
    checkpoints: list[dict] = []
    versions: list[str] = []

    def at_version(step: int) -> None:
        index = marks.index(step)
        versions.append(capture.record_version(step, config={"recipe": recipe.__dict__}))
        if index >= len(marks) - featurise_last:
            capture.featurise([(x_all, y_all, row_keys(train))])
            checkpoints.append(copy.deepcopy(model.state_dict()))
        for j in range(len(xq)):
            for pid in predict(index, len(marks)):
                capture.record_prediction(xq[j], label=int(y_test[j]),
                                          prediction_id=f"{pid}-{j}")

    step = 0
    at_version(0)
    for e in range(recipe.epochs):
        seed = epoch_seed(recipe.seed, e)
        order = np.random.default_rng(seed).permutation(n) if recipe.shuffle else np.arange(n)
        for b, batch in enumerate(tracker.batches(train, recipe.batch, shuffle=recipe.shuffle,
                                                  seed=seed)):
            rows = torch.as_tensor(order[b * recipe.batch:(b + 1) * recipe.batch])
            xb, yb = x_all[rows], y_all[rows]
            capture.capture(xb, yb, row_keys(batch), learning_rate=recipe.lr, step=step)
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            step += 1
            if step in marks:
                at_version(step)
    publisher.flush()
    return model, init, checkpoints, versions


# -- 2. digits MLP --------------------------------------------------------------------------


def trak_scores(model: Any, checkpoints: list[dict], x: np.ndarray, y: np.ndarray,
                x_test: np.ndarray, y_test: np.ndarray, k: int, work: Path
                ) -> dict[int, np.ndarray] | str:
    """TRAK (traker, CPU, float32, proj_dim k) on the same checkpoints: {K: [tests, train]}
    for the last K checkpoints, or the reason it could not run."""
    try:
        import logging

        import torch
        from trak import TRAKer
    except ImportError as exc:
        return f"traker is not installed ({exc}); pip install traker"
    try:
        traker = TRAKer(model=model, task="image_classification", train_set_size=len(x),
                        save_dir=str(work / "trak"), device="cpu", proj_dim=k,
                        use_half_precision=False, logging_level=logging.ERROR)
        xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
        xq, yq = torch.as_tensor(x_test, dtype=torch.float32), torch.as_tensor(y_test)
        for i, ckpt in enumerate(checkpoints):
            traker.load_checkpoint(ckpt, model_id=i)
            traker.featurize(batch=(xt, yt), num_samples=len(xt))
        traker.finalize_features()
        for i, ckpt in enumerate(checkpoints):
            traker.start_scoring_checkpoint("lds", ckpt, model_id=i, num_targets=len(xq))
            traker.score(batch=(xq, yq), num_samples=len(xq))
        out = {}
        for versions in VERSIONS:
            ids = list(range(len(checkpoints)))[-versions:]
            scores = traker.finalize_scores("lds", model_ids=ids)
            out[versions] = np.array(scores, dtype=np.float64).T  # [train, tests] -> T
        return out
    except Exception as exc:  # a peer failing is a figure to print, not a crash
        return f"traker did not run: {type(exc).__name__}: {exc}"


def digits_lds(service: Service, subsets: int, tests: int, recipe: Recipe, k: int,
               init_mode: str, work: Path, trak: bool, do_sweep: bool,
               captures: Sequence[Capture] | None = None) -> dict:
    """The digits MLP traced once per capture (default: --capture's), retrained once for
    all. With two or more captures every method's name starts with the capture's label and
    `paired` holds each other capture's per-cell difference from the last (the reference:
    same subsets and test points), with a bootstrap standard error over test points."""
    import torch
    from sklearn.datasets import load_digits

    from headwater.v1 import query_pb2

    captures = list(captures or CAPTURES)
    if len({c.label for c in captures}) != len(captures):
        raise ValueError(f"captures repeat: {[c.label for c in captures]}")
    data = load_digits()
    y_all = data.target.astype(np.int64)
    tr_rows, te_rows = _split_rows(len(data.data), 0.2, recipe.seed)
    chosen = np.random.default_rng(recipe.seed).choice(len(te_rows), tests, replace=False)
    xte = (data.data[te_rows[chosen]] / 16.0).astype(np.float32)
    yte = y_all[te_rows[chosen]]
    root_to_train = np.full(len(data.data), -1)
    root_to_train[tr_rows] = np.arange(len(tr_rows))
    several = len(captures) > 1
    traced: list[tuple[str, Any, Any, list[dict]]] = []  # (id prefix, model, init, ckpts)

    t0 = time.perf_counter()
    with service.publisher("lds-digits") as publisher:
        tracker = Tracker(publisher.publish)
        x = tracker.array(data.data) / 16.0  # tracked scaling to [0, 1]
        train, _ = tracker.split(x, test_size=0.2, seed=recipe.seed)
        xtr, ytr = np.asarray(train, dtype=np.float32), y_all[tr_rows]
        for c, how in enumerate(captures):
            prefix = f"c{c}-" if several else ""

            def predict(index: int, total: int, prefix: str = prefix) -> list[str]:
                return [f"{prefix}d{v}" for v in VERSIONS if index >= total - v]

            model, init, checkpoints, versions = traced_training(
                publisher, tracker, train, ytr, xte, yte, recipe,
                model_id=f"digits-mlp{'-' + str(c) if several else ''}", k=k,
                version_every=math.ceil(len(xtr) / recipe.batch),
                featurise_last=max(VERSIONS), predict=predict, capture=how)
            traced.append((prefix, model, init, checkpoints))
    out: dict[str, Any] = {"subsets": subsets, "test_points": tests, "train_rows": len(xtr),
                           "versions_recorded": len(versions), "k": k,
                           "captures": [c.label for c in captures],
                           "recipe": recipe.__dict__, "init": init_mode,
                           "capture_s": time.perf_counter() - t0}
    with torch.no_grad():
        out["test_accuracy"] = float((model(torch.as_tensor(
            data.data[te_rows] / 16.0, dtype=torch.float32)).argmax(1).numpy()
            == y_all[te_rows]).mean())
    masks = half_masks(subsets, len(xtr), recipe.seed + 7)
    init = traced[0][2]  # every capture trains from the same seed: the same start
    starts = [init] if init_mode == "same" else [
        make_mlp(64, recipe.hidden, 10, recipe.seed + 10_000 + s) for s in range(subsets)]
    t0 = time.perf_counter()
    truth = retrain_margins(stack_parameters(starts), xtr, ytr, masks, xte, yte, recipe)
    out["retrain_s"] = time.perf_counter() - t0

    methods: dict[str, Any] = {}
    points: dict[tuple[int, str], np.ndarray] = {}
    cells = [("default", {}), ("tracin", {"method": query_pb2.TRACIN}),
             ("gradient dot (influence, λ→∞)", {"method": query_pb2.INFLUENCE,
                                                "damping": DOT})]
    for c, (prefix, *_rest) in enumerate(traced):
        head = f"{captures[c].label}: " if several else ""
        for v in VERSIONS:
            ids = [f"{prefix}d{v}-{j}" for j in range(tests)]
            for cell, request in cells:
                name = f"{cell}, {v} versions"
                scores = measure(methods, head + name, service, ids, root_to_train, truth,
                                 masks, **request)
                points[c, name] = lds_points(scores, truth, masks)
            if do_sweep:
                sweep(methods, f"{head}influence, {v} versions:", service, ids,
                      root_to_train, truth, masks)
    if several:
        last = len(captures) - 1
        out["paired"] = {
            f"{captures[c].label} - {captures[last].label}: {name}": dict(zip(
                ("difference", "standard_error"),
                paired_difference(points[c, name], points[last, name]), strict=True))
            for (c, name) in points if c != last}
    if trak:
        t0 = time.perf_counter()
        model, checkpoints = traced[0][1], traced[0][3]
        got = trak_scores(model, checkpoints, xtr, ytr, xte, yte, k, work)
        if isinstance(got, str):
            methods["trak"] = {"error": got}
        else:
            for v, scores in got.items():
                methods[f"trak (traker, CPU), {v} versions"] = {
                    "lds": lds(scores, truth, masks), "s": time.perf_counter() - t0}
    out["methods"] = methods
    return out


# -- 3. drifting streams --------------------------------------------------------------------


def drift_labels(x: np.ndarray, tau: np.ndarray, classes: int = 3,
                 turn: float = math.pi / 3) -> np.ndarray:
    """The label of x at stream time τ ∈ [0, 1]: the nearest of `classes` directions in the
    plane of the first two features, all turned by turn·τ (a rotating boundary), plus a
    little of the third feature."""
    base = 2 * math.pi * np.arange(classes) / classes
    angle = base[None, :] + turn * tau[:, None]
    z = 3 * (x[:, :1] * np.cos(angle) + x[:, 1:2] * np.sin(angle)) + 0.3 * x[:, 2:3]
    return z.argmax(1)


def drifting_stream(n: int, seed: int, dims: int = 8, noisy: tuple[float, float] = (0.4, 0.5),
                    flip: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """(x [n, dims], y [n]) in stream order: Gaussian inputs, drift_labels, and in the
    noisy block (that share of the stream) a `flip` fraction of labels drawn at random."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dims))
    tau = np.linspace(0.0, 1.0, n)
    y = drift_labels(x, tau)
    block = (tau >= noisy[0]) & (tau < noisy[1]) & (rng.random(n) < flip)
    y[block] = rng.integers(0, 3, int(block.sum()))
    return x, y


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def linear_margins(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """True-label margins z_y − logsumexp_{c≠y} z_c of linear models w [S, C, D+1]."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    z = np.einsum("nd,scd->snc", xb, w)
    own = np.take_along_axis(z, np.broadcast_to(y[None, :, None], (len(w), len(y), 1)),
                             2)[..., 0]
    others = z.copy()
    np.put_along_axis(others, np.broadcast_to(y[None, :, None], (len(w), len(y), 1)),
                      -np.inf, 2)
    top = others.max(-1)
    return own - (top + np.log(np.exp(others - top[..., None]).sum(-1)))


def sgd_linear(x: np.ndarray, y: np.ndarray, rows: np.ndarray, lr: float, batch: int,
               classes: int = 3, on_step: Callable[[int, np.ndarray, np.ndarray], None]
               | None = None) -> np.ndarray:
    """One pass of mini-batch SGD on the mean cross-entropy of S linear models at once,
    each over its own rows [S, m] in stream order, from zero weights; on_step(step, rows of
    model 0's batch, weights before the step) lets the traced run capture. -> w [S, C, D+1]."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    onehot = np.eye(classes)[y]
    w = np.zeros((len(rows), classes, xb.shape[1]))
    for step, start in enumerate(range(0, rows.shape[1], batch)):
        idx = rows[:, start:start + batch]
        if on_step is not None:
            on_step(step, idx[0], w[0])
        p = softmax(np.einsum("sbd,scd->sbc", xb[idx], w))
        w -= lr * np.einsum("sbc,sbd->scd", p - onehot[idx], xb[idx]) / idx.shape[1]
    return w


def stream_lds(service: Service, learner: str, subsets: int, tests: int, seed: int, k: int,
               do_sweep: bool, n: int = 2000, lr: float = 0.5, batch: int = 16,
               version_every: int = 10) -> dict:
    """One drifting stream, one learner ("linear": LinearCapture, multiclass; "mlp":
    TorchCapture), one pass; predictions at every version ("all") and at the final one."""
    from headwater.v1 import query_pb2

    x_raw, y = drifting_stream(n, seed)
    rng = np.random.default_rng(seed + 1)
    x_test = rng.normal(size=(max(tests, 2000), x_raw.shape[1]))
    y_test = drift_labels(x_test, np.ones(len(x_test)))  # the final regime
    xte, yte = x_test[:tests], y_test[:tests]
    model_id = f"stream-{learner}"
    t0 = time.perf_counter()
    with service.publisher(f"lds-{model_id}") as publisher:
        tracker = Tracker(publisher.publish)
        stream = tracker.array(x_raw) * 1.0  # the stream as tracked rows
        if learner == "linear":
            capture = LinearCapture(publisher.publish, model_id, x_raw.shape[1], classes=3,
                                    k=k)
            steps = math.ceil(n / batch)

            def version(step: int) -> None:
                capture.record_version(step)
                for j in range(tests):
                    capture.record_prediction(xte[j], label=int(yte[j]),
                                              prediction_id=f"{model_id}-all-{j}")

            def on_step(step: int, rows: np.ndarray, w: np.ndarray) -> None:
                capture.set_parameters(w[:, :-1], w[:, -1])
                if step % version_every == 0:
                    version(step)
                part = stream[int(rows[0]):int(rows[-1]) + 1]
                capture.capture(x_raw[rows], y[rows], row_keys(part),
                                learning_rate=lr / len(rows), step=step)

            final = sgd_linear(x_raw, y, np.arange(n)[None, :], lr, batch, on_step=on_step)[0]
            capture.set_parameters(final[:, :-1], final[:, -1])
            version(steps)
            capture.capture(x_raw, y, row_keys(stream), learning_rate=0.0, featurisation=True)
            for j in range(tests):
                capture.record_prediction(xte[j], label=int(yte[j]),
                                          prediction_id=f"{model_id}-final-{j}")
            publisher.flush()
            accuracy = float((linear_margins(final[None], x_test, y_test)[0] > 0).mean())
        else:
            recipe = Recipe(hidden=32, epochs=1, batch=batch, lr=lr, seed=seed, shuffle=False)

            def predict(index: int, total: int) -> list[str]:
                return [f"{model_id}-all"] + ([f"{model_id}-final"] if index == total - 1
                                             else [])

            xs, ys = x_raw.astype(np.float32), y
            model, init, _, _ = traced_training(
                publisher, tracker, stream, ys, xte.astype(np.float32), yte, recipe,
                model_id=model_id, k=k, version_every=version_every, featurise_last=1,
                predict=predict)
            import torch

            with torch.no_grad():
                accuracy = float((model(torch.as_tensor(x_test, dtype=torch.float32))
                                  .argmax(1).numpy() == y_test).mean())
    out: dict[str, Any] = {"learner": learner, "stream_rows": n, "subsets": subsets,
                           "test_points": tests, "test_accuracy": accuracy,
                           "capture_s": time.perf_counter() - t0}
    masks = half_masks(subsets, n, seed + 11)
    rows = np.stack([np.flatnonzero(m) for m in masks])  # stream order kept
    t0 = time.perf_counter()
    if learner == "linear":
        truth = linear_margins(sgd_linear(x_raw, y, rows, lr, batch), xte, yte)
    else:
        truth = retrain_margins(stack_parameters([init]), xs, ys, masks,
                                xte.astype(np.float32), yte, recipe)
    out["retrain_s"] = time.perf_counter() - t0
    root_to_train = np.arange(n)
    final = [f"{model_id}-final-{j}" for j in range(tests)]
    every = [f"{model_id}-all-{j}" for j in range(tests)]
    methods: dict[str, Any] = {}
    measure(methods, "default (final)", service, final, root_to_train, truth, masks)
    measure(methods, "tracin (final test gradient)", service, final, root_to_train, truth,
            masks, method=query_pb2.TRACIN)
    measure(methods, "tracin (test gradient at each version)", service, every,
            root_to_train, truth, masks, method=query_pb2.TRACIN)
    measure(methods, "influence (final, featurised)", service, final, root_to_train, truth,
            masks, method=query_pb2.INFLUENCE)
    measure(methods, "gradient dot (influence, λ→∞, final)", service, final, root_to_train,
            truth, masks, method=query_pb2.INFLUENCE, damping=DOT)
    if do_sweep:
        sweep(methods, "influence (final):", service, final, root_to_train, truth, masks)
    out["methods"] = methods
    return out


# -- output ---------------------------------------------------------------------------------

TASKS = {"breast_cancer": "breast-cancer logreg", "digits": "digits MLP",
         "stream_linear": "drifting stream, logistic regression",
         "stream_mlp": "drifting stream, MLP"}


def table(figures: dict) -> list[str]:
    """The figures as aligned text rows: task, method, LDS, λ, notes."""
    rows: list[tuple[str, ...]] = []
    for key, name in TASKS.items():
        if key not in figures:
            continue
        for method, f in figures[key]["methods"].items():
            if "error" in f:
                rows.append((name, method, "n/a", "", f["error"]))
                continue
            lam = f"{f['damping']:.4g}" if f.get("damping") else ""
            note = (f"{f['method']}, {f['query_ms']:.0f} ms/query" if "query_ms" in f
                    else "computed locally")
            rows.append((name, method, f"{f['lds']:.3f}", lam, note))
    head = ("task", "method", "LDS", "λ", "notes")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    return ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
            for r in [head, *rows]]


def parse_factor_shapes(text: str) -> dict[str, tuple[int, int]]:
    """'0=16x16,2=10x25' -> {"0": (16, 16), "2": (10, 25)}; '' -> {}."""
    out: dict[str, tuple[int, int]] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, shape = item.partition("=")
        rows, _, cols = shape.partition("x")
        if not (name and rows.isdigit() and cols.isdigit()):
            raise ValueError(f"--factor-shapes entry {item!r} is not LAYER=ROWSxCOLS")
        out[name] = (int(rows), int(cols))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--subsets", type=int, default=100)
    ap.add_argument("--tests", type=int, default=50, help="test points (predictions)")
    ap.add_argument("--lam", type=float, default=1.0, help="breast-cancer L2 penalty")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=512, help="projection dimension (MLP tasks)")
    ap.add_argument("--capture", default="auto",
                    help="gradient capture of the MLP tasks: auto, factored (Kronecker P "
                    "from the step's backward; what auto picks for these MLPs) or dense "
                    "(vmap, dense P); a comma list (factored,dense) traces digits once per "
                    "capture on the same subsets and reports each minus the last, paired")
    ap.add_argument("--factor-shapes", default="",
                    help="factored k_rows x k_cols per layer, e.g. 0=16x16,2=10x25 (the "
                    "others share what is left)")
    ap.add_argument("--epochs", type=int, default=20, help="digits MLP epochs")
    ap.add_argument("--init", choices=("same", "random"), default="same",
                    help="digits retraining: the traced run's initial weights, or fresh ones")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--no-trak", action="store_true", help="skip the TRAK peer")
    ap.add_argument("--sweep", action="store_true",
                    help="also influence at 0.01-100 x the default damping")
    ap.add_argument("--fast", action="store_true", help="CI sizes: 30 subsets, 20 test points")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        shapes = parse_factor_shapes(args.factor_shapes)
    except ValueError as exc:
        ap.error(str(exc))
    modes = [m.strip() for m in args.capture.split(",")]
    if bad := [m for m in modes if m not in ("auto", "factored", "dense")]:
        ap.error(f"--capture takes auto, factored or dense (comma-separated); got {bad}")
    CAPTURES[:] = [Capture(m, shapes if m != "dense" and shapes else None) for m in modes]
    tasks = set(args.tasks.split(","))
    if unknown := tasks - set(TASKS):
        ap.error(f"unknown task(s) {sorted(unknown)}; use {', '.join(TASKS)}")
    if args.fast:
        args.subsets, args.tests = 30, 20
    figures: dict[str, Any] = {"capture_mode": args.capture, "factor_shapes": args.factor_shapes}
    with tempfile.TemporaryDirectory(prefix="hw-lds-") as work:
        root = Path(work)
        service = Service(root)
        try:
            if "breast_cancer" in tasks:
                figures["breast_cancer"] = breast_cancer_lds(
                    service, args.subsets, args.lam, args.tests, args.seed, args.sweep)
            if "digits" in tasks:
                figures["digits"] = digits_lds(
                    service, args.subsets, args.tests, Recipe(epochs=args.epochs,
                                                              seed=args.seed),
                    args.k, args.init, root, not args.no_trak, args.sweep)
            for learner in ("linear", "mlp"):
                if f"stream_{learner}" in tasks:
                    figures[f"stream_{learner}"] = stream_lds(
                        service, learner, args.subsets, args.tests, args.seed, args.k,
                        args.sweep)
        finally:
            service.close()
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"LDS vs retraining on {args.subsets} random 50% subsets, {args.tests} test points, "
          "every Headwater score through headwater serve's AttributeAll RPC "
          "(random scores give ~0)")
    print("\n".join(table(figures)))
    for name, f in figures.get("digits", {}).get("paired", {}).items():
        print(f"digits MLP, paired {name}: {f['difference']:+.3f} ± {f['standard_error']:.3f}"
              " (bootstrap SE over test points)")
    for key, name in TASKS.items():
        if key in figures:
            f = figures[key]
            extra = (f" test accuracy {f['test_accuracy']:.3f}," if "test_accuracy" in f
                     else "")
            print(f"{name}: {f.get('train_rows', f.get('stream_rows'))} rows,{extra} capture "
                  f"+ publish {f['capture_s']:.1f} s, retraining {f['retrain_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
