"""The one entry point, `unlearn`, and `verify`, which fills the `headwater.v1.Verification`
recorded with every request."""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from headwater.producers.unlearning.digests import (
    RowDigest,
    parse_method,
)
from headwater.producers.unlearning.finetune import unlearn_torch
from headwater.producers.unlearning.linear import (
    LinearModel,
)
from headwater.producers.unlearning.newton import (
    linear_forget,
)
from headwater.producers.unlearning.recipe import Recipe
from headwater.producers.unlearning.replay import LoadRows, replay_forget
from headwater.producers.unlearning.rows import (
    Rows,
    pair,
    torch_no_grad,
    type_name,
)
from headwater.producers.unlearning.verification import (
    Adapter,
    LinearAdapter,
    TorchAdapter,
    gap_closed,
    membership_auc,
)
from headwater.v1 import events_pb2

if TYPE_CHECKING:
    from headwater.producers.checkpoints import Checkpoints


# -- verification and the one entry point ---------------------------------------------------

def _adapter_for(model: Any, task: str | None = None) -> Adapter:
    if isinstance(model, LinearModel):
        return LinearAdapter()
    torch = sys.modules.get("torch")  # a torch module can only exist if torch is imported
    if torch is not None and isinstance(model, torch.nn.Module):
        return TorchAdapter(task or "classification")
    raise TypeError(f"unsupported model type {type_name(model)}: unlearning supports "
                    "headwater LinearModel and torch.nn.Module")


def verify(model_before: Any, model_after: Any, forget: Rows, test: Rows | None,
           held_out: Rows | None = None, *, retrain: Callable[[], Any] | None = None,
           task: str = "classification") -> events_pb2.Verification:
    """The Verification recorded with an unlearning request (docs/unlearning.md). Losses are
    the model's own per-row losses (cross-entropy for classification); test accuracy is R²
    for regression; NaN marks a figure that could not be measured (no test rows).
    `retrain`: a callable returning the model retrained without the forget rows (or its
    parameters), filling the retrain fields. `held_out` defaults to `test`."""
    v, _ = _verify(model_before, model_after, forget, test, held_out, retrain, task)
    return v


def _verify(before: Any, after: Any, forget: Rows, test: Rows | None, held_out: Rows | None,
            retrain: Callable[[], Any] | None, task: str
            ) -> tuple[events_pb2.Verification, dict[str, float]]:
    adapter = _adapter_for(before, task)
    if type(after) is not type(before):
        raise TypeError(f"model_after is {type_name(after)} but model_before is "
                        f"{type_name(before)}")
    held_out = test if held_out is None else held_out
    forget = pair(forget, "forget")
    if len(forget[0]) == 0:
        raise ValueError("forget is empty: nothing to verify")
    nan = float("nan")

    def figures(model: Any) -> tuple[float, float, float]:
        fl = adapter.losses(model, forget)
        acc = adapter.accuracy(model, pair(test, "test")) if test is not None else nan
        mia = membership_auc(fl, adapter.losses(model, pair(held_out, "held_out"))) \
            if held_out is not None else nan
        return float(fl.mean()), acc, mia

    loss_b, acc_b, mia_b = figures(before)
    loss_a, acc_a, mia_a = figures(after)
    theta_b, theta_a = adapter.params(before), adapter.params(after)
    if theta_a.shape != theta_b.shape:
        raise ValueError(f"model_after has {theta_a.size} parameters, model_before "
                         f"{theta_b.size}")
    v = events_pb2.Verification(
        forget_loss_before=loss_b, forget_loss_after=loss_a, test_accuracy_before=acc_b,
        test_accuracy_after=acc_a, membership_auc=mia_a, membership_auc_before=mia_b,
        parameter_distance=float(np.linalg.norm(theta_a - theta_b)))
    extra: dict[str, float] = {}
    if retrain is not None:
        if not callable(retrain):
            raise TypeError(f"retrain must be a callable returning the retrained model or "
                            f"its parameters; got {type_name(retrain)}")
        retrained = adapter.as_model(before, retrain())
        loss_r, acc_r, mia_r = figures(retrained)
        theta_r = adapter.params(retrained)
        if theta_r.shape != theta_b.shape:
            raise ValueError(f"the retrained model has {theta_r.size} parameters, the "
                             f"original {theta_b.size}")
        v.retrained = True
        v.retrain_forget_loss = loss_r
        v.gap_closed = gap_closed(loss_b, loss_a, loss_r)
        v.distance_to_retrained = float(np.linalg.norm(theta_a - theta_r))
        v.retrain_membership_auc = mia_r
        v.retrain_test_accuracy = acc_r
        extra["original_distance_to_retrained"] = float(np.linalg.norm(theta_b - theta_r))
    return v, extra


@dataclass(frozen=True)
class UnlearnResult:
    """A new (or, with inplace, the same) model without the forget rows' influence, the
    Verification for UnlearningApplied, the method used, the seconds to apply (verification
    and retraining excluded), and details (Newton steps, certified bound, fine-tune stop
    reason, original_distance_to_retrained)."""

    model: Any
    verification: events_pb2.Verification
    method: int
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)
    trained_on: RowDigest | None = None


