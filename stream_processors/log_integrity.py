"""Verification of the event log: per-producer seq continuity and the hash chain (pure).

Each producer numbers its events 1, 2, 3, ... and links each to the one before by
`prev_hash` (the first to the genesis hash); `hash` is the SHA-256 of the event's bytes.
Rows are checked in stored seq order, and every finding names one of these kinds:

- gap: seqs missing inside the chain (events deleted, or never stored);
- truncated: the chain's head (seq 1..k-1) is missing. Retention removes the oldest
  events, so when the first stored event was itself emitted by the retention horizon (plus
  TRUNCATION_GRACE for the TTL's lag) this is a *note*: the head expired, or was deleted
  shortly before it would have. A head missing in front of a younger event cannot have
  expired, so it is a problem (a producer idle for longer than the retention shows so too:
  the verifier cannot tell; the finding says when its first stored event was emitted);
- duplicate: two different events stored under one seq;
- reordered: an event's prev_hash is the hash of another *stored* event, but not of the
  event stored at seq - 1 (or it carries the genesis hash at seq > 1 while seq 1 does
  not): the seq order disagrees with the chain order, so events were renumbered or moved;
- break: the prev_hash matches no stored event although seq - 1 is stored: the event at
  seq - 1 was altered or replaced (or this one was forged); also a second event starting
  from the genesis hash;
- time_reversed: emitted_at decreases along seq order: the producer's clock stepped back,
  or a stored time was rewritten (with hashes recomputed, a rewrite also shows as below);
- hash_mismatch: the stored bytes no longer hash to the recorded hash (bytes tampered);
- column_mismatch: the stored columns (seq, ids, hashes, time) disagree with the hashed
  bytes (an indexed column was rewritten without the bytes);
- overwritten: the stored event is not the one first accepted under its id (its hash
  differs from its receipt: first write wins, so only a write around the sink does this);
- unreceipted: a stored event with no receipt: it was written around the sink.

hash_mismatch and column_mismatch need the raw bytes (`LogRow.raw`); overwritten and
unreceipted need the receipts (`LogRow.receipt_checked`); the others need only the columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import groupby

from google.protobuf.message import DecodeError

from headwater.producers.envelope import GENESIS_HASH, hash_matches
from headwater.v1 import events_pb2


@dataclass(frozen=True)
class LogRow:
    producer_id: str
    run_id: str
    seq: int
    event_id: str
    prev_hash: bytes
    hash: bytes
    emitted_at: datetime
    raw: bytes | None = None  # given when hashes are to be recomputed
    receipt_checked: bool = False  # first_hash was read from event_receipts
    first_hash: bytes | None = None  # the hash first accepted under event_id; None: no receipt


# How long after the retention horizon the first stored event of a chain whose head is
# missing may have been emitted for the head to count as expired: ClickHouse applies TTLs
# at merges, hours late, and a producer's events come seconds or minutes apart.
TRUNCATION_GRACE = timedelta(days=1)


@dataclass(frozen=True)
class Problem:
    producer_id: str
    kind: str  # gap, truncated, duplicate, reordered, break, time_reversed, hash_mismatch, ...
    seq: int
    detail: str


@dataclass
class ProducerSummary:
    producer_id: str
    run_id: str
    events: int = 0
    first_seq: int = 0
    last_seq: int = 0
    first_emitted_at: datetime | None = None  # earliest emitted_at stored
    last_emitted_at: datetime | None = None  # latest emitted_at stored
    head_hash: bytes = b""  # hash of the highest seq: record it to detect later rewrites


@dataclass
class LogReport:
    events: int = 0
    producers: list[ProducerSummary] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)  # findings that do not fail the log
    hashes_recomputed: bool = False
    retention_days: int | None = None  # the events TTL the horizon was derived from

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_emitted_at(self) -> datetime | None:
        times = [p.first_emitted_at for p in self.producers if p.first_emitted_at]
        return min(times) if times else None

    @property
    def last_emitted_at(self) -> datetime | None:
        times = [p.last_emitted_at for p in self.producers if p.last_emitted_at]
        return max(times) if times else None


def verify_log(rows: list[LogRow], horizon: datetime | None = None,
               retention_days: int | None = None) -> LogReport:
    """Check every producer's chain. `horizon`: events emitted before it may have expired
    under retention, so a missing chain head is a note rather than a problem."""
    ordered = sorted(rows, key=lambda r: (r.producer_id, r.seq, r.event_id))
    report = LogReport(events=len(rows), retention_days=retention_days,
                       hashes_recomputed=bool(rows) and all(r.raw is not None for r in rows))
    for _, group in groupby(ordered, key=lambda r: r.producer_id):
        summary, problems, notes = verify_chain(list(group), horizon)
        report.producers.append(summary)
        report.problems.extend(problems)
        report.notes.extend(notes)
    return report


def verify_chain(rows: list[LogRow], horizon: datetime | None = None
                 ) -> tuple[ProducerSummary, list[Problem], list[Problem]]:
    """One producer's rows, sorted by (seq, event_id): its summary, problems and notes."""
    first = rows[0]
    pid = first.producer_id
    times = [r.emitted_at for r in rows]
    summary = ProducerSummary(pid, first.run_id, len(rows), first.seq, rows[-1].seq,
                              min(times), max(times), rows[-1].hash)
    problems: list[Problem] = []
    notes: list[Problem] = []
    by_hash: dict[bytes, LogRow] = {}
    for r in rows:
        by_hash.setdefault(r.hash, r)
    seqs_stored = {r.seq for r in rows}
    head_at_1 = any(r.seq == 1 and r.prev_hash == GENESIS_HASH for r in rows)

    prev: LogRow | None = None
    for seq, same_seq in groupby(rows, key=lambda r: r.seq):
        candidates = list(same_seq)
        row = _in_chain(candidates, prev)
        for other in candidates:
            if other is not row:
                problems.append(Problem(pid, "duplicate", seq,
                                        f"events {row.event_id} and {other.event_id} both "
                                        f"claim seq {seq}"))
        problems.extend(_continuity(row, prev, horizon, notes))
        link = _link(row, prev, by_hash, seqs_stored, head_at_1)
        if link:
            problems.append(link)
        if prev is not None and row.emitted_at < prev.emitted_at:
            problems.append(Problem(pid, "time_reversed", seq,
                                    f"event {row.event_id} emitted at {row.emitted_at.isoformat()}"
                                    f", before seq {prev.seq} ({prev.emitted_at.isoformat()})"))
        for r in candidates:
            problems.extend(_content(r))
            problems.extend(_receipt(r))
        prev = row
    return summary, problems, notes


