"""Every finding of the chain verifier (stream_processors/log_integrity.py) with its exact
kind, seq and wording, the retention note's boundary, the summary and the JSON report: the
checks a mutant of the verifier (issue 25, `make mutate`) got past elsewhere."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest

from headwater.producers.envelope import GENESIS_HASH, EnvelopeBuilder
from headwater.stream_processors import log_integrity as li
from headwater.v1 import events_pb2

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _events(n: int, producer: str = "prod-a") -> list[events_pb2.Event]:
    env = EnvelopeBuilder("run-m", producer)
    return [env.wrap(events_pb2.ModelVersionRecorded(model_id="m", version=f"v{i}"))
            for i in range(n)]


def _emitted(e: events_pb2.Event) -> datetime:
    return datetime.fromtimestamp(e.emitted_at.seconds, timezone.utc).replace(
        microsecond=e.emitted_at.nanos // 1000)


def _row(e: events_pb2.Event, *, raw: bool = False, **columns) -> li.LogRow:
    fields = dict(producer_id=e.producer_id, run_id=e.run_id, seq=e.seq, event_id=e.event_id,
                  prev_hash=e.prev_hash, hash=e.hash, emitted_at=T0 + timedelta(seconds=e.seq),
                  raw=e.SerializeToString(deterministic=True) if raw else None)
    if raw:
        fields["emitted_at"] = _emitted(e)
    fields.update(columns)
    return li.LogRow(**fields)


def _found(rows: list[li.LogRow], horizon: datetime | None = None):
    _, problems, notes = li.verify_chain(sorted(rows, key=lambda r: (r.seq, r.event_id)),
                                         horizon)
    return [(p.kind, p.seq, p.detail) for p in problems], [(n.kind, n.seq, n.detail)
                                                         for n in notes]


def test_a_gap_names_the_missing_seqs() -> None:
    e = _events(6)
    rows = [_row(x) for x in (e[0], e[1], e[4], e[5])]
    assert _found(rows) == ([("gap", 3, "seq 3..4 missing")], [])


def test_a_missing_head_without_retention_is_truncation() -> None:
    e = _events(4)
    assert _found([_row(x) for x in e[2:]]) == (
        [("truncated", 1, "seq 1..2 missing: the chain's head is not stored")], [])


def test_a_missing_head_is_a_note_up_to_the_grace_after_the_horizon_then_a_problem() -> None:
    e = _events(3)
    horizon = T0 - li.TRUNCATION_GRACE + timedelta(seconds=2)  # first stored: seq 2 at T0+2s
    problems, notes = _found([_row(x) for x in e[1:]], horizon)
    assert problems == [] and [(k, s) for k, s, _ in notes] == [("truncated", 1)]
    assert notes[0][2] == (f"seq 1..1 missing; the first stored event was emitted at "
                           f"{(T0 + timedelta(seconds=2)).isoformat()}, retention removes "
                           f"events emitted before {horizon.isoformat()}: expired or deleted "
                           "cannot be told apart from the log alone")
    later = horizon - timedelta(microseconds=1)  # one microsecond past the grace
    problems, notes = _found([_row(x) for x in e[1:]], later)
    assert notes == [] and problems == [("truncated", 1, (
        f"seq 1..1 missing; the first stored event was emitted at "
        f"{(T0 + timedelta(seconds=2)).isoformat()}, after the retention horizon "
        f"{later.isoformat()} (+1 day): events before it cannot have expired yet, so they "
        "were deleted"))]
    naive = [_row(x, emitted_at=(T0 + timedelta(seconds=x.seq)).replace(tzinfo=None))
             for x in e[1:]]
    assert _found(naive, later)[0][0][0] == "truncated"  # naive times are read as UTC


def test_duplicates_keep_the_linked_event_in_the_chain() -> None:
    e = _events(3)
    forged = _row(e[1], event_id="0-forged", prev_hash=b"\1" * 32, hash=b"\2" * 32)
    problems, _ = _found([_row(e[0]), forged, _row(e[1]), _row(e[2])])
    assert problems == [("duplicate", 2, f"events {e[1].event_id} and 0-forged both claim "
                                         "seq 2")]


def test_a_first_duplicate_is_in_the_chain_when_none_links() -> None:
    e = _events(2)
    a = _row(e[1], event_id="a", prev_hash=b"\1" * 32, hash=b"\3" * 32)
    b = _row(e[1], event_id="b", prev_hash=b"\2" * 32, hash=b"\4" * 32)
    kinds = [(k, s, d) for k, s, d in _found([_row(e[0]), a, b])[0]]
    assert kinds[0] == ("duplicate", 2, "events a and b both claim seq 2")
    assert [k for k, *_ in kinds] == ["duplicate", "break"]


def test_a_moved_event_is_reordered_naming_where_its_predecessor_is() -> None:
    e = _events(4)
    rows = [_row(e[0]), _row(e[1]), _row(e[3], seq=3, emitted_at=T0 + timedelta(seconds=3)),
            _row(e[2], seq=4, emitted_at=T0 + timedelta(seconds=4))]
    problems, _ = _found(rows)
    assert problems == [
        ("reordered", 3, f"event {e[3].event_id} at seq 3 chains from the event stored at "
                         f"seq 4 ({e[2].event_id})"),
        ("reordered", 4, f"event {e[2].event_id} at seq 4 chains from the event stored at "
                         f"seq 2 ({e[1].event_id})")]


def test_a_genesis_link_after_seq_1_is_reordered_when_seq_1_does_not_start() -> None:
    e = _events(3)
    head = _row(e[0], prev_hash=b"\x09" * 32)  # seq 1 no longer from genesis
    moved = _row(e[2], prev_hash=GENESIS_HASH)
    problems, _ = _found([head, _row(e[1]), moved])
    assert problems == [
        ("break", 1, f"event {e[0].event_id} at seq 1 does not start from the genesis hash"),
        ("reordered", 3, f"event {e[2].event_id} at seq 3 carries the genesis prev_hash: it "
                         "is the first event of the chain")]


def test_a_link_to_nothing_stored_is_a_break_only_when_the_predecessor_is_stored() -> None:
    e = _events(4)
    altered = _row(e[2], prev_hash=b"\7" * 32)
    assert _found([_row(e[0]), _row(e[1]), altered, _row(e[3])])[0] == [
        ("break", 3, f"event {e[2].event_id}: prev_hash matches no stored event; the event at "
                     "seq 2 was altered or replaced, or this one was forged")]
    assert _found([_row(e[0]), altered, _row(e[3])])[0] == [("gap", 2, "seq 2..2 missing")]


def test_time_running_backwards_is_named() -> None:
    e = _events(3)
    back = _row(e[2], emitted_at=T0)
    problems, _ = _found([_row(e[0]), _row(e[1]), back])
    assert problems == [("time_reversed", 3, (
        f"event {e[2].event_id} emitted at {T0.isoformat()}, before seq 2 "
        f"({(T0 + timedelta(seconds=2)).isoformat()})"))]
    same = _row(e[2], emitted_at=T0 + timedelta(seconds=2))
    assert _found([_row(e[0]), _row(e[1]), same])[0] == []  # equal times are in order


def test_bytes_that_do_not_decode_or_hash_and_columns_that_differ() -> None:
    e = _events(2)
    assert _found([_row(e[0], raw=True), _row(e[1], raw=True)]) == ([], [])
    undecodable = li.LogRow(**{**vars(_row(e[1], raw=True)), "raw": b"\xff\xff\xff"})
    assert _found([_row(e[0], raw=True), undecodable])[0] == [
        ("hash_mismatch", 2, f"event {e[1].event_id}: stored bytes no longer decode as an "
                             "Event")]
    tampered = events_pb2.Event()
    tampered.CopyFrom(e[1])
    tampered.model_version_recorded.version = "v9"
    changed = li.LogRow(**{**vars(_row(e[1], raw=True)),
                           "raw": tampered.SerializeToString(deterministic=True)})
    assert _found([_row(e[0], raw=True), changed])[0] == [
        ("hash_mismatch", 2, f"event {e[1].event_id}: stored bytes no longer match its hash")]
    for column, value in (("seq", 2), ("event_id", "other"), ("producer_id", "prod-a"),
                          ("run_id", "run-x"), ("prev_hash", b"\5" * 32), ("hash", b"\6" * 32),
                          ("emitted_at", _emitted(e[1]) + timedelta(microseconds=1))):
        row = li.LogRow(**{**vars(_row(e[1], raw=True)), column: value})
        found = [p for p in _found([_row(e[0], raw=True), row])[0] if p[0] == "column_mismatch"]
        if column in ("seq", "producer_id"):
            assert found == [], column  # the same as hashed
        else:
            assert found == [("column_mismatch", 2, f"event {row.event_id}: stored {column} "
                                                    "differ from the hashed bytes")], column
    naive = [li.LogRow(**{**vars(_row(x, raw=True)),
                          "emitted_at": _emitted(x).replace(tzinfo=None)}) for x in e]
    assert _found(naive)[0] == []  # ClickHouse may hand back naive times: read as UTC


def test_receipts_name_overwritten_and_unreceipted_events() -> None:
    e = _events(2)
    ok = _row(e[1], receipt_checked=True, first_hash=e[1].hash)
    assert _found([_row(e[0]), ok])[0] == []
    assert _found([_row(e[0]), _row(e[1], receipt_checked=False)])[0] == []
    none = _row(e[1], receipt_checked=True, first_hash=None)
    assert _found([_row(e[0]), none])[0] == [
        ("unreceipted", 2, f"event {e[1].event_id} has no receipt: it was written around the "
                           "sink (directly into the store)")]
    other = hashlib.sha256(b"first").digest()
    replaced = _row(e[1], receipt_checked=True, first_hash=other)
    assert _found([_row(e[0]), replaced])[0] == [
        ("overwritten", 2, f"event {e[1].event_id} stored with hash {e[1].hash.hex()[:16]}…, "
                           f"but first accepted with {other.hex()[:16]}…: the stored event "
                           "was replaced")]


def test_verify_log_groups_producers_and_summarises_each() -> None:
    a, b = _events(3, "prod-a"), _events(2, "prod-b")
    rows = [_row(x) for x in (b[1], a[2], a[0], b[0], a[1])]
    report = li.verify_log(rows, retention_days=200)
    assert report.ok and report.events == 5 and report.retention_days == 200
    assert not report.hashes_recomputed
    assert [(p.producer_id, p.run_id, p.events, p.first_seq, p.last_seq) for p in
            report.producers] == [("prod-a", "run-m", 3, 1, 3), ("prod-b", "run-m", 2, 1, 2)]
    assert report.producers[0].head_hash == a[2].hash
    assert report.producers[0].first_emitted_at == T0 + timedelta(seconds=1)
    assert report.producers[0].last_emitted_at == T0 + timedelta(seconds=3)
    assert report.first_emitted_at == T0 + timedelta(seconds=1)
    assert report.last_emitted_at == T0 + timedelta(seconds=3)
    full = li.verify_log([_row(x, raw=True) for x in a])
    assert full.hashes_recomputed and full.ok
    assert not li.verify_log([_row(a[0], raw=True), _row(a[1])]).hashes_recomputed
    empty = li.verify_log([])
    assert empty.ok and not empty.hashes_recomputed and empty.first_emitted_at is None \
        and empty.last_emitted_at is None


def test_a_bad_chain_fails_the_report_and_notes_do_not() -> None:
    e = _events(3)
    bad = li.verify_log([_row(e[0]), _row(e[2])])
    assert not bad.ok and [p.kind for p in bad.problems] == ["gap"]
    noted = li.verify_log([_row(e[2])], horizon=T0 + timedelta(days=30))
    assert noted.ok and [n.kind for n in noted.notes] == ["truncated"]


def test_report_as_dict_is_json_ready() -> None:
    e = _events(2)
    report = li.verify_log([_row(e[1])], retention_days=7)
    out = li.report_as_dict(report)
    assert out == {
        "ok": False, "events": 1,
        "first_emitted_at": (T0 + timedelta(seconds=2)).isoformat(),
        "last_emitted_at": (T0 + timedelta(seconds=2)).isoformat(),
        "hashes_recomputed": False, "retention_days": 7,
        "producers": [{"producer_id": "prod-a", "run_id": "run-m", "events": 1,
                       "first_seq": 2, "last_seq": 2,
                       "first_emitted_at": (T0 + timedelta(seconds=2)).isoformat(),
                       "last_emitted_at": (T0 + timedelta(seconds=2)).isoformat(),
                       "head_hash": e[1].hash.hex()}],
        "problems": [{"producer_id": "prod-a", "kind": "truncated", "seq": 1,
                      "detail": "seq 1..1 missing: the chain's head is not stored"}],
        "notes": []}
    assert li.report_as_dict(li.verify_log([]))["first_emitted_at"] is None


def test_as_utc_keeps_aware_times_and_reads_naive_ones_as_utc() -> None:
    aware = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert li.as_utc(aware) is aware
    assert li.as_utc(datetime(2026, 1, 1, 12)) == datetime(2026, 1, 1, 12, tzinfo=timezone.utc)


@pytest.mark.parametrize("seq", [1, 2])
def test_an_intact_chain_from_any_seq_in_the_window_has_no_link_finding(seq: int) -> None:
    e = _events(3)
    assert [k for k, *_ in _found([_row(x) for x in e[seq - 1:]])[0]] == \
        ([] if seq == 1 else ["truncated"])


def test_rows_are_values_and_an_empty_summary_counts_nothing() -> None:
    row = _row(_events(1)[0])
    with pytest.raises(AttributeError):
        row.seq = 2  # type: ignore[misc]
    assert hash(row) == hash(_row(_events(1)[0], event_id=row.event_id, hash=row.hash,
                                  prev_hash=row.prev_hash, emitted_at=row.emitted_at))
    empty = li.ProducerSummary("p", "r")
    assert (empty.events, empty.first_seq, empty.last_seq, empty.head_hash) == (0, 0, 0, b"")
    assert empty.first_emitted_at is None and empty.last_emitted_at is None


def test_a_link_to_the_other_duplicate_of_the_previous_seq_is_only_the_duplicate() -> None:
    e = _events(3)
    forged = _row(e[1], event_id="0-forged", hash=b"\2" * 32)  # also links to seq 1
    problems, _ = _found([_row(e[0]), forged, _row(e[1]), _row(e[2])])
    assert [(k, s) for k, s, _ in problems] == [("duplicate", 2)]


def test_findings_and_an_empty_report_are_values() -> None:
    problem = li.Problem("p", "gap", 2, "seq 2..2 missing")
    with pytest.raises(AttributeError):
        problem.kind = "break"  # type: ignore[misc]
    empty = li.LogReport()
    assert empty.ok and empty.events == 0 and not empty.hashes_recomputed
    assert empty.retention_days is None and empty.producers == [] and empty.notes == []


def test_an_event_renumbered_across_a_gap_is_also_reordered() -> None:
    e = _events(2)
    moved = _row(e[1], seq=3, emitted_at=T0 + timedelta(seconds=3))  # links to seq 1
    problems, _ = _found([_row(e[0]), moved])
    assert [(k, s) for k, s, _ in problems] == [("gap", 2), ("reordered", 3)]
