"""Unlearning against retraining from scratch: quality and cost, side by side.

    python benchmarks/unlearning.py              # full
    python benchmarks/unlearning.py --fast --json

Cases (headwater.producers.unlearning; retraining from scratch without the forgotten rows
is the ground truth every row is compared with):
- logistic regression (L2, Newton to convergence) on scikit-learn's bundled breast-cancer
  data: forget one "hospital" of two (rows 0-284 / 285-568 of the file) and forget 5% random
  training rows; Newton removal with 1 step and with "auto" steps; a no-op unlearner (what
  traceprop 0.7.0 did: report success, leave the model) as the control the checks must fail.
  Targets: gap closed in [0.9, 1.1], distance to the retrained parameters <= 10% of the
  original's, test accuracy within 0.5 pp of the retrained model's, membership-inference
  AUC within 0.05 of the retrained model's.
- an MLP on the bundled digits: forget 5% random rows and one writer block (a "source");
  last-layer Newton, auto (last-layer Newton + bounded fine-tune of the earlier layers) and
  fine-tune alone. No targets yet: measured as is.
- a continual-learning stream: online SGD with replay over digits arriving with class drift;
  two forget requests arrive mid-stream (5% of the rows seen so far, then one writer block),
  are applied between steps (forgotten rows leave the replay buffer and later arrivals),
  and training continues; compared at the end with re-running the stream without them.
- cost: time to unlearn vs time to retrain, including a synthetic logistic regression with
  many rows where retraining is not trivial.
Progress goes to stderr; figures to stdout as a table, or one JSON object with --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from headwater.producers.unlearning import (
    LinearModel,
    RetrainTargets,
    unlearn,
    verify,
)
from headwater.v1 import events_pb2

METHOD_NAMES = {events_pb2.NEWTON: "NEWTON", events_pb2.FINE_TUNE: "FINE_TUNE"}


def progress(message: str) -> None:
    print(f"[unlearning] {message}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(median seconds, last result) over `repeats` calls."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def unlearn_seconds(first: float, fn: Callable[[], Any], repeats: int) -> float:
    """Median of UnlearnResult.seconds: the verified run's, then `repeats − 1` more runs."""
    return statistics.median([first] + [fn().seconds for _ in range(repeats - 1)])


def _same(model: Any) -> Any:
    """A retrain callable for a model retrained (and timed) beforehand."""
    return model


def figures(v: events_pb2.Verification, original_distance: float, unlearn_s: float,
            retrain_s: float, method: str, mia_before: float) -> dict[str, Any]:
    """One table row: the Verification against retraining, the targets, the timings."""
    failures = RetrainTargets().failures(v, original_distance)
    ratio = v.distance_to_retrained / original_distance if original_distance > 0 else None
    return {
        "method": method, "gap_closed": v.gap_closed,
        "forget_loss": [v.forget_loss_before, v.forget_loss_after, v.retrain_forget_loss],
        "distance_ratio": ratio, "distance_to_retrained": v.distance_to_retrained,
        "original_distance": original_distance, "parameter_distance": v.parameter_distance,
        "test_accuracy": [v.test_accuracy_before, v.test_accuracy_after,
                          v.retrain_test_accuracy],
        "accuracy_vs_retrain_pp": 100 * (v.test_accuracy_after - v.retrain_test_accuracy),
        "accuracy_change_pp": 100 * (v.test_accuracy_after - v.test_accuracy_before),
        "membership_auc": [mia_before, v.membership_auc, v.retrain_membership_auc],
        "unlearn_s": unlearn_s, "retrain_s": retrain_s,
        "speedup": retrain_s / unlearn_s if unlearn_s > 0 else None,
        "targets_met": not failures, "failures": failures,
    }


# -- logistic regression on breast cancer ----------------------------------------------------