def _in_chain(candidates: list[LogRow], prev: LogRow | None) -> LogRow:
    """Of the rows claiming one seq, the one linked to the previous event (else the first)."""
    if prev is not None:
        for r in candidates:
            if r.prev_hash == prev.hash:
                return r
    return candidates[0]


def _continuity(row: LogRow, prev: LogRow | None, horizon: datetime | None,
                notes: list[Problem]) -> list[Problem]:
    pid = row.producer_id
    if prev is None and row.seq > 1:
        missing = f"seq 1..{row.seq - 1} missing"
        if horizon is None:
            return [Problem(pid, "truncated", 1, f"{missing}: the chain's head is not stored")]
        if as_utc(row.emitted_at) > horizon + TRUNCATION_GRACE:
            return [Problem(
                pid, "truncated", 1,
                f"{missing}; the first stored event was emitted at "
                f"{row.emitted_at.isoformat()}, after the retention horizon "
                f"{horizon.isoformat()} (+{TRUNCATION_GRACE.days} day): events before it "
                "cannot have expired yet, so they were deleted")]
        notes.append(Problem(
            pid, "truncated", 1,
            f"{missing}; the first stored event was emitted at {row.emitted_at.isoformat()}, "
            f"retention removes events emitted before {horizon.isoformat()}: expired or "
            "deleted cannot be told apart from the log alone"))
        return []
    if prev is not None and row.seq > prev.seq + 1:
        return [Problem(pid, "gap", prev.seq + 1, f"seq {prev.seq + 1}..{row.seq - 1} missing")]
    return []


