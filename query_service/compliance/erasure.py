"""An erasure's verification targets and its state (pure).

The trainer records figures when it applies a forget request (Verification); whether the
erasure counts as applied is decided here, by targets on those figures, never by the
trainer's own status alone:

- forget-set loss rose: forget_loss_after > forget_loss_before (the model fits the
  forgotten rows less than before);
- matches retraining: with a retrain check, 0.5 <= gap_closed <= 1.5 (the forget-set loss
  moved half to one and a half times as far as retraining without the rows moves it;
  overshoot is an error too);
- membership: |membership AUC - reference| <= 0.05, the reference being the retrained
  model's AUC when measured, else 0.5 (the attack cannot tell forgotten rows from unseen);
- utility kept: test accuracy after >= the reference - 0.05, the reference being the
  retrained model's accuracy when measured, else the accuracy before.

State: pending without an outcome; failed when the trainer reported failure or no measured
target is met; applied when every measured target is met and nothing reached was retained;
partially_applied otherwise (some target missed, nothing measured, or rows reached through
an aggregate were retained).
"""

from __future__ import annotations

from headwater.query_service.compliance.model import Disposition, TargetCheck, Verification

GAP_RANGE = (0.5, 1.5)
AUC_TOLERANCE = 0.05
ACCURACY_TOLERANCE = 0.05


def targets(v: Verification) -> list[TargetCheck]:
    """The four targets on one outcome's figures."""
    out = []
    before, after = v.forget_loss_before, v.forget_loss_after
    out.append(TargetCheck(
        target="forget-set loss rose", rule="forget_loss_after > forget_loss_before",
        value=None if before is None or after is None else after - before,
        met=None if before is None or after is None else after > before))
    gap = v.gap_closed if v.retrained else None
    out.append(TargetCheck(
        target="matches retraining", rule=f"{GAP_RANGE[0]} <= gap_closed <= {GAP_RANGE[1]} "
                                          "(needs a retrain check)",
        value=gap, met=None if gap is None else GAP_RANGE[0] <= gap <= GAP_RANGE[1]))
    auc = v.membership_auc
    reference = v.retrain_membership_auc if v.retrained and v.retrain_membership_auc \
        is not None else 0.5
    out.append(TargetCheck(
        target="membership attack at chance", rule=f"|membership_auc - {reference:.3f}| <= "
                                                   f"{AUC_TOLERANCE}",
        value=auc, met=None if auc is None else abs(auc - reference) <= AUC_TOLERANCE))
    acc = v.test_accuracy_after
    ref_acc = v.retrain_test_accuracy if v.retrained and v.retrain_test_accuracy is not None \
        else v.test_accuracy_before
    shown = "unmeasured" if ref_acc is None else f"{ref_acc:.3f}"
    out.append(TargetCheck(
        target="utility kept", rule=f"test_accuracy_after >= {shown} - {ACCURACY_TOLERANCE}",
        value=acc, met=None if acc is None or ref_acc is None else
        acc >= ref_acc - ACCURACY_TOLERANCE))
    return out


def state(statuses: list[str], checks: list[TargetCheck], dispositions: list[Disposition]
          ) -> tuple[str, str]:
    """(state, why) from the trainer's statuses, the targets and the dispositions."""
    if not statuses:
        return "pending", "no outcome recorded yet"
    if not set(statuses) & {"APPLIED", "ALREADY_APPLIED"}:
        return "failed", "the trainer reported failure"
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
