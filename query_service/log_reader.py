"""Reads the event log out of ClickHouse for verification."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from headwater.stream_processors.log_integrity import LogReport, LogRow, verify_log
from headwater.stream_processors.retention import stored_events_retention
from headwater.stream_processors.store import Store


def verify_stored_log(store: Store, run_id: str = "", recompute_hashes: bool = False,
                      now: datetime | None = None) -> LogReport:
    """Verify the chains of every producer (of one run, when given) as stored; the table's
    own TTL sets the retention horizon before which a chain's head may have expired."""
    raw = "hex(raw)" if recompute_hashes else "''"
    rows = store.query(
        f"SELECT producer_id, run_id, seq, event_id, hex(prev_hash), hex(hash), emitted_at, {raw} "
        "FROM events FINAL WHERE {run:String} = '' OR run_id = {run:String} "
        "ORDER BY producer_id, seq, event_id",
        {"run": run_id},
    )
    days = stored_events_retention(store)
    horizon = None
    if days is not None:
        horizon = (now or datetime.now(timezone.utc)) - timedelta(days=days)
    report = verify_log([
        LogRow(p, r, s, e, bytes.fromhex(ph), bytes.fromhex(h), _utc(t),
               bytes.fromhex(body) if recompute_hashes else None)
        for p, r, s, e, ph, h, t, body in rows
    ], horizon, days)
    report.hashes_recomputed = recompute_hashes
    return report


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)
