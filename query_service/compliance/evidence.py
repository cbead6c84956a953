"""Facts from verified event bytes: the derived tables of some runs rebuilt, in a scratch
database, from only those stored events whose bytes hash to their recorded hash and match
the hash first accepted under their id; and the comparison of the live derived tables with
that rebuild (a rewritten `sources.licence` or `forget_requests.requested_by` differs).

The evidence report is built from the scratch database, so no reported fact comes from a
derived table that nothing checked; `audit verify` fails when the comparison differs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from headwater.producers.envelope import hash_matches
from headwater.producers.transports.base import Record
from headwater.stream_processors import replay as rp
from headwater.stream_processors.processors.derived import DERIVED
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2

SCRATCH_PREFIX = "evidence_"
# A scratch database left by a process that died mid-report is dropped by the next rebuild
# once it is this old (its name carries its creation time).
SCRATCH_MAX_AGE = 24 * 3600
# Payloads no reported fact cites by event: their ids and hashes are not kept (memory).
BULK_PAYLOADS = frozenset({"gradient_batch", "prediction_recorded"})


@dataclass
class Rebuild:
    """A scratch store whose derived tables hold only what verified events say."""

    store: Store
    runs: list[str]
    hashes: dict[str, str] = field(default_factory=dict)  # event id -> hex hash (verified)
    producers: dict[str, str] = field(default_factory=dict)  # event id -> its producer
    excluded: dict[str, str] = field(default_factory=dict)  # event id -> why not replayed
    rejected: list[str] = field(default_factory=list)  # verified bytes no processor accepts

    def ref(self, event_id: str) -> tuple[str, str, str]:
        """(event id, hex hash, producer id) of a verified event ('': not among them)."""
        return event_id, self.hashes.get(event_id, ""), self.producers.get(event_id, "")


def _receipts(store: Store, run_id: str) -> dict[str, bytes]:
    """event id -> the hash first accepted under it (first write wins)."""
    rows = store.query(
        "SELECT event_id, hex(argMin(hash, received_at)) FROM event_receipts "
        "WHERE run_id = {r:String} OR event_id IN (SELECT event_id FROM events "
        "WHERE run_id = {r:String}) GROUP BY event_id", {"r": run_id})
    return {e: bytes.fromhex(h) for e, h in rows}


def _screen(record: Record, receipts: dict[str, bytes]) -> tuple[events_pb2.Event, str]:
    """(the decoded event, '' or why the stored event is not evidence)."""
    event = events_pb2.Event()
    try:
        event.ParseFromString(record.value)
    except DecodeError:
        return event, "stored bytes do not decode as an Event"
    if not hash_matches(event):
        return event, "stored bytes do not hash to the recorded hash"
    first = receipts.get(event.event_id)
    if first is None:
        return event, "no receipt: written around the sink"
    if first != event.hash:
        return event, "not the event first accepted under its id"
    return event, ""


def _replay_verified(source: Store, target: Store, run_id: str, rebuild: Rebuild) -> None:
    sink = EventSink(target, "evidence")
    receipts = _receipts(source, run_id)
    for records in rp.raw_batches(source, run_id):
        kept = []
        for record in records:
            event, why = _screen(record, receipts)
            if why:
                rebuild.excluded[event.event_id or f"(undecodable in run {run_id})"] = why
            else:
                if event.WhichOneof("payload") not in BULK_PAYLOADS:
                    rebuild.hashes[event.event_id] = event.hash.hex()
                    rebuild.producers[event.event_id] = event.producer_id
                kept.append(record)
        if kept:
            rebuild.rejected += [r.error for r in sink.derive(kept)]


@contextmanager
def verified_rebuild(store: Store, runs: list[str]) -> Iterator[Rebuild]:
    """The derived tables of `runs` rebuilt from their verified events in a scratch
    database of the same store (dropped on exit)."""
    now = int(time.time())
    name = f"{SCRATCH_PREFIX}{now}_{uuid.uuid4().hex[:12]}"
    if store.database.startswith(SCRATCH_PREFIX):
        raise ValueError(f"{store.database} is itself a scratch database")
    _drop_stale(store, now)
    scratch = Store(store.dsn.raw, name, lock=False)
    try:
        scratch.migrate()
        rebuild = Rebuild(scratch, sorted(set(runs)))
        for run in rebuild.runs:
            _replay_verified(store, scratch, run, rebuild)
        yield rebuild
    finally:
        try:
            scratch.command(f"DROP DATABASE IF EXISTS {name}")
        finally:
            scratch.close()


def _digest(store: Store, table: str, columns: list[str], run_id: str) -> rp.TableDigest:
    """Row count and an order-free checksum over `columns` of one run's rows, FINAL."""
    where = rp._run_filter(table, rp._columns(store, table))
    hashed = ", ".join(f"`{c}`" for c in columns)
    count, total = store.query(
        f"SELECT count(), sum(cityHash64({hashed})) FROM {table} FINAL WHERE {where}",
        {"run": run_id})[0]
    return rp.TableDigest(rows=int(count), checksum=f"{int(total):016x}")


def _drop_stale(store: Store, now: int) -> None:
    """Drop scratch databases older than SCRATCH_MAX_AGE (left by a crash)."""
    for (name,) in store.query("SELECT name FROM system.databases WHERE startsWith(name, "
                               "{p:String})", {"p": SCRATCH_PREFIX}):
        made = name[len(SCRATCH_PREFIX):].split("_", 1)[0]
        if made.isdigit() and now - int(made) > SCRATCH_MAX_AGE:
            store.command(f"DROP DATABASE IF EXISTS {name}")


def compare_derived(store: Store, rebuild: Rebuild) -> list[rp.TableComparison]:
    """Per derived table and run: the live rows against the rebuild from verified events
    (row count and an order-free checksum over the columns both have; the sketch by its
    sum). Columns only one side has (a migration not yet applied to the live store) are
    left out of the checksum."""
    out = []
    for run in rebuild.runs:
        for table in DERIVED:
            live_columns = rp._columns(store, table)
            common = [c for c in rp._columns(rebuild.store, table) if c in live_columns]
            a, b = _digest(store, table, common, run), _digest(rebuild.store, table, common, run)
            detail = "" if a == b else f"{a.rows} rows stored, {b.rows} from verified events" + (
                "; contents differ" if a.rows == b.rows else "")
            out.append(rp.TableComparison(table=f"{table} (run {run})", incremental=a,
                                          replayed=b, equal=a == b, detail=detail))
        sketch = rp.compare_sketches(rp.sketches(store, run), rp.sketches(rebuild.store, run))
        out.append(sketch.model_copy(update={"table": f"{sketch.table} (run {run})"}))
    return out


def check_derived(store: Store, runs: list[str]) -> tuple[list[rp.TableComparison],
                                                           dict[str, str], list[str]]:
    """(comparisons, excluded events, rejected events) for `runs`: what `audit verify`
    reports about the derived tables."""
    with verified_rebuild(store, runs) as rebuild:
        return compare_derived(store, rebuild), dict(rebuild.excluded), list(rebuild.rejected)


def runs_of(store: Store, run_id: str = "") -> list[str]:
    """Every run with stored events (or just `run_id`)."""
    if run_id:
        return [run_id]
    return [r[0] for r in store.query("SELECT DISTINCT run_id FROM events ORDER BY run_id")]
