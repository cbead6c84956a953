"""Unlearning against retraining from scratch: quality and cost, side by side.

    python benchmarks/unlearning.py              # full
    python benchmarks/unlearning.py --fast --json

Cases (headwater.producers.unlearning; retraining without the forgotten rows by the
trainer's own recipe is the ground truth every row is compared with):
- logistic regression on scikit-learn's bundled breast-cancer data: forget one "hospital" of
  two (rows 0-284 / 285-568 of the file) and 5% random training rows; Newton removal with 1
  step and with "auto" steps; a no-op unlearner (what traceprop 0.7.0 did: report success,
  leave the model) as the control the checks must fail; and the same model trained by a
  mean-loss + weight-decay recipe (λ = n·wd), unlearned with that recipe and retrained by it.
- softmax regression (multiclass, convex) on digits, trained by full-batch L-BFGS on mean
  cross-entropy + weight decay, three sites of which one is class-skewed; forget that site;
  Newton with the recipe vs Newton with a fixed λ, against retraining by the recipe.
  Targets (convex): gap closed in [0.9, 1.1], distance to the retrained parameters <= 10%
  of the original's, test accuracy within 0.5 pp, MIA AUC within 0.05 of the retrained's.
- an MLP on the bundled digits: forget 5% random rows and one writer block (a "source");
  last-layer Newton, auto (K-FAC Newton step + descent on the retained objective with the
  training-gradient offset, stopped where two descents, from that step and from the
  original, meet), the bounded fine-tune, full-network K-FAC Newton (stopped at the
  estimated retrained forget loss, and its full step), NegGrad+ and SCRUB-style
  fine-tunes, side by side; and auto with the checkpoint hook (replay within a 60 s
  budget: every row is used from step 0, so a full retraining; and with a budget of 34%
  of that replay: a partial replay from a later checkpoint).
  Targets (issue 20): gap closed in [0.8, 1.2], test accuracy within 1 pp and MIA AUC
  within 0.05 of the retrained model's. Beside them, the reference's own spread: the
  model retrained from other initialisations, as a gap closed against the reference.
  `descent_trace`: auto's two descents run on without a stop; `descent_rules`: candidate
  stopping rules for them, each scored against the retrained model.
- a continual-learning stream: online SGD with replay over digits arriving with class drift;
  two forget requests arrive mid-stream (5% of the rows seen so far, then one writer block),
  are applied between steps, and training continues; compared at the end with re-running
  the stream without the rows (the same sampling schedule minus the forgotten rows). Each
  request applied by replay (checkpoint hook every 50 steps) and, separately, by the
  approximate auto method (and by auto with the retained-objective descent forced, and by
  the logged-step reversal, a candidate that was measured and not adopted).
  Targets: replay exact (distance <= 1e-5 of the parameter norm), approximate gap closed
  >= 0.8.
- the stream's approximate methods over several sampler seeds (schedules): one re-run is
  one draw of a chaotic process, so also the gap closed by the mean forget losses, the
  re-run's change with its spread, and re-runs without 10 more random rows (its noise).
- request time: the stream's writer-block request alone, its forget-loss move measured one
  step after the request and at the end (re-run, auto, the unrolled removal), over several
  sampler seeds: whether a method's gap is there at the request or opens in the training
  that follows.
- replay cost: forget recent rows at the end of streams of growing length: steps replayed
  and seconds against re-running the whole stream.
- cost: time to unlearn vs time to retrain, including a synthetic logistic regression with
  many rows where retraining is not trivial.
`--only stream,schedules` runs those parts only. Progress goes to stderr; figures to stdout
as a table, or one JSON object with --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np

from headwater.producers.checkpoints import Checkpoints
from headwater.producers.unlearning import (
    LinearModel,
    RetrainTargets,
    unlearn,
    verify,
)
from headwater.producers.unlearning.baselines import neggrad_plus, scrub
from headwater.producers.unlearning.descent import Descent
from headwater.producers.unlearning.finetune import forget_loss_estimate
from headwater.producers.unlearning.kfac import kfac_newton
from headwater.producers.unlearning.listener import Unlearner
from headwater.producers.unlearning.recipe import Recipe
from headwater.producers.unlearning.replay import (
    plan_partial,
    plan_replay,
    replay_forget,
    train_step,
)
from headwater.producers.unlearning.verification import (
    TorchAdapter,
    gap_closed,
    torch_losses,
)
from headwater.v1 import events_pb2

METHOD_NAMES = {events_pb2.NEWTON: "NEWTON", events_pb2.FINE_TUNE: "FINE_TUNE",
                events_pb2.REPLAY: "REPLAY", events_pb2.PARTIAL_REPLAY: "PARTIAL_REPLAY",
                events_pb2.UNLEARNING_METHOD_UNSPECIFIED: "none"}


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
            retrain_s: float, method: str,
            targets: RetrainTargets | None = None) -> dict[str, Any]:
    """One table row: the Verification against retraining, the targets (the convex ones
    unless `targets`), the timings. MIA before is the Verification's own."""
    failures = (targets or RetrainTargets()).failures(v, original_distance)
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
        "membership_auc": [v.membership_auc_before, v.membership_auc,
                           v.retrain_membership_auc],
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
        rows = {"no-op (control)": figures(noop, original, 0.0, retrain_s, "none")}
        for label, steps in (("newton, 1 step", 1), ("newton, auto steps", "auto")):
            result = unlearn(model, forget, retain, test=test, newton_steps=steps,
                             retrain=partial(_same, retrained))
            unlearn_s = unlearn_seconds(result.seconds, partial(
                unlearn, model, forget, retain, newton_steps=steps), repeats)
            row = figures(result.verification, original, unlearn_s, retrain_s,
                          METHOD_NAMES[result.method])
            row["newton_steps"] = result.detail["newton_steps"]
            row["certified_distance_bound"] = result.detail["distance_bound"]
            rows[label] = row
        out[case] = {"rows_forgotten": int(mask.sum()), "methods": rows}
    return out


# -- the same, trained by a mean-loss + weight-decay recipe ----------------------------------

def logreg_recipe_case(seed: int, wd: float) -> dict[str, Any]:
    """Binary logistic regression trained on mean loss + weight decay (λ = n·wd): Newton with
    the recipe (λ_R = n_R·wd) and with the fixed λ, against retraining by the recipe."""
    d = breast_cancer(seed)
    x, y, test = d["x"], d["y"], d["test"]
    recipe = Recipe("mean", weight_decay=wd)
    model = LinearModel.fit(x, y, l2=recipe.lam(len(x)))
    mask = d["hospital_b"]
    forget, retain = (x[mask], y[mask]), (x[~mask], y[~mask])
    retrain_s, retrained = timed(partial(LinearModel.fit, *retain,
                                         l2=recipe.lam(int((~mask).sum()))), 1)
    original = float(np.linalg.norm(model.params - retrained.params))
    rows = {}
    for label, r in (("newton auto, trainer's recipe", recipe), ("newton auto, fixed λ", None)):
        result = unlearn(model, forget, retain, test=test, recipe=r,
                         retrain=partial(_same, retrained))
        rows[label] = figures(result.verification, original, result.seconds, retrain_s,
                              METHOD_NAMES[result.method])
    return {"rows_forgotten": int(mask.sum()), "weight_decay": wd, "methods": rows}


# -- softmax regression (multiclass, convex) on digits, three sites --------------------------

def softmax_case(seed: int, wd: float) -> dict[str, Any]:
    """nn.Linear(64, 10) trained to convergence by full-batch L-BFGS on mean cross-entropy +
    wd/2·|θ|²; three sites, site C class-skewed (most of classes 0-2); forget site C."""
    import torch

    d = digits(seed)
    x, y = d["x"], d["y"]
    rng = np.random.default_rng(seed + 5)
    skew = np.isin(y.numpy(), (0, 1, 2))
    site_c = np.where(skew, rng.uniform(size=len(y)) < 0.6, rng.uniform(size=len(y)) < 0.05)
    recipe = Recipe("mean", weight_decay=wd)

    def fit(xs: Any, ys: Any) -> Any:
        torch.manual_seed(seed)
        model = torch.nn.Linear(64, 10).double()
        opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500,
                                tolerance_grad=1e-12, tolerance_change=1e-14,
                                line_search_fn="strong_wolfe")
        xd = xs.double()

        def closure() -> Any:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xd), ys) + wd / 2 * sum(
                (p ** 2).sum() for p in model.parameters())
            loss.backward()
            return loss
        for _ in range(5):
            opt.step(closure)
        return model

    progress("softmax regression on digits: fitting by L-BFGS (mean loss + weight decay)")
    model = fit(x, y)
    m = torch_mask(site_c)
    forget, retain = (x[m].double(), y[m]), (x[~m].double(), y[~m])
    test = (d["test"][0].double(), d["test"][1])
    held = (d["held_out"][0].double(), d["held_out"][1])
    retrain_s, retrained = timed(lambda: fit(x[~m], y[~m]), 1)
    original = _param_distance(model, retrained)
    rows = {}
    for label, kwargs in (("newton auto, trainer's recipe", {"recipe": recipe}),
                          ("newton auto, fixed λ = n·wd", {"l2": len(x) * wd})):
        result = unlearn(model, forget, retain, test=test, held_out=held, method="newton",
                         retrain=partial(_same, retrained), **kwargs)
        rows[label] = figures(result.verification, original, result.seconds, retrain_s,
                              METHOD_NAMES[result.method])
        rows[label]["newton_steps"] = result.detail["newton_steps"]
    return {"train_rows": len(x), "rows_forgotten": int(site_c.sum()),
            "forget_class_share_0_2": float(skew[site_c].mean()), "weight_decay": wd,
            "methods": rows}


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


