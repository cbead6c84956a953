"""Issue 23, third wave: serve's periodic checkpoints sent to a second party's witness
named by a URL in HEADWATER_WITNESS: the witness countersigns each moved head, the
client checks every receipt with HEADWATER_WITNESS_PUBLIC_KEY, and a restart reads back
what the witness holds (only moved heads are sent again)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.witness_server import Running

from headwater.errors import HeadwaterError
from headwater.producers import Publisher
from headwater.producers.transports.local import LocalTransport
from headwater.query_service.compliance.config import ReportSettings
from headwater.query_service.compliance.periodic_witness import from_settings
from headwater.query_service.compliance.producer_keys import stored_heads
from headwater.query_service.compliance.witness import missing_heads
from headwater.query_service.compliance.witness_client import HttpWitness
from headwater.query_service.compliance.witness_receipts import check_receipts
from headwater.stream_processors.sink import EventSink
from headwater.v1 import events_pb2


def _pem(path, key: Ed25519PrivateKey, public: bool = False):
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        if public else key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    return path


def _publish(publisher: Publisher, n: int) -> None:
    for i in range(n):
        publisher.publish(events_pb2.SourceRegistered(
            source_id=f"s-{publisher.envelopes.seq}-{i}", uri="file:///x", row_count=1,
            content_sha256=f"{i:064x}"))
    publisher.flush()


def test_periodic_checkpoints_to_a_witness_url(store, tmp_path) -> None:
    operator, wkey = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    witness = Running(tmp_path / "receipts.jsonl", operator, wkey)
    try:
        env = ReportSettings(witness=witness.url,
                             witness_key=_pem(tmp_path / "op.pem", operator),
                             witness_public_key=_pem(tmp_path / "w.pub", wkey, public=True))
        writer = from_settings(store, env)
        assert writer is not None and isinstance(writer._witness, HttpWitness)
        pub = Publisher(LocalTransport(EventSink(store, "local")), "run-u", "u")
        _publish(pub, 3)
        assert writer.checkpoint() == 1 and writer.checkpoint() == 0
        _publish(pub, 2)
        assert writer.checkpoint() == 1
        receipts = HttpWitness(witness.url).receipts()
        assert [r.checkpoint.seq for r in receipts] == [3, 5]
        assert check_receipts(receipts, wkey.public_key()) == []
        found = [r.checkpoint for r in receipts]
        assert missing_heads(found, stored_heads(store, ["u"])) == []
        assert from_settings(store, env).checkpoint() == 0  # a restart: nothing moved
        # receipts signed by another witness key are refused by the client
        other = _pem(tmp_path / "x.pub", Ed25519PrivateKey.generate(), public=True)
        _publish(pub, 1)  # seq 6
        with pytest.raises(HeadwaterError, match="not the trusted witness key"):
            from_settings(store, env.model_copy(update={"witness_public_key": other})
                          ).checkpoint()
        found = [r.checkpoint for r in HttpWitness(witness.url, wkey.public_key()).receipts()]
        store.command("DELETE FROM events WHERE producer_id = 'u' AND seq = 6")
        assert "no longer holds seq 6" in missing_heads(found, stored_heads(store, ["u"]))[0]
        # the shortened chain's head is refused by the witness: the round fails (logged)
        with pytest.raises(HeadwaterError, match="shortens the chain"):
            from_settings(store, env).checkpoint()
    finally:
        witness.stop()
