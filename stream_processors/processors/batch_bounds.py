"""Batch-level bounds on what a stored batch may touch (pure).

The event log is partitioned by month of emitted_at, and ClickHouse refuses an insert that
touches too many partitions at once (the whole batch would fail, and on Kafka be retried
for ever). Events past the batch's first `max_months` months are refused one by one,
naming the field, and the rest is stored.
"""

from __future__ import annotations

from headwater.stream_processors.processors.decode import Accepted, Rejected


def within_months(accepted: list[Accepted], max_months: int
                  ) -> tuple[list[Accepted], list[Rejected]]:
    """Keep the events of the first `max_months` distinct emitted_at months (UTC)."""
    if _months_at_most(accepted, max_months):  # the usual batch: nothing to refuse
        return accepted, []
    months: set[int] = set()
    kept: list[Accepted] = []
    refused: list[Rejected] = []
    for a in accepted:
        month = _month(a.envelope.emitted_s)
        if month in months or len(months) < max_months:
            months.add(month)
            kept.append(a)
        else:
            refused.append(Rejected(
                a.index, a.record, f"emitted_at falls in a month past the {max_months} "
                "distinct months this batch already spans (HEADWATER_MAX_MONTHS_PER_BATCH); "
                "send it again in another batch", a.event))
    return kept, refused


def _months_at_most(accepted: list[Accepted], max_months: int) -> bool:
    """Whether the events span at most `max_months` months. Touching one month more needs
    max_months - 1 whole months (>= 28 days each) between a first and a last day, so a
    first-to-last distance of at most 28 (max_months - 1) days decides it without
    counting months."""
    if not accepted:
        return True
    seconds = [a.envelope.emitted_s for a in accepted]
    low, high = min(seconds), max(seconds)
    if high // 86_400 - low // 86_400 <= 28 * (max_months - 1):
        return True
    return len({_month(s) for s in seconds}) <= max_months


def _month(seconds: int) -> int:
    """Months since 1970-01 of a Unix time, UTC (civil-from-days, Howard Hinnant)."""
    z = seconds // 86_400 + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    return year * 12 + month - 1
