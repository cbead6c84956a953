"""Issue 23, third wave: which outcome's figures an erasure reports (pure): the newest
measurement on the reported version's lineage — a re-verification at the reported version
when there is one — and a note naming the version and why."""

from __future__ import annotations

from headwater.query_service.compliance.erasure import measured_at
from headwater.query_service.compliance.model import ErasureOutcome, EventRef, Verification

FIGURES = dict.fromkeys(Verification.model_fields)


def _outcome(status: str, previous: str, new: str, loss: float) -> ErasureOutcome:
    return ErasureOutcome(
        status=status, error="", method="NEWTON", method_reason="", estimated_replay_steps=0,
        estimated_replay_seconds=0.0, steps_replayed=0, newton_steps=1, fine_tune_steps=0,
        previous_version=previous, new_version=new, rows_forgotten=0, duration_seconds=0.0,
        applied_at="", verification=Verification(**{**FIGURES, "retrained": False,
                                                     "forget_loss_after": loss}),
        evidence=EventRef(event_id="e", hash="h", recorded_by="p"))


FAILED = _outcome("FAILED", "v1", "", 0.0)
APPLIED = _outcome("APPLIED", "v1", "v2", 1.0)
AT_V3 = _outcome("REVERIFIED", "v2", "v3", 3.0)
AT_V4 = _outcome("REVERIFIED", "v3", "v4", 4.0)


def test_nothing_measured() -> None:
    assert measured_at([], ["v1"]) == (None, "no verification figures recorded")
    assert measured_at([FAILED], ["v1", "v2"])[0] is None


def test_the_reported_version_wins_and_says_it_was_reverified() -> None:
    chosen, note = measured_at([FAILED, APPLIED, AT_V3, AT_V4], ["v1", "v2", "v3"])
    assert chosen is AT_V3  # v4 is not on v3's lineage
    assert note.startswith("measured at the reported version v3: re-verified")
    assert "first measured at v2" in note
    chosen, note = measured_at([APPLIED, AT_V3], ["v1", "v2"])
    assert chosen is APPLIED and note == "measured at the reported version"


def test_an_older_measurement_is_named_with_the_distance() -> None:
    chosen, note = measured_at([APPLIED, AT_V3], ["v1", "v2", "v3", "v4", "v5"])
    assert chosen is AT_V3
    assert note.startswith("measured at v3; the report covers v5, 2 version(s) later")
    assert "not re-verified there" in note


def test_the_later_of_two_measurements_at_one_version() -> None:
    again = _outcome("REVERIFIED", "v2", "v3", 3.5)
    assert measured_at([APPLIED, AT_V3, again], ["v1", "v2", "v3"])[0] is again


def test_off_the_lineage() -> None:
    chosen, note = measured_at([APPLIED], ["w1", "w2"])
    assert chosen is APPLIED and "not on the reported version's lineage" in note


def test_a_reverification_before_or_without_the_erasure_counts_for_nothing() -> None:
    early = _outcome("REVERIFIED", "v1", "v2", 9.0)
    assert measured_at([early], ["v1", "v2"]) == (None, "no verification figures recorded")
    assert measured_at([early, APPLIED], ["v1", "v2"])[0] is APPLIED
    from headwater.query_service.compliance.erasure import state
    assert state(["REVERIFIED"], [], []) == (
        "failed", "no outcome applied the request (a re-verification alone does not)")
