"""Exact unlearning by replay (producers/checkpoints.py, producers/unlearning/replay.py),
the auto choice with a budget, and the trainer's recipe as the unlearning target."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from headwater.producers.checkpoints import Checkpoints
from headwater.producers.unlearning import LinearModel, Unlearner, unlearn
from headwater.producers.unlearning.choice import choose_method
from headwater.producers.unlearning.recipe import Recipe
from headwater.producers.unlearning.replay import plan_replay, replay_forget, train_step
from headwater.v1 import events_pb2

RECIPE = Recipe(reduction="mean", weight_decay=1e-3, l2=1e-4)
N, STEPS, EVERY = 240, 90, 15


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: one thread is the fastest on a shared machine (and the same thread
    count for the trainer and its replay)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, 8, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    rng = np.random.default_rng(0)
    schedule = [rng.choice(N, 12, replace=False) for _ in range(STEPS)]
    return {"x": x, "y": y, "schedule": schedule}


def _fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                          weight_decay=RECIPE.weight_decay)
    return model, opt


def _train(data: dict, gone: np.ndarray, directory: Path | None = None
           ) -> tuple[torch.nn.Module, Checkpoints | None]:
    """The trainer: the logged schedule minus `gone`, a learning-rate drop at step 40."""
    model, opt = _fresh()
    hook = Checkpoints(directory, model, opt, every=EVERY, recipe=RECIPE) if directory else None
    for step, rows in enumerate(data["schedule"]):
        rows = rows[~np.isin(rows, gone)]
        if hook:
            hook.before_step(step)
        if step == 40:
            for group in opt.param_groups:
                group["lr"] = 0.03
        if len(rows):
            train_step(model, opt, data["x"][rows], data["y"][rows], recipe=RECIPE)
        if hook:
            hook.after_step(step, rows)
    return model, hook


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach()


def _late_rows(data: dict) -> np.ndarray:
    """Rows first used at step 50 or later (recent data)."""
    early = np.unique(np.concatenate(data["schedule"][:50]))
    late = np.setdiff1d(np.unique(np.concatenate(data["schedule"][50:])), early)
    assert len(late) >= 3
    return late[:3]


def test_replay_equals_retraining_from_that_point(data: dict, tmp_path: Path) -> None:
    model, hook = _train(data, np.zeros(0, np.int64), tmp_path)
    assert hook is not None
    forget = _late_rows(data)
    plan = plan_replay(hook, forget)
    first = hook.first_use(forget)
    assert plan.first_use == first and plan.checkpoint is not None
    assert plan.checkpoint.step == first // EVERY * EVERY  # the last one before first use
    assert plan.steps == STEPS - plan.checkpoint.step
    old_files = {s: c.path for s, c in hook.checkpoints.items() if s > plan.checkpoint.step}
    report = replay_forget(hook, forget, lambda k: (data["x"][k], data["y"][k]))
    retrained, _ = _train(data, forget)
    assert torch.equal(_flat(model), _flat(retrained))  # bit for bit, on CPU
    assert report.start_step == plan.checkpoint.step
    assert report.steps_replayed + report.steps_skipped == plan.steps
    assert report.rows_dropped == sum(int(np.isin(r, forget).sum())
                                      for r in data["schedule"])
    # checkpoints after the start held the rows: rewritten from the replayed state, old gone
    assert report.checkpoints_rewritten == len(old_files) > 0
    assert all(not p.exists() for p in old_files.values())
    assert all(c.path.exists() for c in hook.checkpoints.values())
    # and the trainer's learning rate is where the schedule left it
    assert [g["lr"] for g in hook.optimizer.param_groups] == [0.03]


def test_a_second_request_replays_from_rewritten_checkpoints(data: dict,
                                                             tmp_path: Path) -> None:
    model, hook = _train(data, np.zeros(0, np.int64), tmp_path)
    assert hook is not None
    load = lambda k: (data["x"][k], data["y"][k])  # noqa: E731
    first = data["schedule"][10][:2]
    replay_forget(hook, first, load)
    second = _late_rows(data)
    second = second[~np.isin(second, first)]
    replay_forget(hook, np.union1d(first, second), load, rows=second)
    retrained, _ = _train(data, np.union1d(first, second))
    assert torch.equal(_flat(model), _flat(retrained))


def test_a_restarted_trainer_reads_the_journal(data: dict, tmp_path: Path) -> None:
    model, hook = _train(data, np.zeros(0, np.int64), tmp_path)
    assert hook is not None
    again = Checkpoints(tmp_path, model, hook.optimizer, every=EVERY, recipe=RECIPE)
    assert sorted(again.steps) == list(range(STEPS))
    assert again.checkpoints == hook.checkpoints
    forget = _late_rows(data)
    replay_forget(again, forget, lambda k: (data["x"][k], data["y"][k]))
    retrained, _ = _train(data, forget)
    assert torch.equal(_flat(model), _flat(retrained))


def test_no_replay_without_a_use_or_a_checkpoint(data: dict, tmp_path: Path) -> None:
    model, opt = _fresh()
    hook = Checkpoints(tmp_path, model, opt, every=EVERY, recipe=RECIPE)
    hook.after_step(0, data["schedule"][0])  # a step logged before any checkpoint
    assert plan_replay(hook, np.array([N + 5])).reason == "no logged step used these rows"
    plan = plan_replay(hook, data["schedule"][0][:1])
    assert not plan.possible and "no checkpoint precedes step 0" in plan.reason
    with pytest.raises(ValueError, match="cannot replay: no checkpoint precedes"):
        replay_forget(hook, data["schedule"][0][:1], lambda k: (data["x"][k], data["y"][k]))
    hook.after_step(0, [1])  # a resumed trainer re-runs a step: the later entry wins
    assert hook.steps[0].rows.tolist() == [1]
    assert Checkpoints(tmp_path, model, opt).steps[0].rows.tolist() == [1]
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        hook.after_step(-1, [1])
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        Checkpoints(tmp_path / "b", model, opt, every=0)


def test_a_checkpoint_that_is_not_what_the_index_says_is_refused(data: dict,
                                                                 tmp_path: Path) -> None:
    _, hook = _train(data, np.zeros(0, np.int64), tmp_path)
    assert hook is not None
    hook.checkpoints[15].path.write_bytes(hook.checkpoints[30].path.read_bytes())
    forget = data["schedule"][16][:1]
    forget = forget if hook.first_use(forget) == 16 else data["schedule"][16][1:2]
    if hook.first_use(forget) != 16:
        pytest.skip("no row first used at step 16 in this schedule")
    with pytest.raises(ValueError, match="holds step 30, the index says 15"):
        replay_forget(hook, forget, lambda k: (data["x"][k], data["y"][k]))


def _request(method: int = 0) -> events_pb2.ForgetRequested:
    return events_pb2.ForgetRequested(request_id="fr-1", method=method)


def test_unlearner_replays_within_budget_and_records_why(data: dict, tmp_path: Path) -> None:
    model, hook = _train(data, np.zeros(0, np.int64), tmp_path)
    assert hook is not None
    forget = _late_rows(data)
    unlearner = Unlearner(model, data["x"], data["y"], checkpoints=hook, replay_budget=1e6,
                          held_out=(data["x"][:40], data["y"][:40]))
    outcome = unlearner(forget, _request())
    assert outcome.method == events_pb2.REPLAY
    assert outcome.reason.startswith("replay: ") and "within the budget" in outcome.reason
    assert outcome.steps_replayed > 0 and outcome.estimated_replay_steps >= outcome.steps_replayed
    assert outcome.checkpoint_uri.startswith("file://")
    v = outcome.verification
    assert v.forget_loss_after != v.forget_loss_before and v.parameter_distance > 0
    assert 0 <= v.membership_auc_before <= 1
    retrained, _ = _train(data, forget)
    assert torch.equal(_flat(model), _flat(retrained))
    event = events_pb2.UnlearningApplied()
    outcome.record(event)
    assert event.method == events_pb2.REPLAY and event.steps_replayed == outcome.steps_replayed
    assert event.method_reason == outcome.reason


def test_unlearner_goes_approximate_over_budget(data: dict, tmp_path: Path) -> None:
    model, hook = _train(data, np.zeros(0, np.int64), tmp_path)
    assert hook is not None
    unlearner = Unlearner(model, data["x"], data["y"], checkpoints=hook, replay_budget=0.0,
                          held_out=(data["x"][:40], data["y"][:40]))
    outcome = unlearner(_late_rows(data), _request())
    assert outcome.method in (events_pb2.NEWTON, events_pb2.FINE_TUNE)
    assert "over the budget of 0 s" in outcome.reason and outcome.steps_replayed == 0
    assert outcome.newton_steps >= 1
    if outcome.method == events_pb2.NEWTON:  # the record says what ran
        assert outcome.fine_tune_steps == 0
    else:
        assert outcome.fine_tune_steps > 0


def test_replay_refused_when_impossible(data: dict, tmp_path: Path) -> None:
    model, opt = _fresh()
    with pytest.raises(ValueError, match="no checkpoint hook"):
        Unlearner(model, data["x"], data["y"])(np.array([1]), _request(events_pb2.REPLAY))
    other, _ = _fresh()
    with pytest.raises(ValueError, match="holds another model"):
        Unlearner(other, data["x"], data["y"],
                  checkpoints=Checkpoints(tmp_path, model, opt))
    with pytest.raises(ValueError, match="method 'replay' needs checkpoints="):
        unlearn(model, (data["x"][:2], data["y"][:2]), (data["x"][2:], data["y"][2:]),
                method="replay")
    with pytest.raises(ValueError, match="PARTIAL_REPLAY is chosen on a budget"):
        unlearn(model, (data["x"][:2], data["y"][:2]), (data["x"][2:], data["y"][2:]),
                method="partial_replay")
    with pytest.raises(TypeError, match="are for method 'replay'"):
        unlearn(model, (data["x"][:2], data["y"][:2]), (data["x"][2:], data["y"][2:]),
                method="newton", rows=[0, 1])


def test_choose_method() -> None:
    auto = events_pb2.UNLEARNING_METHOD_UNSPECIFIED
    kw = {"replay_possible": True, "why_not": "", "estimated_steps": 10,
          "estimated_seconds": 2.0}
    assert choose_method(auto, budget_seconds=5.0, **kw).method == events_pb2.REPLAY
    over = choose_method(auto, budget_seconds=1.0, **kw)
    assert over.method == auto and "over the budget of 1 s" in over.reason
    assert "no checkpoint hook" in choose_method(auto, budget_seconds=None, **kw).reason
    assert choose_method(events_pb2.NEWTON, budget_seconds=5.0, **kw).reason == \
        "NEWTON requested"
    with pytest.raises(ValueError, match="no replay is possible: gone"):
        choose_method(events_pb2.REPLAY, budget_seconds=5.0,
                      **{**kw, "replay_possible": False, "why_not": "gone"})


def test_recipe() -> None:
    assert Recipe("mean", 1e-3, 1e-3).lam(100) == pytest.approx(0.2)
    assert Recipe("sum", 0.5).lam(100) == 0.5
    assert Recipe.from_config({"recipe": {"reduction": "sum", "l2": 2.0}}) == \
        Recipe("sum", 0.0, 2.0)
    with pytest.raises(ValueError, match="unknown recipe fields: decay"):
        Recipe.from_config({"decay": 1})
    with pytest.raises(ValueError, match="reduction must be one of mean, sum"):
        Recipe("median")
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        Recipe(weight_decay=-1.0)


def test_newton_targets_a_mean_loss_weight_decay_trainer() -> None:
    """A mean-loss + weight-decay trainer retrains to λ_R = n_R·wd: with its recipe Newton
    reaches that optimum; with the old fixed λ it misses it."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 5))
    y = (x @ rng.normal(size=5) + rng.normal(size=400) > 0).astype(float)
    recipe = Recipe("mean", weight_decay=0.05)
    model = LinearModel.fit(x, y, l2=recipe.lam(len(x)))
    gone = np.arange(len(x)) < 120
    forget, retain = (x[gone], y[gone]), (x[~gone], y[~gone])
    retrained = LinearModel.fit(*retain, l2=recipe.lam(int((~gone).sum())))
    original = np.linalg.norm(model.params - retrained.params)
    right = unlearn(model, forget, retain, recipe=recipe, retrain=True, newton_steps=4)
    fixed = unlearn(model, forget, retain, retrain=lambda: retrained)
    assert right.model.l2 == pytest.approx(recipe.lam(280))
    assert np.linalg.norm(right.model.params - retrained.params) <= 1e-6 * original
    assert 0.99 <= right.verification.gap_closed <= 1.01
    assert fixed.verification.distance_to_retrained > 0.05 * original
    with pytest.raises(ValueError, match="not the recipe's λ for 400 training rows"):
        unlearn(model, forget, retain, recipe=Recipe("sum", 0.05))


