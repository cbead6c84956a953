"""Which method applies a request, and why: replay when it is possible and its estimated
cost is within the budget, otherwise the best approximate method. The reason goes into
`UnlearningApplied.method_reason` and the audit report."""

from __future__ import annotations

from dataclasses import dataclass

from headwater.v1 import events_pb2


@dataclass(frozen=True)
class Choice:
    method: int  # events_pb2.UnlearningMethod; UNSPECIFIED = the approximate auto method
    reason: str


def choose_method(requested: int, *, replay_possible: bool, why_not: str,
                  estimated_steps: int, estimated_seconds: float,
                  budget_seconds: float | None,
                  partial: tuple[int, int, float] | None = None) -> Choice:
    """`requested` is the request's method. Auto (UNSPECIFIED) replays when a replay is
    possible (`why_not` says why it is not) and `estimated_seconds` <= `budget_seconds`
    (None: no checkpoint hook attached); over budget, a partial replay when `partial` =
    (checkpoint step, steps, seconds) fits, else the approximate method; an explicit REPLAY
    is refused, naming why, when no replay is possible; NEWTON, FINE_TUNE and
    PARTIAL_REPLAY run as asked (PARTIAL_REPLAY needs `partial`)."""
    cost = f"{estimated_steps} logged steps, about {estimated_seconds:.3g} s"
    if requested == events_pb2.PARTIAL_REPLAY and partial is None:
        raise ValueError("the request asks for PARTIAL_REPLAY but no checkpoint after the "
                         "rows' first use fits the budget (or no checkpoint hook is attached)")
    if requested == events_pb2.REPLAY:
        if budget_seconds is None:
            raise ValueError("the request asks for REPLAY but the trainer attached no "
                             "checkpoint hook (Unlearner(..., checkpoints=))")
        if not replay_possible:
            raise ValueError(f"the request asks for REPLAY but no replay is possible: "
                             f"{why_not}")
        return Choice(events_pb2.REPLAY, f"replay requested: {cost}")
    if requested != events_pb2.UNLEARNING_METHOD_UNSPECIFIED:
        name = events_pb2.UnlearningMethod.Name(requested)
        return Choice(requested, f"{name} requested")
    if budget_seconds is None:
        return Choice(requested, "approximate: no checkpoint hook, so no replay")
    if replay_possible and estimated_seconds <= budget_seconds:
        return Choice(events_pb2.REPLAY, f"replay: {cost}, within the budget of "
                                         f"{budget_seconds:.3g} s")
    why = f"replay would take {cost}, over the budget of {budget_seconds:.3g} s" \
        if replay_possible else f"no replay possible ({why_not})"
    if partial is not None:
        step, steps, seconds = partial
        return Choice(events_pb2.PARTIAL_REPLAY,
                      f"partial replay (approximate): {why}; from the checkpoint at step "
                      f"{step}, after the rows' first use: {steps} steps, about "
                      f"{seconds:.3g} s")
    return Choice(requested, f"approximate: {why}")
