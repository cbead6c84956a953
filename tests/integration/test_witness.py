"""Issue 23, item 2: signed chain-head checkpoints in an append-only witness file; deleting
a chain's tail verifies on the log alone but fails against the witness; a checkpoint signed
by another key is refused; `audit checkpoint` / `audit verify --witness` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.audit_pipeline import fill, fill_in_child, key_pair

from conftest import REPO, run_headwater
from headwater.errors import ConfigError
from headwater.query_service.compliance.log_reader import verify_stored_log
from headwater.query_service.compliance.signing import key_id
from headwater.query_service.compliance.witness import (
    FileWitness,
    Trusted,
    check_witness,
    checkpoints,
)
from headwater.stream_processors.store import Store


def _trust(key: Ed25519PrivateKey) -> dict[str, Trusted]:
    return {key_id(key.public_key()): Trusted(key.public_key())}


def _stored(store: Store) -> dict[tuple[str, int], str]:
    return {(p, int(s)): h for p, s, h in store.query(
        "SELECT producer_id, seq, lower(hex(hash)) FROM events FINAL")}


def test_tail_deletion_verifies_alone_but_fails_against_the_witness(store, tmp_path) -> None:
    ids = fill(store, tmp_path)
    key = Ed25519PrivateKey.generate()
    witness = FileWitness(tmp_path / "witness.jsonl")
    log = verify_stored_log(store)
    witness.append(checkpoints(log, key, "2026-01-01T00:00:00Z"))
    (head,) = witness.read()
    assert head.seq == log.producers[0].last_seq and check_witness(
        witness.read(), _stored(store), _trust(key)) == []

    store.command("DELETE FROM events WHERE producer_id = {p:String} AND seq >= {s:UInt64}",
                  {"p": ids["producer"], "s": head.seq - 1})
    assert verify_stored_log(store).ok  # a shorter chain is a valid chain
    (failure,) = check_witness(witness.read(), _stored(store), _trust(key))
    assert f"no longer holds seq {head.seq}" in failure and "tail was deleted" in failure


def test_rewritten_head_and_foreign_checkpoints_fail(store, tmp_path) -> None:
    fill(store, tmp_path)
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    (good,) = checkpoints(verify_stored_log(store), key, "2026-01-01T00:00:00Z")
    stored = _stored(store)
    rewritten = {**stored, (good.producer_id, good.seq): "00" * 32}
    assert "the tail was rewritten" in check_witness([good], rewritten, _trust(key))[0]
    (foreign,) = checkpoints(verify_stored_log(store), other, "2026-01-01T00:00:00Z")
    assert "which is not trusted" in check_witness(
        [foreign], stored, _trust(key))[0]
    forged = replace(good, seq=good.seq - 1)  # edited after signing
    assert "does not verify" in check_witness([forged], stored, _trust(key))[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(ConfigError, match="line 1"):
        FileWitness(bad).read()



DELETE_TAIL = """
from headwater.stream_processors.store import Store
with Store("chdb://{data}/clickhouse") as s:
    s.command("DELETE FROM events WHERE producer_id = {{p:String}} AND seq >= 7",
              {{"p": {producer!r}}})
"""


def test_audit_checkpoint_and_verify_with_a_witness(tmp_path) -> None:
    data = tmp_path / "data"
    producer = fill_in_child(data)
    private, public = key_pair(tmp_path, "witness")
    witness = tmp_path / "witness.jsonl"
    done = run_headwater("audit", "checkpoint", "--data-dir", str(data), "--witness",
                         str(witness), "--key", str(private))
    assert done.returncode == 0, done.stderr
    assert "1 chain head(s) checkpointed" in done.stderr

    no_key = run_headwater("audit", "verify", "--data-dir", str(data), "--witness", str(witness))
    assert no_key.returncode == 2 and "witness's public key" in no_key.stderr
    args = ["audit", "verify", "--data-dir", str(data), "--witness", str(witness),
            "--witness-public-key", str(public), "--json"]
    ok = run_headwater(*args)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["witness"]["failures"] == []

    cut = subprocess.run([sys.executable, "-c", DELETE_TAIL.format(data=data,
                                                                   producer=producer)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert cut.returncode == 0, cut.stderr
    alone = run_headwater("audit", "verify", "--data-dir", str(data), "--json")
    assert json.loads(alone.stdout)["problems"] == []  # the chain alone looks whole
    failed = run_headwater(*args)
    assert failed.returncode == 1
    (failure,) = json.loads(failed.stdout)["witness"]["failures"]
    assert "tail was deleted" in failure
