"""Issue 23: serve's periodic witness checkpoints (query_service/compliance/periodic_witness):
only moved heads are appended, signed by the witness key; nothing is written while the log
has problems; the settings are checked."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from headwater.errors import ConfigError
from headwater.producers import Publisher
from headwater.producers.transports.local import LocalTransport
from headwater.query_service.compliance.config import ReportSettings
from headwater.query_service.compliance.periodic_witness import PeriodicCheckpoints, from_settings
from headwater.query_service.compliance.producer_keys import stored_heads
from headwater.query_service.compliance.signing import key_id
from headwater.query_service.compliance.witness import FileWitness, Trusted, check_witness
from headwater.stream_processors.sink import EventSink
from headwater.v1 import events_pb2


def _publish(store, producer: str, n: int, publisher: Publisher | None = None) -> Publisher:
    publisher = publisher or Publisher(LocalTransport(EventSink(store, "local")), "run-w",
                                       producer)
    for i in range(n):
        publisher.publish(events_pb2.SourceRegistered(
            source_id=f"{producer}-{publisher.envelopes.seq}-{i}", uri="file:///x",
            row_count=1, content_sha256=f"{i:064x}"))
    publisher.flush()
    return publisher


def test_moved_heads_only_and_tail_deletion_caught(store, tmp_path) -> None:
    key = Ed25519PrivateKey.generate()
    witness = FileWitness(tmp_path / "witness.jsonl")
    writer = PeriodicCheckpoints(store, witness, key, interval_s=3600)
    a = _publish(store, "a", 3)
    _publish(store, "b", 2)
    assert writer.checkpoint() == 2
    assert writer.checkpoint() == 0  # nothing moved: nothing appended
    _publish(store, "a", 2, a)
    assert writer.checkpoint() == 1
    found = witness.read()
    assert [(c.producer_id, c.seq) for c in found] == [("a", 3), ("b", 2), ("a", 5)]
    assert {c.key_id for c in found} == {key_id(key.public_key())}
    # a restarted serve appends only what moved since the file's last checkpoints
    assert PeriodicCheckpoints(store, witness, key, 3600).checkpoint() == 0
    trusted = {key_id(key.public_key()): Trusted(key.public_key())}
    assert check_witness(found, stored_heads(store, ["a", "b"]), trusted) == []
    store.command("DELETE FROM events WHERE producer_id = 'a' AND seq = 5")
    failures = check_witness(found, stored_heads(store, ["a", "b"]), trusted)
    assert len(failures) == 1 and "no longer holds seq 5" in failures[0]


def test_nothing_written_while_the_log_has_problems(store, tmp_path) -> None:
    _publish(store, "c", 3)
    store.command("DELETE FROM events WHERE producer_id = 'c' AND seq = 2")  # a gap
    witness = FileWitness(tmp_path / "w.jsonl")
    assert PeriodicCheckpoints(store, witness, Ed25519PrivateKey.generate(), 1).checkpoint() == 0
    assert not witness.path.exists()


def test_settings(store, tmp_path) -> None:
    pem = tmp_path / "w.pem"
    pem.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    w = tmp_path / "w.jsonl"
    assert from_settings(store, ReportSettings(witness=w)) is None  # attestations only
    assert from_settings(store, ReportSettings(witness=w, witness_key=pem)).interval_s == 300
    assert from_settings(store, ReportSettings(witness=w, witness_key=pem,
                                               witness_interval_s=0)) is None
    with pytest.raises(ConfigError, match="needs HEADWATER_WITNESS"):
        from_settings(store, ReportSettings(witness=w, witness_interval_s=5))
    with pytest.raises(ConfigError, match=">= 0"):
        from_settings(store, ReportSettings(witness=w, witness_key=pem, witness_interval_s=-1))