def _replayed(model: Any, forget: Rows, test: Rows | None, held_out: Rows | None,
              retrain: bool | Callable[[], Any], task: str | None,
              checkpoints: Checkpoints | None, rows: Any,
              load_rows: LoadRows | None) -> UnlearnResult:
    """unlearn(method="replay"): replay_forget on the hook, verified like the others."""
    if checkpoints is None or rows is None or load_rows is None:
        raise ValueError("method 'replay' needs checkpoints= (the trainer's Checkpoints hook), "
                         "rows= (the dataset rows to leave out) and load_rows= (keys -> x, y)")
    if checkpoints.model is not model:
        raise ValueError("the checkpoint hook holds another model: a replay restores into "
                         "the hook's model")
    if retrain is True:
        raise ValueError("retrain=True refits LinearModels only; pass a callable")
    before = copy.deepcopy(model)
    started = time.perf_counter()
    report = replay_forget(checkpoints, np.asarray(rows, dtype=np.int64), load_rows)
    seconds = time.perf_counter() - started
    verification, extra = _verify(before, model, forget, test, held_out, retrain or None,
                                  task or checkpoints.task)
    detail: dict[str, Any] = {"steps_replayed": report.steps_replayed,
                              "steps_skipped": report.steps_skipped,
                              "checkpoint_uri": report.checkpoint_uri,
                              "checkpoints_rewritten": report.checkpoints_rewritten, **extra}
    return UnlearnResult(model, verification, events_pb2.REPLAY, seconds, detail)


def unlearn(model: Any, forget: Rows, retain: Rows, *, test: Rows | None = None,
            held_out: Rows | None = None, method: int | str = "auto",
            retrain: bool | Callable[[], Any] = False, inplace: bool = False,
            newton_steps: int | str = "auto", tol: float = 0.05,
            trained_on: RowDigest | None = None, task: str | None = None,
            recipe: Recipe | None = None, checkpoints: Checkpoints | None = None,
            rows: Any = None, load_rows: LoadRows | None = None,
            **torch_options: Any) -> UnlearnResult:
    """Remove the influence of `forget` = (x, y) from `model`, trained on forget ∪ `retain`,
    and verify it. LinearModel: Newton removal (`newton_steps` an int, or "auto": further
    steps until ||∇J_R|| <= tol·||Σ_F ∇ℓ||); it is immutable, a new one is returned. torch
    nn.Module: `unlearn_torch` (options passed through); a copy unless `inplace`.
    `retrain`: True (LinearModel: refit from scratch on retain) or a callable returning the
    retrained model or parameters. `trained_on`: the digest of the training rows, checked
    and returned minus the forget rows (a LinearModel from `fit` carries its own).
    `recipe`: the trainer's objective (recipe.py); the target is its optimum without the
    rows, and retrain=True refits with it.
    method "replay" (exact, in place on the hook's model): `checkpoints` (the trainer's
    hook on `model`), `rows` (every dataset row to leave out: this request's and any
    forgotten before) and `load_rows(keys)` -> (x, y); `forget`, `retain`, `test` and
    `held_out` serve the verification. `Unlearner` chooses between replay and the rest."""
    chosen = parse_method(method)
    if chosen == events_pb2.PARTIAL_REPLAY:
        raise ValueError("PARTIAL_REPLAY is chosen on a budget by Unlearner(..., "
                         "checkpoints=, replay_budget=); unlearn runs method 'replay'")
    if chosen == events_pb2.REPLAY:
        return _replayed(model, forget, test, held_out, retrain, task, checkpoints, rows,
                         load_rows)
    if checkpoints is not None or rows is not None or load_rows is not None:
        raise TypeError("checkpoints, rows and load_rows are for method 'replay'")
    new: Any
    if isinstance(model, LinearModel):
        if torch_options:
            raise TypeError(f"options {', '.join(sorted(torch_options))} apply to torch "
                            "models only")
        if chosen == events_pb2.FINE_TUNE:
            raise ValueError("FINE_TUNE is for torch models; a LinearModel is convex and is "
                             "unlearned by Newton removal (method 'newton' or 'auto')")
        if task is not None and task != model.task:
            raise ValueError(f"task {task!r} does not match the model's {model.task!r}")
        if trained_on is not None:
            model = replace(model, trained_on=trained_on)
        steps, step_tol = (1, tol) if newton_steps == "auto" else (int(newton_steps), None)
        started = time.perf_counter()
        new, report = linear_forget(model, forget, retain, steps, step_tol, 10, recipe)
        seconds = time.perf_counter() - started
        detail: dict[str, Any] = {"newton_steps": report.steps,
                                  "residual_ratio": report.residual_ratio,
                                  "distance_bound": report.distance_bound,
                                  "training_gradient": report.training_gradient}
        used, digest, kind = events_pb2.NEWTON, new.trained_on, model.task
        if retrain is True:
            def refit() -> LinearModel:
                return LinearModel.fit(*retain, l2=new.l2, task=model.task)
            retrain_fn: Callable[[], Any] | None = refit
        else:
            retrain_fn = retrain or None
    else:
        _adapter_for(model)  # names an unsupported type before anything else
        if retrain is True:
            raise ValueError("retrain=True refits LinearModels only; for a torch model pass "
                             "a callable that trains it from scratch on the retained rows")
        kind = task or "classification"
        digest = None if trained_on is None else \
            trained_on.check_partition(pair(forget, "forget"), pair(retain, "retain"))
        started = time.perf_counter()
        new, used, detail = unlearn_torch(
            model, forget, retain, method=chosen, task=kind, newton_steps=newton_steps,
            tol=tol, held_out=held_out if held_out is not None else test, inplace=False,
            recipe=recipe, **torch_options)
        seconds = time.perf_counter() - started
        retrain_fn = retrain or None
    verification, extra = _verify(model, new, forget, test, held_out, retrain_fn, kind)
    detail.update(extra)
    if inplace and not isinstance(model, LinearModel):
        original: Any = model
        with torch_no_grad():
            for p, q in zip(original.parameters(), new.parameters(), strict=True):
                p.copy_(q)
        new = original
    return UnlearnResult(new, verification, used, seconds, detail, digest)
