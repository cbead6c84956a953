"""LDS of Headwater's attribution against retraining (ground truth, never our estimates).

    python benchmarks/attribution_lds.py              # full: 100 subsets
    python benchmarks/attribution_lds.py --fast --json

Logistic regression on scikit-learn's bundled breast-cancer data (L2-regularised, trained
to convergence with Newton's method). The trainer publishes through the real event path
(Publisher -> EventSink -> chDB): lineage of the tracked preprocessing, FEATURISATION
gradients at the trained version, and one PredictionRecorded per test point (the margin of
its true label). The attribution engine then scores every training row.

Ground truth: retrain on `--subsets` random 50% subsets; for each test point the LDS is the
Spearman correlation, over subsets, between Σ_{i∈S} score_i and the retrained margin;
reported as the mean over test points.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from headwater.producers.capture import LinearCapture
from headwater.producers.publisher import Publisher
from headwater.producers.tracking import Tracker, row_keys
from headwater.producers.transports.local import LocalTransport
from headwater.query_service.attribution import AttributionEngine
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store


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


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra @ rb) / np.sqrt((ra @ ra) * (rb @ rb)))


def lds(scores: np.ndarray, truth: np.ndarray, masks: np.ndarray) -> float:
    """Mean over test points of Spearman(Σ_{i∈S} score_i, retrained output)."""
    predicted = masks.astype(float) @ scores.T  # [subsets, tests]
    return float(np.mean([spearman(predicted[:, j], truth[:, j])
                          for j in range(truth.shape[1])]))


def breast_cancer_lds(subsets: int, lam: float, tests: int, seed: int, work: Path) -> dict:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x_raw, y_all = data.data, data.target.astype(float)
    store = Store(f"chdb://{work / 'clickhouse'}", lock=False)
    store.migrate()
    publisher = Publisher(LocalTransport(EventSink(store, "local")), run_id="lds-breast-cancer")
    tracker = Tracker(publisher.publish)
    x = tracker.array(x_raw)
    x = (x - x.mean(0)) / x.std(0)  # tracked standardisation
    train, test = tracker.split(x, test_size=0.2, seed=seed)
    y_train = np.asarray(y_all)[_split_rows(len(x_raw), 0.2, seed)[0]]
    y_test = np.asarray(y_all)[_split_rows(len(x_raw), 0.2, seed)[1]]
    xtr, xte = np.asarray(train), np.asarray(test)

    t0 = time.perf_counter()
    theta = fit_logreg(xtr, y_train, lam)
    capture = LinearCapture(publisher.publish, "logreg", xtr.shape[1])
    capture.set_parameters(theta[:-1], theta[-1])
    capture.record_version(step=1, config={"lambda": lam})
    capture.capture(xtr, y_train, row_keys(train), learning_rate=0.0, featurisation=True)
    chosen = np.random.default_rng(seed).choice(len(xte), size=min(tests, len(xte)),
                                                replace=False)
    for j in chosen:
        capture.record_prediction(xte[j], label=int(y_test[j]), prediction_id=f"test-{j}")
    publisher.flush()
    capture_s = time.perf_counter() - t0

    engine = AttributionEngine(store, damping=lam)
    t0 = time.perf_counter()
    results = [engine.attribute(f"test-{j}", method="influence") for j in chosen]
    query_s = (time.perf_counter() - t0) / len(chosen)
    # Each example is one training row here; order examples by their training row.
    model = results[0].model
    example_row = np.array([e.row for e in model.examples])
    scores = np.zeros((len(chosen), len(xtr)))
    for j, r in enumerate(results):
        scores[j, example_row] = r.scores

    rng = np.random.default_rng(seed + 1)
    masks = np.zeros((subsets, len(xtr)), dtype=bool)
    truth = np.zeros((subsets, len(chosen)))
    sign = 2 * y_test[chosen] - 1
    t0 = time.perf_counter()
    for s in range(subsets):
        masks[s, rng.choice(len(xtr), len(xtr) // 2, replace=False)] = True
        th = fit_logreg(xtr[masks[s]], y_train[masks[s]], lam)
        truth[s] = sign * (xte[chosen] @ th[:-1] + th[-1])
    retrain_s = time.perf_counter() - t0
    store.close()
    return {"lds_influence": lds(scores, truth, masks), "subsets": subsets,
            "test_points": len(chosen), "train_rows": len(xtr), "lambda": lam,
            "capture_s": capture_s, "query_ms": query_s * 1000, "retrain_s": retrain_s}


def _split_rows(n: int, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows Tracker.split gives (same seeded permutation), for the labels."""
    import math

    perm = np.random.default_rng(seed).permutation(n)
    n_test = math.ceil(test_size * n)
    return perm[n_test:], perm[:n_test]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subsets", type=int, default=100)
    ap.add_argument("--tests", type=int, default=50, help="test points (predictions)")
    ap.add_argument("--lam", type=float, default=1.0, help="L2 penalty (and damping)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fast", action="store_true", help="30 subsets, 20 test points")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.fast:
        args.subsets, args.tests = 30, 20
    with tempfile.TemporaryDirectory(prefix="hw-lds-") as work:
        figures = {"breast_cancer_logreg": breast_cancer_lds(
            args.subsets, args.lam, args.tests, args.seed, Path(work))}
    if args.json:
        print(json.dumps(figures))
        return 0
    bc = figures["breast_cancer_logreg"]
    print(f"breast-cancer logistic regression ({bc['train_rows']} training rows, "
          f"{bc['test_points']} test points, {bc['subsets']} retrained 50% subsets, "
          f"λ={bc['lambda']})")
    print(f"  LDS influence (headwater): {bc['lds_influence']:.3f}   (target >= 0.89)")
    print(f"  capture+publish {bc['capture_s']:.2f} s, query {bc['query_ms']:.1f} ms/prediction,"
          f" retraining {bc['retrain_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
