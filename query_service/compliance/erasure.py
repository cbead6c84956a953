"""An erasure's verification targets and its state (pure).

The trainer records figures when it applies a forget request (Verification); whether the
erasure counts as applied is decided here, by targets on those figures, never by the
trainer's own status alone. The thresholds are the SDK's quality targets against
retraining (`headwater.producers.unlearning.verification.RetrainTargets`), one definition:

- forget-set loss rose: forget_loss_after > forget_loss_before;
- matches retraining: gap_low <= gap_closed <= gap_high (needs a retrain check; overshoot
  is an error too);
- distance to retraining: distance_to_retrained <= distance_ratio x the original model's
  distance to the retrained one — not measurable from the log (the original's distance is
  not recorded), so reported as not measured;
- membership: |membership AUC - reference| <= membership_auc, the reference being the
  retrained model's AUC when measured, else 0.5 (the attack cannot tell forgotten rows
  from unseen);
- utility: test accuracy within accuracy_pp points of the retrained model's, or, without a
  retrain check, no more than accuracy_pp points below the accuracy before.

State: pending without an outcome; failed when the trainer reported failure or no measured
target is met; applied when every measured target is met and nothing reached was retained;
partially_applied otherwise (some target missed, nothing measured, or rows reached through
an aggregate were retained).
"""

from __future__ import annotations

from headwater.producers.unlearning.verification import RetrainTargets
from headwater.query_service.compliance.model import (
    Disposition,
    ErasureOutcome,
    TargetCheck,
    Verification,
)

TARGETS = RetrainTargets()
# outcomes that carry verification figures: the first measurement (APPLIED; ALREADY_APPLIED
# when nothing was left to remove) and the trainer's re-measurements at later versions
APPLIED = ("APPLIED", "ALREADY_APPLIED")
MEASURED = (*APPLIED, "REVERIFIED")


def measured_at(outcomes: list[ErasureOutcome], versions: list[str]
                ) -> tuple[ErasureOutcome | None, str]:
    """The outcome whose figures the report uses, and a note saying which version they are
    from and why: the newest measurement on `versions` (the reported version's lineage,
    root first, the reported one last), else the newest at all."""
    applied = [i for i, o in enumerate(outcomes) if o.status in APPLIED]
    # a re-verification counts only after the request was applied (one published before,
    # or without, an APPLIED outcome measures nothing the erasure did)
    measured = [o for o in outcomes[applied[0]:] if o.status in MEASURED] if applied else []
    if not measured:
        return None, "no verification figures recorded"
    reported = versions[-1] if versions else ""
    on_chain = [o for o in measured if o.new_version in versions]
    if not on_chain:
        at = measured[-1].new_version
        return measured[-1], f"measured at {at}, which is not on the reported version's lineage"
    # the latest version on the lineage; of two measurements there, the later one
    chosen = max(reversed(on_chain), key=lambda o: versions.index(o.new_version))
    first = measured[0].new_version
    if chosen.new_version == reported:
        if chosen.status == "REVERIFIED":
            return chosen, (f"measured at the reported version {reported}: re-verified by the "
                            f"trainer there (first measured at {first}; the before figures "
                            "are that first measurement's)")
        return chosen, "measured at the reported version"
    later = len(versions) - 1 - versions.index(chosen.new_version)
    return chosen, (f"measured at {chosen.new_version}; the report covers {reported}, "
                    f"{later} version(s) later, trained without the forgotten rows but not "
                    "re-verified there (the trainer re-verifies only when it records a "
                    "version and calls UnlearningListener.reverify)")


def targets(v: Verification, t: RetrainTargets = TARGETS) -> list[TargetCheck]:
    """The targets on one outcome's figures (met None: not measured)."""
    out = []
    before, after = v.forget_loss_before, v.forget_loss_after
    out.append(TargetCheck(
        target="forget-set loss rose", rule="forget_loss_after > forget_loss_before",
        value=None if before is None or after is None else after - before,
        met=None if before is None or after is None else after > before))
    gap = v.gap_closed if v.retrained else None
    out.append(TargetCheck(
        target="matches retraining", rule=f"{t.gap_low} <= gap_closed <= {t.gap_high} "
                                          "(needs a retrain check)",
        value=gap, met=None if gap is None else t.gap_low <= gap <= t.gap_high))
    out.append(TargetCheck(
        target="distance to retraining",
        rule=f"distance_to_retrained <= {t.distance_ratio} x the original's distance (not "
             "recorded, so not measurable here)",
        value=v.distance_to_retrained if v.retrained else None, met=None))
    auc = v.membership_auc
    reference = v.retrain_membership_auc if v.retrained and v.retrain_membership_auc \
        is not None else 0.5
    out.append(TargetCheck(
        target="membership attack at the reference",
        rule=f"|membership_auc - {reference:.3f}| <= {t.membership_auc}",
        value=auc, met=None if auc is None else abs(auc - reference) <= t.membership_auc))
    out.append(_utility(v, t))
    return out


def _utility(v: Verification, t: RetrainTargets) -> TargetCheck:
    acc, points = v.test_accuracy_after, t.accuracy_pp / 100
    if v.retrained and v.retrain_test_accuracy is not None:
        ref = v.retrain_test_accuracy
        return TargetCheck(target="utility kept",
                           rule=f"|test_accuracy_after - {ref:.4f}| <= {points} "
                                "(the retrained model's)",
                           value=acc, met=None if acc is None else abs(acc - ref) <= points)
    ref = v.test_accuracy_before
    shown = "unmeasured" if ref is None else f"{ref:.4f}"
    return TargetCheck(target="utility kept",
                       rule=f"test_accuracy_after >= {shown} - {points} (the accuracy before)",
                       value=acc,
                       met=None if acc is None or ref is None else acc >= ref - points)


def state(statuses: list[str], checks: list[TargetCheck], dispositions: list[Disposition]
          ) -> tuple[str, str]:
    """(state, why) from the trainer's statuses, the targets and the dispositions."""
    if not statuses:
        return "pending", "no outcome recorded yet"
    if not set(statuses) & set(APPLIED):  # a REVERIFIED follows an APPLIED
        return "failed", ("the trainer reported failure" if "FAILED" in statuses else
                          "no outcome applied the request (a re-verification alone does not)")
    measured = [c for c in checks if c.met is not None]
    missed = [c.target for c in measured if not c.met]
    retained = [d for d in dispositions if d.status.startswith("retained") and d.count and
                d.item in ("training_rows", "aggregate_dependencies")]
    if measured and len(missed) == len(measured):
        return "failed", f"no verification target met ({', '.join(missed)})"
    reasons = []
    if not measured:
        reasons.append("no verification target measured")
    if missed:
        reasons.append(f"target(s) missed: {', '.join(missed)}")
    reasons += [f"{d.count} {d.item.replace('_', ' ')} retained" for d in retained]
    if reasons:
        return "partially_applied", "; ".join(reasons)
    return "applied", "every measured target met and nothing reached was retained"
