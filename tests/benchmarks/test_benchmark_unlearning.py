"""Fast run of benchmarks/unlearning.py: the logistic-regression targets against retraining
hold, the no-op control fails them, and the deep / stream / cost figures are measured."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import REPO


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

    mlp_cases = [c for c, r in figures["mlp"].items() if isinstance(r, dict)]
    assert mlp_cases, figures["mlp"]  # the loop below checks at least one case
    for case, result in figures["mlp"].items():
        if not isinstance(result, dict):
            continue
        for name, row in result["methods"].items():
            loss_before, loss_after, loss_retrain = row["forget_loss"]
            assert loss_retrain > loss_before, (case, name)
            if name != "no-op (control)":
                assert loss_after > loss_before, (case, name)
                assert row["test_accuracy"][1] >= 0.9, (case, name)
                assert row["unlearn_s"] > 0 and row["retrain_s"] > 0

    stream = figures["stream"]
    assert [r["step"] for r in stream["requests"]] == [stream["steps"] // 3,
                                                       2 * stream["steps"] // 3]
    for request in stream["requests"]:
        assert request["rows"] > 0 and request["seconds"] > 0
        assert request["forget_loss_after"] > request["forget_loss_before"]
    end = stream["end_of_stream"]
    assert math.isfinite(end["gap_closed"]) and end["gap_closed"] > 0

    for cost in figures["cost"]:
        assert cost["retrain_s"] > 0 and cost["newton_1_step"]["unlearn_s"] > 0
