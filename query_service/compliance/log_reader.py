"""Reads the event log out of ClickHouse for verification."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from headwater.stream_processors.log_integrity import LogReport, LogRow, as_utc, verify_log
from headwater.stream_processors.retention import stored_events_retention
from headwater.stream_processors.store import Store


def verify_stored_log(store: Store, run_id: str = "", recompute_hashes: bool = False,
                      now: datetime | None = None) -> LogReport:
    """Verify the chains of every producer (of one run, when given) as stored; the table's
    own TTL sets the retention horizon before which a chain's head may have expired."""
    raw = "hex(e.raw)" if recompute_hashes else "''"
    # every stored event beside the hash first accepted under its id (first write wins)
    rows = store.query(
        "SELECT e.producer_id, e.run_id, e.seq, e.event_id, hex(e.prev_hash), hex(e.hash), "
        f"e.emitted_at, {raw}, r.event_id != '', hex(r.first) "
        "FROM events AS e FINAL LEFT JOIN (SELECT event_id, argMin(hash, received_at) AS first "
        "  FROM event_receipts WHERE event_id IN (SELECT event_id FROM events "
        "  WHERE {run:String} = '' OR run_id = {run:String}) GROUP BY event_id) AS r "
        "ON r.event_id = e.event_id "
        "WHERE {run:String} = '' OR e.run_id = {run:String} "
        "ORDER BY e.producer_id, e.seq, e.event_id",
        {"run": run_id},
    )
    days = stored_events_retention(store)
    horizon = None
    if days is not None:
        horizon = (now or datetime.now(timezone.utc)) - timedelta(days=days)
    report = verify_log([
        LogRow(p, r, s, e, bytes.fromhex(ph), bytes.fromhex(h), as_utc(t),
               bytes.fromhex(body) if recompute_hashes else None, receipt_checked=True,
               first_hash=bytes.fromhex(first) if has_receipt else None)
        for p, r, s, e, ph, h, t, body, has_receipt, first in rows
    ], horizon, days)
    report.hashes_recomputed = recompute_hashes
    return report

