"""Issue 23, item 1: every fact of the evidence report is re-derived from verified event
bytes and names its event; rewriting a derived table (a source's licence, a forget request's
requester), deleting a chain's head or rewriting an event's bytes fails verification, and
the report shows what the events say, not what the rewritten table says."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.audit_pipeline import fill, rewrite_raw

from headwater.query_service.compliance.builder import build_report
from headwater.query_service.compliance.evidence import SCRATCH_PREFIX, check_derived
from headwater.stream_processors.store import Store


@pytest.fixture
def filled(store: Store, tmp_path: Path) -> tuple[Store, dict]:
    return store, fill(store, tmp_path)


def _report(store: Store) -> dict:
    return build_report(store, "clf", max_samples=1, recompute_hashes=True).model_dump(
        mode="json")


def _status(report: dict) -> dict[str, str]:
    return {s["section"]: s["status"] for s in report["sections"]}


def _stored_hash(store: Store, event_id: str) -> str:
    return store.query("SELECT lower(hex(hash)) FROM events FINAL WHERE event_id = {e:String}",
                       {"e": event_id})[0][0]


def test_every_fact_names_the_verified_event_it_came_from(filled) -> None:
    store, ids = filled
    store.command(f"CREATE DATABASE {SCRATCH_PREFIX}1_left_by_a_crash")  # made in 1970
    report = _report(store)
    rk = report["record_keeping"]
    assert rk["ok"] and not rk["excluded_events"], rk
    assert rk["derived_tables"] and all(t["equal"] for t in rk["derived_tables"])
    assert set(_status(report).values()) <= {"verified", "declared", "computed"}
    erasure_section = next(x for x in report["sections"] if x["section"] == "erasure_log")
    assert f"request {ids['request']}: requester not authenticated" in erasure_section["detail"]
    refs = [v["evidence"] for v in report["model_lineage"]]
    for src in report["data_governance"]["sources"]:
        refs.append(src["evidence"])
        refs += [step["evidence"] for step in src["preparation"]]
    for erasure in report["erasure_log"]:
        refs.append(erasure["evidence"])
        refs += [o["evidence"] for o in erasure["outcomes"]]
    assert len(refs) >= 2 + 2 + 1 + 1 + 1
    for ref in refs:
        assert ref["hash"] and ref["hash"] == _stored_hash(store, ref["event_id"])
    # the scratch database the facts were read from is gone, and so is a stale one
    assert not [d for (d,) in store.query("SHOW DATABASES") if d.startswith(SCRATCH_PREFIX)]


def test_a_rewritten_licence_fails_and_the_report_keeps_the_events_value(filled) -> None:
    store, ids = filled
    store.command("ALTER TABLE sources UPDATE licence = 'public domain' WHERE 1 "
                  "SETTINGS mutations_sync = 2")
    tables, excluded, _ = check_derived(store, [ids["run"]])
    assert [t.table for t in tables if not t.equal] == [f"sources (run {ids['run']})"]
    assert not excluded
    report = _report(store)
    assert {s["licence"] for s in report["data_governance"]["sources"]} == {"consent"}
    assert not report["record_keeping"]["ok"]
    assert _status(report)["data_governance"] == "failed"
    assert "derived table(s) differ" in report["sections"][3]["detail"]


def test_a_forged_requester_fails_and_the_report_names_the_real_one(filled) -> None:
    store, ids = filled
    store.command("ALTER TABLE forget_requests UPDATE requested_by = 'token=dpo role=admin' "
                  "WHERE 1 SETTINGS mutations_sync = 2")
    tables, _, _ = check_derived(store, [ids["run"]])
    assert [t.table for t in tables if not t.equal] == [f"forget_requests (run {ids['run']})"]
    report = _report(store)
    (erasure,) = report["erasure_log"]
    assert erasure["requested_by"] == "dpo@example.org"  # what the event says
    assert _status(report)["erasure_log"] == "failed" and not report["record_keeping"]["ok"]


def test_a_deleted_chain_head_fails_the_report(filled) -> None:
    store, ids = filled
    store.command("DELETE FROM events WHERE producer_id = {p:String} AND seq <= 3",
                  {"p": ids["producer"]})
    report = _report(store)
    rk = report["record_keeping"]
    assert ("truncated", 1) in {(p["kind"], p["seq"]) for p in rk["problems"]}
    assert not rk["ok"] and _status(report)["model_lineage"] == "failed"
    # the sources registered in the deleted events are no longer reported as facts
    assert len(report["data_governance"]["sources"]) < 2
    assert any(not t["equal"] for t in rk["derived_tables"])


def test_rewritten_event_bytes_are_left_out_of_the_facts(filled) -> None:
    store, ids = filled
    rewrite_raw(store, ids["producer"], 1, b"clinic A", b"clinic Z")
    tables, excluded, _ = check_derived(store, [ids["run"]])
    assert list(excluded.values()) == ["stored bytes do not hash to the recorded hash"]
    report = _report(store)
    origins = {s["origin"] for s in report["data_governance"]["sources"]}
    assert "clinic Z" not in origins and "clinic A" not in origins
    assert report["record_keeping"]["excluded_events"][0]["event_id"] in excluded
    assert _status(report)["data_governance"] == "failed"


def test_a_deleted_signed_head_fails_the_report(filled) -> None:
    """Issue 23, item 2 in the report: each producer's key and signed seq; a signed head
    deleted from the store (a shorter chain that verifies alone) fails record keeping."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from headwater.query_service.compliance.producer_keys import attest, register
    from headwater.query_service.compliance.signing import public_pem
    from headwater.query_service.compliance.witness import signed

    store, ids = filled
    key = Ed25519PrivateKey.generate()
    kid, _ = register(store, ids["producer"], public_pem(key.public_key()), "token=a role=admin")
    last, head = store.query("SELECT max(seq), lower(hex(argMax(hash, seq))) FROM events "
                             "FINAL WHERE producer_id = {p:String}", {"p": ids["producer"]})[0]
    attest(store, signed(ids["producer"], ids["run"], int(last), head, "t", key), "token=p")
    report = _report(store)
    chain = report["record_keeping"]["producers"][0]
    assert (chain["key_id"], chain["signed_seq"]) == (kid, int(last))
    section = next(x for x in report["sections"] if x["section"] == "record_keeping")
    assert "1 of 1 producer(s) sign their chain heads" in section["detail"]
    store.command("DELETE FROM events WHERE producer_id = {p:String} AND seq = {s:UInt64}",
                  {"p": ids["producer"], "s": int(last)})
    rk = _report(store)["record_keeping"]
    assert [p["kind"] for p in rk["problems"]] == ["signed_head"], rk["problems"]
    assert "tail was deleted" in rk["problems"][0]["detail"] and not rk["ok"]
