"""The erasure log of the evidence report: every forget request of the model, its
authenticated requester, dispositions, verification targets and state (compliance/
erasure.py decides them), and its outcomes, read from the rebuild of verified events."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from headwater.query_service.compliance.erasure import measured_at
from headwater.query_service.compliance.erasure import state as erasure_state
from headwater.query_service.compliance.erasure import targets as erasure_targets
from headwater.query_service.compliance.evidence import Rebuild
from headwater.query_service.compliance.facts import (
    event_refs,
    fact_ref,
    finite,
    iso,
    json_or_text,
)
from headwater.query_service.compliance.model import (
    Disposition,
    Erasure,
    ErasureOutcome,
    ErasureTarget,
    ModelVersion,
    Verification,
)
from headwater.query_service.tables import (
    VERIFICATION,
    ForgetRequestRecord,
    UnlearningAppliedRecord,
    select,
)
from headwater.stream_processors.store import Store

# -- erasure log ----------------------------------------------------------------------------

_RETRAIN_ONLY = {"retrain_forget_loss", "gap_closed", "distance_to_retrained",
                 "retrain_membership_auc", "retrain_test_accuracy"}


def _verification(values: dict[str, Any]) -> Verification:
    retrained = bool(values["retrained"])
    return Verification(**{
        k: retrained if k == "retrained" else
        (None if k in _RETRAIN_ONLY and not retrained else finite(values[k]))
        for k in VERIFICATION})


def _source_row_counts(text: str) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for item in json_or_text(text) or []:
        if isinstance(item, dict):
            counts[str(item.get("source_id", ""))] += len(item.get("rows") or [])
    return dict(counts)


def _dispositions(store: Store, f: ForgetRequestRecord, done: list[ErasureOutcome],
                  chain: list[ModelVersion]) -> list[Disposition]:
    """What became of the rows reached, their gradients and events, and older versions."""
    via = {k: int(v) for k, v in dict(f.affected_via).items()}
    forgotten = sum(o.rows_forgotten for o in done if o.status in ("APPLIED",
                                                                   "ALREADY_APPLIED"))
    direct = via.get("row", 0) + via.get("join", 0)
    aggregate = via.get("aggregation", 0)
    tomb = ("(node_id, row) IN (SELECT node_id, row FROM forgotten_rows FINAL "
            "WHERE request_id = {r:String})")
    grads, events = store.query(
        f"SELECT count(), uniqExact(event_id) FROM gradients FINAL WHERE {tomb}",
        {"r": f.request_id})[0]
    trained = {r[0] for r in store.query(
        f"SELECT DISTINCT model_version FROM gradients FINAL WHERE kind = 'TRAINING_STEP' "
        f"AND {tomb}", {"r": f.request_id})}
    old = [v for v in chain if v.version in trained]
    out = [Disposition(
        item="training_rows", count=direct,
        status="removed" if forgotten >= direct else f"retained ({direct - forgotten} not "
                                                     "removed by the trainer)",
        detail=f"{forgotten} training row(s) removed by the trainer and excluded from all "
               "later training and attribution")]
    if aggregate:
        out.append(Disposition(
            item="aggregate_dependencies", count=aggregate,
            status="retained: not recomputed",
            detail="rows that depend on the forgotten rows only through an aggregate op "
                   "(e.g. a normalisation's mean and std fitted with them); the aggregate "
                   "was not recomputed without them, so the model's inputs still carry "
                   "statistics of the forgotten rows. Recomputing it needs the trainer to "
                   "refit the op and retrain; nothing recorded says it did"))
    out.append(Disposition(
        item="gradient_rows", count=int(grads), status="tombstoned",
        detail="projected per-sample gradients of the forgotten rows stay stored; a "
               "tombstone (forgotten_rows) excludes them from attribution"))
    out.append(Disposition(
        item="raw_events", count=int(events), status="retained: append-only log",
        detail="the events carrying those gradients (and the source's registration) stay in "
               "the hash-chained log; crypto-shredding of payloads is not implemented"))
    out.append(Disposition(
        item="model_versions", count=len(old), status="superseded" if done else "in use",
        detail="versions trained with the forgotten rows; they stay in the lineage",
        versions=[f"{v.version}: checkpoint {v.checkpoint_uri or 'none recorded'}"
                  for v in old]))
    return out


def erasure_log(rebuild: Rebuild, model_id: str, chain: list[ModelVersion]) -> list[Erasure]:
    store = rebuild.store
    order = "applied_at, event_id"
    outcome_rows = select(store, UnlearningAppliedRecord, "unlearning_applied",
                          "model_id = {m:String}", {"m": model_id}, order=order)
    outcome_refs = [fact_ref(rebuild, e) for (e,) in store.query(
        f"SELECT event_id FROM unlearning_applied FINAL WHERE model_id = {{m:String}} "
        f"ORDER BY {order}", {"m": model_id})]
    request_refs = event_refs(rebuild, "forget_requests", "request_id", "model_id = {m:String}",
                              {"m": model_id})
    outcomes: dict[str, list[ErasureOutcome]] = defaultdict(list)
    for a, ref in zip(outcome_rows, outcome_refs, strict=True):
        outcomes[a.request_id].append(ErasureOutcome(
            status=a.status, error=a.error, method=a.method, method_reason=a.method_reason,
            estimated_replay_steps=int(a.estimated_replay_steps),
            estimated_replay_seconds=finite(a.estimated_replay_seconds) or 0.0,
            steps_replayed=int(a.steps_replayed), newton_steps=int(a.newton_steps),
            fine_tune_steps=int(a.fine_tune_steps),
            previous_version=a.previous_version, new_version=a.new_version,
            rows_forgotten=int(a.rows_forgotten),
            duration_seconds=finite(a.duration_seconds) or 0.0,
            applied_at=iso(a.applied_at), verification=_verification(a.verification),
            evidence=ref))
    out = []
    for f in select(store, ForgetRequestRecord, "forget_requests", "model_id = {m:String}",
                    {"m": model_id}, order="requested_at, request_id"):
        done = outcomes.get(f.request_id, [])
        figures, note = measured_at(done, [v.version for v in chain])
        checks = erasure_targets(figures.verification) if figures else []
        dispositions = _dispositions(store, f, done, chain)
        state, why = erasure_state([o.status for o in done], checks, dispositions)
        at = figures.new_version if figures else None
        out.append(Erasure(
            request_id=f.request_id, run_id=f.run_id, requested_at=iso(f.requested_at),
            reason=f.reason, requested_by=f.requested_by,
            requester_authenticated=f.requested_by.startswith("token="), method=f.method,
            verify_with_retrain=bool(f.verify_with_retrain),
            target=ErasureTarget(source_ids=list(f.source_ids),
                                 source_rows=_source_row_counts(f.source_rows_json),
                                 training_keys=int(f.target_keys)),
            affected_rows=int(f.affected_rows),
            affected_via={k: int(v) for k, v in dict(f.affected_via).items()},
            state=state, state_reason=why, targets=checks, dispositions=dispositions,
            verified_at_version=at, version_note=note, outcomes=done,
            evidence=request_refs[f.request_id]))
    return out
