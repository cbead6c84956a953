"""Exact unlearning by replay: restore the checkpoint of the last state before the rows were
first used, then run the logged steps again without them (docs/unlearning.md).

Before its first use a row has not touched the parameters, so the trajectory up to that
checkpoint is the one a run without the row would have taken; from there the replay runs
the same steps (same batches minus the forgotten rows, same learning rates, the optimiser
state restored with the model) through the trainer's own step. The result is the model
retraining-from-that-point gives, bit for bit when the step is deterministic (CPU; dropout
or nondeterministic GPU kernels make it equal up to that noise only). A step left with no
rows is skipped, as a run without the rows would have skipped it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from headwater.producers.unlearning.recipe import Recipe
from headwater.producers.unlearning.verification import torch_losses

if TYPE_CHECKING:
    import torch

    from headwater.producers.checkpoints import Checkpoint, Checkpoints

LoadRows = Callable[[np.ndarray], tuple[Any, Any]]  # dataset rows -> (x, y) in batch order
Step = Callable[[Any, Any, Any, Any], Any]  # (model, optimizer, x, y) -> loss


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, *, recipe: Recipe, task: str = "classification") -> float:
    """One step of the recipe: the per-row losses reduced (mean or sum) plus l2/2·|θ|²,
    backward, `optimizer.step()` (coupled weight decay is the optimiser's own). The trainer
    and the replay both call this, so both take the same step."""
    losses = torch_losses(model(x), y, task)
    loss = losses.mean() if recipe.reduction == "mean" else losses.sum()
    if recipe.l2:
        loss = loss + recipe.l2 / 2 * sum((p ** 2).sum() for p in model.parameters()
                                         if p.requires_grad)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay of `rows` would cost, before it runs: the first logged step that used
    them, the checkpoint it would restore, the logged steps from there on, and the seconds
    that many steps took in training (mean step time × steps). `reason` says why no
    replay is possible when `checkpoint` is None."""

    first_use: int | None
    checkpoint: Checkpoint | None
    steps: int
    estimated_seconds: float
    reason: str = ""

    @property
    def possible(self) -> bool:
        return self.checkpoint is not None


def plan_replay(hook: Checkpoints, rows: np.ndarray) -> ReplayPlan:
    """The replay plan for forgetting `rows` (dataset row indices)."""
    first = hook.first_use(np.asarray(rows, dtype=np.int64))
    if first is None:
        return ReplayPlan(None, None, 0, 0.0, "no logged step used these rows")
    checkpoint = hook.latest_before(first)
    if checkpoint is None:
        return ReplayPlan(first, None, 0, 0.0, f"no checkpoint precedes step {first}, the "
                          "rows' first use")
    steps = sum(1 for s in hook.steps if s >= checkpoint.step)
    return ReplayPlan(first, checkpoint, steps, steps * hook.seconds_per_step())


def plan_partial(hook: Checkpoints, rows: np.ndarray, budget_seconds: float) -> ReplayPlan:
    """When the exact replay is over budget: the earliest checkpoint *after* the rows' first
    use whose remaining steps fit `budget_seconds`. Replaying from there is approximate —
    the rows' influence up to that checkpoint is not removed, only decays over the replayed
    steps — and is recorded as PARTIAL_REPLAY. `checkpoint` None (with the reason) when no
    checkpoint after the first use fits."""
    first = hook.first_use(np.asarray(rows, dtype=np.int64))
    if first is None:
        return ReplayPlan(None, None, 0, 0.0, "no logged step used these rows")
    rate = hook.seconds_per_step()
    for step in sorted(s for s in hook.checkpoints if s > first):
        steps = sum(1 for s in hook.steps if s >= step)
        if steps * rate <= budget_seconds:
            return ReplayPlan(first, hook.checkpoints[step], steps, steps * rate)
    return ReplayPlan(first, None, 0, 0.0, "no checkpoint after the rows' first use fits the "
                      "budget")


@dataclass(frozen=True)
class ReplayReport:
    """What a replay did: the checkpoint restored, the steps run again, the steps skipped
    (no rows left), the row uses dropped from batches, the checkpoints rewritten, seconds."""

    checkpoint_uri: str
    start_step: int
    steps_replayed: int
    steps_skipped: int
    rows_dropped: int
    checkpoints_rewritten: int
    seconds: float


def replay_forget(hook: Checkpoints, forgotten: np.ndarray, load_rows: LoadRows, *,
                  rows: np.ndarray | None = None, step: Step | None = None,
                  start: Checkpoint | None = None) -> ReplayReport:
    """Restore the checkpoint before the first use of `rows` (default: `forgotten`) into the
    hook's model and optimiser and replay every logged step since without any `forgotten`
    row (all rows forgotten so far), in place. `load_rows(keys)` returns the (x, y) of those
    dataset rows in that order; `step(model, optimizer, x, y)` defaults to `train_step` with
    the hook's recipe. Checkpoints the replay passes are written again from the replayed
    state (the old files held the forgotten rows' influence and are deleted). Raises
    ValueError naming why when no replay is possible. `start` (a `plan_partial`
    checkpoint) replays from there instead: approximate when it follows the first use."""
    forgotten = np.asarray(forgotten, dtype=np.int64)
    target = forgotten if rows is None else np.asarray(rows, dtype=np.int64)
    plan = plan_replay(hook, target)
    if start is not None:
        if hook.checkpoints.get(start.step) != start:
            raise ValueError(f"cannot replay: {start.uri} is not in the hook's index")
        plan = ReplayPlan(plan.first_use, start, sum(1 for s in hook.steps if s >= start.step),
                          0.0)
    if plan.checkpoint is None:
        raise ValueError(f"cannot replay: {plan.reason}")
    if step is None:
        step = partial(train_step, recipe=hook.recipe, task=hook.task)
    started = time.perf_counter()
    first = plan.checkpoint.step
    current = [float(g["lr"]) for g in hook.optimizer.param_groups]
    hook.restore(plan.checkpoint)
    replayed = skipped = dropped = rewritten = 0
    for s in sorted(k for k in hook.steps if k >= first):
        if s != first and s in hook.checkpoints:
            hook.save(s, tag=f"-replayed-{time.time_ns()}")
            rewritten += 1
        logged = hook.steps[s]
        keep = ~np.isin(logged.rows, forgotten)
        dropped += int((~keep).sum())
        if not keep.any():
            skipped += 1
            continue
        if len(logged.lrs) != len(hook.optimizer.param_groups):
            raise ValueError(f"step {s} logged {len(logged.lrs)} parameter groups; the "
                             f"optimiser has {len(hook.optimizer.param_groups)}")
        for group, lr in zip(hook.optimizer.param_groups, logged.lrs, strict=True):
            group["lr"] = lr
        x, y = load_rows(logged.rows[keep])
        step(hook.model, hook.optimizer, x, y)
        replayed += 1
    for group, lr in zip(hook.optimizer.param_groups, current, strict=True):
        group["lr"] = lr  # the trainer's schedule goes on from where it was
    seconds = time.perf_counter() - started
    hook.replay_step_seconds = seconds / max(replayed + skipped, 1)  # the next estimate's rate
    return ReplayReport(plan.checkpoint.uri, first, replayed, skipped, dropped, rewritten,
                        seconds)
