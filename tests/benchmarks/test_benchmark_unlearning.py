"""Fast run of benchmarks/unlearning.py: the logistic-regression targets against retraining
hold, the no-op control fails them, and the deep / stream / cost figures are measured."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from conftest import REPO
from headwater.producers.unlearning.finetune import STATIONARY, TRAINED


def test_unlearning_benchmark_fast() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "unlearning.py"), "--fast", "--json"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    figures = json.loads(done.stdout)

    logreg = figures["logreg"]
    assert set(logreg) >= {"forget one hospital of two", "forget 5% random rows"}
    for case in ("forget one hospital of two", "forget 5% random rows"):
        rows = logreg[case]["methods"]
        auto = rows["newton, auto steps"]
        assert 0.9 <= auto["gap_closed"] <= 1.1, (case, auto)
        assert auto["distance_ratio"] <= 0.10, (case, auto)
        assert abs(auto["accuracy_vs_retrain_pp"]) <= 0.5, (case, auto)
        mia = auto["membership_auc"]
        assert abs(mia[1] - mia[2]) <= 0.05, (case, auto)
        assert auto["targets_met"] and auto["method"] == "NEWTON"
        noop = rows["no-op (control)"]
        assert noop["gap_closed"] == 0.0 and not noop["targets_met"]
    # one source of two is half the data: it takes more than one Newton step
    assert logreg["forget one hospital of two"]["methods"]["newton, auto steps"][
        "newton_steps"] > 1

    # the trainer's own recipe: convex binary and multiclass meet the targets
    for case in (figures["logreg_recipe"], figures["softmax"]):
        right = case["methods"]["newton auto, trainer's recipe"]
        assert right["targets_met"], right["failures"]
        fixed = [r for name, r in case["methods"].items() if "fixed" in name]
        assert fixed and not fixed[0]["targets_met"]  # a fixed λ misses the recipe's optimum

    mlp_cases = [c for c, r in figures["mlp"].items() if isinstance(r, dict)]
    assert mlp_cases, figures["mlp"]  # the loop below checks at least one case
    for case, result in figures["mlp"].items():
        if not isinstance(result, dict):
            continue
        assert {"NegGrad+ (baseline)", "SCRUB (baseline)",
                "full-network K-FAC Newton"} <= set(result["methods"])
        spread = result["reference_spread"]  # retrained from other initialisations
        assert len(spread["gaps"]) == len(spread["seeds"]) == 4
        assert all(math.isfinite(g) and g > 0 for g in spread["gaps"]), spread
        assert math.isfinite(spread["auto_gap_vs_mean_retrain"])
        hooked = result["methods"]["auto with checkpoint hook"]  # replay within the budget
        assert hooked["method"] == "REPLAY" and hooked["distance_ratio"] <= 1e-6
        assert hooked["detail"]["method_reason"].startswith("replay: ")
        partial = result["methods"]["auto with hook, budget 34% of the replay"]
        assert partial["method"] == "PARTIAL_REPLAY"  # over budget: from a later checkpoint
        assert partial["detail"]["method_reason"].startswith("partial replay (approximate)")
        assert 0 < partial["gap_closed"] <= 1.3
        for name, row in result["methods"].items():
            loss_before, loss_after, loss_retrain = row["forget_loss"]
            assert loss_retrain > loss_before, (case, name)
            assert row["test_accuracy"][1] >= 0.9, (case, name)
            if name in ("auto: K-FAC Newton + retained descent", "full-network K-FAC Newton"):
                assert loss_after > loss_before, (case, name)
                assert row["gap_closed"] <= 1.3, (case, name)  # never a large overshoot
                assert row["unlearn_s"] > 0 and row["retrain_s"] > 0
            if name == "auto: K-FAC Newton + retained descent":  # the default without a hook
                assert row["method"] == "FINE_TUNE" and row["detail"]["descent_steps"] > 0
                assert 0.5 <= row["gap_closed"] <= 1.3, (case, row)
                assert abs(row["accuracy_vs_retrain_pp"]) <= 1.0, (case, row)
                assert abs(row["membership_auc"][1] - row["membership_auc"][2]) <= 0.05
            detail = row.get("detail", {})
            if "fine_tune_steps" in detail:  # the record says what ran
                assert (row["method"] == "FINE_TUNE") == (detail["fine_tune_steps"] > 0) or \
                    name == "fine-tune only"

    for case, rules in figures["descent_rules"].items():  # candidate stopping rules
        auto = figures["mlp"][case]["methods"]["auto: K-FAC Newton + retained descent"]
        # the traced descents are auto's own: the default rule lands where auto does
        assert rules["gaps"]["meet (default)"] == pytest.approx(auto["gap_closed"], abs=1e-3)
        assert rules["meeting_step"] == auto["detail"]["descent_steps"]
        assert len(rules["gaps"]) == 11
        assert all(v is None or math.isfinite(v) for v in rules["gaps"].values())

    for case, trace in figures["descent_trace"].items():  # auto's descents, not stopped
        rows = trace["trace"]
        assert rows[0]["stop"] == "the two descents met", (case, rows[0])
        assert [r["steps"] for r in rows[1:]] == [240, 480]
        assert all(r["stop"] == "not stopped" for r in rows[1:])
        for row in rows:  # the descents raise the forget loss, as retraining does
            assert min(row["from_newton"], row["from_original"]) > trace["forget_loss_before"]

    stream = figures["stream"]
    replay = stream["methods"]["replay"]
    assert replay["distance_over_norm"] <= 1e-5  # exact: the re-run without the rows
    assert [r["step"] for r in replay["requests"]] == [stream["steps"] // 3,
                                                       2 * stream["steps"] // 3]
    for request in replay["requests"]:
        assert request["method"] == "REPLAY" and request["steps_replayed"] > 0
        assert request["estimated_steps"] >= request["steps_replayed"]
    approx = stream["methods"]["approximate (auto)"]
    assert math.isfinite(approx["gap_closed"]) and approx["gap_closed"] > 0
    for request in approx["requests"]:
        assert request["rows"] > 0 and request["seconds"] > 0
        assert request["forget_loss_after"] > request["forget_loss_before"]
        # mid-stream the model is far from a stationary point: the last layer's step alone
        assert request["training_gradient_norm"] > STATIONARY * request["forget_gradient_norm"]
        assert request["stationarity"] > TRAINED
        assert request["method"] == "NEWTON" and request["fine_tune_steps"] == 0
    assert "approximate, descent forced (not the default)" in stream["methods"]
    reversal = stream["methods"]["logged-step reversal (candidate, not the default)"]
    assert [r["method"] for r in reversal["requests"]] == ["REVERSAL", "REVERSAL"]
    assert math.isfinite(reversal["gap_closed"]) and reversal["parameter_distance"] > 0

    schedules = figures["stream_schedules"]  # the approximate methods in expectation
    assert schedules["schedules"] >= 2 and len(schedules["rerun_noise_gaps"]) == 4
    assert schedules["rerun_change_sd"] > 0
    for name in ("approximate (auto)", "logged-step reversal (candidate)",
                 "unrolled removal (candidate)"):
        row = schedules["methods"][name]
        assert len(row["gaps"]) == schedules["schedules"] and math.isfinite(row["gap_of_means"])
        assert math.isfinite(row["change_mean"]) and row["change_se"] > 0
        assert row["gap_of_means_se"] > 0  # how well the schedules resolve the gap
    # the diagnosis: how far the re-run is from the dropped-only model, against how far
    # re-runs on other sampler seeds are from each other (pairs of schedules)
    k = schedules["schedules"]
    assert len(schedules["distance_dropped_rerun"]) == k
    assert len(schedules["distance_rerun_rerun"]) == k * (k - 1) // 2
    assert all(0 < v < 3 * schedules["param_norm"] for v in
               schedules["distance_dropped_rerun"] + schedules["distance_rerun_rerun"])
    # the first schedule is the stream case's own: the same gap
    assert math.isclose(schedules["methods"]["approximate (auto)"]["gaps"][0],
                        approx["gap_closed"], rel_tol=1e-6)

    timing = figures["request_time"]  # the writer request alone: at the request, at the end
    assert timing["request_step"] == 2 * timing["steps"] // 3 and timing["rows"] > 0
    for end in ("after the request", "end of the stream"):
        rerun = timing[end]["re-run"]
        assert rerun["move_mean"] > 0 and rerun["ratio_to_rerun"] == 1.0  # removal raises it
        for name in ("approximate (auto)", "unrolled removal (candidate)"):
            row = timing[end][name]
            assert row["move_mean"] > 0 and row["move_se"] > 0 and row["ratio_se"] >= 0

    for cost in figures["replay_cost"]:
        assert 0 < cost["steps_replayed"] < cost["steps"]  # recent rows: a part of the run
        assert cost["replay_s"] > 0 and cost["rerun_s"] > 0

    for cost in figures["cost"]:
        assert cost["retrain_s"] > 0 and cost["newton_1_step"]["unlearn_s"] > 0


def test_unlearning_benchmark_only_runs_the_named_parts() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "unlearning.py"), "--json",
         "--only", "cost", "--cost-rows", "2000", "--repeats", "1"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    assert set(json.loads(done.stdout)) == {"cost"}
    bad = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "unlearning.py"), "--only", "mlp,nope"],
        capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown part(s) nope" in bad.stderr
