"""Issue 23, item 3: an erasure's state is decided by its verification targets (the SDK's
RetrainTargets thresholds) and what was retained, never by the trainer's status alone."""

from __future__ import annotations

from headwater.query_service.compliance.erasure import TARGETS, state, targets
from headwater.query_service.compliance.model import Disposition, Verification

NONE = dict.fromkeys(("forget_loss_before", "forget_loss_after", "test_accuracy_before",
                      "test_accuracy_after", "membership_auc", "parameter_distance",
                      "retrain_forget_loss", "gap_closed", "distance_to_retrained",
                      "retrain_membership_auc", "retrain_test_accuracy",
                      "membership_auc_before"))


def _v(**figures) -> Verification:
    return Verification(**{**NONE, "retrained": False, **figures})


GOOD = dict(forget_loss_before=0.2, forget_loss_after=0.5, test_accuracy_before=0.9,
            test_accuracy_after=0.892, membership_auc=0.52, retrained=True,
            retrain_forget_loss=0.45, gap_closed=1.05, retrain_membership_auc=0.5,
            retrain_test_accuracy=0.89, distance_to_retrained=0.3)
ROWS = Disposition(item="training_rows", count=10, status="removed", detail="")
AGG = Disposition(item="aggregate_dependencies", count=7, status="retained: not recomputed",
                  detail="")


def test_the_thresholds_are_the_sdks() -> None:
    assert (TARGETS.gap_low, TARGETS.gap_high) == (0.9, 1.1)
    checks = {c.target: c for c in targets(_v(**GOOD))}
    assert f"{TARGETS.gap_low} <= gap_closed <= {TARGETS.gap_high}" in \
        checks["matches retraining"].rule


def test_all_measured_targets_met_and_nothing_retained_is_applied() -> None:
    checks = targets(_v(**GOOD))
    assert [c.met for c in checks] == [True, True, None, True, True]  # distance: unrecorded
    assert state(["APPLIED"], checks, [ROWS])[0] == "applied"


def test_retained_aggregates_make_it_partial() -> None:
    found, why = state(["APPLIED"], targets(_v(**GOOD)), [ROWS, AGG])
    assert found == "partially_applied" and "7 aggregate dependencies retained" in why


def test_missed_targets_decide_not_the_trainers_status() -> None:
    overshoot = targets(_v(**{**GOOD, "gap_closed": 1.4}))
    assert state(["APPLIED"], overshoot, [ROWS]) == (
        "partially_applied", "target(s) missed: matches retraining")
    utility = targets(_v(**{**GOOD, "test_accuracy_after": 0.85}))  # 4 points off
    assert state(["APPLIED"], utility, [ROWS])[1] == "target(s) missed: utility kept"
    nothing = targets(_v(**{**GOOD, "forget_loss_after": 0.1, "gap_closed": -0.5,
                            "membership_auc": 0.9, "test_accuracy_after": 0.5}))
    assert state(["APPLIED"], nothing, [ROWS])[0] == "failed"


def test_unmeasured_is_never_applied_and_failure_and_pending_stay() -> None:
    checks = targets(_v())
    assert all(c.met is None for c in checks)
    assert state(["APPLIED"], checks, [ROWS]) == ("partially_applied",
                                                  "no verification target measured")
    assert state(["FAILED"], checks, [ROWS])[0] == "failed"
    assert state([], [], [])[0] == "pending"


def test_without_retraining_the_references_are_chance_and_the_accuracy_before() -> None:
    checks = targets(_v(forget_loss_before=0.2, forget_loss_after=0.3, membership_auc=0.58,
                        test_accuracy_before=0.9, test_accuracy_after=0.897))
    rose, retrain, distance, membership, utility = checks
    assert rose.met and retrain.met is None and distance.met is None
    assert membership.met is False and "0.500" in membership.rule
    assert utility.met is True and "0.9000" in utility.rule
