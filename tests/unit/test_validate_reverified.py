"""A REVERIFIED UnlearningApplied only measures a later version: an event that claims to have
removed rows or run a method under that status is refused by name (issue 23 left it free)."""

from __future__ import annotations

import pytest

from headwater.errors import InvalidEvent
from headwater.producers.envelope import EnvelopeBuilder, event_hash
from headwater.stream_processors.processors import validate as va
from headwater.v1 import events_pb2

REVERIFIED = events_pb2.UnlearningApplied.REVERIFIED


def _reverified(**fields) -> events_pb2.UnlearningApplied:
    base = dict(request_id="f", model_id="m", status=REVERIFIED, previous_version="v5",
                new_version="v8", verification=events_pb2.Verification(
                    forget_loss_before=0.15, forget_loss_after=0.19))
    base.update(fields)
    return events_pb2.UnlearningApplied(**base)


def _problem(payload: events_pb2.UnlearningApplied) -> str | None:
    event = EnvelopeBuilder("run-r", "producer-r").wrap(payload)
    event.hash = event_hash(event)
    try:
        va.validate_event(event, va.DEFAULT_LIMITS)
    except InvalidEvent as exc:
        return str(exc)
    return None


def test_a_plain_reverification_is_accepted() -> None:
    assert _problem(_reverified()) is None


@pytest.mark.parametrize("field,value", [
    ("rows_forgotten", 179), ("steps_replayed", 3), ("estimated_replay_steps", 3),
    ("newton_steps", 1), ("fine_tune_steps", 2), ("method", events_pb2.REPLAY),
    ("checkpoint_uri", "file:///ckpt"),
])
def test_a_reverification_that_claims_work_is_refused_by_field(field: str, value) -> None:
    problem = _problem(_reverified(**{field: value}))
    assert problem is not None and "REVERIFIED" in problem and field in problem


@pytest.mark.parametrize("missing", ["new_version", "previous_version"])
def test_a_reverification_names_both_versions(missing: str) -> None:
    problem = _problem(_reverified(**{missing: ""}))
    assert problem is not None and "new_version" in problem and "previous_version" in problem


def test_a_reverification_carries_its_figures() -> None:
    payload = _reverified()
    payload.ClearField("verification")
    assert "carries its verification" in (_problem(payload) or "")


def test_an_applied_outcome_keeps_its_counts() -> None:  # the rule is REVERIFIED's alone
    applied = _reverified(status=events_pb2.UnlearningApplied.APPLIED, rows_forgotten=179,
                          method=events_pb2.NEWTON, newton_steps=2)
    assert _problem(applied) is None
