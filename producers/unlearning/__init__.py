"""Unlearning where the model lives: remove the influence of training rows, then verify it.

    result = unlearn(model, forget=(x_f, y_f), retain=(x_r, y_r), test=(x_t, y_t))
    result.model, result.method, result.verification, result.seconds

Convex models (`LinearModel`) and the last layer of torch models get an influence/Newton
correction θ ← θ + H_R⁻¹ Σ_{i∈F} ∇ℓ_i(θ), computed from the forget rows themselves; other
torch parameters get a bounded corrective fine-tune (ascent on the forget rows, descent on
retained rows, stopped at the held-out loss level). `verify` fills the
`headwater.v1.Verification` recorded with every request. The maths: docs/unlearning.md.
NumPy throughout; torch is imported only when a torch model is passed.

A trainer with the checkpoint hook (`headwater.producers.checkpoints.Checkpoints`) can
unlearn exactly, by replay: restore the checkpoint before the rows' first use and replay
the logged steps without them (`replay_forget`); `Unlearner` chooses replay when its
estimated cost is within a budget (`choose_method`), else the approximate method.

Layout: rows.py (row pairs, helpers), digests.py (training-row digests, methods),
recipe.py (the trainer's objective), linear.py (LinearModel and its loss families),
newton.py (the Newton removal), verification.py (verification maths, model adapters),
finetune.py (torch: last-layer Newton and the bounded fine-tune), kfac.py (full-network
K-FAC Newton), baselines.py (NegGrad+, SCRUB), replay.py (exact replay), choice.py (auto
with a budget), api.py (`unlearn`, `verify`), listener.py (the trainer-side listener
applying ForgetRequested events). Names are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headwater.lazy import lazy_exports

_EXPORTS = {
    "Rows": "headwater.producers.unlearning.rows",
    "RowsNotInTraining": "headwater.producers.unlearning.digests",
    "RowDigest": "headwater.producers.unlearning.digests",
    "parse_method": "headwater.producers.unlearning.digests",
    "row_hashes": "headwater.producers.unlearning.digests",
    "LinearModel": "headwater.producers.unlearning.linear",
    "NewtonReport": "headwater.producers.unlearning.newton",
    "newton_forget": "headwater.producers.unlearning.newton",
    "membership_auc": "headwater.producers.unlearning.verification",
    "gap_closed": "headwater.producers.unlearning.verification",
    "RetrainTargets": "headwater.producers.unlearning.verification",
    "Recipe": "headwater.producers.unlearning.recipe",
    "ReplayPlan": "headwater.producers.unlearning.replay",
    "ReplayReport": "headwater.producers.unlearning.replay",
    "plan_replay": "headwater.producers.unlearning.replay",
    "replay_forget": "headwater.producers.unlearning.replay",
    "train_step": "headwater.producers.unlearning.replay",
    "Choice": "headwater.producers.unlearning.choice",
    "choose_method": "headwater.producers.unlearning.choice",
    "FineTuneBound": "headwater.producers.unlearning.finetune",
    "unlearn_torch": "headwater.producers.unlearning.finetune",
    "UnlearnResult": "headwater.producers.unlearning.api",
    "unlearn": "headwater.producers.unlearning.api",
    "verify": "headwater.producers.unlearning.api",
    "Outcome": "headwater.producers.unlearning.listener",
    "Unlearner": "headwater.producers.unlearning.listener",
    "UnlearningListener": "headwater.producers.unlearning.listener",
    "UNLEARNER_TOKEN_ENV": "headwater.producers.unlearning.listener",
    "UNLEARNER_TOKEN_FILE_ENV": "headwater.producers.unlearning.listener",
    "outcomes_producer_id": "headwater.producers.unlearning.listener",
}
__all__ = [
    "Choice",
    "FineTuneBound",
    "LinearModel",
    "NewtonReport",
    "Outcome",
    "Recipe",
    "ReplayPlan",
    "ReplayReport",
    "RetrainTargets",
    "RowDigest",
    "Rows",
    "RowsNotInTraining",
    "UNLEARNER_TOKEN_ENV",
    "UNLEARNER_TOKEN_FILE_ENV",
    "UnlearnResult",
    "Unlearner",
    "UnlearningListener",
    "choose_method",
    "gap_closed",
    "membership_auc",
    "newton_forget",
    "outcomes_producer_id",
    "parse_method",
    "plan_replay",
    "replay_forget",
    "row_hashes",
    "train_step",
    "unlearn",
    "unlearn_torch",
    "verify",
]

if TYPE_CHECKING:
    from headwater.producers.unlearning.api import UnlearnResult, unlearn, verify
    from headwater.producers.unlearning.choice import Choice, choose_method
    from headwater.producers.unlearning.digests import (
        RowDigest,
        RowsNotInTraining,
        parse_method,
        row_hashes,
    )
    from headwater.producers.unlearning.finetune import FineTuneBound, unlearn_torch
    from headwater.producers.unlearning.linear import LinearModel
    from headwater.producers.unlearning.listener import (
        UNLEARNER_TOKEN_ENV,
        UNLEARNER_TOKEN_FILE_ENV,
        Outcome,
        Unlearner,
        UnlearningListener,
        outcomes_producer_id,
    )
    from headwater.producers.unlearning.newton import NewtonReport, newton_forget
    from headwater.producers.unlearning.recipe import Recipe
    from headwater.producers.unlearning.replay import (
        ReplayPlan,
        ReplayReport,
        plan_replay,
        replay_forget,
        train_step,
    )
    from headwater.producers.unlearning.rows import Rows
    from headwater.producers.unlearning.verification import (
        RetrainTargets,
        gap_closed,
        membership_auc,
    )


__getattr__ = lazy_exports(__name__, _EXPORTS)
