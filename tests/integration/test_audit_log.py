"""Record-keeping (Art. 12): tampering, deletion, reordering and duplicates in the stored
log are detected by kind; `headwater audit verify`; retention TTL; the audit SQL views and
every example query of docs/sql.md run against a store filled by a real pipeline."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError
from support.audit_pipeline import fill, rewrite_raw

from conftest import REPO, Serve, run_headwater
from headwater.errors import ConfigError
from headwater.producers.envelope import EnvelopeBuilder, event_hash
from headwater.producers.transports.base import Record
from headwater.query_service.compliance.log_reader import verify_stored_log
from headwater.query_service.settings import Settings
from headwater.query_service.sql.reader import SqlReader
from headwater.stream_processors.log_integrity import LogRow, verify_log
from headwater.stream_processors.retention import stored_events_retention
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Migration, Store
from headwater.v1 import events_pb2


@pytest.fixture
def filled(store: Store, tmp_path: Path) -> tuple[Store, dict]:
    return store, fill(store, tmp_path)


def _kinds(report) -> set[str]:
    return {p.kind for p in report.problems}


def _event_ids(store: Store, producer: str, *seqs: int) -> list[str]:
    return [store.query("SELECT event_id FROM events FINAL WHERE producer_id = {p:String} "
                        "AND seq = {s:UInt64}", {"p": producer, "s": s})[0][0] for s in seqs]


# -- stored log ------------------------------------------------------------------------------

def test_an_intact_log_verifies_and_reports_its_time_span(filled) -> None:
    store, ids = filled
    report = verify_stored_log(store, recompute_hashes=True)
    assert report.ok and report.hashes_recomputed and not report.notes
    first, last, n = store.query("SELECT min(emitted_at), max(emitted_at), count() "
                                 "FROM events FINAL")[0]
    assert report.events == n == report.producers[0].events
    assert report.first_emitted_at == first.replace(tzinfo=timezone.utc)
    assert report.last_emitted_at == last.replace(tzinfo=timezone.utc)
    head = store.query("SELECT hex(hash) FROM events FINAL ORDER BY seq DESC LIMIT 1")[0][0]
    assert report.producers[0].head_hash.hex() == head.lower()
    assert report.retention_days == 190


def test_rewritten_event_bytes_are_a_hash_mismatch(filled) -> None:
    store, ids = filled
    rewrite_raw(store, ids["producer"], 1, b"clinic A", b"clinic Z")
    assert verify_stored_log(store).ok  # the columns alone cannot see it
    report = verify_stored_log(store, recompute_hashes=True)
    assert [(p.kind, p.seq) for p in report.problems] == [("hash_mismatch", 1)]


def test_a_forged_event_with_a_fresh_hash_breaks_the_chain(filled) -> None:
    store, ids = filled
    seq, raw = store.query("SELECT seq, hex(raw) FROM events FINAL WHERE producer_id = {p:String} "
                           "AND payload_type = 'op_recorded' ORDER BY seq LIMIT 1",
                           {"p": ids["producer"]})[0]
    event = events_pb2.Event.FromString(bytes.fromhex(raw))
    event.op_recorded.op_name = "forged"
    event.hash = event_hash(event)
    store.command("INSERT INTO events SELECT * REPLACE (unhex({r:String}) AS raw, "
                  "unhex({h:String}) AS hash) FROM events FINAL WHERE producer_id = {p:String} "
                  "AND seq = {s:UInt64}", {"r": event.SerializeToString(deterministic=True).hex(),
                                           "h": event.hash.hex(), "p": ids["producer"], "s": seq})
    report = verify_stored_log(store, recompute_hashes=True)
    # the replaced event differs from its receipt; the next one no longer links to it
    assert [(p.kind, p.seq) for p in report.problems] == [("overwritten", seq),
                                                          ("break", seq + 1)]


def test_a_deleted_event_is_a_gap(filled) -> None:
    store, ids = filled
    store.command("DELETE FROM events WHERE producer_id = {p:String} AND seq = 4",
                  {"p": ids["producer"]})
    report = verify_stored_log(store, recompute_hashes=True)
    assert [(p.kind, p.seq) for p in report.problems] == [("gap", 4)]
    assert "seq 4..4 missing" in report.problems[0].detail


def test_a_missing_head_is_a_problem_unless_it_can_have_expired(filled) -> None:
    """Issue 14 row 10: deleting the first events of a chain fails verification; only a head
    older than the retention horizon (the first stored event emitted by then) is a note."""
    store, ids = filled
    store.command("DELETE FROM events WHERE producer_id = {p:String} AND seq = 1",
                  {"p": ids["producer"]})
    report = verify_stored_log(store)
    assert [(p.kind, p.seq) for p in report.problems] == [("truncated", 1)]
    assert "cannot have expired yet" in report.problems[0].detail
    first = store.query("SELECT min(emitted_at) FROM events")[0][0].replace(tzinfo=timezone.utc)
    days = stored_events_retention(store)
    later = verify_stored_log(store, now=first + timedelta(days=days, hours=1))
    assert later.ok and [n.kind for n in later.notes] == ["truncated"]
    assert "cannot be told apart" in later.notes[0].detail
    rows = [LogRow(ids["producer"], "r", s, e, bytes.fromhex(ph), bytes.fromhex(h), t)
            for s, e, ph, h, t in store.query(
                "SELECT seq, event_id, hex(prev_hash), hex(hash), emitted_at FROM events FINAL "
                "ORDER BY seq")]
    assert _kinds(verify_log(rows)) == {"truncated"}  # no retention horizon: a problem


def test_swapped_seqs_are_reordering(filled) -> None:
    store, ids = filled
    p = ids["producer"]
    e2, e3 = _event_ids(store, p, 2, 3)
    store.command("INSERT INTO events SELECT * REPLACE (if(seq = 2, 3, 2) AS seq) FROM (SELECT "
                  "* FROM events FINAL WHERE producer_id = {p:String} AND seq IN (2, 3))",
                  {"p": p})
    store.command("DELETE FROM events WHERE producer_id = {p:String} AND ((seq = 2 AND "
                  "event_id = {a:String}) OR (seq = 3 AND event_id = {b:String}))",
                  {"p": p, "a": e2, "b": e3})
    report = verify_stored_log(store)
    # emitted_at now also runs backwards at seq 3, unless both were emitted in one microsecond
    assert "reordered" in _kinds(report) <= {"reordered", "time_reversed"}
    assert {x.seq for x in report.problems if x.kind == "reordered"} == {2, 3, 4}
    assert any(f"chains from the event stored at seq 3 ({e2})" in x.detail
               for x in report.problems)
    recomputed = verify_stored_log(store, recompute_hashes=True)
    assert {"reordered", "column_mismatch"} <= _kinds(recomputed)
    assert {x.seq for x in recomputed.problems if x.kind == "column_mismatch"} == {2, 3}


def test_time_going_backwards_is_reported(filled) -> None:
    store, ids = filled
    store.command("INSERT INTO events SELECT * REPLACE (emitted_at - INTERVAL 1 SECOND AS "
                  "emitted_at) FROM events FINAL WHERE producer_id = {p:String} AND seq = 5",
                  {"p": ids["producer"]})
    assert [(x.kind, x.seq) for x in verify_stored_log(store).problems] == [("time_reversed", 5)]
    recomputed = verify_stored_log(store, recompute_hashes=True)
    assert _kinds(recomputed) == {"time_reversed", "column_mismatch"}


def test_two_events_claiming_one_seq_are_duplicates(filled) -> None:
    store, ids = filled
    impostor = EnvelopeBuilder(ids["run"], producer_id=ids["producer"])
    records = [Record(impostor.wrap(events_pb2.ModelVersionRecorded(
        model_id="clf", version=f"x{i}")).SerializeToString(deterministic=True))
        for i in range(2)]
    EventSink(store, "local").ingest(records)
    report = verify_stored_log(store, recompute_hashes=True)
    assert [(p.kind, p.seq) for p in report.problems] == [("duplicate", 1), ("duplicate", 2)]


def test_pure_verifier_on_built_chains() -> None:
    b = EnvelopeBuilder("run", producer_id="p")
    events = [b.wrap(events_pb2.ModelVersionRecorded(model_id="m", version=str(i)))
              for i in range(5)]

    def row(e: events_pb2.Event, **change) -> LogRow:
        t = datetime.fromtimestamp(e.emitted_at.seconds, timezone.utc).replace(
            microsecond=e.emitted_at.nanos // 1000)
        fields = dict(producer_id=e.producer_id, run_id=e.run_id, seq=e.seq,
                      event_id=e.event_id, prev_hash=e.prev_hash, hash=e.hash, emitted_at=t,
                      raw=e.SerializeToString(deterministic=True))
        return LogRow(**{**fields, **change})

    rows = [row(e) for e in events]
    report = verify_log(rows)
    assert report.ok and report.producers[0].last_seq == 5
    assert report.first_emitted_at == rows[0].emitted_at
    # the genesis event moved to seq 3, the old seq 3 to seq 1
    moved = [row(events[2], seq=1), rows[1], row(events[0], seq=3), rows[3], rows[4]]
    kinds = {(p.kind, p.seq) for p in verify_log(moved).problems}
    assert ("reordered", 3) in kinds and ("column_mismatch", 3) in kinds
    assert ("break", 1) not in kinds and ("reordered", 1) in kinds
    garbage = [rows[0], row(events[1], raw=b"\xff\xff"), *rows[2:]]
    assert [(p.kind, p.seq) for p in verify_log(garbage).problems] == [("hash_mismatch", 2)]


# -- the command -----------------------------------------------------------------------------

def _verify(data_dir: Path, *args: str, serve: Serve | None = None):
    if serve is not None:
        return serve.cli("audit", "verify", *args)
    return run_headwater("audit", "verify", "--data-dir", str(data_dir), *args)


def test_audit_verify_embedded_and_through_serve(tmp_path: Path) -> None:
    data = tmp_path / "data"
    script = REPO / "tests" / "support" / "audit_pipeline.py"
    made = subprocess.run([sys.executable, str(script), str(data)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert made.returncode == 0, made.stderr
    producer = made.stdout.strip()
    clean = _verify(data, "--run", "clean-run")
    assert clean.returncode == 0, clean.stderr
    assert "intact" in clean.stdout and "retention 190 days" in clean.stdout
    columns_only = _verify(data, "--json")
    assert columns_only.returncode == 1
    found = json.loads(columns_only.stdout)
    assert [(p["kind"], p["seq"], p["producer_id"]) for p in found["problems"]] == [
        ("gap", 4, producer)]
    assert found["first_emitted_at"] < found["last_emitted_at"] and len(found["producers"]) == 2
    # issue 23: derived tables against their rebuild from the verified events
    differ = {t["table"] for t in found["derived_tables"] if not t["equal"]}
    assert differ and all(t.endswith("(run tampered-run)") for t in differ)
    assert "sources (run tampered-run)" in differ  # the rewritten registration is left out
    assert list(found["excluded_events"].values()) == [
        "stored bytes do not hash to the recorded hash"]
    text = _verify(data, "--recompute-hashes")
    assert text.returncode == 1 and "hash_mismatch" in text.stdout and "gap" in text.stdout
    server = Serve(data)
    server.start()
    try:
        remote = _verify(data, "--recompute-hashes", "--json", serve=server)
        assert remote.returncode == 1, remote.stderr
        got = json.loads(remote.stdout)
        assert {(p["kind"], p["seq"]) for p in got["problems"]} == {("gap", 4),
                                                                    ("hash_mismatch", 1)}
        assert got["hashes_recomputed"] and got["retention_days"] == 190
        assert got["first_emitted_at"] == found["first_emitted_at"]
        assert {t["table"] for t in got["derived_tables"] if not t["equal"]} == differ
        assert _verify(data, "--run", "clean-run", serve=server).returncode == 0
    finally:
        server.stop()


# -- retention -------------------------------------------------------------------------------

def test_retention_under_six_months_is_refused(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"Art\. 19\(1\) and 26\(6\)"):
        Settings(events_retention_days=182)
    assert Settings(events_retention_days=183).events_retention_days == 183
    assert Settings().events_retention_days == 190
    with pytest.raises(ConfigError, match="under six months"):
        store.migrate(30)
    cli = run_headwater("audit", "verify", "--data-dir", str(tmp_path),
                        env={"HEADWATER_EVENTS_RETENTION_DAYS": "90"})
    assert cli.returncode == 2 and "Art. 19(1) and 26(6)" in cli.stderr


def test_events_carry_the_retention_ttl(store: Store) -> None:
    create = store.query("SHOW CREATE TABLE events")[0][0]
    assert "TTL toDateTime(emitted_at) + toIntervalDay(190)" in create
    store.migrate(400)
    assert "toIntervalDay(400)" in store.query("SHOW CREATE TABLE events")[0][0]
    assert stored_events_retention(store) == 400
    store.migrate(400)  # idempotent: nothing to change
    assert stored_events_retention(store) == 400
    now = datetime.now(timezone.utc)
    report = verify_stored_log(store, now=now)
    assert report.ok and report.retention_days == 400 and report.events == 0


# -- SQL for auditors ------------------------------------------------------------------------

def _sql_examples(doc: Path) -> list[str]:
    blocks = re.findall(r"```sql\n(.*?)```", doc.read_text(), flags=re.S)
    return [s for b in blocks for s in Migration(0, doc.name, b).statements()]


def test_every_example_query_of_the_sql_doc_runs(filled) -> None:
    store, ids = filled
    examples = _sql_examples(REPO / "docs" / "sql.md")
    assert len(examples) >= 10
    for sql in examples:
        names = set(re.findall(r"\{(\w+):\w+\}", sql))
        missing = names - set(ids)
        assert not missing, f"docs/sql.md example needs a value for {missing}: {sql}"
        # through the auditors' sandbox: every documented query must pass its checks
        result = SqlReader(store).run(sql, {k: ids[k] for k in names}, 10_000)
        rows = result.rows
        if "dead_letters" not in sql:  # the pipeline rejects nothing
            assert rows, f"docs/sql.md example returned no rows: {sql}"


def test_audit_views_answer_at_node_granularity(filled) -> None:
    store, ids = filled
    sources = store.query("SELECT DISTINCT source_id, uri FROM audit_prediction_sources "
                          "WHERE prediction_id = {p:String}", {"p": ids["prediction"]})
    assert len(sources) == 2 and ids["source"] in {s for s, _ in sources}
    models = store.query("SELECT DISTINCT model_id, model_version FROM audit_source_models "
                         "WHERE source_id = {s:String} ORDER BY 2", {"s": ids["source"]})
    assert models == [("clf", "v1"), ("clf", "v2")]
    erasure = store.query("SELECT outcome, new_version, rows_forgotten FROM audit_erasures")
    assert erasure == [("APPLIED", "v3", 15)]
    coverage = store.query("SELECT events, first_seq, last_seq, missing_seqs, duplicate_seqs "
                           "FROM audit_log_coverage")
    n = store.query("SELECT count() FROM events FINAL")[0][0]
    assert coverage == [(n, 1, n, 0, 0)]
    store.command("DELETE FROM events WHERE producer_id = {p:String} AND seq = 2",
                  {"p": ids["producer"]})
    assert store.query("SELECT missing_seqs FROM audit_log_coverage") == [(1,)]


def test_readonly_role_parses_with_the_migration_splitter(store: Store) -> None:
    path = REPO / "deploy" / "clickhouse" / "readonly_role.sql"
    statements = Migration(0, path.name, path.read_text()).statements()
    assert [s.split()[0] for s in statements] == ["CREATE", "CREATE", "GRANT"]
    assert "readonly = 1" in statements[1] and "SELECT ON headwater.*" in statements[2]
    for s in statements:  # ClickHouse's own parser (chDB has no access control to run them)
        store.query("SELECT formatQuery({q:String})", {"q": s})