def breast_cancer(seed: int) -> dict[str, Any]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = (data.data - data.data.mean(0)) / data.data.std(0)
    y = data.target.astype(float)
    perm = np.random.default_rng(seed).permutation(len(x))
    test, train = perm[: len(x) // 5], perm[len(x) // 5:]
    return {"x": x[train], "y": y[train], "test": (x[test], y[test]),
            "hospital_b": train >= len(x) // 2}


def logreg_cases(seed: int, lam: float, repeats: int) -> dict[str, Any]:
    d = breast_cancer(seed)
    x, y, test = d["x"], d["y"], d["test"]
    model = LinearModel.fit(x, y, l2=lam)
    rand = np.zeros(len(x), dtype=bool)
    rand[np.random.default_rng(seed + 1).choice(len(x), round(0.05 * len(x)),
                                                replace=False)] = True
    out: dict[str, Any] = {"train_rows": len(x), "test_rows": len(test[0]), "lambda": lam}
    for case, mask in (("forget one hospital of two", d["hospital_b"]),
                       ("forget 5% random rows", rand)):
        forget, retain = (x[mask], y[mask]), (x[~mask], y[~mask])
        retrain_s, retrained = timed(partial(LinearModel.fit, *retain, l2=lam), repeats)
        original = float(np.linalg.norm(model.params - retrained.params))
        noop = verify(model, model, forget, test, retrain=partial(_same, retrained))
        rows = {"no-op (control)": figures(noop, original, 0.0, retrain_s, "none",
                                           noop.membership_auc)}
        for label, steps in (("newton, 1 step", 1), ("newton, auto steps", "auto")):
            result = unlearn(model, forget, retain, test=test, newton_steps=steps,
                             retrain=partial(_same, retrained))
            unlearn_s = unlearn_seconds(result.seconds, partial(
                unlearn, model, forget, retain, newton_steps=steps), repeats)
            row = figures(result.verification, original, unlearn_s, retrain_s,
                          METHOD_NAMES[result.method], noop.membership_auc)
            row["newton_steps"] = result.detail["newton_steps"]
            row["certified_distance_bound"] = result.detail["distance_bound"]
            rows[label] = row
        out[case] = {"rows_forgotten": int(mask.sum()), "methods": rows}
    return out


# -- MLP on digits -----------------------------------------------------------------------------

def digits(seed: int) -> dict[str, Any]:
    """x/16, 60% train / 20% held out / 20% test; sources = 10 blocks of the file's rows
    (the bundled digits come from 43 writers, in collection order)."""
    import torch
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target)
    perm = np.random.default_rng(seed).permutation(len(x))
    n5 = len(x) // 5
    test, held, train = perm[:n5], perm[n5:2 * n5], perm[2 * n5:]
    source = train * 10 // len(x)
    return {"x": x[train], "y": y[train], "test": (x[test], y[test]),
            "held_out": (x[held], y[held]), "source": source, "index": train}


def make_mlp(hidden: int, seed: int) -> Any:
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 10))


