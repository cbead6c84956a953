"""The shell around the pure processors: decode a batch, write every table, return acks.

Used by both runners (in-process and Kafka). Writes go dead letters, derived tables and
events (in parallel: Store.insert_all) -> receipts -> curvature sketch; an ack (or a Kafka
offset commit) happens only after all writes succeeded, and every table is keyed so that
writing a redelivered batch again changes nothing (the sketch: see _sketch_part). The
receipts follow the tables they vouch for: a receipt makes a redelivered event a repeat,
which is acked without being written again.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache

import pyarrow as pa
from threadpoolctl import ThreadpoolController

from headwater.producers import telemetry
from headwater.producers.transports.base import Ack, Record
from headwater.stream_processors.gc_pause import gc_paused
from headwater.stream_processors.inflight import InFlight
from headwater.stream_processors.processors import bundles, chunks
from headwater.stream_processors.processors.batch_bounds import within_months
from headwater.stream_processors.processors.decode import Accepted, Rejected, decode_batch
from headwater.stream_processors.processors.derived import DERIVED, PAYLOADS
from headwater.stream_processors.processors.first_write import screen
from headwater.stream_processors.processors.gradients import gradient_rows
from headwater.stream_processors.processors.rows import dead_letter_rows, event_rows, receipt_rows
from headwater.stream_processors.processors.sketch import sketch_parts
from headwater.stream_processors.processors.validate import DEFAULT_LIMITS, Limits
from headwater.stream_processors.store import Store

# How far a producer's clock may run ahead of the server's for the sketch's dedupe to hold.
SKETCH_SKEW = timedelta(days=1)

# Inserts the engine need not merge: a ReplacingMergeTree runs its merge over each
# inserted block (optimize_on_insert), a pass copying every column. These tables' keys
# hold the event id, and the first-write screen passes each id once per batch, so an
# ingested block never holds two rows of one key and the pass would remove nothing.
# Duplicates across batches (a redelivery) are merged later, as they always were.
# `derive` (replay, off the ingest path) keeps the engine's default.
_NO_MERGE = {"optimize_on_insert": "0"}
UNMERGED_INSERTS = {"events": _NO_MERGE, "gradients": _NO_MERGE}

CHUNK_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("idx", pa.uint32()), ("count", pa.uint32()),
    ("sha256", pa.string()), ("data", pa.binary()), ("received_at", pa.timestamp("us", "UTC")),
])


@dataclass
class _Rows:
    accepted: list[Accepted]
    rejected: list[Rejected]
    tables: dict[str, list[pa.Table]]


class EventSink:
    """Stores batches of encoded events in ClickHouse (implements producers' `Sink`)."""

    def __init__(self, store: Store, transport: str, limits: Limits = DEFAULT_LIMITS) -> None:
        self.store = store
        self.transport = transport
        self.limits = limits
        self._tracer = telemetry.tracer()
        m = telemetry.meter()
        self._stored = m.create_counter("headwater.process.events", description="events stored")
        self._dead = m.create_counter("headwater.process.dead_letters",
                                      description="records sent to dead_letters")
        # one thread for the pure work done while the store works (rows, the sketch's sum)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="headwater-sink")
        # a batch waits for another storing any of its events (concurrent calls, a retry)
        self._in_flight = InFlight()

    def ingest(self, records: list[Record]) -> list[Ack]:
        """Store a batch; one Ack per record, in order. Raises StoreError if a write fails."""
        with gc_paused():
            return self._ingest(records)

    def _ingest(self, records: list[Record]) -> list[Ack]:
        # linked to the spans that sent the records (Kafka traceparent headers)
        links = telemetry.links_from_headers(r.headers for r in records if r.headers)
        with self._tracer.start_as_current_span("headwater.process.batch",
                                                links=links) as span:
            span.set_attribute("headwater.records", len(records))
            now = datetime.now(timezone.utc)
            records, bundle_rejects = bundles.expand(records)
            records, pending_acks, chunk_rejects = self._reassemble(records, now)
            chunk_rejects += bundle_rejects
            accepted, rejected = decode_batch(records, limits=self.limits)
            accepted, too_many_months = within_months(accepted, self.limits.months_per_batch)
            with self._in_flight.held(a.envelope.event_id for a in accepted):
                # Rows are built on the worker thread while the store looks the ids up (outside
                # the GIL); they are used when every event is new, the steady stream's case.
                every = self._worker.submit(self._rows, accepted, now)
                try:
                    screened = screen(accepted, self._stored_hashes(accepted))
                except BaseException:
                    wait([every])  # never left running past a failed lookup
                    raise
                built = every.result()
                all_new = len(screened.new) == len(accepted)
                rows = built if all_new else self._rows(screened.new, now)
                rows.rejected += rejected + too_many_months + screened.conflicts + chunk_rejects
                uncounted = self._repeats_to_count(screened.repeats, rows)
                # The sketch's sum is worked out on the worker thread while the store inserts
                # (outside the GIL); it is inserted last, after the receipts (_sketch_part).
                part = self._worker.submit(_sketch_part, rows.tables["gradients"], uncounted, now)
                try:
                    # Nothing is acked before all of these succeed, and each table is keyed, so
                    # their order does not matter: the store writes them in parallel.
                    self.store.insert_all([
                        ("dead_letters", dead_letter_rows(rows.rejected, self.transport, now)),
                        *self._table_rows(rows),
                        ("events", pa.concat_tables(rows.tables["events"]))], UNMERGED_INSERTS)
                    self.store.insert("event_receipts",
                                      receipt_rows(rows.accepted, self.transport, now))
                except BaseException:
                    wait([part])  # never left running past a failed write
                    raise
                sketch = part.result()
                if sketch is not None:
                    self.store.insert("curvature_parts", sketch)
                self._stored.add(len(rows.accepted))
                self._dead.add(len(rows.rejected))
                return _acks(rows.accepted + screened.repeats, rows.rejected, pending_acks)

    def _stored_hashes(self, accepted: list[Accepted]) -> dict[str, bytes]:
        """The content hash each of these event ids was first accepted with, if any."""
        if not accepted:
            return {}
        rows = self.store.query(
            "SELECT event_id, hex(argMin(hash, received_at)) FROM event_receipts "
            f"WHERE event_id IN {_IDS} GROUP BY event_id",
            {"ids": _id_list(a.envelope.event_id for a in accepted)})
        return {eid: bytes.fromhex(h) for eid, h in rows}

    def derive(self, records: list[Record]) -> list[Rejected]:
        """Write only the derived tables (and sketch) of whole, already stored events: the
        replay path (`headwater replay`), through the same row builders as `ingest`. Returns
        the records that no longer decode or validate; nothing is dead-lettered."""
        with gc_paused():
            return self._derive(records)

    def _derive(self, records: list[Record]) -> list[Rejected]:
        now = datetime.now(timezone.utc)
        accepted, rejected = decode_batch(records, limits=self.limits)
        rows = self._rows(accepted, now)
        self.store.insert_all(self._table_rows(rows))
        sketch = _sketch_part([], self._uncounted(rows.accepted), now)
        if sketch is not None:
            self.store.insert("curvature_parts", sketch)
        return rejected + rows.rejected

    @staticmethod
    def _table_rows(rows: _Rows) -> list[tuple[str, pa.Table]]:
        return [(table, pa.concat_tables(rows.tables[table])) for table in DERIVED]

    def _repeats_to_count(self, repeats: list[Accepted], rows: _Rows) -> list[Accepted]:
        """Repeats whose gradients the sketch has not counted yet: only a redelivery after a
        failure between the receipts and the sketch insert leaves one (see _sketch_part). An
        event new earlier in this batch is counted with the batch, not looked up."""
        if not repeats:
            return []
        new = {a.envelope.event_id for a in rows.accepted}
        return self._uncounted([a for a in repeats if a.envelope.event_id not in new])

    def _uncounted(self, accepted: list[Accepted]) -> list[Accepted]:
        """The GradientBatch events of `accepted` that no stored curvature part counts.

        Only parts created since the oldest event was emitted (less SKETCH_SKEW for
        producers' clocks) can have counted it, so the lookup reads those alone (a minmax
        index on created_at): its cost follows the recent stream, not the table's size."""
        found = [a for a in accepted if a.gradient is not None]
        if not found:
            return []
        oldest = min(a.envelope.emitted_s for a in found)
        since = datetime.fromtimestamp(oldest, timezone.utc) - SKETCH_SKEW
        counted = {row[0] for row in self.store.query(
            "SELECT DISTINCT e FROM curvature_parts ARRAY JOIN event_ids AS e "
            f"WHERE created_at >= {{since:DateTime64(6, 'UTC')}} AND e IN {_IDS}",
            {"ids": _id_list(a.envelope.event_id for a in found), "since": since})}
        return [a for a in found if a.envelope.event_id not in counted]


    def _rows(self, accepted: list[Accepted], now: datetime) -> _Rows:
        """Run the pure processors. An event whose processing raises (a processor bug the
        validator let through) is isolated by bisection and dead-lettered with the error,
        so one event can neither stall the stream nor take its batch down with it."""
        try:
            by_kind: dict[str | None, list[Accepted]] = {}
            for a in accepted:
                by_kind.setdefault(a.envelope.kind, []).append(a)
            tables = {table: [processor(_of_kinds(accepted, by_kind, PAYLOADS[table]))]
                      for table, processor in DERIVED.items()}
            tables["events"] = [event_rows(accepted, self.transport, now)]
            return _Rows(accepted, [], tables)
        except Exception as exc:
            if len(accepted) == 1:
                a = accepted[0]
                empty = self._rows([], now)
                empty.rejected.append(Rejected(
                    a.index, a.record, f"processing failed: {type(exc).__name__}: {exc}",
                    a.event))
                return empty
            mid = len(accepted) // 2
            left, right = self._rows(accepted[:mid], now), self._rows(accepted[mid:], now)
            return _Rows(left.accepted + right.accepted, left.rejected + right.rejected,
                         {t: left.tables[t] + right.tables[t] for t in left.tables})

    def _reassemble(
        self, records: list[Record], now: datetime
    ) -> tuple[list[Record], list[Ack], list[Rejected]]:
        """Persist chunk records; return whole records (including completed chunk sets)."""
        if not any(r.headers for r in records):  # no chunk among them (the usual batch)
            return records, [], []
        whole = [r for r in records if not chunks.is_chunk(r)]
        parts = [r for r in records if chunks.is_chunk(r)]
        if not parts:
            return whole, [], []
        rows, rejects, pending = [], [], []
        for record in parts:
            try:
                c = chunks.parse_chunk(record)
            except ValueError as exc:
                rejects.append(Rejected(-1, record, str(exc)))
                continue
            rows.append({"event_id": c.event_id, "idx": c.index, "count": c.count,
                         "sha256": c.sha256, "data": c.data, "received_at": now})
            pending.append((c.event_id, record))
        self.store.insert("event_chunks", pa.Table.from_pylist(rows, schema=CHUNK_SCHEMA))
        ids = sorted({eid for eid, _ in pending})
        stored = self.store.query(
            "SELECT event_id, idx, count, sha256, hex(data) FROM event_chunks FINAL "
            "WHERE event_id IN {ids:Array(String)}", {"ids": ids},
        )
        by_event: dict[str, list[chunks.StoredChunk]] = {}
        for eid, idx, count, digest, data_hex in stored:
            by_event.setdefault(eid, []).append(
                chunks.StoredChunk(eid, idx, count, digest, bytes.fromhex(data_hex))
            )
        acks = []
        last_record = {eid: rec for eid, rec in pending}
        for eid in ids:
            pieces = by_event.get(eid, [])
            if pieces and len({p.idx for p in pieces}) == pieces[0].count:
                rec = last_record[eid]
                try:
                    value = chunks.assemble(pieces)
                except ValueError as exc:
                    rejects.append(Rejected(-1, rec, str(exc)))
                    continue
                whole.append(Record(value, rec.topic, rec.partition, rec.offset))
            else:
                acks.append(Ack(-1, eid, True, "waiting for the remaining chunks"))
        return whole, acks, rejects


# A batch's event ids go to ClickHouse as one comma-joined string split there: binding an
# Array(String) of 2,000 ids costs ~2.5 µs more per id in the client. Accepted event ids
# are canonical UUIDs (validate_envelope), so they hold no comma.
_IDS = "splitByChar(',', {ids:String})"


def _id_list(ids: Iterable[str]) -> str:
    return ",".join(sorted(set(ids)))


def _of_kinds(accepted: list[Accepted], by_kind: dict[str | None, list[Accepted]],
              kinds: tuple[str, ...]) -> list[Accepted]:
    """The batch's events of these payload kinds (a processor reads only its own), in
    batch order."""
    if len(kinds) == 1:
        return by_kind.get(kinds[0], [])
    if not any(kind in by_kind for kind in kinds):
        return []
    return [a for a in accepted if a.envelope.kind in kinds]


@lru_cache(maxsize=1)
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def _sketch_part(rows: list[pa.Table], uncounted: list[Accepted], now: datetime
                 ) -> pa.Table | None:
    """The curvature sketch's parts for the batch's new `gradients` rows and the events
    `uncounted` (None without gradients): each event counted exactly once, since a part
    lists its events and is inserted in one write, so it counts them whole or not at all.

    Inserted after the receipts, so an event without a receipt (new in a batch) cannot
    have been counted and needs no lookup: the steady stream sends no id list for the
    sketch. A failure between the receipts and that insert leaves receipted events
    uncounted; their redelivery (no ack or offset commit was given) arrives as repeats,
    which are looked up (EventSink._repeats_to_count) and counted then."""
    tables = [t for t in rows if t.num_rows] + ([gradient_rows(uncounted)] if uncounted else [])
    if not any(t.num_rows for t in tables):
        return None
    # One BLAS thread: beside the store's and the server's threads, OpenBLAS's spinning
    # second thread costs more CPU than it saves (docs/design-decisions.md).
    with _blas().limit(limits=1, user_api="blas"):
        return sketch_parts(pa.concat_tables(tables), int(now.timestamp() * 1_000_000))


def _acks(accepted: list[Accepted], rejected: list[Rejected], extra: list[Ack]) -> list[Ack]:
    acks = [Ack(a.index, a.envelope.event_id, True) for a in accepted]
    acks += [Ack(r.index, r.event.event_id if r.event else "", False, r.error) for r in rejected]
    acks.sort(key=lambda a: a.index)
    return acks + extra
