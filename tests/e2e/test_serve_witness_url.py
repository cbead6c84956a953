"""Issue 23, third wave, through serve: HEADWATER_WITNESS names a second party's witness
URL. serve forwards the heads producers sign (Compliance.AttestHead) and checkpoints every
moved head itself (HEADWATER_WITNESS_INTERVAL_S), each countersigned by the witness; a
producer head the witness does not trust stays kept by serve, answered witnessed=false,
never a publish error; `audit verify --witness URL` passes, then fails once a tail the
witness saw is deleted."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.secure_serve import TOKENS, SecureServe
from support.witness_server import Running

from conftest import run_headwater, stop
from headwater.producers import GrpcTransport, Publisher
from headwater.producers.transports.channel import ClientSecurity, open_channel
from headwater.query_service.compliance.signing import key_id, public_pem
from headwater.query_service.compliance.witness import Trusted
from headwater.query_service.compliance.witness_client import HttpWitness
from headwater.query_service.server.auth import Role
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc


def _pem(path, key: Ed25519PrivateKey):
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _publish(target: str, producer: str, n: int, key=None) -> None:
    publisher = Publisher(GrpcTransport(target, token=TOKENS[Role.PRODUCER]), "url-run",
                          producer, key, attest_every_events=3)
    try:
        for i in range(n):
            publisher.publish(events_pb2.SourceRegistered(
                source_id=f"{producer}-{i}", uri=f"file:///{i}.csv", row_count=1,
                content_sha256=f"{i:064x}"))
        publisher.flush()
    finally:
        publisher.transport.close()


def _verify(*args: str) -> dict:
    done = run_headwater("audit", "verify", "--json", *args,
                         env={"HEADWATER_TOKEN": TOKENS[Role.AUDITOR]})
    assert done.stdout, done.stderr
    return {"rc": done.returncode, **json.loads(done.stdout)}


def test_serve_sends_heads_to_a_witness_url(tmp_path, tokens_file) -> None:
    operator, wkey = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    producer_key, stranger_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    witness = Running(tmp_path / "receipts.jsonl", operator, wkey)
    witness.service.log.trusted[key_id(producer_key.public_key())] = Trusted(
        producer_key.public_key(), "trainer-9")  # as `--trust trainer-9=PEM`
    wpub = tmp_path / "witness.pub.pem"
    wpub.write_text(public_pem(wkey.public_key()))
    serve = SecureServe(tmp_path / "data", {
        "HEADWATER_AUTH_TOKENS_FILE": str(tokens_file), "HEADWATER_WITNESS": witness.url,
        "HEADWATER_WITNESS_KEY": str(_pem(tmp_path / "operator.pem", operator)),
        "HEADWATER_WITNESS_PUBLIC_KEY": str(wpub), "HEADWATER_WITNESS_INTERVAL_S": "1"},
        tmp_path / "serve.log")
    try:
        admin = query_pb2_grpc.ComplianceStub(open_channel(
            serve.target, ClientSecurity(token=TOKENS[Role.ADMIN])))
        for producer, key in (("trainer-9", producer_key), ("stranger", stranger_key)):
            admin.RegisterProducerKey(query_pb2.RegisterProducerKeyRequest(
                producer_id=producer, public_key_pem=public_pem(key.public_key())), timeout=30)
        _publish(serve.target, "trainer-9", 6, producer_key)
        _publish(serve.target, "stranger", 3, stranger_key)  # the witness does not trust it
        _publish(serve.target, "plain", 4)
        client = HttpWitness(witness.url, wkey.public_key())
        signed_by = key_id(producer_key.public_key())
        deadline = time.monotonic() + 90
        while not {("plain", 4), ("trainer-9", 6), ("stranger", 3)} <= {
                (c.producer_id, c.seq) for c in client.read() if c.key_id == key_id(
                    operator.public_key())}:
            assert time.monotonic() < deadline, serve.log.read_text()[-3000:]
            time.sleep(0.5)
        held = client.read()
        assert [c.seq for c in held if c.key_id == signed_by] == [3, 6]
        assert not [c for c in held if c.key_id == key_id(stranger_key.public_key())]
        assert "stranger seq 3 kept but not witnessed" in serve.log.read_text()
        found = _verify("--listen", serve.target, "--witness", witness.url,
                        "--witness-public-key", str(wpub))
        assert found["rc"] == 0 and found["witness"]["failures"] == [], found
        assert found["producer_signatures"]["stranger"]["attested_seq"] == 3
    finally:
        stop(serve.proc)
    code = ("from headwater.stream_processors.store import Store\n"
            f"s = Store('chdb://{serve.data_dir}/clickhouse')\n"
            "s.command(\"DELETE FROM events WHERE producer_id = 'plain' AND seq = 4\")\n")
    try:
        assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
        after = _verify("--data-dir", str(serve.data_dir), "--witness", witness.url,
                        "--witness-public-key", str(wpub))
        assert after["rc"] == 1 and after["problems"] == []
        assert any("plain seq 4" in f and "tail was deleted" in f
                   for f in after["witness"]["failures"]), after["witness"]
    finally:
        witness.stop()
