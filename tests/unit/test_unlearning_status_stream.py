"""Unlearning.Status as a stream of states: every change, and no step a follower waits for
skipped because two changes fell between two polls of the store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from headwater.query_service.services import unlearning
from headwater.query_service.services.unlearning import UnlearningService
from headwater.v1 import events_pb2, query_pb2


class _Context:
    def is_active(self) -> bool:
        return True

    def abort(self, code: object, details: str) -> None:
        raise AssertionError(f"aborted: {details}")


def _stream(monkeypatch: pytest.MonkeyPatch, states: list[str]) -> list[str]:
    """The states Status yields when successive polls of the store find `states`."""
    monkeypatch.setattr(unlearning, "POLL_SECONDS", 0.0)
    found: Iterator[str] = iter(states)
    service = UnlearningService.__new__(UnlearningService)

    def state(rid: str) -> query_pb2.UnlearningStatus:
        now = next(found)
        applied = events_pb2.UnlearningApplied(request_id=rid)
        if now in ("failed", "retrying"):
            applied.status = applied.FAILED
            applied.error = f"{now} {len(states)}"
        return query_pb2.UnlearningStatus(request_id=rid, state=now, applied=applied)

    service._state = state  # type: ignore[method-assign]
    return [s.state for s in service.Status(
        query_pb2.UnlearningStatusRequest(request_id="fr-1"), _Context())]


def test_every_change_once(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _stream(monkeypatch, ["pending", "pending", "requested", "requested", "applied"]
                   ) == ["pending", "requested", "applied"]


def test_stored_and_applied_between_two_polls_still_shows_requested(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert _stream(monkeypatch, ["pending", "applied"]) == ["pending", "requested", "applied"]
    assert _stream(monkeypatch, ["pending", "failed"]) == ["pending", "requested", "failed"]
    assert _stream(monkeypatch, ["pending", "retrying", "applied"]) == [
        "pending", "requested", "retrying", "applied"]


def test_a_follower_joining_late_gets_the_state_as_it_is(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a stream that showed the request pending fills in the step it missed."""
    assert _stream(monkeypatch, ["applied"]) == ["applied"]
    assert _stream(monkeypatch, ["requested", "applied"]) == ["requested", "applied"]
