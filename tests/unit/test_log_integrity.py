"""The chain verifier on hand-made chains (pure): each finding kind names what it should,
including the cases a mutant of the verifier got past (issue 25)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from headwater.producers.envelope import GENESIS_HASH, EnvelopeBuilder
from headwater.stream_processors.log_integrity import LogRow, verify_chain
from headwater.v1 import events_pb2

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _chain(n: int) -> list:
    env = EnvelopeBuilder("run-v", "producer-v")
    return [env.wrap(events_pb2.ModelVersionRecorded(model_id="m", version=f"v{i}"))
            for i in range(n)]


def _row(e, *, raw: bool = True, **columns) -> LogRow:
    fields = dict(producer_id=e.producer_id, run_id=e.run_id, seq=e.seq, event_id=e.event_id,
                  prev_hash=e.prev_hash, hash=e.hash,
                  emitted_at=T0 + timedelta(seconds=e.seq),
                  raw=e.SerializeToString(deterministic=True) if raw else None)
    fields.update(columns)
    return LogRow(**fields)


def _kinds(problems) -> list[tuple[str, int]]:
    return [(p.kind, p.seq) for p in problems]


def test_an_intact_chain_has_no_problem() -> None:
    events = _chain(4)
    rows = [_row(e, emitted_at=datetime.fromtimestamp(e.emitted_at.seconds, timezone.utc)
                 .replace(microsecond=e.emitted_at.nanos // 1000)) for e in events]
    _, problems, notes = verify_chain(rows)
    assert problems == [] and notes == []


def test_a_rewritten_prev_hash_column_is_named_against_the_hashed_bytes() -> None:
    """The stored prev_hash column no longer matches the bytes: column_mismatch names it."""
    events = _chain(3)
    rows = [_row(e, raw=False) for e in events]
    forged = _row(events[2], prev_hash=b"\x07" * 32,
                  emitted_at=datetime.fromtimestamp(events[2].emitted_at.seconds,
                                                    timezone.utc)
                  .replace(microsecond=events[2].emitted_at.nanos // 1000))
    _, problems, _ = verify_chain(rows[:2] + [forged])
    mismatch = [p for p in problems if p.kind == "column_mismatch"]
    assert len(mismatch) == 1 and "prev_hash" in mismatch[0].detail
    assert "emitted_at" not in mismatch[0].detail


def test_a_second_chain_start_is_a_break_not_a_reordering() -> None:
    """Seq 1 starts from the genesis hash; an event at seq 3 that does too is a forged or
    restarted chain (break), not a moved head (reordered)."""
    events = _chain(2)
    restarted = EnvelopeBuilder("run-v", "producer-v").wrap(
        events_pb2.ModelVersionRecorded(model_id="m", version="again"))
    restarted.seq = 3
    assert restarted.prev_hash == GENESIS_HASH
    rows = [_row(e, raw=False) for e in events] + [_row(restarted, raw=False)]
    _, problems, _ = verify_chain(rows)
    assert ("break", 3) in _kinds(problems)
    assert ("reordered", 3) not in _kinds(problems)