def train_mlp(x: Any, y: Any, *, hidden: int, epochs: int, wd: float, seed: int,
              hook_dir: str | None = None) -> Any:
    """Full-batch Adam on mean cross-entropy + wd/2 |θ|² (the recipe Recipe(l2=wd)), every
    row at every step; with `hook_dir` the checkpoint hook logs the steps (every 50) and the
    trained model comes back with it."""
    import torch

    model = make_mlp(hidden, seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    recipe = Recipe("mean", l2=wd)
    hook = Checkpoints(hook_dir, model, opt, every=50, recipe=recipe) if hook_dir else None
    rows = np.arange(len(x))
    for step in range(epochs):
        if hook is not None:
            hook.before_step(step)
        train_step(model, opt, x, y, recipe=recipe)
        if hook is not None:
            hook.after_step(step, rows)
    return (model, hook) if hook is not None else model


def _param_distance(a: Any, b: Any) -> float:
    import torch

    with torch.no_grad():
        return float(torch.linalg.vector_norm(
            torch.nn.utils.parameters_to_vector(a.parameters()).double()
            - torch.nn.utils.parameters_to_vector(b.parameters()).double()))


def _flat(model: Any) -> Any:
    import torch

    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().double()


def _param_norm(a: Any) -> float:
    import torch

    with torch.no_grad():
        return float(torch.linalg.vector_norm(
            torch.nn.utils.parameters_to_vector(a.parameters()).double()))


MLP_TARGETS = RetrainTargets(gap_low=0.8, gap_high=1.2, distance_ratio=float("inf"),
                             accuracy_pp=1.0, membership_auc=0.05)


def reference_spread(forget: tuple[Any, Any], retain: tuple[Any, Any], before: float,
                     retrained: float, *, seed: int, inits: int, **train: Any
                     ) -> dict[str, Any]:
    """How well one retraining pins the target down: the model retrained without the rows
    from `inits` other initialisations (seeds seed+100, seed+101, ...; the same rows, recipe
    and steps), each one's forget loss as a gap closed against the reference retrain (the
    one from the original's own initialisation, which the targets use). No unlearning is
    involved: a spread wider than 0.8-1.2 is the target's own noise."""
    adapter = TorchAdapter("classification")
    losses = [float(adapter.losses(train_mlp(*retain, seed=seed + 100 + i, **train),
                                   forget).mean()) for i in range(inits)]
    return {"seeds": [seed + 100 + i for i in range(inits)], "forget_loss": losses,
            "gaps": [gap_closed(before, v, retrained) for v in losses]}


def forget_sets(d: dict[str, Any], seed: int) -> list[tuple[str, np.ndarray]]:
    """The MLP's two forget sets over digits `d`: 5 % random rows (drawn with seed + 1) and
    one writer block (source 3)."""
    rand = np.zeros(len(d["x"]), dtype=bool)
    rand[np.random.default_rng(seed + 1).choice(len(d["x"]), round(0.05 * len(d["x"])),
                                                replace=False)] = True
    return [("forget 5% random rows", rand), ("forget one writer block", d["source"] == 3)]


def _retrained_sets(d: dict[str, Any], seed: int, hidden: int, epochs: int, wd: float,
                    what: str) -> Iterator[tuple[str, tuple[Any, Any], tuple[Any, Any], Any]]:
    """(case, forget rows, retained rows, the model retrained on the retained rows) of each
    forget set, `what` naming the part in the progress lines."""
    x, y = d["x"], d["y"]
    for case, mask in forget_sets(d, seed):
        progress(f"{what}, {case}")
        m = torch_mask(mask)
        yield case, (x[m], y[m]), (x[~m], y[~m]), train_mlp(x[~m], y[~m], hidden=hidden,
                                                            epochs=epochs, wd=wd, seed=seed)


def mlp_cases(seed: int, hidden: int, epochs: int, wd: float, repeats: int,
              spread_inits: int = 4) -> dict[str, Any]:
    d = digits(seed)
    x, y = d["x"], d["y"]
    recipe = Recipe("mean", l2=wd)
    progress(f"digits MLP: training 64-{hidden}-10 ({epochs} full-batch Adam steps)")
    train_s, model = timed(lambda: train_mlp(x, y, hidden=hidden, epochs=epochs, wd=wd,
                                             seed=seed), 1)
    out: dict[str, Any] = {"train_rows": len(x), "hidden": hidden, "epochs": epochs,
                           "weight_decay": wd, "train_s": train_s}
    for case, mask in forget_sets(d, seed):
        m = torch_mask(mask)
        forget, retain = (x[m], y[m]), (x[~m], y[~m])
        progress(f"digits MLP, {case}: retraining from scratch")
        retrain_s, retrained = timed(partial(train_mlp, *retain, hidden=hidden,
                                             epochs=epochs, wd=wd, seed=seed), 1)
        original = _param_distance(model, retrained)
        check = partial(verify, model, forget=forget, test=d["test"], held_out=d["held_out"],
                        retrain=partial(_same, retrained))
        noop = check(model_after=model)
        rows = {"no-op (control)": figures(noop, original, 0.0, retrain_s, "none",
                                           targets=MLP_TARGETS)}
        for label, method in (("last-layer newton", "newton"),
                              ("auto: K-FAC Newton + retained descent", "auto"),
                              ("fine-tune only", "fine_tune")):
            progress(f"digits MLP, {case}: {label}")
            result = unlearn(model, forget, retain, test=d["test"], held_out=d["held_out"],
                             method=method, retrain=partial(_same, retrained), recipe=recipe)
            unlearn_s = unlearn_seconds(result.seconds, partial(
                unlearn, model, forget, retain, held_out=d["held_out"], method=method,
                recipe=recipe), repeats)
            row = figures(result.verification, original, unlearn_s, retrain_s,
                          METHOD_NAMES[result.method], targets=MLP_TARGETS)
            row["detail"] = {k: v for k, v in result.detail.items()
                             if k != "original_distance_to_retrained"}
            rows[label] = row
        for label, fn in (("NegGrad+ (baseline)", neggrad_plus), ("SCRUB (baseline)", scrub)):
            progress(f"digits MLP, {case}: {label}")
            unlearn_s, new = timed(partial(fn, model, forget, retain, seed=seed), 1)
            rows[label] = figures(check(model_after=new), original, unlearn_s, retrain_s,
                                  "FINE_TUNE", targets=MLP_TARGETS)
        for label, fraction in (("auto with checkpoint hook", None),
                                ("auto with hook, budget 34% of the replay", 0.34)):
            progress(f"digits MLP, {case}: {label}")
            rows[label] = _auto_with_hook(d, mask, retrained, original, retrain_s, fraction,
                                          hidden=hidden, epochs=epochs, wd=wd, seed=seed)
        target = float(forget_loss_estimate(model, forget, d["held_out"],
                                            "classification").mean())
        n, n_r = len(x), int((~mask).sum())
        for label, stop in (("full-network K-FAC Newton", target),
                            ("K-FAC Newton, full step (no stop)", None)):
            progress(f"digits MLP, {case}: {label}")
            unlearn_s, (new, detail) = timed(partial(
                kfac_newton, model, forget, retain, task="classification",
                lam=recipe.lam(n), lam_retained=recipe.lam(n_r), offset_scale=n_r / n,
                target_loss=stop), 1)
            rows[label] = figures(check(model_after=new), original, unlearn_s, retrain_s,
                                  "NEWTON", targets=MLP_TARGETS)
            rows[label]["detail"] = detail
        fl = rows["no-op (control)"]["forget_loss"]
        progress(f"digits MLP, {case}: retraining from {spread_inits} other initialisations")
        spread = reference_spread(forget, retain, fl[0], fl[2], seed=seed, inits=spread_inits,
                                  hidden=hidden, epochs=epochs, wd=wd)
        # auto against the mean of every retrain (the reference and the others): the
        # target with the initialisation's luck averaged out
        mean = float(np.mean([fl[2], *spread["forget_loss"]]))
        auto_after = rows["auto: K-FAC Newton + retained descent"]["forget_loss"][1]
        spread["auto_gap_vs_mean_retrain"] = gap_closed(fl[0], auto_after, mean)
        out[case] = {"rows_forgotten": int(mask.sum()), "methods": rows,
                     "reference_spread": spread}
    return out


def descent_trace_case(seed: int, hidden: int, epochs: int, wd: float,
                       lengths: list[int]) -> dict[str, Any]:
    """Where auto's two retained-objective descents go if they are not stopped: the forget
    losses of both after each of `lengths` steps (each a fresh run, never stopped: full
    batch, so deterministic), beside auto's own stop and the retrained model's, for the
    MLP's two forget sets. A stop where the forget losses are equal but still moving is a
    crossing, not a meeting."""
    d = digits(seed)
    x, y = d["x"], d["y"]
    recipe = Recipe("mean", l2=wd)
    model = train_mlp(x, y, hidden=hidden, epochs=epochs, wd=wd, seed=seed)
    out: dict[str, Any] = {}
    adapter = TorchAdapter("classification")
    for case, forget, retain, retrained in _retrained_sets(d, seed, hidden, epochs, wd,
                                                            "descent trace"):
        before = float(adapter.losses(model, forget).mean())
        after = float(adapter.losses(retrained, forget).mean())
        auto = unlearn(model, forget, retain, recipe=recipe).detail
        rows = [{"steps": auto["descent_steps"], "stop": auto["descent_stop"],
                 "from_newton": auto["descent_forget_loss"],
                 "from_original": auto["descent_from_original_forget_loss"]}]
        for steps in lengths:  # agree 0: never met, so each runs all its steps
            detail = unlearn(model, forget, retain, recipe=recipe,
                             descent=Descent(steps=steps, agree=1e-300)).detail
            rows.append({"steps": steps, "stop": "not stopped",
                         "from_newton": detail["descent_forget_loss"],
                         "from_original": detail["descent_from_original_forget_loss"]})
        for row in rows:
            row["gaps"] = [gap_closed(before, row[k], after)
                           for k in ("from_newton", "from_original")]
        out[case] = {"forget_loss_before": before, "retrained_forget_loss": after,
                     "trace": rows}
    return out


RULES = ("meet (default)", "midpoint of the two at the meeting",
         "Polyak average from the Newton step, [t, 2t]",
         "Polyak average from the Newton step, [t/2, t]",
         "agree within one check's step-to-step change", "met on 3 checks in a row",
         "K-FAC influence target (linear)", "meet, no offset", "meet, half the offset",
         "meet, Adam rate 3e-3", "meet, Adam rate 3e-4 (2.5x the steps)")


def _meeting(a: np.ndarray, b: np.ndarray, before: float, agree: float = 0.05) -> int | None:
    """auto's stop on traced forget losses (index 0 = step 0): the first check where the two
    differ by at most `agree` of the change since θ₀."""
    for t in range(1, len(a)):
        if abs(a[t] - b[t]) <= agree * abs(a[t] - before):
            return t
    return None


def _vector_loss(scratch: Any, v: Any, rows: tuple[Any, Any]) -> float:
    """Mean forget loss of the parameter vector v (loaded into `scratch`)."""
    import torch

    torch.nn.utils.vector_to_parameters(v, scratch.parameters())
    with torch.no_grad():
        return float(torch_losses(scratch(rows[0]), rows[1], "classification").mean())


def _traced_descents(stepped: Any, original: Any, f: tuple[Any, Any], r: tuple[Any, Any], *,
                     offset: list[Any], lam_r: float, offset_scale: float, before: float,
                     steps: int, lr: float = Descent.lr) -> tuple[Any, Any]:
    """auto's two descents (from the K-FAC step, from θ₀) never stopped (agree ~0), as
    parameter snapshots [checks + 1, p] at step 0 and every check."""
    import copy

    import torch

    from headwater.producers.unlearning.descent import retained_descent

    flat = torch.nn.utils.parameters_to_vector
    a, b = copy.deepcopy(stepped), copy.deepcopy(original)
    snaps: tuple[list[Any], list[Any]] = ([flat(a.parameters()).detach().clone()],
                                          [flat(b.parameters()).detach().clone()])

    def keep(_step: int, a: Any, b: Any) -> None:
        snaps[0].append(flat(a.parameters()).detach().clone())
        snaps[1].append(flat(b.parameters()).detach().clone())

    retained_descent(a, b, f, r, task="classification", offset=offset, lam_retained=lam_r,
                     offset_scale=offset_scale, loss_before=before,
                     settings=Descent(steps=steps, agree=1e-300, lr=lr), observe=keep)
    return torch.stack(snaps[0]), torch.stack(snaps[1])


def _rule_losses(model: Any, f: tuple[Any, Any], r: tuple[Any, Any], recipe: Recipe,
                 steps: int) -> tuple[float, int | None, dict[str, float | None]]:
    """(θ₀'s forget loss, auto's meeting step, the forget loss each rule in RULES ends at)."""
    import copy

    import torch

    from headwater.producers.unlearning.descent import training_gradient

    flat = torch.nn.utils.parameters_to_vector
    scratch = copy.deepcopy(model)
    theta0 = flat(model.parameters()).detach().clone()
    before = _vector_loss(scratch, theta0, f)
    n, n_r = len(f[0]) + len(r[0]), len(r[0])
    lam, lam_r, scale = recipe.lam(n), recipe.lam(n_r), n_r / n
    params = list(model.parameters())
    forget_grad = training_gradient(model, params, f, "classification", 0.0)
    offset = [g + q for g, q in zip(forget_grad, training_gradient(
        model, params, r, "classification", lam), strict=True)]
    stepped, _ = kfac_newton(model, f, r, task="classification", lam=lam, lam_retained=lam_r,
                             offset_scale=scale, target_loss=None)
    trace = partial(_traced_descents, stepped, model, f, r, offset=offset, lam_r=lam_r,
                    before=before)
    sa, sb = trace(offset_scale=scale, steps=steps)
    fa, fb = (np.array([_vector_loss(scratch, v, f) for v in s_]) for s_ in (sa, sb))
    t = _meeting(fa, fb, before)
    out: dict[str, float | None] = dict.fromkeys(RULES)
    if t is not None:
        out["meet (default)"] = float(fa[t])
        out["midpoint of the two at the meeting"] = _vector_loss(scratch, (sa[t] + sb[t]) / 2, f)
        out["Polyak average from the Newton step, [t, 2t]"] = \
            _vector_loss(scratch, sa[t:2 * t + 1].mean(0), f) if 2 * t < len(sa) else None
        out["Polyak average from the Newton step, [t/2, t]"] = \
            _vector_loss(scratch, sa[t // 2:t + 1].mean(0), f)
    wobble = np.maximum(np.abs(np.diff(fa)), np.abs(np.diff(fb)))  # per check, from check 1
    close = [i for i in range(2, len(fa)) if abs(fa[i] - fb[i]) <= wobble[i - 1]]
    out["agree within one check's step-to-step change"] = float(fa[close[0]]) if close else None
    agree = np.abs(fa - fb) <= 0.05 * np.abs(fa - before)
    run = [i for i in range(3, len(fa)) if agree[i - 2:i + 1].all()]
    out["met on 3 checks in a row"] = float(fa[run[0]]) if run else None
    # the forget loss's first-order change along the K-FAC step: an influence estimate of
    # the retrained forget loss from the same curvature (a stop target, not a model)
    net = copy.deepcopy(model)
    mean_loss = torch_losses(net(f[0]), f[1], "classification").mean()
    grad = flat(torch.autograd.grad(mean_loss, list(net.parameters())))
    out["K-FAC influence target (linear)"] = before + float(grad @ (sa[0] - theta0))
    for share, lr, length, rule in (
            (0.0, Descent.lr, steps, "meet, no offset"),
            (0.5, Descent.lr, steps, "meet, half the offset"),
            (1.0, 3e-3, steps, "meet, Adam rate 3e-3"),
            (1.0, 3e-4, steps * 5 // 2, "meet, Adam rate 3e-4 (2.5x the steps)")):
        va, vb = trace(offset_scale=share * scale, lr=lr, steps=length)
        ga, gb = (np.array([_vector_loss(scratch, v, f) for v in s_]) for s_ in (va, vb))
        k = _meeting(ga, gb, before)
        out[rule] = None if k is None else float(ga[k])
    return before, t, out


def descent_rules_case(seed: int, hidden: int, epochs: int, wd: float,
                       steps: int = 600) -> dict[str, Any]:
    """Candidate stopping rules for auto's two retained-objective descents, each scored by
    the gap closed against the retrained model (issue 20's fifth wave). The descents are
    traced every 10 steps to `steps` (auto's own limit; full batch, so deterministic), and
    every rule uses only what the unlearner has: the two traces, the K-FAC step, θ₀."""
    d = digits(seed)
    x, y = d["x"], d["y"]
    model = train_mlp(x, y, hidden=hidden, epochs=epochs, wd=wd, seed=seed)
    adapter = TorchAdapter("classification")
    out: dict[str, Any] = {}
    for case, f, r, retrained in _retrained_sets(d, seed, hidden, epochs, wd,
                                                  "descent rules"):
        after = float(adapter.losses(retrained, f).mean())
        before, t, losses = _rule_losses(model, f, r, Recipe("mean", l2=wd), steps)
        out[case] = {"forget_loss_before": before, "retrained_forget_loss": after,
                     "meeting_step": None if t is None else 10 * t,
                     "gaps": {rule: None if v is None else gap_closed(before, v, after)
                              for rule, v in losses.items()}}
    return out


def _auto_with_hook(d: dict[str, Any], mask: np.ndarray, retrained: Any, original: float,
                    retrain_s: float, fraction: float | None, **train: Any) -> dict[str, Any]:
    """The same model trained with the checkpoint hook, the request applied by `Unlearner`
    (auto). Budget 60 s (`fraction` None): every row is used from step 0, so the replay is a
    full retraining, chosen because it fits. Budget `fraction` of the exact replay's
    estimate: a partial replay from a later checkpoint (approximate)."""
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        model, hook = train_mlp(d["x"], d["y"], hook_dir=directory, **train)
        budget = 60.0 if fraction is None else \
            fraction * plan_replay(hook, np.flatnonzero(mask)).estimated_seconds
        unlearner = Unlearner(model, d["x"], d["y"], test=d["test"], held_out=d["held_out"],
                              checkpoints=hook, replay_budget=budget,
                              retrain=lambda _x, _y: retrained)
        start = time.perf_counter()
        outcome = unlearner(np.flatnonzero(mask), events_pb2.ForgetRequested(
            request_id="bench", verify_with_retrain=True))
        seconds = time.perf_counter() - start
    row = figures(outcome.verification, original, seconds, retrain_s,
                  METHOD_NAMES[outcome.method], targets=MLP_TARGETS)
    row["detail"] = {"method_reason": outcome.reason, "steps_replayed": outcome.steps_replayed,
                     "estimated_replay_seconds": outcome.estimated_replay_seconds}
    return row


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


def stream_schedule(arrival: np.ndarray, steps: int, seed: int) -> list[np.ndarray]:
    """Each step's batch of 32: the rows arriving then, topped up by replay of earlier rows
    drawn uniformly (the sampler's own seed). A forgotten row is dropped from the batches
    it is drawn into, so re-running without rows is this schedule minus those rows."""
    rng = np.random.default_rng(seed)
    out = []
    for step in range(steps):
        batch = np.flatnonzero(arrival == step)
        pool = np.flatnonzero(arrival < step)
        extra = max(0, 32 - len(batch))
        if len(pool) and extra:
            batch = np.concatenate([batch, pool[rng.integers(len(pool), size=extra)]])
        out.append(batch)
    return out


STREAM_WD = 1e-3


def run_stream(d: dict[str, Any], arrival: np.ndarray, schedule: list[np.ndarray], *,
               hidden: int, seed: int, requests: list[tuple[int, np.ndarray]], mode: str,
               directory: str | None = None, every: int = 50
               ) -> tuple[Any, list[dict[str, Any]]]:
    """Online SGD (lr 0.1, momentum 0.9, weight decay 1e-3 in the optimiser, mean loss) over
    `schedule`. At each (step, rows) request the rows leave later batches; `mode` "drop"
    does only that, "approximate" also unlearns them (auto method, the recipe, held-out rows
    that have arrived by then; the optimiser's momentum, which holds their gradients, is
    reset), "descent" the same with the retained-objective descent forced however far the
    model is from a stationary point (to show why auto skips it there), "replay" restores
    the hook's checkpoint before their first use and replays."""
    import torch

    x, y = d["x"], d["y"]
    held_arrival = arrivals(d["held_out"][1].numpy(), len(schedule), seed + 3)
    recipe = Recipe("mean", weight_decay=STREAM_WD)
    model = make_mlp(hidden, seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=STREAM_WD)
    hook = Checkpoints(directory, model, opt, every=every, recipe=recipe) \
        if mode in ("replay", "partial") else None
    partial: list[np.ndarray] = []  # rows removed by a partial replay (still in checkpoints)
    forgotten = np.zeros(len(x), dtype=bool)
    pending = dict(requests)
    applied: list[dict[str, Any]] = []
    log: list[tuple[np.ndarray, float]] = []  # each step's rows and rate (the hook's journal)
    for step, planned in enumerate(schedule):
        if step in pending:
            seen = (arrival < step) & ~forgotten
            now = pending[step] & seen
            forgotten |= pending[step]
            if mode == "reversal" and now.any():
                applied.append(_reverse_steps(d, model, opt, log, step, now))
            elif mode == "unrolled" and now.any():
                applied.append(_unrolled_removal(d, model, opt, log, step, now))
            elif mode != "drop" and now.any():
                applied.append(_apply_request(
                    d, model, opt, hook, recipe, step, now, seen, forgotten, held_arrival,
                    partial if mode == "partial" else None,
                    {"stationary": float("inf")} if mode == "descent" else {}))
        batch = planned[~forgotten[planned]]
        if hook is not None:
            hook.before_step(step)
        if len(batch):
            train_step(model, opt, x[batch], y[batch], recipe=recipe)
        if hook is not None:
            hook.after_step(step, batch)
        log.append((batch, float(opt.param_groups[0]["lr"])))
    return model, applied


def _reverse_steps(d: dict[str, Any], model: Any, opt: Any, log: list[tuple[np.ndarray, float]],
                   step: int, now: np.ndarray) -> dict[str, Any]:
    """The logged-step reversal (a candidate measured against auto, not the default): the
    difference δ between the run without the rows and this one, to first order, carried
    through the logged steps from the rows' first use with the Jacobians at the current
    model — SGD with momentum β on mean batch losses, so per step
        δm ← β·δm + (G_t + wd)·δθ + a_t,   δθ ← δθ − η_t·δm,
    with G_t the Gauss–Newton matrix of the step's batch without the rows (PSD: the
    Hessian's negative directions made the same recursion diverge) and a_t the batch
    gradient without the rows minus the logged one (the rows' terms and the re-weighting of
    the rest, 1/(B−k) instead of 1/B). θ += δθ and the momentum buffer += δm."""
    import torch
    from torch.func import functional_call, jvp, vjp

    from headwater.producers.unlearning.verification import torch_losses

    started = time.perf_counter()
    x, y = d["x"], d["y"]
    names = [name for name, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    flat = torch.nn.utils.parameters_to_vector
    beta, wd = opt.param_groups[0]["momentum"], opt.param_groups[0]["weight_decay"]

    def unflat(v: Any) -> list[Any]:
        out, at = [], 0
        for p in params:
            out.append(v[at:at + p.numel()].view_as(p))
            at += p.numel()
        return out

    dth = torch.zeros(sum(p.numel() for p in params))
    dm = torch.zeros_like(dth)
    rows = np.flatnonzero(now)
    begun = False
    for batch, lr in log:
        gone = np.isin(batch, rows)
        k, size = int(gone.sum()), len(batch)
        begun = begun or k > 0
        if not begun:
            continue
        keep = batch[~gone]
        hv = torch.zeros_like(dth)
        if len(keep) and bool(dth.any()):
            def out_fn(*ps: Any, keep: np.ndarray = keep) -> Any:
                return functional_call(model, dict(zip(names, ps, strict=True)), (x[keep],))
            z, jv = jvp(out_fn, tuple(params), tuple(unflat(dth)))[:2]
            prob = torch.softmax(z, 1)  # the softmax cross-entropy's Hessian in the logits
            hz = prob * jv - prob * (prob * jv).sum(1, keepdim=True)
            hv = flat(vjp(out_fn, *params)[1](hz / len(keep)))
        a = torch.zeros_like(dth)
        if k:
            weight = torch.tensor(np.where(gone, 1.0 / size, 1.0 / size - 1.0 / (size - k))
                                  if size > k else np.full(size, 1.0 / size),
                                  dtype=torch.float32)
            loss = (torch_losses(model(x[batch]), y[batch], "classification") * weight).sum()
            a = -flat(torch.autograd.grad(loss, list(model.parameters())))
        dm = beta * dm + hv + wd * dth + a
        dth = dth - lr * dm
    with torch.no_grad():
        for p, delta, dmom in zip(model.parameters(), unflat(dth), unflat(dm), strict=True):
            p.add_(delta)
            state = opt.state.get(p, {})
            if state.get("momentum_buffer") is not None:
                state["momentum_buffer"].add_(dmom)
    return {"step": step, "rows": int(now.sum()), "seconds": time.perf_counter() - started,
            "method": "REVERSAL", "newton_steps": 0, "fine_tune_steps": 0}


def _row_factors(model: Any, layers: list[Any], x: Any, y: Any
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per nn.Linear layer, each row's input a_i (a 1 appended) and loss gradient at the
    layer's output δ_i, float64: row i's gradient there is δ_i a_iᵀ."""
    import torch

    from headwater.producers.unlearning.verification import torch_losses

    inputs: dict[int, Any] = {}
    grads: dict[int, Any] = {}
    hooks = []
    for i, layer in enumerate(layers):
        def keep(_m: Any, a: Any, out: Any, i: int = i) -> None:
            inputs[i] = a[0].detach()
            out.register_hook(lambda g: grads.__setitem__(i, g.detach()))
        hooks.append(layer.register_forward_hook(keep))
    try:
        model.zero_grad()
        torch_losses(model(x), y, "classification").sum().backward()
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad()
    ones = torch.ones(len(x), 1, dtype=torch.float64)
    return [(torch.cat([inputs[i].double(), ones], 1).numpy(), grads[i].double().numpy())
            for i in range(len(layers))]


def _unrolled_removal(d: dict[str, Any], model: Any, opt: Any,
                      log: list[tuple[np.ndarray, float]], step: int, now: np.ndarray
                      ) -> dict[str, Any]:
    """Unrolled removal (a candidate measured against auto, not the default): each logged
    step that used a forgotten row i moved θ by −η_t/B_t·(g_i − ḡ) more than the step
    without it would have (mean batch loss; ḡ the rest of the batch's mean gradient),
    delivered in full through the momentum (η_t/(1−β)); the later steps then contract that
    displacement along the curvature, by exp(−h·L_t) in a direction of mean-loss curvature
    h + wd, L_t = Σ_{s>t} η_s/(1−β). So, per K-FAC eigendirection of every layer
    (the retained rows seen so far, mean-loss scale),
        Δθ = Σ_i Σ_{t uses i} η_t/(B_t(1−β)) · exp(−(h + wd)·L_t) · (g_i − ḡ),
    g_i and ḡ (the retained rows' mean gradient) taken at the current model. Stiff
    directions, which training re-equilibrates, keep little; flat ones the sum of steps."""
    import torch

    from headwater.producers.unlearning.kfac import _factors, _linear_layers

    started = time.perf_counter()
    x, y = d["x"], d["y"]
    beta, wd = opt.param_groups[0]["momentum"], opt.param_groups[0]["weight_decay"]
    rows = np.flatnonzero(now)
    layers = _linear_layers(model)
    keep = np.setdiff1d(np.unique(np.concatenate([b for b, _ in log])), rows)
    was = model.training
    model.eval()
    try:
        factors = _factors(model, layers, x[keep], "classification", 0)
        own, rest = (_row_factors(model, layers, x[k], y[k]) for k in (rows, keep))
    finally:
        model.train(was)
    eff = np.array([lr for _, lr in log]) / (1 - beta)
    later = np.concatenate([np.cumsum(eff[::-1])[::-1][1:], [0.0]])  # L_t
    uses: dict[int, list[tuple[float, float]]] = {int(r): [] for r in rows}
    for t, (batch, _) in enumerate(log):
        for r in batch[np.isin(batch, rows)]:
            uses[int(r)].append((eff[t] / len(batch), later[t]))
    deltas = []
    for (a_f, g_f), (a_k, g_k), (a, g) in zip(own, rest, factors, strict=True):
        la, qa = np.linalg.eigh(a)
        lg, qg = np.linalg.eigh(g)
        h = np.outer(np.clip(lg, 0, None), np.clip(la, 0, None)) / len(keep) + wd
        mean_rest = (g_k @ qg).T @ (a_k @ qa) / len(keep)  # ḡ in the eigenbasis
        pa, pg = a_f @ qa, g_f @ qg
        total = np.zeros_like(h)
        for j, r in enumerate(rows):
            weight = sum(c * np.exp(-h * span) for c, span in uses[int(r)])
            total += weight * (np.outer(pg[j], pa[j]) - mean_rest)
        deltas.append(qg @ total @ qa.T)
    with torch.no_grad():
        for layer, delta in zip(layers, deltas, strict=True):
            delta_t = torch.as_tensor(delta, dtype=layer.weight.dtype)
            layer.weight.add_(delta_t[:, :layer.in_features])
            layer.bias.add_(delta_t[:, -1])
    opt.state.clear()  # the momentum holds the rows' gradients
    return {"step": step, "rows": int(now.sum()), "seconds": time.perf_counter() - started,
            "method": "UNROLLED", "newton_steps": 0, "fine_tune_steps": 0}


def _apply_request(d: dict[str, Any], model: Any, opt: Any, hook: Any, recipe: Recipe,
                   step: int, now: np.ndarray, seen: np.ndarray, forgotten: np.ndarray,
                   held_arrival: np.ndarray, partial: list[np.ndarray] | None = None,
                   options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Replay (hook), or with `partial` a list: on a budget of 34% of the exact replay's
    estimate, a partial replay (the rows it leaves in earlier checkpoints are kept in the
    list, so the next replay starts before their first use), else the approximate method
    (as `Unlearner` chooses)."""
    x, y = d["x"], d["y"]
    rows = np.union1d(np.flatnonzero(now), *partial) if partial else np.flatnonzero(now)
    start = None
    if hook is not None and partial is not None:
        budget = 0.34 * plan_replay(hook, rows).estimated_seconds
        start = plan_partial(hook, rows, budget).checkpoint
    if hook is not None and (partial is None or start is not None):
        plan = plan_replay(hook, rows)
        report = replay_forget(hook, np.flatnonzero(forgotten), lambda k: (x[k], y[k]),
                               rows=rows, start=start)
        if partial is not None:
            partial[:] = [rows]
        return {"step": step, "rows": int(now.sum()),
                "method": "REPLAY" if start is None else "PARTIAL_REPLAY",
                "seconds": report.seconds, "steps_replayed": report.steps_replayed,
                "estimated_steps": plan.steps, "estimated_seconds": plan.estimated_seconds,
                "checkpoint_step": report.start_step}
    f, r = torch_mask(now), torch_mask(seen & ~now)
    h = torch_mask(held_arrival < step)
    result = unlearn(model, (x[f], y[f]), (x[r], y[r]),
                     held_out=(d["held_out"][0][h], d["held_out"][1][h]), recipe=recipe,
                     inplace=True, **(options or {}))
    opt.state.clear()
    if partial is not None:  # still in the checkpoints: the next replay goes before them
        partial[:] = [rows]
    v = result.verification
    return {"step": step, "rows": int(now.sum()), "seconds": result.seconds,
            "method": METHOD_NAMES[result.method],
            "newton_steps": result.detail.get("newton_steps", 0),
            "fine_tune_steps": result.detail.get("fine_tune_steps", 0),
            "training_gradient_norm": result.detail.get("training_gradient_norm"),
            "forget_gradient_norm": result.detail.get("forget_gradient_norm"),
            "stationarity": result.detail.get("stationarity"),
            "forget_loss_before": v.forget_loss_before, "forget_loss_after": v.forget_loss_after}


def stream_requests(d: dict[str, Any], arrival: np.ndarray, steps: int, seed: int
                    ) -> tuple[list[tuple[int, np.ndarray]], np.ndarray, np.ndarray]:
    """The stream's two forget requests (5 % random rows that arrived in the first third,
    asked at a third of the way; writer block 5 at two thirds), every row they name, and
    the named rows the stream trained on before their request (the forget set)."""
    n = len(d["x"])
    rng = np.random.default_rng(seed + 2)
    first = np.zeros(n, dtype=bool)
    first[rng.choice(np.flatnonzero(arrival < steps // 3), round(0.05 * n),
                     replace=False)] = True
    requests = [(steps // 3, first), (2 * steps // 3, d["source"] == 5)]
    gone = np.zeros(n, dtype=bool)
    trained_on = np.zeros(n, dtype=bool)
    for step, rows in requests:
        gone |= rows
        trained_on |= rows & (arrival < step)
    return requests, gone, trained_on


def stream_case(seed: int, steps: int, hidden: int) -> dict[str, Any]:
    import tempfile

    d = digits(seed)
    arrival = arrivals(d["y"].numpy(), steps, seed)
    schedule = stream_schedule(arrival, steps, seed)
    requests, gone, trained_on = stream_requests(d, arrival, steps, seed)
    run = partial(run_stream, d, arrival, schedule, hidden=hidden, seed=seed,
                  requests=requests)
    progress(f"stream: {steps} steps, forget requests at steps {requests[0][0]} and "
             f"{requests[1][0]}; dropped only / approximate / replay / re-run without them")
    dropped, _ = run(mode="drop")
    start = time.perf_counter()
    approx, approx_applied = run(mode="approximate")
    approx_s = time.perf_counter() - start
    start = time.perf_counter()
    forced, forced_applied = run(mode="descent")
    forced_s = time.perf_counter() - start
    start = time.perf_counter()
    reversed_, reversal_applied = run(mode="reversal")
    reversal_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        replayed, replay_applied = run(mode="replay", directory=directory)
        replay_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        partly, partial_applied = run(mode="partial", directory=directory)
        partial_s = time.perf_counter() - start
    start = time.perf_counter()
    rerun, _ = run_stream(d, arrival, schedule, hidden=hidden, seed=seed,
                          requests=[(0, gone)], mode="drop")
    rerun_s = time.perf_counter() - start
    m = torch_mask(trained_on)
    forget = (d["x"][m], d["y"][m])
    rows = {}
    for label, model, applied, total in (("approximate (auto)", approx, approx_applied,
                                          approx_s),
                                         ("approximate, descent forced (not the default)",
                                          forced, forced_applied, forced_s),
                                         ("logged-step reversal (candidate, not the default)",
                                          reversed_, reversal_applied, reversal_s),
                                         ("replay", replayed, replay_applied, replay_s),
                                         ("partial replay (34% budget)", partly,
                                          partial_applied, partial_s)):
        v = verify(dropped, model, forget, d["test"], d["held_out"],
                   retrain=partial(_same, rerun))
        row = figures(v, _param_distance(dropped, rerun), sum(a["seconds"] for a in applied),
                      rerun_s, "/".join(sorted({a["method"] for a in applied})),
                      targets=MLP_TARGETS)
        row["distance_over_norm"] = _param_distance(model, rerun) / _param_norm(rerun)
        row["requests"] = applied
        row["stream_s"] = total
        rows[label] = row
    return {"steps": steps, "rerun_s": rerun_s, "rows_forgotten": int(trained_on.sum()),
            "methods": rows}


def stream_schedules_case(seed: int, steps: int, hidden: int, schedules: int
                          ) -> dict[str, Any]:
    """The stream case's approximate methods over `schedules` sampler seeds (the first is
    the stream case's own): one re-run is one draw of a chaotic process (removing 10 more
    random rows from it moves the forget loss as much as the rows do, see `noise`), so the
    methods are also compared with re-running in expectation: the gap closed by the mean
    forget losses over the schedules, (mean after − mean dropped) / (mean re-run − mean
    dropped), beside each schedule's own gap."""
    d = digits(seed)
    n = len(d["x"])
    arrival = arrivals(d["y"].numpy(), steps, seed)
    requests, gone, trained_on = stream_requests(d, arrival, steps, seed)
    m = torch_mask(trained_on)
    forget = (d["x"][m], d["y"][m])
    adapter = TorchAdapter("classification")

    def loss(model: Any) -> float:
        return float(adapter.losses(model, forget).mean())

    modes = {"approximate (auto)": "approximate",
             "logged-step reversal (candidate)": "reversal",
             "unrolled removal (candidate)": "unrolled"}
    table: dict[str, list[float]] = {"dropped": [], "re-run": [], **{k: [] for k in modes}}
    accuracy: dict[str, list[float]] = {k: [] for k in table}
    noise: list[float] = []
    flats: dict[str, list[Any]] = {"dropped": [], "re-run": []}  # parameters, for distances
    for k in range(schedules):
        progress(f"stream over sampler seeds: schedule {k + 1} of {schedules}")
        schedule = stream_schedule(arrival, steps, seed + 1000 * k)
        run = partial(run_stream, d, arrival, schedule, hidden=hidden, seed=seed)
        models = {"dropped": run(requests=requests, mode="drop")[0],
                  "re-run": run(requests=[(0, gone)], mode="drop")[0],
                  **{label: run(requests=requests, mode=mode)[0]
                     for label, mode in modes.items()}}
        for label, model in models.items():
            table[label].append(loss(model))
            accuracy[label].append(adapter.accuracy(model, d["test"]))
        for label in flats:
            flats[label].append(_flat(models[label]))
        if k == 0:  # re-runs without 10 more random rows: the noise of one re-run
            for j in range(4):
                extra = np.zeros(n, dtype=bool)
                extra[np.random.default_rng(seed + 100 + j).choice(
                    np.flatnonzero(~gone), 10, replace=False)] = True
                noise.append(gap_closed(table["dropped"][0],
                                        loss(run(requests=[(0, gone | extra)],
                                                 mode="drop")[0]),
                                        table["re-run"][0]))
    mean = {label: float(np.mean(v)) for label, v in table.items()}
    change = np.subtract(table["re-run"], table["dropped"])  # what the rows' removal moves
    pairs = [float((flats["re-run"][i] - flats["re-run"][j]).norm())
             for i in range(schedules) for j in range(i + 1, schedules)]
    out: dict[str, Any] = {"steps": steps, "schedules": schedules, "mean_forget_loss": mean,
                           "sd_forget_loss": {label: float(np.std(v, ddof=1))
                                              if schedules > 1 else float("nan")
                                              for label, v in table.items()},
                           "param_norm": float(np.mean([float(v.norm())
                                                        for v in flats["re-run"]])),
                           "distance_dropped_rerun": [
                               float((a - b).norm()) for a, b in
                               zip(flats["dropped"], flats["re-run"], strict=True)],
                           "distance_rerun_rerun": pairs,
                           "rerun_noise_gaps": noise, "rerun_change_mean": float(change.mean()),
                           "rerun_change_sd": float(change.std(ddof=1)) if schedules > 1
                           else float("nan"), "methods": {}}
    for label in modes:
        out["methods"][label] = {
            "gap_of_means": gap_closed(mean["dropped"], mean[label], mean["re-run"]),
            "gap_of_means_se": _ratio_se(np.subtract(table[label], table["dropped"]), change),
            "gaps": [gap_closed(b, a, r) for b, a, r in
                     zip(table["dropped"], table[label], table["re-run"], strict=True)],
            "accuracy_vs_rerun_pp": 100 * float(np.mean(accuracy[label])
                                                - np.mean(accuracy["re-run"])),
            # the method's own move of the forget loss from the dropped-only model, per
            # schedule (paired), beside the re-run's: mean and standard error
            "change_mean": float(np.mean(np.subtract(table[label], table["dropped"]))),
            "change_se": float(np.std(np.subtract(table[label], table["dropped"]), ddof=1)
                               / schedules ** 0.5) if schedules > 1 else float("nan")}
    return out


def request_time_case(seed: int, steps: int, hidden: int, schedules: int) -> dict[str, Any]:
    """Where the stream's gap opens: the writer-block request alone (at two thirds of the
    stream), its forget loss measured one step after the request and at the end, for the
    dropped-only model, the re-run without the block, auto and the unrolled removal, over
    `schedules` sampler seeds: whether a method is short or past the re-run already at the
    request, or only after the training that follows it."""
    d = digits(seed)
    arrival = arrivals(d["y"].numpy(), steps, seed)
    step, rows = stream_requests(d, arrival, steps, seed)[0][1]
    m = torch_mask(rows & (arrival < step))
    forget = (d["x"][m], d["y"][m])
    adapter = TorchAdapter("classification")
    modes = {"re-run": "rerun", "approximate (auto)": "approximate",
             "unrolled removal (candidate)": "unrolled"}
    ends = {"after the request": step + 1, "end of the stream": steps}
    moves: dict[str, dict[str, list[float]]] = {e: {k: [] for k in modes} for e in ends}
    for k in range(schedules):
        progress(f"request time: schedule {k + 1} of {schedules}")
        full = stream_schedule(arrival, steps, seed + 1000 * k)
        for end, length in ends.items():
            run = partial(run_stream, d, arrival, full[:length], hidden=hidden, seed=seed)
            dropped = float(adapter.losses(run(requests=[(step, rows)], mode="drop")[0],
                                           forget).mean())
            for label, mode in modes.items():
                model = run(requests=[(0, rows)], mode="drop")[0] if mode == "rerun" else \
                    run(requests=[(step, rows)], mode=mode)[0]
                moves[end][label].append(float(adapter.losses(model, forget).mean()) - dropped)
    out: dict[str, Any] = {"steps": steps, "request_step": step, "rows": int(m.sum()),
                           "schedules": schedules}
    for end, by in moves.items():
        out[end] = {label: {"move_mean": float(np.mean(v)),
                            "move_se": float(np.std(v, ddof=1) / schedules ** 0.5)
                            if schedules > 1 else float("nan"),
                            "ratio_to_rerun": float(np.mean(v) / np.mean(by["re-run"])),
                            "ratio_se": _ratio_se(np.asarray(v), np.asarray(by["re-run"]))}
                    for label, v in by.items()}
    return out


def _ratio_se(moved: np.ndarray, change: np.ndarray) -> float:
    """Standard error of mean(moved) / mean(change) over paired schedules (the delta
    method: the residuals moved − g·change, g the ratio), NaN with one schedule."""
    if len(change) < 2:
        return float("nan")
    g = float(np.mean(moved) / np.mean(change))
    return float(np.std(moved - g * change, ddof=1) / (len(change) ** 0.5
                                                       * abs(np.mean(change))))


def replay_cost_case(seed: int, lengths: list[int], hidden: int) -> list[dict[str, Any]]:
    """Forget 20 rows that arrived in the last 10% of the arrival window, at the end of
    streams of growing length: steps replayed and seconds vs re-running the stream."""
    import tempfile

    d = digits(seed)
    out = []
    for steps in lengths:
        arrival = arrivals(d["y"].numpy(), steps, seed)
        schedule = stream_schedule(arrival, steps, seed)
        window = int(0.8 * steps)
        recent = np.flatnonzero(arrival >= window - window // 10)
        rows = np.zeros(len(arrival), dtype=bool)
        rows[np.random.default_rng(seed + 7).choice(recent, 20, replace=False)] = True
        progress(f"replay cost: {steps}-step stream, 20 recent rows forgotten at the end")
        with tempfile.TemporaryDirectory() as directory:
            _, applied = run_stream(d, arrival, schedule, hidden=hidden, seed=seed,
                                    requests=[(steps - 1, rows)], mode="replay",
                                    directory=directory)
        start = time.perf_counter()
        run_stream(d, arrival, schedule, hidden=hidden, seed=seed,
                   requests=[(0, rows)], mode="drop")
        rerun_s = time.perf_counter() - start
        a = applied[0]
        out.append({"steps": steps, "steps_replayed": a["steps_replayed"],
                    "replay_s": a["seconds"], "estimated_s": a["estimated_seconds"],
                    "rerun_s": rerun_s, "speedup": rerun_s / a["seconds"]})
    return out


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


def report_logreg(figs: dict[str, Any]) -> None:
    lr = figs["logreg"]
    print(f"logistic regression, breast cancer: {lr['train_rows']} training rows, "
          f"{lr['test_rows']} test rows, λ={lr['lambda']}; targets: gap closed 0.9-1.1, "
          "dist/orig <= 0.1, test acc within 0.5 pp of retrain, MIA within 0.05 of retrain")
    for case in ("forget one hospital of two", "forget 5% random rows"):
        print_table(f"logreg: {case} ({lr[case]['rows_forgotten']} rows)", lr[case])
    rc = figs["logreg_recipe"]
    print_table(f"logreg trained on mean loss + weight decay {rc['weight_decay']}: forget one "
                f"hospital ({rc['rows_forgotten']} rows), retrained by the same recipe", rc)
    sm = figs["softmax"]
    print_table(f"softmax regression on digits (mean loss + weight decay {sm['weight_decay']}, "
                f"L-BFGS): forget the class-skewed site ({sm['rows_forgotten']} rows, "
                f"{100 * sm['forget_class_share_0_2']:.0f}% classes 0-2)", sm)


def report_mlp(figs: dict[str, Any]) -> None:
    mlp = figs["mlp"]
    print(f"\nMLP 64-{mlp['hidden']}-10 on digits: {mlp['train_rows']} training rows, "
          f"{mlp['epochs']} full-batch Adam steps, mean loss + L2 {mlp['weight_decay']}; "
          "targets: gap closed 0.8-1.2, test acc within 1 pp, MIA within 0.05 of retrain")
    for case in ("forget 5% random rows", "forget one writer block"):
        print_table(f"MLP: {case} ({mlp[case]['rows_forgotten']} rows)", mlp[case])
        spread = mlp[case]["reference_spread"]
        if spread["gaps"]:
            print(f"  reference spread: retrained from {len(spread['gaps'])} other "
                  f"initialisations (seeds {', '.join(map(str, spread['seeds']))}), gap closed "
                  f"against the reference retrain: "
                  f"{', '.join(_fmt(g) for g in spread['gaps'])}; auto against the mean "
                  f"forget loss of all {len(spread['gaps']) + 1} retrains: "
                  f"{_fmt(spread['auto_gap_vs_mean_retrain'])}")


def report_stream(figs: dict[str, Any]) -> None:
    st = figs["stream"]
    print(f"\ncontinual stream: {st['steps']} online SGD steps over drifting digits; "
          f"re-running it without the rows took {st['rerun_s']:.2f} s; targets: replay "
          "distance <= 1e-5 of the parameter norm, approximate gap closed >= 0.8")
    for name, row in st["methods"].items():
        print(f"  {name}: distance to the re-run / its norm {row['distance_over_norm']:.2e}; "
              f"whole stream {row['stream_s']:.2f} s")
        for a in row["requests"]:
            cost = (f"{a['steps_replayed']} steps replayed from the checkpoint at step "
                    f"{a['checkpoint_step']} (exact: estimated {a['estimated_steps']} steps, "
                    f"{a['estimated_seconds']:.2f} s)" if "REPLAY" in a["method"] else
                    f"{a['newton_steps']} Newton + {a['fine_tune_steps']} fine-tune steps")
            print(f"    request at step {a['step']}: {a['rows']} rows, {a['method']} in "
                  f"{a['seconds']:.3f} s: {cost}")
    print_table("stream, end: dropped-only (before) vs unlearned (after) vs re-run (retrain)",
                st)


def report_schedules(figs: dict[str, Any]) -> None:
    ss = figs["stream_schedules"]
    mean = ss["mean_forget_loss"]
    print(f"\nstream over {ss['schedules']} sampler seeds ({ss['steps']} steps): mean forget "
          "loss " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
    print(f"  re-run minus dropped, per schedule: mean {ss['rerun_change_mean']:+.4f}, sd "
          f"{_fmt(ss['rerun_change_sd'], '.4f')} (standard error of the mean "
          f"{_fmt(ss['rerun_change_sd'] / ss['schedules'] ** 0.5, '.4f')})")
    print("  one re-run's noise: re-runs without 10 more random rows (of the first schedule) "
          "close " + ", ".join(_fmt(g) for g in ss["rerun_noise_gaps"]) + " of its gap")
    sd = ss["sd_forget_loss"]
    print("  forget loss sd over the schedules: " + ", ".join(f"{k} {_fmt(v, '.4f')}"
                                                             for k, v in sd.items()))
    near, apart = ss["distance_dropped_rerun"], ss["distance_rerun_rerun"]
    if apart:
        print(f"  parameters (norm {ss['param_norm']:.2f}): dropped-only to re-run, same "
              f"schedule, {np.mean(near):.2f} ({min(near):.2f}-{max(near):.2f}); re-run to "
              f"re-run over schedules {np.mean(apart):.2f} ({min(apart):.2f}-{max(apart):.2f})")
    for name, row in ss["methods"].items():
        print(f"  {name}: gap of the means {_fmt(row['gap_of_means'])} ± "
              f"{_fmt(row['gap_of_means_se'])} (standard error); per schedule "
              + ", ".join(_fmt(g) for g in row["gaps"])
              + f"; forget loss moved {row['change_mean']:+.4f} ± "
              f"{_fmt(row['change_se'], '.4f')} from dropped-only (re-run "
              f"{ss['rerun_change_mean']:+.4f}); test accuracy vs re-run "
              f"{row['accuracy_vs_rerun_pp']:+.2f} pp (mean)")


def report_request_time(figs: dict[str, Any]) -> None:
    rt = figs["request_time"]
    print(f"\nthe writer-block request alone (step {rt['request_step']} of {rt['steps']}, "
          f"{rt['rows']} rows), over {rt['schedules']} sampler seeds: forget-loss move from "
          "the dropped-only model (standard error), and its ratio to the re-run's")
    for end in ("after the request", "end of the stream"):
        print(f"  {end}: " + "; ".join(
            f"{label} {row['move_mean']:+.4f} ± {_fmt(row['move_se'], '.4f')} "
            f"({_fmt(row['ratio_to_rerun'])} ± {_fmt(row['ratio_se'])})"
            for label, row in rt[end].items()))


def report_descent_trace(figs: dict[str, Any]) -> None:
    print("\nauto's two descents, not stopped (MLP): forget loss from the Newton step / from "
          "the original (gap closed)")
    for case, c in figs["descent_trace"].items():
        print(f"  {case}: before {c['forget_loss_before']:.4f}, retrained "
              f"{c['retrained_forget_loss']:.4f}")
        for row in c["trace"]:
            print(f"    {row['steps']:>5} steps ({row['stop']}): {row['from_newton']:.4f} / "
                  f"{row['from_original']:.4f} ({_fmt(row['gaps'][0])} / "
                  f"{_fmt(row['gaps'][1])})")


def report_descent_rules(figs: dict[str, Any]) -> None:
    print("\ncandidate stopping rules for auto's two descents (MLP): gap closed "
          "(- : the rule never stopped within the descents' limit)")
    cases = list(figs["descent_rules"])
    print(f"  {'rule':48} " + " ".join(f"{c[len('forget '):][:22]:>22}" for c in cases))
    for rule in RULES:
        print(f"  {rule:48} " + " ".join(
            f"{_fmt(figs['descent_rules'][c]['gaps'][rule]):>22}" for c in cases))


def report_replay_cost(figs: dict[str, Any]) -> None:
    print("\nreplay cost: 20 recent rows forgotten at the end of the stream")
    for c in figs["replay_cost"]:
        print(f"  {c['steps']:>5} steps: {c['steps_replayed']} steps replayed in "
              f"{c['replay_s']:.2f} s (estimated {c['estimated_s']:.2f} s); re-running the "
              f"stream {c['rerun_s']:.2f} s ({c['speedup']:.1f}x)")


def report_cost(figs: dict[str, Any]) -> None:
    print("\ncost: time to unlearn 1% of rows vs retrain from scratch (logistic regression)")
    for c in figs["cost"]:
        print(f"  {c['rows']:>7} rows x {c['dims']}: retrain {c['retrain_s']:.3f} s; newton 1 "
              f"step {c['newton_1_step']['unlearn_s']:.3f} s "
              f"({c['newton_1_step']['speedup']:.1f}x faster); auto "
              f"({c['newton_auto']['newton_steps']} steps) "
              f"{c['newton_auto']['unlearn_s']:.3f} s ({c['newton_auto']['speedup']:.1f}x)")


def report(figs: dict[str, Any]) -> None:
    """The parts that ran, as tables."""
    for part, show in (PARTS["logreg"], report_logreg), (PARTS["mlp"], report_mlp), \
            (PARTS["descent_trace"], report_descent_trace), \
            (PARTS["descent_rules"], report_descent_rules), \
            (PARTS["stream"], report_stream), (PARTS["schedules"], report_schedules), \
            (PARTS["request_time"], report_request_time), \
            (PARTS["replay_cost"], report_replay_cost), (PARTS["cost"], report_cost):
        if all(key in figs for key in part):
            show(figs)


# the parts --only can run, and the keys of their figures
PARTS = {"logreg": ("logreg", "logreg_recipe", "softmax"), "mlp": ("mlp",),
         "descent_trace": ("descent_trace",), "descent_rules": ("descent_rules",),
         "stream": ("stream",), "schedules": ("stream_schedules",),
         "request_time": ("request_time",),
         "replay_cost": ("replay_cost",), "cost": ("cost",)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lam", type=float, default=1.0, help="logreg L2 penalty")
    ap.add_argument("--hidden", type=int, default=64, help="MLP hidden units")
    ap.add_argument("--epochs", type=int, default=300, help="MLP full-batch training steps")
    ap.add_argument("--wd", type=float, default=1e-3, help="MLP weight decay (mean loss)")
    ap.add_argument("--stream-steps", type=int, default=600)
    ap.add_argument("--replay-lengths", default="300,600,1200",
                    help="stream lengths for the replay cost, comma-separated")
    ap.add_argument("--cost-rows", default="20000,200000", help="comma-separated")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats (median)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and BLAS threads (these models are small: one thread is the "
                         "fastest and steadiest on a shared machine)")
    ap.add_argument("--fast", action="store_true",
                    help="smaller MLP runs, a shorter stream, 20k rows for cost, 3 repeats")
    ap.add_argument("--trace-steps", default="240,480,900,2000",
                    help="descent_trace: steps of the unstopped descents, comma-separated")
    ap.add_argument("--stream-schedules", type=int, default=None,
                    help="sampler seeds for the stream's approximate methods in expectation "
                         "(default 24: 6 left the re-run's change unresolved; 4 with --fast)")
    ap.add_argument("--request-schedules", type=int, default=None,
                    help="sampler seeds for request_time (default 12, 4 with --fast)")
    ap.add_argument("--spread-inits", type=int, default=4,
                    help="MLP: retrain from this many other initialisations to show how "
                         "far one retraining is from the reference (0: skip)")
    ap.add_argument("--only", default=",".join(PARTS),
                    help=f"comma-separated parts to run (default all): {', '.join(PARTS)}")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    if only - set(PARTS):
        ap.error(f"--only: unknown part(s) {', '.join(sorted(only - set(PARTS)))}; the parts "
                 f"are {', '.join(PARTS)}")
    if args.fast:
        args.hidden, args.epochs, args.stream_steps = 32, 150, 240
        args.cost_rows, args.repeats, args.replay_lengths = "20000", 3, "120,240"
        args.trace_steps = "240,480"
    if args.stream_schedules is None:
        args.stream_schedules = 4 if args.fast else 24
    if args.request_schedules is None:
        args.request_schedules = 4 if args.fast else 12
    import torch
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # NumPy's BLAS: the same thread count for both sides
    lengths = [int(n) for n in args.replay_lengths.split(",")]
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "logreg": lambda: {"logreg": logreg_cases(args.seed, args.lam, args.repeats),
                           "logreg_recipe": logreg_recipe_case(args.seed, 0.01),
                           "softmax": softmax_case(args.seed, args.wd)},
        "mlp": lambda: {"mlp": mlp_cases(args.seed, args.hidden, args.epochs, args.wd,
                                         max(1, args.repeats // 2), args.spread_inits)},
        "descent_trace": lambda: {"descent_trace": descent_trace_case(
            args.seed, args.hidden, args.epochs, args.wd,
            [int(n) for n in args.trace_steps.split(",")])},
        "descent_rules": lambda: {"descent_rules": descent_rules_case(
            args.seed, args.hidden, args.epochs, args.wd)},
        "stream": lambda: {"stream": stream_case(args.seed, args.stream_steps, args.hidden)},
        "schedules": lambda: {"stream_schedules": stream_schedules_case(
            args.seed, args.stream_steps, args.hidden, args.stream_schedules)},
        "request_time": lambda: {"request_time": request_time_case(
            args.seed, args.stream_steps, args.hidden, args.request_schedules)},
        "replay_cost": lambda: {"replay_cost": replay_cost_case(args.seed, lengths,
                                                                args.hidden)},
        "cost": lambda: {"cost": [cost_case(int(n), 50, args.seed, args.repeats)
                                  for n in args.cost_rows.split(",")]},
    }
    figs: dict[str, Any] = {}
    for part, run in runs.items():
        if part in only:
            figs.update(run())
    if args.json:
        print(json.dumps(figs, default=float))
    else:
        report(figs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
