"""Issue 23, third wave: the second-party witness's rules (pure). It countersigns trusted
checkpoints, refuses a shortened or rewritten chain, a stale or foreign checkpoint, and its
own receipt chain shows a removed or edited receipt."""

from __future__ import annotations

from dataclasses import asdict, replace
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from headwater.query_service.compliance.signing import key_id
from headwater.query_service.compliance.witness import Trusted, missing_heads, signed
from headwater.query_service.compliance.witness_receipts import (
    WitnessLog,
    WitnessRefused,
    check_receipts,
    checkpoint_from,
    iso,
)

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc)
H1, H2 = "a" * 64, "b" * 64


@pytest.fixture
def keys() -> tuple[Ed25519PrivateKey, Ed25519PrivateKey]:
    return Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()  # operator, witness


def _log(operator: Ed25519PrivateKey, witness: Ed25519PrivateKey, **kw) -> WitnessLog:
    return WitnessLog(witness, {key_id(operator.public_key()): Trusted(operator.public_key())},
                      **kw)


def test_accepts_countersigns_and_chains_receipts(keys) -> None:
    operator, wkey = keys
    log = _log(operator, wkey)
    first = signed("p", "r", 5, H1, iso(NOW), operator)
    ((r0, new0),) = log.accept([first], NOW)
    ((r1, new1),) = log.accept([signed("p", "r", 9, H2, iso(NOW), operator)], NOW)
    assert new0 and new1 and (r0.index, r1.index) == (0, 1)
    assert r1.prev_receipt == r0.digest() and r0.received_at == "2026-12-07T10:00:00Z"
    assert check_receipts(log.receipts, wkey.public_key()) == []
    # a byte-identical replay gets its first receipt back; nothing is added
    ((again, new),) = log.accept([first], NOW + timedelta(seconds=5))
    assert again == r0 and not new and len(log.receipts) == 2


def test_refuses_shortening_rewriting_foreign_and_stale(keys) -> None:
    operator, wkey = keys
    log = _log(operator, wkey)
    log.accept([signed("p", "r", 9, H1, iso(NOW), operator)], NOW)
    with pytest.raises(WitnessRefused, match="shortens the chain") as short:
        log.accept([signed("p", "r", 8, H1, iso(NOW), operator)], NOW)
    assert short.value.status == 409
    with pytest.raises(WitnessRefused, match="rewrites the chain"):
        log.accept([signed("p", "r", 9, H2, iso(NOW), operator)], NOW)
    with pytest.raises(WitnessRefused, match="not trusted") as foreign:
        log.accept([signed("p", "r", 10, H2, iso(NOW), Ed25519PrivateKey.generate())], NOW)
    assert foreign.value.status == 403
    forged = replace(signed("p", "r", 10, H2, iso(NOW), operator), seq=11)
    with pytest.raises(WitnessRefused, match="does not verify"):
        log.accept([forged], NOW)
    old = signed("p", "r", 12, H2, iso(NOW - timedelta(hours=1)), operator)
    with pytest.raises(WitnessRefused, match="replayed or backdated"):
        log.accept([old], NOW)
    # all or none: a good checkpoint before a refused one is not kept either
    with pytest.raises(WitnessRefused):
        log.accept([signed("q", "r", 1, H1, iso(NOW), operator),
                    signed("p", "r", 1, H1, iso(NOW), operator)], NOW)
    assert len(log.receipts) == 1 and "q" not in {r.checkpoint.producer_id
                                                  for r in log.receipts}


def test_a_producer_bound_key_signs_only_its_own_chain(keys) -> None:
    operator, wkey = keys
    log = WitnessLog(wkey, {key_id(operator.public_key()): Trusted(operator.public_key(), "p")})
    log.accept([signed("p", "r", 1, H1, iso(NOW), operator)], NOW)
    with pytest.raises(WitnessRefused, match="not of q"):
        log.accept([signed("q", "r", 1, H1, iso(NOW), operator)], NOW)


def test_receipt_chain_shows_removed_edited_and_foreign_receipts(keys) -> None:
    operator, wkey = keys
    log = _log(operator, wkey)
    for seq in (1, 2, 3):
        log.accept([signed("p", "r", seq, H1 if seq != 2 else H2, iso(NOW), operator)], NOW)
    receipts = log.receipts
    assert check_receipts(receipts, wkey.public_key()) == []
    dropped = receipts[:1] + receipts[2:]
    assert any("chain breaks" in f for f in check_receipts(dropped, wkey.public_key()))
    edited = [receipts[0], replace(receipts[1], received_at="2020-01-01T00:00:00Z"),
              receipts[2]]
    assert any("does not verify" in f for f in check_receipts(edited, wkey.public_key()))
    other = Ed25519PrivateKey.generate().public_key()
    assert all("not the trusted witness key" in f for f in check_receipts(receipts, other))


def test_missing_heads_names_deleted_and_rewritten_tails(keys) -> None:
    operator, _ = keys
    c = signed("p", "r", 3, H1, iso(NOW), operator)
    assert missing_heads([c], {("p", 3): H1}) == []
    assert "tail was deleted" in missing_heads([c], {("p", 2): H1})[0]
    assert "tail was rewritten" in missing_heads([c], {("p", 3): H2})[0]


@pytest.mark.parametrize(("change", "message"), [
    ({"seq": 0}, "seq must be 1"),
    ({"seq": "5"}, "seq must be a int"),
    ({"seq": True}, "seq must be a int"),
    ({"producer_id": "x" * 257}, "producer_id must have 1 to 256"),
    ({"head_hash": "A" * 64}, "64 lower-case hex"),
    ({"written_at": "yesterday"}, "not an ISO 8601"),
    ({"written_at": "2026-12-07T10:00:00"}, "no time zone"),
    ({"signature": "x" * 500}, "too long"),
    ({"extra": 1}, "unknown checkpoint field"),
])
def test_checkpoint_fields_are_checked(keys, change, message) -> None:
    operator, _ = keys
    data = {**asdict(signed("p", "r", 1, H1, iso(NOW), operator)), **change}
    with pytest.raises(WitnessRefused, match=message) as refused:
        checkpoint_from(data)
    assert refused.value.status == 400


def test_nothing_is_held_when_storing_fails(keys) -> None:
    operator, wkey = keys
    log = _log(operator, wkey)

    def full_disk(receipts) -> None:
        raise OSError("no space left on device")

    with pytest.raises(OSError):
        log.accept([signed("p", "r", 1, H1, iso(NOW), operator)], NOW, full_disk)
    assert log.receipts == []
    stored = []
    ((r, new),) = log.accept([signed("p", "r", 1, H1, iso(NOW), operator)], NOW, stored.extend)
    assert new and stored == [r] == log.receipts and r.index == 0
