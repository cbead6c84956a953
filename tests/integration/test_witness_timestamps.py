"""Issue 23, third wave: RFC 3161 trusted timestamps on witness checkpoints, against a real
time-stamp authority on loopback (OpenSSL's `ts -reply`, tests/support/tsa.py). With
HEADWATER_WITNESS_TSA_URL, `audit checkpoint` timestamps each checkpoint; `audit verify
--tsa-ca-file` checks every token (granted, chained to the TSA's root, over exactly that
checkpoint, genTime near written_at) and fails on an edited, backdated, missing or foreign
one; a second party's witness keeps the token with the checkpoint."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.audit_pipeline import fill_in_child, key_pair
from support.tsa import LocalTsa
from support.witness_server import Running

from conftest import run_headwater
from headwater.errors import HeadwaterError
from headwater.query_service.compliance.timestamps import check_timestamp, load_roots, stamp
from headwater.query_service.compliance.witness import FileWitness, signed
from headwater.query_service.compliance.witness_client import HttpWitness
from headwater.query_service.compliance.witness_receipts import iso


@pytest.fixture(scope="module")
def tsa(tmp_path_factory) -> LocalTsa:
    if subprocess.run(["openssl", "version"], capture_output=True).returncode != 0:
        pytest.fail("the openssl command is needed to run the local TSA")
    authority = LocalTsa(tmp_path_factory.mktemp("tsa"))
    yield authority
    authority.stop()


def _now(delta_s: float = 0) -> str:
    return iso(datetime.now(timezone.utc) + timedelta(seconds=delta_s))


def test_tokens_verify_and_tampering_fails(tsa, tmp_path) -> None:
    key = Ed25519PrivateKey.generate()
    roots = load_roots(tsa.ca_file)
    (c,) = stamp([signed("p", "r", 3, "a" * 64, _now(), key)], tsa.url)
    at, why = check_timestamp(c, roots)
    assert why is None and at is not None
    assert abs((datetime.fromisoformat(at.replace("Z", "+00:00"))
                - datetime.now(timezone.utc)).total_seconds()) < 120
    assert stamp([c], None) == [c]  # no TSA configured: unchanged
    # the checkpoint edited after it was timestamped
    assert "does not verify" in check_timestamp(replace(c, seq=4), roots)[1]
    # a token from the TSA moved onto another checkpoint
    other = signed("p", "r", 9, "b" * 64, _now(), key)
    assert "does not verify" in check_timestamp(replace(other, timestamp=c.timestamp), roots)[1]
    # a checkpoint claiming an earlier time than the TSA saw it: backdated
    (old,) = stamp([signed("p", "r", 5, "a" * 64, _now(-3600), key)], tsa.url)
    assert "written_at is not when it was made" in check_timestamp(old, roots)[1]
    # a root that did not issue the TSA's certificate
    foreign = LocalTsa(tmp_path / "other")
    try:
        assert "does not verify" in check_timestamp(c, load_roots(foreign.ca_file))[1]
    finally:
        foreign.stop()
    assert "no RFC 3161 timestamp" in check_timestamp(replace(c, timestamp=""), roots)[1]
    assert "does not verify" in check_timestamp(replace(c, timestamp="!!"), roots)[1]
    with pytest.raises(HeadwaterError, match="did not answer"):
        stamp([c], "http://127.0.0.1:9/")


def test_a_second_party_witness_keeps_the_token(tsa, tmp_path) -> None:
    operator, wkey = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    witness = Running(tmp_path / "receipts.jsonl", operator, wkey)
    try:
        made = stamp([signed(f"p{i}", "r", 1, "c" * 64, _now(), operator) for i in range(12)],
                     tsa.url)
        HttpWitness(witness.url, wkey.public_key()).append(made)  # 10 a request, then 2
        held = HttpWitness(witness.url, wkey.public_key()).read()
        assert held == made and all(check_timestamp(c, load_roots(tsa.ca_file))[1] is None
                                    for c in held)
    finally:
        witness.stop()




def test_audit_checkpoint_and_verify_with_timestamps(tsa, tmp_path) -> None:
    data = tmp_path / "data"
    fill_in_child(data)
    private, public = key_pair(tmp_path, "w")
    witness = tmp_path / "witness.jsonl"
    done = run_headwater("audit", "checkpoint", "--data-dir", str(data), "--witness",
                         str(witness), "--key", str(private),
                         env={"HEADWATER_WITNESS_TSA_URL": tsa.url})
    assert done.returncode == 0, done.stderr
    (c,) = FileWitness(witness).read()
    assert c.timestamp
    args = ["audit", "verify", "--data-dir", str(data), "--witness", str(witness),
            "--witness-public-key", str(public), "--json"]
    ok = run_headwater(*args, "--tsa-ca-file", str(tsa.ca_file))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    found = json.loads(ok.stdout)["witness"]
    assert found["failures"] == [] and found["timestamps_verified"] == 1
    unchecked = run_headwater(*args)
    assert unchecked.returncode == 0
    assert json.loads(unchecked.stdout)["witness"]["timestamps_not_checked"] == 1
    # a witness line appended without a timestamp while timestamps are required
    FileWitness(witness).append([replace(c, timestamp="")])
    failed = run_headwater(*args, "--tsa-ca-file", str(tsa.ca_file))
    assert failed.returncode == 1
    (failure,) = json.loads(failed.stdout)["witness"]["failures"]
    assert "no RFC 3161 timestamp" in failure
    alone = run_headwater("audit", "verify", "--data-dir", str(data), "--tsa-ca-file",
                          str(tsa.ca_file))
    assert alone.returncode == 2 and "give --witness too" in alone.stderr