def test_kfac_newton_stops_at_the_target_and_names_unsupported_models(data: dict) -> None:
    from headwater.producers.unlearning.kfac import kfac_newton

    model, opt = _fresh()
    for rows in data["schedule"][:60]:
        train_step(model, opt, data["x"][rows], data["y"][rows], recipe=RECIPE)
    gone = np.zeros(N, dtype=bool)
    gone[:30] = True
    forget = (data["x"][:30], data["y"][:30])
    retain = (data["x"][30:], data["y"][30:])
    kw = {"task": "classification", "lam": RECIPE.lam(N), "lam_retained": RECIPE.lam(N - 30),
          "offset_scale": (N - 30) / N}
    with torch.no_grad():
        before = float(torch.nn.functional.cross_entropy(model(forget[0]), forget[1]))
    full, d_full = kfac_newton(model, forget, retain, target_loss=None, **kw)
    assert d_full["kfac_alpha"] == 1.0 and d_full["kfac_step_norm"] > 0
    assert d_full["kfac_forget_loss"] > before  # the step removes the rows' pull
    target = before + 0.25 * (d_full["kfac_forget_loss"] - before)
    capped, d_cap = kfac_newton(model, forget, retain, target_loss=target, **kw)
    assert d_cap["kfac_shortened"] and 0 < d_cap["kfac_alpha"] < 1
    assert d_cap["kfac_forget_loss"] <= target + 1e-9
    assert d_cap["kfac_forget_loss"] == pytest.approx(target, abs=1e-3)
    with torch.no_grad():  # the original is not touched
        assert float(torch.nn.functional.cross_entropy(model(forget[0]), forget[1])) == before
    conv = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.Flatten(),
                               torch.nn.Linear(12, 3))
    with pytest.raises(TypeError, match="also trains 0.weight, 0.bias"):
        kfac_newton(conv, (torch.randn(4, 1, 8), torch.zeros(4)),
                    (torch.randn(4, 1, 8), torch.zeros(4)), target_loss=None, **kw)


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("method_reason", "x" * 5000, "unlearning_applied.method_reason is longer than 4096"),
    ("checkpoint_uri", "file://" + "a" * 5000, "unlearning_applied.checkpoint_uri is longer"),
    ("estimated_replay_seconds", float("nan"), "estimated_replay_seconds must be a finite"),
    ("estimated_replay_seconds", -1.0, "estimated_replay_seconds must be a finite"),
    ("method", 7, "unlearning_applied.method is 7, not a known UnlearningMethod"),
])
def test_hostile_unlearning_applied_fields_are_refused(field: str, value: object,
                                                       reason: str) -> None:
    from headwater.producers.envelope import EnvelopeBuilder
    from headwater.producers.transports.base import Record
    from headwater.stream_processors.processors.decode import Accepted, Rejected, decode_record

    def record(**fields: object) -> Record:
        good: dict[str, object] = {
            "method": events_pb2.REPLAY, "method_reason": "replay: 3 logged steps",
            "steps_replayed": 3, "estimated_replay_steps": 3, "estimated_replay_seconds": 0.5,
            "checkpoint_uri": "file:///ckpt/step-0.pt"}
        applied = events_pb2.UnlearningApplied(
            request_id="fr-1", model_id="m", status=events_pb2.UnlearningApplied.APPLIED,
            **{**good, **fields})
        event = EnvelopeBuilder("r").wrap(applied)
        return Record(event.SerializeToString(deterministic=True))

    assert isinstance(decode_record(0, record()), Accepted)
    rejected = decode_record(0, record(**{field: value}))
    assert isinstance(rejected, Rejected) and reason in rejected.error


