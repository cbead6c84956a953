"""Reads the event log out of ClickHouse for verification."""

from __future__ import annotations

from headwater.stream_processors.log_integrity import LogReport, LogRow, verify_log
from headwater.stream_processors.store import Store


def verify_stored_log(store: Store, run_id: str = "", recompute_hashes: bool = False) -> LogReport:
    """Verify the chains of every producer (of one run, when given) as stored."""
    raw = "hex(raw)" if recompute_hashes else "''"
    rows = store.query(
        f"SELECT producer_id, run_id, seq, event_id, hex(prev_hash), hex(hash), emitted_at, {raw} "
        "FROM events FINAL WHERE {run:String} = '' OR run_id = {run:String} "
        "ORDER BY producer_id, seq, event_id",
        {"run": run_id},
    )
    return verify_log([
        LogRow(p, r, s, e, bytes.fromhex(ph), bytes.fromhex(h), t,
               bytes.fromhex(body) if recompute_hashes else None)
        for p, r, s, e, ph, h, t, body in rows
    ])
