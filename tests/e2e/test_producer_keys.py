"""Issue 23, item 2: a producer's Ed25519 key registered through Compliance.RegisterProducerKey,
its own chain head signed with it (Compliance.AttestHead) and appended to serve's witness;
forged, foreign and stale heads refused; `audit verify` shows the signed seq and fails when
a signed head is deleted; only admin registers keys."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import Serve, run_headwater
from headwater.producers import GrpcTransport, Publisher
from headwater.query_service.compliance.witness import FileWitness, signed
from headwater.query_service.server.auth import Role, roles_for
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc


def _pem(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _attest(stub, head) -> query_pb2.AttestHeadResponse:
    return stub.AttestHead(query_pb2.AttestHeadRequest(
        producer_id=head.producer_id, run_id=head.run_id, seq=head.seq,
        head_hash=head.head_hash, written_at=head.written_at, key_id=head.key_id,
        signature=head.signature), timeout=30)


def test_only_admin_registers_keys_and_producers_attest() -> None:
    v1 = "/headwater.v1.Compliance/"
    assert roles_for(v1 + "RegisterProducerKey") == [Role.ADMIN]
    assert set(roles_for(v1 + "AttestHead")) == {Role.PRODUCER, Role.UNLEARNER, Role.ADMIN}
    assert Role.AUDITOR in roles_for(v1 + "Report")


def test_producer_signed_heads(tmp_path, monkeypatch) -> None:
    witness = tmp_path / "witness.jsonl"
    monkeypatch.setenv("HEADWATER_WITNESS", str(witness))
    srv = Serve(tmp_path / "data")
    srv.start()
    monkeypatch.delenv("HEADWATER_WITNESS")  # serve has it; the CLI below checks no witness
    try:
        publisher = Publisher(GrpcTransport(srv.target), run_id="keyed-run",
                              producer_id="trainer-7")
        events = [publisher.publish(events_pb2.SourceRegistered(
            source_id=f"s{i}", uri=f"file:///s{i}.csv", row_count=1,
            content_sha256=f"{i:064x}")) for i in range(5)]
        publisher.flush()
        publisher.close()
        stub = query_pb2_grpc.ComplianceStub(grpc.insecure_channel(srv.target))
        key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        made = stub.RegisterProducerKey(query_pb2.RegisterProducerKeyRequest(
            producer_id="trainer-7", public_key_pem=_pem(key)), timeout=30)
        assert made.created and len(made.key_id) == 16
        again = stub.RegisterProducerKey(query_pb2.RegisterProducerKeyRequest(
            producer_id="trainer-7", public_key_pem=_pem(key)), timeout=30)
        assert not again.created and again.key_id == made.key_id
        with pytest.raises(grpc.RpcError) as err:
            stub.RegisterProducerKey(query_pb2.RegisterProducerKeyRequest(
                producer_id="trainer-7", public_key_pem=_pem(other)), timeout=30)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        with pytest.raises(grpc.RpcError) as err:
            stub.RegisterProducerKey(query_pb2.RegisterProducerKeyRequest(
                producer_id="trainer-7", public_key_pem="not a key"), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # the producer signs the head its own envelope builder computed
        last = events[-1]
        head = signed("trainer-7", "keyed-run", last.seq, last.hash.hex(),
                      "2026-01-01T00:00:00Z", key)
        early = signed("trainer-7", "keyed-run", events[2].seq, events[2].hash.hex(),
                       "2026-01-01T00:00:00Z", key)
        assert _attest(stub, early).witnessed and _attest(stub, head).witnessed
        assert [c.seq for c in FileWitness(witness).read()] == [3, 5]
        refused = [
            signed("trainer-7", "keyed-run", last.seq, last.hash.hex(), "t", other),  # foreign
            signed("trainer-7", "keyed-run", last.seq, "00" * 32, "t", key),  # not stored
            signed("trainer-7", "keyed-run", 99, last.hash.hex(), "t", key),  # beyond the log
            signed("someone-else", "keyed-run", 1, events[0].hash.hex(), "t", key),  # no key
        ]
        for bad in refused:
            with pytest.raises(grpc.RpcError) as err:
                _attest(stub, bad)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, bad
        edited = head.__class__(**{**head.__dict__, "written_at": "2027-01-01T00:00:00Z"})
        with pytest.raises(grpc.RpcError) as err:
            _attest(stub, edited)
        assert "does not verify" in err.value.details()

        through = srv.cli("audit", "verify", "--json")
        assert through.stdout, through.stderr
        state = json.loads(through.stdout)["producer_signatures"]["trainer-7"]
        assert state == {"key_id": made.key_id, "attested_seq": 5, "last_seq": 5}
    finally:
        srv.stop()
    # delete the signed head: the chain alone is whole, its signed head is gone
    code = ("from headwater.stream_processors.store import Store\n"
            f"s = Store('chdb://{srv.data_dir}/clickhouse')\n"
            "s.command(\"DELETE FROM events WHERE producer_id = 'trainer-7' AND seq = 5\")\n")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
    after = run_headwater("audit", "verify", "--data-dir", str(srv.data_dir), "--json")
    assert after.returncode == 1
    found = json.loads(after.stdout)
    assert found["problems"] == []
    assert any("no longer holds seq 5" in f for f in found["producer_signature_failures"])