def test_rows_no_logged_step_used_are_not_unlearned(data: dict, tmp_path: Path) -> None:
    model, hook = _train(data, np.zeros(0, np.int64), tmp_path)
    assert hook is not None
    never = np.setdiff1d(np.arange(N), np.concatenate(data["schedule"]))
    assert len(never) > 0
    snapshot = _flat(model).clone()
    unlearner = Unlearner(model, data["x"], data["y"], checkpoints=hook,
                          held_out=(data["x"][:40], data["y"][:40]))
    outcome = unlearner(never[:2], _request())
    assert outcome.method == events_pb2.UNLEARNING_METHOD_UNSPECIFIED
    assert outcome.reason.startswith("nothing to remove: no logged step used these rows")
    assert torch.equal(_flat(model), snapshot) and outcome.verification.parameter_distance == 0
    assert set(never[:2]) <= set(unlearner.gone.tolist())


def test_a_replay_after_an_approximate_removal_removes_both_exactly(data: dict,
                                                                    tmp_path: Path) -> None:
    """The first request goes approximate (over budget); the second replays from a
    checkpoint that may predate the first one's correction, so the replay starts before
    both rows' first use: the end is the run without either."""
    model, hook = _train(data, np.zeros(0, np.int64), tmp_path)
    assert hook is not None
    late = _late_rows(data)
    first, second = late[:1], late[1:]
    if hook.first_use(first) < hook.first_use(second):  # the harder order: first used later
        first, second = late[-1:], late[:-1]
    unlearner = Unlearner(model, data["x"], data["y"], checkpoints=hook, replay_budget=0.0,
                          held_out=(data["x"][:40], data["y"][:40]))
    assert unlearner(first, _request()).method != events_pb2.REPLAY
    unlearner.replay_budget = 1e6
    outcome = unlearner(second, _request())
    assert outcome.method == events_pb2.REPLAY
    start = hook.latest_before(min(hook.first_use(first), hook.first_use(second)))
    assert start is not None and outcome.estimated_replay_steps == STEPS - start.step
    retrained, _ = _train(data, np.union1d(first, second))
    assert torch.equal(_flat(model), _flat(retrained))
    assert len(unlearner.approximate) == 0