def train_mlp(x: Any, y: Any, *, hidden: int, epochs: int, wd: float, seed: int) -> Any:
    """Full-batch Adam on mean cross-entropy + wd/2 |θ|² (so λ on the summed loss = n·wd)."""
    import torch

    model = make_mlp(hidden, seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        loss = torch.nn.functional.cross_entropy(model(x), y) + wd / 2 * sum(
            (p ** 2).sum() for p in model.parameters())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _param_distance(a: Any, b: Any) -> float:
    import torch

    with torch.no_grad():
        return _norm_of_difference(a, b)


def _norm_of_difference(a: Any, b: Any) -> float:
    import torch

    return float(torch.linalg.vector_norm(
        torch.nn.utils.parameters_to_vector(a.parameters()).double()
        - torch.nn.utils.parameters_to_vector(b.parameters()).double()))


def mlp_cases(seed: int, hidden: int, epochs: int, wd: float, repeats: int) -> dict[str, Any]:
    d = digits(seed)
    x, y = d["x"], d["y"]
    progress(f"digits MLP: training 64-{hidden}-10 ({epochs} full-batch Adam steps)")
    train_s, model = timed(lambda: train_mlp(x, y, hidden=hidden, epochs=epochs, wd=wd,
                                             seed=seed), 1)
    rand = np.zeros(len(x), dtype=bool)
    rand[np.random.default_rng(seed + 1).choice(len(x), round(0.05 * len(x)),
                                                replace=False)] = True
    source = d["source"] == 3
    out: dict[str, Any] = {"train_rows": len(x), "hidden": hidden, "epochs": epochs,
                           "weight_decay": wd, "train_s": train_s}
    for case, mask in (("forget 5% random rows", rand), ("forget one writer block", source)):
        m = torch_mask(mask)
        forget, retain = (x[m], y[m]), (x[~m], y[~m])
        progress(f"digits MLP, {case}: retraining from scratch")
        retrain_s, retrained = timed(partial(train_mlp, *retain, hidden=hidden,
                                             epochs=epochs, wd=wd, seed=seed), 1)
        original = _param_distance(model, retrained)
        noop = verify(model, model, forget, d["test"], d["held_out"],
                      retrain=partial(_same, retrained))
        rows = {"no-op (control)": figures(noop, original, 0.0, retrain_s, "none",
                                           noop.membership_auc)}
        for label, method in (("last-layer newton", "newton"),
                              ("auto: newton + fine-tune", "auto"),
                              ("fine-tune only", "fine_tune")):
            progress(f"digits MLP, {case}: {label}")
            result = unlearn(model, forget, retain, test=d["test"], held_out=d["held_out"],
                             method=method, retrain=partial(_same, retrained), l2=len(x) * wd)
            unlearn_s = unlearn_seconds(result.seconds, partial(
                unlearn, model, forget, retain, held_out=d["held_out"], method=method,
                l2=len(x) * wd), repeats)
            row = figures(result.verification, original, unlearn_s, retrain_s,
                          METHOD_NAMES[result.method], noop.membership_auc)
            row["detail"] = {k: v for k, v in result.detail.items()
                             if k != "original_distance_to_retrained"}
            rows[label] = row
        out[case] = {"rows_forgotten": int(mask.sum()), "methods": rows}
    return out


def torch_mask(mask: np.ndarray) -> Any:
    import torch

    return torch.as_tensor(mask)


# -- continual-learning stream ------------------------------------------------------------------

def arrivals(y: Any, steps: int, seed: int) -> np.ndarray:
    """The step at which each row arrives: in drifting class order (labels plus noise of 4
    classes' width), spread over the first 80% of the steps."""
    n = len(y)
    rng = np.random.default_rng(seed)
    order = np.argsort(np.asarray(y) + rng.uniform(0, 4, n), kind="stable")
    arrival = np.empty(n, dtype=np.int64)
    arrival[order] = np.arange(n) * int(0.8 * steps) // n
    return arrival


def run_stream(d: dict[str, Any], arrival: np.ndarray, *, steps: int, hidden: int, wd: float,
               seed: int, requests: list[tuple[int, np.ndarray]], unlearn_requests: bool
               ) -> tuple[Any, list[dict[str, Any]]]:
    """Online SGD (momentum 0.9, batches of 32: this step's arrivals topped up by replay of
    earlier rows) over the arriving rows. At each (step, rows) request the rows leave the
    replay buffer and later arrivals; with `unlearn_requests` the model is also unlearned
    there (auto method, in place, λ = rows trained on × wd) and the optimiser's momentum —
    which holds their gradients — is reset. The fine-tune's held-out rows are those of the
    held-out split that would have arrived by then (same drift): a validation reservoir
    from the stream, so its loss level is that of the classes seen so far."""
    import torch

    x, y = d["x"], d["y"]
    held_arrival = arrivals(d["held_out"][1].numpy(), steps, seed + 3)
    model = make_mlp(hidden, seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    forgotten = np.zeros(len(x), dtype=bool)
    pending = dict(requests)
    applied: list[dict[str, Any]] = []
    for step in range(steps):
        if step in pending:
            seen = (arrival < step) & ~forgotten
            now = pending[step] & seen
            forgotten |= pending[step]
            if unlearn_requests and now.any():
                f, r = torch_mask(now), torch_mask(seen & ~now)
                h = torch_mask(held_arrival < step)
                result = unlearn(model, (x[f], y[f]), (x[r], y[r]),
                                 held_out=(d["held_out"][0][h], d["held_out"][1][h]),
                                 l2=int(seen.sum()) * wd, inplace=True)
                opt.state.clear()
                v = result.verification
                applied.append({"step": step, "rows": int(now.sum()),
                                "seconds": result.seconds,
                                "method": METHOD_NAMES[result.method],
                                "forget_loss_before": v.forget_loss_before,
                                "forget_loss_after": v.forget_loss_after})
        live = ~forgotten
        batch = np.flatnonzero((arrival == step) & live)
        pool = np.flatnonzero((arrival < step) & live)
        extra = max(0, 32 - len(batch))
        if len(pool) and extra:
            pick = torch.randint(len(pool), (extra,), generator=gen).numpy()
            batch = np.concatenate([batch, pool[pick]])
        if not len(batch):
            continue
        b = torch.as_tensor(batch)
        loss = torch.nn.functional.cross_entropy(model(x[b]), y[b]) + wd / 2 * sum(
            (p ** 2).sum() for p in model.parameters())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, applied


def stream_case(seed: int, steps: int, hidden: int, wd: float) -> dict[str, Any]:
    d = digits(seed)
    n = len(d["x"])
    arrival = arrivals(d["y"].numpy(), steps, seed)
    rng = np.random.default_rng(seed + 2)
    first = np.zeros(n, dtype=bool)
    first[rng.choice(np.flatnonzero(arrival < steps // 3), round(0.05 * n),
                     replace=False)] = True
    requests = [(steps // 3, first), (2 * steps // 3, d["source"] == 5)]
    run = partial(run_stream, d, arrival, steps=steps, hidden=hidden, wd=wd, seed=seed)
    progress(f"stream: {steps} steps, forget requests at steps {requests[0][0]} and "
             f"{requests[1][0]} applied as they arrive")
    start = time.perf_counter()
    model, applied = run(requests=requests, unlearn_requests=True)
    stream_s = time.perf_counter() - start
    progress("stream: the same, the rows only dropped from later batches (no unlearning)")
    dropped, _ = run(requests=requests, unlearn_requests=False)
    progress("stream: re-run without the forgotten rows")
    gone = np.zeros(n, dtype=bool)
    for _, rows in requests:
        gone |= rows
    start = time.perf_counter()
    rerun, _ = run(requests=[(0, gone)], unlearn_requests=False)
    rerun_s = time.perf_counter() - start
    trained_on = np.zeros(n, dtype=bool)  # forgotten rows the stream trained on before
    for step, rows in requests:
        trained_on |= rows & (arrival < step)
    m = torch_mask(trained_on)
    forget = (d["x"][m], d["y"][m])
    v = verify(dropped, model, forget, d["test"], d["held_out"], retrain=partial(_same, rerun))
    noop = verify(dropped, dropped, forget, d["test"], d["held_out"])
    row = figures(v, _param_distance(dropped, rerun), sum(a["seconds"] for a in applied),
                  rerun_s, "/".join(sorted({a["method"] for a in applied})),
                  noop.membership_auc)
    return {"steps": steps, "requests": applied, "stream_s": stream_s, "rerun_s": rerun_s,
            "rows_forgotten": int(trained_on.sum()), "end_of_stream": row}


# -- cost at scale -------------------------------------------------------------------------------

def cost_case(rows: int, dims: int, seed: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, dims))
    w = rng.normal(size=dims) / np.sqrt(dims)
    y = (rng.uniform(size=rows) < 1 / (1 + np.exp(-(x @ w)))).astype(float)
    model = LinearModel.fit(x, y, l2=1.0)
    mask = np.zeros(rows, dtype=bool)
    mask[rng.choice(rows, rows // 100, replace=False)] = True
    forget, retain = (x[mask], y[mask]), (x[~mask], y[~mask])
    progress(f"cost: logistic regression, {rows} rows x {dims} features")
    retrain_s, _ = timed(lambda: LinearModel.fit(*retain, l2=1.0), repeats)
    out: dict[str, Any] = {"rows": rows, "dims": dims, "rows_forgotten": int(mask.sum()),
                           "retrain_s": retrain_s}
    for label, steps in (("newton_1_step", 1), ("newton_auto", "auto")):
        result = unlearn(model, forget, retain, newton_steps=steps)
        unlearn_s = unlearn_seconds(result.seconds, partial(
            unlearn, model, forget, retain, newton_steps=steps), repeats)
        out[label] = {"unlearn_s": unlearn_s, "speedup": retrain_s / unlearn_s,
                      "newton_steps": result.detail["newton_steps"]}
    return out


# -- output --------------------------------------------------------------------------------------

def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def print_table(title: str, case: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("method", "gap closed", "dist/orig", "forget loss b→a (retrain)",
                "test acc b→a (retrain)", "MIA b→a (retrain)", "unlearn s", "retrain s",
                "targets"):
        table.add_column(col)
    for name, r in case["methods"].items():
        fl, acc, mia = r["forget_loss"], r["test_accuracy"], r["membership_auc"]
        table.add_row(
            name, _fmt(r["gap_closed"]), _fmt(r["distance_ratio"]),
            f"{fl[0]:.3f}→{fl[1]:.3f} ({fl[2]:.3f})", f"{acc[0]:.3f}→{acc[1]:.3f} ({acc[2]:.3f})",
            f"{mia[0]:.3f}→{mia[1]:.3f} ({mia[2]:.3f})", _fmt(r["unlearn_s"], ".4f"),
            _fmt(r["retrain_s"], ".4f"), "met" if r["targets_met"] else "; ".join(r["failures"]))
    Console(width=None if sys.stdout.isatty() else 190).print(table)


def report(figs: dict[str, Any]) -> None:
    lr = figs["logreg"]
    print(f"logistic regression, breast cancer: {lr['train_rows']} training rows, "
          f"{lr['test_rows']} test rows, λ={lr['lambda']}; targets: gap closed 0.9-1.1, "
          "dist/orig <= 0.1, test acc within 0.5 pp of retrain, MIA within 0.05 of retrain")
    for case in ("forget one hospital of two", "forget 5% random rows"):
        print_table(f"logreg: {case} ({lr[case]['rows_forgotten']} rows)", lr[case])
    mlp = figs["mlp"]
    print(f"\nMLP 64-{mlp['hidden']}-10 on digits: {mlp['train_rows']} training rows, "
          f"{mlp['epochs']} full-batch Adam steps, weight decay {mlp['weight_decay']} "
          "(no targets yet; the targets column applies the logreg ones)")
    for case in ("forget 5% random rows", "forget one writer block"):
        print_table(f"MLP: {case} ({mlp[case]['rows_forgotten']} rows)", mlp[case])
    st = figs["stream"]
    print(f"\ncontinual stream: {st['steps']} online SGD steps over drifting digits; the whole "
          f"stream took {st['stream_s']:.2f} s, re-running it without the rows "
          f"{st['rerun_s']:.2f} s")
    for a in st["requests"]:
        print(f"  request at step {a['step']}: {a['rows']} rows, {a['method']} in "
              f"{a['seconds']:.3f} s, forget loss {a['forget_loss_before']:.3f} → "
              f"{a['forget_loss_after']:.3f}")
    print_table("stream, end: unlearned vs dropped-only (before) vs re-run (retrain)",
                {"methods": {"unlearned at requests": st["end_of_stream"]}})
    print("\ncost: time to unlearn 1% of rows vs retrain from scratch (logistic regression)")
    for c in figs["cost"]:
        print(f"  {c['rows']:>7} rows x {c['dims']}: retrain {c['retrain_s']:.3f} s; newton 1 "
              f"step {c['newton_1_step']['unlearn_s']:.3f} s "
              f"({c['newton_1_step']['speedup']:.1f}x faster); auto "
              f"({c['newton_auto']['newton_steps']} steps) "
              f"{c['newton_auto']['unlearn_s']:.3f} s ({c['newton_auto']['speedup']:.1f}x)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lam", type=float, default=1.0, help="logreg L2 penalty")
    ap.add_argument("--hidden", type=int, default=64, help="MLP hidden units")
    ap.add_argument("--epochs", type=int, default=300, help="MLP full-batch training steps")
    ap.add_argument("--wd", type=float, default=1e-3, help="MLP weight decay (mean loss)")
    ap.add_argument("--stream-steps", type=int, default=600)
    ap.add_argument("--cost-rows", default="20000,200000", help="comma-separated")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats (median)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and BLAS threads (these models are small: one thread is the "
                         "fastest and steadiest on a shared machine)")
    ap.add_argument("--fast", action="store_true",
                    help="smaller MLP runs, a shorter stream, 20k rows for cost, 3 repeats")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.fast:
        args.hidden, args.epochs, args.stream_steps = 32, 150, 240
        args.cost_rows, args.repeats = "20000", 3
    import torch
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # NumPy's BLAS: the same thread count for both sides
    progress("logistic regression on breast cancer")
    figs = {
        "logreg": logreg_cases(args.seed, args.lam, args.repeats),
        "mlp": mlp_cases(args.seed, args.hidden, args.epochs, args.wd, max(1, args.repeats // 2)),
        "stream": stream_case(args.seed, args.stream_steps, args.hidden, args.wd),
        "cost": [cost_case(int(n), 50, args.seed, args.repeats)
                 for n in args.cost_rows.split(",")],
    }
    if args.json:
        print(json.dumps(figs, default=float))
    else:
        report(figs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
