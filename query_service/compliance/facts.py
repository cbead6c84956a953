"""Reading facts from the rebuild of verified events: times, numbers, recorded JSON, and
the event each fact came from (its evidence)."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

from headwater.query_service.compliance.evidence import Rebuild
from headwater.query_service.compliance.model import (
    EventRef,
)


def iso(ts: Any) -> str:
    """A stored timestamp as ISO 8601 UTC ('' when unset)."""
    if not ts:
        return ""
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=timezone.utc)
        return ts.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return str(ts)


def finite(value: Any) -> float | None:
    """NaN and infinity are not JSON: report them as not measured."""
    v = float(value)
    return v if math.isfinite(v) else None


def json_or_text(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return text


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def event_refs(rebuild: Rebuild, table: str, key: str, where: str, params: dict[str, Any],
               order: str = "") -> dict[str, EventRef]:
    """key column value -> the verified event its row of `table` (in the rebuild) came from."""
    sql = f"SELECT {key}, event_id FROM {table} FINAL WHERE {where}"
    rows = rebuild.store.query(sql + (f" ORDER BY {order}" if order else ""), params)
    return {str(k): fact_ref(rebuild, e) for k, e in rows}


def fact_ref(rebuild: Rebuild, event_id: str) -> EventRef:
    """The verified event `event_id` as a fact's evidence (hash and producer)."""
    _, digest, producer = rebuild.ref(event_id)
    return EventRef(event_id=event_id, hash=digest, recorded_by=producer)
