"""Retention of the event log: a ClickHouse TTL on `events`, never under six months.

Art. 19(1) and 26(6) of the EU AI Act require providers and deployers of high-risk systems
to keep automatically generated logs for at least six months; 183 days covers any six
calendar months. The TTL is the same statement on chDB and on a ClickHouse server.
"""

from __future__ import annotations

import re
from typing import Any

from headwater.errors import ConfigError

MIN_EVENTS_RETENTION_DAYS = 183
DEFAULT_EVENTS_RETENTION_DAYS = 190  # six months and a week's margin
_TTL = re.compile(r"\bTTL\s+toDateTime\(emitted_at\)\s*\+\s*toIntervalDay\((\d+)\)")


def retention_problem(days: int) -> str | None:
    """Why `days` is not an acceptable events retention, or None when it is."""
    if days < MIN_EVENTS_RETENTION_DAYS:
        return (f"events_retention_days={days} is under six months: Art. 19(1) and 26(6) of "
                f"the EU AI Act require logs to be kept at least six months; use "
                f">= {MIN_EVENTS_RETENTION_DAYS} days")
    return None


def events_ttl_sql(days: int) -> str:
    """The statement that sets the retention of `events` (rows expire by emitted_at)."""
    return f"ALTER TABLE events MODIFY TTL toDateTime(emitted_at) + toIntervalDay({int(days)})"


def parse_events_ttl(engine_full: str) -> int | None:
    """The retention in days of an `events` table's engine clause, None without a TTL."""
    m = _TTL.search(engine_full)
    return int(m.group(1)) if m else None


def stored_events_retention(store: Any) -> int | None:
    """The retention the `events` table of `store` currently has (None: kept forever)."""
    rows = store.query("SELECT engine_full FROM system.tables WHERE database = currentDatabase()"
                       " AND name = 'events'")
    return parse_events_ttl(rows[0][0]) if rows else None


def apply_events_retention(store: Any, days: int) -> bool:
    """Set the events TTL to `days` unless it already is; True when it was changed."""
    problem = retention_problem(days)
    if problem:
        raise ConfigError(problem)
    if stored_events_retention(store) == days:
        return False
    store.command(events_ttl_sql(days))
    return True