def _link(row: LogRow, prev: LogRow | None, by_hash: dict[bytes, LogRow],
          seqs_stored: set[int], head_at_1: bool) -> Problem | None:
    """The finding about row's prev_hash, if any (missing predecessors are gaps already)."""
    pid, seq = row.producer_id, row.seq
    if row.prev_hash == GENESIS_HASH:
        if seq == 1:
            return None
        if head_at_1:  # a second chain start: a forged or restarted chain, not a moved head
            return Problem(pid, "break", seq, f"event {row.event_id} at seq {seq} starts from "
                           "the genesis hash although seq 1 already does")
        return Problem(pid, "reordered", seq, f"event {row.event_id} at seq {seq} carries the "
                       "genesis prev_hash: it is the first event of the chain")
    if prev is not None and prev.seq == seq - 1 and row.prev_hash == prev.hash:
        return None
    pred = by_hash.get(row.prev_hash)
    if pred is not None:
        if pred.seq == seq - 1:  # linked to a duplicate of seq - 1, reported as such
            return None
        return Problem(pid, "reordered", seq, f"event {row.event_id} at seq {seq} chains from "
                       f"the event stored at seq {pred.seq} ({pred.event_id})")
    if seq == 1:
        return Problem(pid, "break", 1, f"event {row.event_id} at seq 1 does not start from "
                       "the genesis hash")
    if seq - 1 in seqs_stored:
        return Problem(pid, "break", seq, f"event {row.event_id}: prev_hash matches no stored "
                       f"event; the event at seq {seq - 1} was altered or replaced, or this "
                       "one was forged")
    return None


def _receipt(row: LogRow) -> list[Problem]:
    """Compare the stored event with the one first accepted under its id."""
    if not row.receipt_checked:
        return []
    if row.first_hash is None:
        return [Problem(row.producer_id, "unreceipted", row.seq,
                        f"event {row.event_id} has no receipt: it was written around the "
                        "sink (directly into the store)")]
    if row.first_hash != row.hash:
        return [Problem(row.producer_id, "overwritten", row.seq,
                        f"event {row.event_id} stored with hash {row.hash.hex()[:16]}…, but "
                        f"first accepted with {row.first_hash.hex()[:16]}…: the stored event "
                        "was replaced")]
    return []


def as_utc(t: datetime) -> datetime:
    """A stored time as an aware UTC datetime (ClickHouse may hand back naive ones)."""
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _content(row: LogRow) -> list[Problem]:
    """Recompute the hash of the stored bytes and compare the columns with them."""
    if row.raw is None:
        return []
    pid, seq = row.producer_id, row.seq
    event = events_pb2.Event()
    try:
        event.ParseFromString(row.raw)
    except DecodeError:
        return [Problem(pid, "hash_mismatch", seq,
                        f"event {row.event_id}: stored bytes no longer decode as an Event")]
    found = []
    if not hash_matches(event, row.hash):
        found.append(Problem(pid, "hash_mismatch", seq,
                             f"event {row.event_id}: stored bytes no longer match its hash"))
    emitted = datetime.fromtimestamp(event.emitted_at.seconds, timezone.utc).replace(
        microsecond=event.emitted_at.nanos // 1000)
    stored_time = as_utc(row.emitted_at)
    differ = [name for name, column, hashed in (
        ("seq", row.seq, event.seq), ("event_id", row.event_id, event.event_id),
        ("producer_id", row.producer_id, event.producer_id), ("run_id", row.run_id, event.run_id),
        ("prev_hash", row.prev_hash, event.prev_hash), ("hash", row.hash, event.hash),
        ("emitted_at", stored_time, emitted),
    ) if column != hashed]
    if differ:
        found.append(Problem(pid, "column_mismatch", seq,
                             f"event {row.event_id}: stored {', '.join(differ)} differ from "
                             "the hashed bytes"))
    return found


def report_as_dict(report: LogReport) -> dict:
    """The report as JSON-ready data (times ISO 8601, hashes hex)."""

    def iso(t: datetime | None) -> str | None:
        return t.isoformat() if t else None

    return {
        "ok": report.ok, "events": report.events,
        "first_emitted_at": iso(report.first_emitted_at),
        "last_emitted_at": iso(report.last_emitted_at),
        "hashes_recomputed": report.hashes_recomputed,
        "retention_days": report.retention_days,
        "producers": [{
            "producer_id": p.producer_id, "run_id": p.run_id, "events": p.events,
            "first_seq": p.first_seq, "last_seq": p.last_seq,
            "first_emitted_at": iso(p.first_emitted_at), "last_emitted_at": iso(p.last_emitted_at),
            "head_hash": p.head_hash.hex(),
        } for p in report.producers],
        "problems": [vars(x) for x in report.problems],
        "notes": [vars(x) for x in report.notes],
    }
