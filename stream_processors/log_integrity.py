"""Verification of the event log: per-producer seq continuity and the hash chain (pure).

Input rows come from `events FINAL` ordered by producer and seq. A *gap* is a missing
seq, a *duplicate* is two different events claiming one seq, a *break* is an event whose
prev_hash is not the hash of the producer's previous event, and a *hash_mismatch* is a
stored event whose bytes no longer hash to its recorded hash (tampering after storage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from google.protobuf.message import DecodeError

from headwater.producers.envelope import GENESIS_HASH, event_hash
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


@dataclass(frozen=True)
class Problem:
    producer_id: str
    kind: str  # gap, duplicate, break, hash_mismatch
    seq: int
    detail: str


@dataclass
class ProducerSummary:
    producer_id: str
    run_id: str
    events: int = 0
    first_seq: int = 0
    last_seq: int = 0
    first_emitted_at: datetime | None = None
    last_emitted_at: datetime | None = None


@dataclass
class LogReport:
    events: int = 0
    producers: list[ProducerSummary] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _recomputed(row: LogRow) -> bytes | None:
    event = events_pb2.Event()
    try:
        event.ParseFromString(row.raw or b"")
    except DecodeError:
        return None
    return event_hash(event)


def verify_log(rows: list[LogRow]) -> LogReport:
    """Check every producer's chain; rows must be sorted by (producer_id, seq)."""
    report = LogReport(events=len(rows))
    current: ProducerSummary | None = None
    prev: LogRow | None = None
    for row in rows:
        if current is None or row.producer_id != current.producer_id:
            current = ProducerSummary(row.producer_id, row.run_id, first_seq=row.seq,
                                      first_emitted_at=row.emitted_at)
            report.producers.append(current)
            prev = None
            if row.seq != 1:
                report.problems.append(Problem(row.producer_id, "gap", 1,
                                               f"seq 1..{row.seq - 1} missing"))
            if row.seq == 1 and row.prev_hash != GENESIS_HASH:
                report.problems.append(Problem(row.producer_id, "break", 1,
                                               "first event's prev_hash is not the genesis hash"))
        current.events += 1
        current.last_seq = row.seq
        current.last_emitted_at = row.emitted_at
        if row.raw is not None and _recomputed(row) != row.hash:
            report.problems.append(Problem(row.producer_id, "hash_mismatch", row.seq,
                                           f"event {row.event_id} no longer matches its hash"))
        if prev is not None:
            if row.seq == prev.seq:
                report.problems.append(Problem(
                    row.producer_id, "duplicate", row.seq,
                    f"events {prev.event_id} and {row.event_id} both claim seq {row.seq}"))
                continue
            if row.seq > prev.seq + 1:
                report.problems.append(Problem(
                    row.producer_id, "gap", prev.seq + 1,
                    f"seq {prev.seq + 1}..{row.seq - 1} missing"))
            elif row.prev_hash != prev.hash:
                report.problems.append(Problem(
                    row.producer_id, "break", row.seq,
                    f"event {row.event_id}: prev_hash does not match the hash of seq {prev.seq}"))
        prev = row
    return report
