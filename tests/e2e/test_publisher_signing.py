"""Issue 23 through serve (token auth): an admin registers a producer's key, the SDK's
Publisher signs and attests its own heads over the gRPC transport with its producer token,
`audit verify` lists the signed seq; a head signed with another key, or by a producer with
no registered key, is refused at flush. serve checkpoints the heads to the witness by itself
(HEADWATER_WITNESS_INTERVAL_S); deleting a tail after such a checkpoint fails `audit verify
--witness`."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.secure_serve import TOKENS, SecureServe

from conftest import run_headwater, stop
from headwater.errors import PublishError
from headwater.producers import GrpcTransport, Publisher
from headwater.producers.transports.channel import ClientSecurity, open_channel
from headwater.query_service.compliance.signing import key_id, public_pem
from headwater.query_service.compliance.witness import FileWitness
from headwater.query_service.server.auth import Role
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc


def _write_key(path, key: Ed25519PrivateKey):
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _publish(target: str, producer: str, n: int, key=None, every: int = 1000) -> list:
    publisher = Publisher(GrpcTransport(target, token=TOKENS[Role.PRODUCER]), "signed-run",
                          producer, key, attest_every_events=every)
    try:
        events = [publisher.publish(events_pb2.SourceRegistered(
            source_id=f"{producer}-{i}", uri=f"file:///{i}.csv", row_count=1,
            content_sha256=f"{i:064x}")) for i in range(n)]
        publisher.flush()
    finally:
        publisher.transport.close()
    return events


class NoEndpoint:
    """A transport without `attest_head` (as Kafka's): heads go to `attest_target`."""

    def __init__(self, inner: GrpcTransport) -> None:
        self.send, self.flush, self.close = inner.send, inner.flush, inner.close


def _verify(*args: str) -> dict:
    done = run_headwater("audit", "verify", "--json", *args,
                         env={"HEADWATER_TOKEN": TOKENS[Role.AUDITOR]})
    assert done.stdout, done.stderr
    return {"rc": done.returncode, **json.loads(done.stdout)}


def test_publisher_signs_and_serve_checkpoints(tmp_path, tokens_file, monkeypatch) -> None:
    producer_key, second_key, other_key, fourth_key = (Ed25519PrivateKey.generate()
                                                       for _ in range(4))
    witness_key = Ed25519PrivateKey.generate()
    witness, witness_pub = tmp_path / "witness.jsonl", tmp_path / "witness.pub.pem"
    witness_pub.write_text(public_pem(witness_key.public_key()))
    serve = SecureServe(tmp_path / "data", {
        "HEADWATER_AUTH_TOKENS_FILE": str(tokens_file), "HEADWATER_WITNESS": str(witness),
        "HEADWATER_WITNESS_KEY": str(_write_key(tmp_path / "witness.pem", witness_key)),
        "HEADWATER_WITNESS_INTERVAL_S": "1"}, tmp_path / "serve.log")
    try:
        admin = query_pb2_grpc.ComplianceStub(open_channel(
            serve.target, ClientSecurity(token=TOKENS[Role.ADMIN])))
        for producer, key in (("trainer-9", producer_key), ("trainer-10", second_key),
                              ("kafka-like", fourth_key)):
            admin.RegisterProducerKey(query_pb2.RegisterProducerKeyRequest(
                producer_id=producer, public_key_pem=public_pem(key.public_key())), timeout=30)
        events = _publish(serve.target, "trainer-9", 10,
                          _write_key(tmp_path / "producer.pem", producer_key), every=4)
        with pytest.raises(PublishError, match="refused the signed head of trainer-10 seq 1"):
            _publish(serve.target, "trainer-10", 1, other_key)  # not its registered key
        with pytest.raises(PublishError, match="no registered key"):
            _publish(serve.target, "intruder", 2, other_key)
        _publish(serve.target, "plain-3", 6)  # unsigned: anchored by serve's checkpoints only
        monkeypatch.setenv("HEADWATER_TOKEN", TOKENS[Role.PRODUCER])  # attest_target's
        with Publisher(NoEndpoint(GrpcTransport(serve.target, token=TOKENS[Role.PRODUCER])),
                       "signed-run", "kafka-like", fourth_key,
                       attest_target=serve.target) as publisher:
            publisher.publish(events_pb2.SourceRegistered(source_id="k", uri="file:///k",
                                                          row_count=1, content_sha256="0" * 64))
        assert publisher.heads is not None and publisher.heads.attested_seq == 1

        heads = [c for c in FileWitness(witness).read() if c.key_id == key_id(
            producer_key.public_key())]
        assert [c.seq for c in heads] == [4, 8, 10]
        assert heads[-1].head_hash == events[-1].hash.hex()
        wid = key_id(witness_key.public_key())
        deadline = time.monotonic() + 60
        while not {("plain-3", 6), ("trainer-9", 10)} <= {
                (c.producer_id, c.seq) for c in FileWitness(witness).read() if c.key_id == wid}:
            assert time.monotonic() < deadline, serve.log.read_text()[-2000:]
            time.sleep(0.5)

        found = _verify("--listen", serve.target, "--witness", str(witness),
                        "--witness-public-key", str(witness_pub))
        signed = found["producer_signatures"]
        assert signed["trainer-9"]["attested_seq"] == 10
        assert signed["trainer-9"]["key_id"] == key_id(producer_key.public_key())
        assert signed["plain-3"]["key_id"] is None
        assert signed["trainer-10"]["attested_seq"] == 0
        assert signed["kafka-like"]["attested_seq"] == 1
        assert found["ok"] and found["rc"] == 0, found
    finally:
        stop(serve.proc)
    # the operator deletes the newest event of the unsigned producer after the checkpoint
    code = ("from headwater.stream_processors.store import Store\n"
            f"s = Store('chdb://{serve.data_dir}/clickhouse')\n"
            "s.command(\"DELETE FROM events WHERE producer_id = 'plain-3' AND seq = 6\")\n")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
    after = _verify("--data-dir", str(serve.data_dir), "--witness", str(witness),
                    "--witness-public-key", str(witness_pub))
    assert after["rc"] == 1 and after["problems"] == []  # the chain alone looks whole
    assert any("plain-3 seq 6" in f and "no longer holds seq 6" in f
               for f in after["witness"]["failures"]), after["witness"]
