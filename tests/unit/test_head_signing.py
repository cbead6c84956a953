"""Issue 23: the SDK publisher signs its own chain heads (producers/head_signing.py): the
server's checkpoint check accepts what the SDK signs, heads go out at flush, close and every
N events / T seconds, a head not stored yet is retried, a refusal is a PublishError."""

from __future__ import annotations

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from headwater.errors import ConfigError, PublishError
from headwater.producers import BackgroundPublisher, Publisher
from headwater.producers.head_signing import HeadSigner, sign_head, signer_for
from headwater.producers.transports.local import LocalTransport
from headwater.query_service.compliance.witness import Checkpoint, Trusted, signature_problem
from headwater.v1 import events_pb2


class Refused(grpc.RpcError):
    def __init__(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.FAILED_PRECONDITION

    def details(self) -> str:
        return self._details


class FakeTransport:
    """Stores on flush; records each attested head and whether it was flushed first."""

    def __init__(self) -> None:
        self.sent, self.stored, self.attested = [], 0, []

    def send(self, key: str, event_id: str, value: bytes) -> None:
        self.sent.append(value)

    def flush(self, timeout: float | None = None) -> None:
        self.stored = len(self.sent)

    def close(self) -> None:
        self.flush()

    def attest_head(self, request) -> None:
        assert request.seq <= self.stored, "attested before it was stored"
        self.attested.append(request)


def _source(i: int) -> events_pb2.SourceRegistered:
    return events_pb2.SourceRegistered(source_id=f"s{i}", uri=f"file:///s{i}", row_count=1,
                                       content_sha256=f"{i:064x}")


def test_the_server_check_accepts_exactly_what_the_sdk_signs() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    r = sign_head(key, "p", "run", 7, "ab" * 32, "2026-12-07T07:00:00Z")
    head = Checkpoint(r.producer_id, r.run_id, r.seq, r.head_hash, r.written_at, r.key_id,
                      r.signature)
    trusted = {r.key_id: Trusted(key.public_key(), "p")}
    assert signature_problem(head, trusted) is None
    moved = Checkpoint("p", "run", 8, r.head_hash, r.written_at, r.key_id, r.signature)
    assert "does not verify" in signature_problem(moved, trusted)
    forged = sign_head(other, "p", "run", 7, "ab" * 32, "t")
    assert "not trusted" in signature_problem(Checkpoint(
        "p", "run", 7, "ab" * 32, "t", forged.key_id, forged.signature), trusted)


def test_heads_at_every_n_events_flush_and_close() -> None:
    transport = FakeTransport()
    publisher = Publisher(transport, "run", "trainer", Ed25519PrivateKey.generate(),
                          attest_every_events=3, attest_every_seconds=3600)
    events = [publisher.publish(_source(i)) for i in range(7)]
    assert [h.seq for h in transport.attested] == [3, 6]
    publisher.flush()
    publisher.flush()  # the same head is not attested twice
    assert [h.seq for h in transport.attested] == [3, 6, 7]
    assert transport.attested[-1].head_hash == events[-1].hash.hex()
    publisher.publish(_source(8))
    publisher.close()
    assert [h.seq for h in transport.attested] == [3, 6, 7, 8]


def test_background_publisher_attests_through_its_publisher() -> None:
    transport = FakeTransport()
    publisher = Publisher(transport, "run", "trainer", Ed25519PrivateKey.generate(),
                          attest_every_events=100)
    with BackgroundPublisher(publisher) as background:
        for i in range(5):
            background(_source(i))
        background.flush()
        assert [h.seq for h in transport.attested] == [5]
        background(_source(5))
    assert [h.seq for h in transport.attested] == [5, 6]  # close flushes the Publisher


def test_heads_every_t_seconds() -> None:
    now = [0.0]
    sent = []
    signer = HeadSigner(Ed25519PrivateKey.generate(), sent.append, every_events=10**6,
                        every_seconds=5, clock=lambda: now[0])
    event = events_pb2.Event(producer_id="p", run_id="r", seq=1, hash=b"\1" * 32)
    assert not signer.observe(event)
    now[0] = 5.0
    assert signer.observe(events_pb2.Event(producer_id="p", run_id="r", seq=2,
                                           hash=b"\2" * 32))
    assert signer.attest() == 2 and [r.seq for r in sent] == [2]


def test_a_head_not_stored_yet_is_retried_and_a_refusal_raises() -> None:
    calls = []

    def not_yet(request) -> None:
        calls.append(request.seq)
        if len(calls) < 3:
            raise Refused(f"no stored event of p at seq {request.seq}")

    signer = HeadSigner(Ed25519PrivateKey.generate(), not_yet, store_wait=0.0)
    signer.observe(events_pb2.Event(producer_id="p", run_id="r", seq=4, hash=b"\4" * 32))
    assert signer.attest() == 0  # pending: retried at the next point
    with pytest.raises(PublishError, match="no stored event"):
        signer.attest(final=True)  # no wait left at close
    assert signer.attest() == 4 and calls == [4, 4, 4]

    def forged(request) -> None:
        raise Refused("the signature by key x does not verify")

    bad = HeadSigner(Ed25519PrivateKey.generate(), forged)
    bad.observe(events_pb2.Event(producer_id="p", run_id="r", seq=1, hash=b"\1" * 32))
    with pytest.raises(PublishError, match="refused the signed head of p seq 1"):
        bad.attest()


def test_key_sources_and_transports_without_an_endpoint(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("HEADWATER_PRODUCER_KEY_FILE", raising=False)
    monkeypatch.delenv("HEADWATER_ATTEST_TARGET", raising=False)
    local = LocalTransport(sink=None)  # type: ignore[arg-type]
    assert signer_for(local, None) is None  # no key: heads are not signed
    pem = tmp_path / "producer.pem"
    pem.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    monkeypatch.setenv("HEADWATER_PRODUCER_KEY_FILE", str(pem))
    with pytest.raises(ConfigError, match="HEADWATER_ATTEST_TARGET"):
        signer_for(local, None)
    assert signer_for(FakeTransport(), None) is not None
    assert signer_for(local, None, attest_target="127.0.0.1:1") is not None
    monkeypatch.setenv("HEADWATER_ATTEST_TARGET", "127.0.0.1:1")  # for transports without
    own = FakeTransport()  # ... an endpoint of their own: a gRPC transport keeps its channel
    signer = signer_for(own, None)
    own.stored = 1
    signer.observe(events_pb2.Event(producer_id="p", run_id="r", seq=1, hash=b"\1" * 32))
    assert signer.attest(final=True) == 1 and len(own.attested) == 1
    with pytest.raises(ConfigError, match="does not exist"):
        signer_for(local, tmp_path / "missing.pem")
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="not an unencrypted PEM"):
        signer_for(local, tmp_path / "bad.pem")
    with pytest.raises(ConfigError, match="every_events"):
        signer_for(FakeTransport(), pem, every_events=0)
