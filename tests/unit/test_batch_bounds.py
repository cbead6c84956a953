"""within_months keeps exactly the events of a batch's first `max_months` distinct months,
whether its fast path (the batch's first-to-last distance in days) or the count decides."""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.producers.transports.base import Record
from headwater.stream_processors.processors.batch_bounds import within_months
from headwater.stream_processors.processors.decode import Accepted
from headwater.stream_processors.processors.fields import read_envelope
from headwater.v1 import events_pb2


def _accepted(seconds: list[int]) -> list[Accepted]:
    out = []
    for i, s in enumerate(seconds):
        event = events_pb2.Event(event_id=f"e{i}")
        event.emitted_at.seconds = s
        out.append(Accepted(i, Record(b""), event, read_envelope(event)))
    return out


def _reference(seconds: list[int], max_months: int) -> list[int]:
    """Indices kept: the first max_months distinct (year, month) in batch order."""
    seen: list[tuple[int, int]] = []
    kept = []
    for i, s in enumerate(seconds):
        at = datetime.fromtimestamp(s, timezone.utc)
        month = (at.year, at.month)
        if month in seen or len(seen) < max_months:
            if month not in seen:
                seen.append(month)
            kept.append(i)
    return kept


BASE = 1_700_000_000  # Nov 2023


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3 * 365 * 86_400), min_size=0, max_size=40),
       st.sampled_from([1, 2, 3, 12, 24]), st.sampled_from([1, 86_400, 40 * 86_400]))
def test_kept_events_are_those_of_the_first_months(offsets: list[int], max_months: int,
                                                   scale: int) -> None:
    seconds = [BASE + (o % (scale * 50)) for o in offsets]
    kept, refused = within_months(_accepted(seconds), max_months)
    assert [a.index for a in kept] == _reference(seconds, max_months)
    assert sorted(a.index for a in kept + refused) == list(range(len(seconds)))
    assert all("HEADWATER_MAX_MONTHS_PER_BATCH" in r.error for r in refused)


def test_month_edges() -> None:
    jan31 = int(datetime(2024, 1, 31, 23, 59, tzinfo=timezone.utc).timestamp())
    mar1 = int(datetime(2024, 3, 1, 0, 0, tzinfo=timezone.utc).timestamp())
    feb = int(datetime(2024, 2, 15, tzinfo=timezone.utc).timestamp())
    # 30 days apart yet three months: the fast path must not pass it for max_months=2
    kept, refused = within_months(_accepted([jan31, feb, mar1]), 2)
    assert [a.index for a in kept] == [0, 1] and [r.index for r in refused] == [2]
    kept, refused = within_months(_accepted([jan31, mar1]), 2)
    assert len(kept) == 2 and not refused