def test_over_budget_a_partial_replay_then_an_exact_one(data: dict, tmp_path: Path) -> None:
    """Exact replay over budget: the earliest checkpoint after the rows' first use that fits
    (PARTIAL_REPLAY, approximate: not the retrained model); a later exact
    replay starts before those rows' first use and removes them exactly too."""
    model, hook = _train(data, np.zeros(0, np.int64), tmp_path)
    assert hook is not None
    forget = _late_rows(data)
    first = hook.first_use(forget)
    hook.replay_step_seconds = 1.0  # a known rate: one second a step
    exact = plan_replay(hook, forget)
    assert exact.checkpoint is not None
    budget = exact.steps - 1.0  # just over budget
    unlearner = Unlearner(model, data["x"], data["y"], checkpoints=hook, replay_budget=budget,
                          held_out=(data["x"][:40], data["y"][:40]))
    before = _flat(model).clone()
    retrained, _ = _train(data, forget)
    outcome = unlearner(forget, _request())
    start = min(s for s in hook.checkpoints if s > first)
    assert outcome.method == events_pb2.PARTIAL_REPLAY
    assert outcome.reason.startswith("partial replay (approximate): replay would take")
    assert f"from the checkpoint at step {start}" in outcome.reason
    assert outcome.steps_replayed <= STEPS - start
    assert outcome.estimated_replay_steps == exact.steps
    after = _flat(model)
    assert not torch.equal(after, before)  # changed, by replaying from `start`
    assert not torch.equal(after, _flat(retrained))  # approximate: quality is benchmarked
    assert set(forget) <= set(unlearner.approximate.tolist())
    unlearner.replay_budget = 1e6
    other = np.setdiff1d(data["schedule"][80], forget)[:1]
    assert unlearner(other, _request()).method == events_pb2.REPLAY
    both, _ = _train(data, np.union1d(forget, other))
    assert torch.equal(_flat(model), _flat(both))


def test_unlearn_by_replay_embedded(data: dict, tmp_path: Path) -> None:
    model, hook = _train(data, np.zeros(0, np.int64), tmp_path)
    assert hook is not None
    forget = _late_rows(data)
    keep = np.setdiff1d(np.arange(N), forget)
    retrained, _ = _train(data, forget)
    result = unlearn(model, (data["x"][forget], data["y"][forget]),
                     (data["x"][keep], data["y"][keep]), method="replay", checkpoints=hook,
                     rows=forget, load_rows=lambda k: (data["x"][k], data["y"][k]),
                     held_out=(data["x"][:40], data["y"][:40]), retrain=lambda: retrained)
    assert result.method == events_pb2.REPLAY and result.model is model
    assert result.detail["steps_replayed"] > 0 and result.seconds > 0
    v = result.verification
    assert v.retrained and v.distance_to_retrained == 0.0 and v.gap_closed == 1.0
    assert torch.equal(_flat(model), _flat(retrained))
