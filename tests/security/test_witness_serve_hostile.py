"""Issue 23, third wave: the second-party witness endpoint under hostile input — a foreign
key, a replayed or old checkpoint, an oversized or malformed body, a head that shortens or
rewrites a chain, a receipt store edited behind its back, a client shown another witness's
receipts. Each is refused with a status and a message naming what was wrong."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.secure_serve import make_pki
from support.witness_server import Running

from headwater.errors import ConfigError, HeadwaterError
from headwater.query_service.compliance.signing import key_id
from headwater.query_service.compliance.witness import Trusted, signed
from headwater.query_service.compliance.witness_client import HttpWitness
from headwater.query_service.compliance.witness_receipts import iso
from headwater.query_service.compliance.witness_server import (
    MAX_BODY_BYTES,
    ReceiptFile,
    WitnessService,
    make_server,
)

H1, H2 = "1" * 64, "2" * 64


@pytest.fixture
def keys() -> tuple[Ed25519PrivateKey, Ed25519PrivateKey]:
    return Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()  # operator, witness


@pytest.fixture
def running(tmp_path, keys) -> Iterator[Running]:
    w = Running(tmp_path / "receipts.jsonl", *keys)
    yield w
    w.stop()


def _now() -> str:
    return iso(datetime.now(timezone.utc))


def _body(*checkpoints) -> bytes:
    return json.dumps({"checkpoints": [asdict(c) for c in checkpoints]}).encode()


def test_binds_loopback_and_receipts_verify_with_the_witness_key(running, keys) -> None:
    operator, wkey = keys
    assert running.server.server_address[0] == "127.0.0.1"
    client = HttpWitness(running.url, wkey.public_key())
    c = signed("p", "r", 3, H1, _now(), operator)
    (receipt,) = client.submit([c])
    assert receipt.checkpoint == c and receipt.index == 0
    assert client.read() == [c]
    # another witness's key: the client refuses the receipts it is shown
    with pytest.raises(HeadwaterError, match="not the trusted witness key"):
        HttpWitness(running.url, Ed25519PrivateKey.generate().public_key()).submit([c])


def test_wrong_key_is_refused(running) -> None:
    status, body = running.post(_body(signed("p", "r", 1, H1, _now(),
                                             Ed25519PrivateKey.generate())))
    assert status == 403 and "not trusted" in body["error"]
    assert running.service.log.receipts == []


def test_replayed_and_old_checkpoints(running, keys) -> None:
    operator, _ = keys
    old = signed("p", "r", 4, H1, _now(), operator)
    new = signed("p", "r", 9, H2, _now(), operator)
    assert running.post(_body(old))[0] == 200
    assert running.post(_body(new))[0] == 200
    # the byte-identical replay of an old checkpoint adds nothing: its first receipt
    status, body = running.post(_body(old))
    assert status == 200 and body["added"] == [False]
    assert body["receipts"][0]["index"] == 0 and len(running.service.log.receipts) == 2
    # the old head signed again (fresh time): shortens the chain, refused
    status, body = running.post(_body(signed("p", "r", 4, H1, _now(), operator)))
    assert status == 409 and "shortens the chain" in body["error"]
    # a checkpoint written an hour ago and sent now: refused as replayed or backdated
    stale = iso(datetime.now(timezone.utc) - timedelta(hours=1))
    status, body = running.post(_body(signed("p", "r", 10, H1, stale, operator)))
    assert status == 409 and "replayed or backdated" in body["error"]


def test_a_head_that_shortens_or_rewrites_a_chain_is_refused(running, keys) -> None:
    operator, _ = keys
    assert running.post(_body(signed("p", "r", 7, H1, _now(), operator)))[0] == 200
    status, body = running.post(_body(signed("p", "r", 6, H1, _now(), operator)))
    assert status == 409 and "shortens the chain: the witness holds seq 7" in body["error"]
    status, body = running.post(_body(signed("p", "r", 7, H2, _now(), operator)))
    assert status == 409 and "rewrites the chain" in body["error"]
    assert len(running.service.log.receipts) == 1
    # the same head re-checkpointed later (cron's unmoved head) is a new receipt
    assert running.post(_body(signed("p", "r", 7, H1, _now(), operator)))[0] == 200


def test_oversized_malformed_and_unbounded_bodies(running, keys) -> None:
    operator, _ = keys
    status, body = running.post(b"x" * (MAX_BODY_BYTES + 1))
    assert status == 413 and "limit" in body["error"]
    assert running.post(b"{not json")[0] == 400
    status, body = running.post(json.dumps({"checkpoints": []}).encode())
    assert status == 400 and "1 to 100" in body["error"]
    many = [signed("p", "r", i, H1, _now(), operator) for i in range(1, 102)]
    assert running.post(_body(*many))[0] in (400, 413)
    status, body = running.post(json.dumps({"checkpoints": [{"seq": 1}]}).encode())
    assert status == 400 and "checkpoint field" in body["error"]
    status, body = running.post(json.dumps({"heads": []}).encode())
    assert status == 400 and '{"checkpoints"' in body["error"]
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    conn.putrequest("POST", "/v1/checkpoints")
    conn.putheader("Transfer-Encoding", "chunked")  # no length: refused, not read forever
    conn.endheaders()
    assert conn.getresponse().status == 411
    conn.close()
    assert running.service.log.receipts == []


def test_a_store_edited_behind_the_witness_stops_it_starting(tmp_path, keys) -> None:
    operator, wkey = keys
    store = tmp_path / "receipts.jsonl"
    w = Running(store, operator, wkey)
    try:
        for seq in (1, 2, 3):
            assert w.post(_body(signed("p", "r", seq, H1 if seq != 2 else H2, _now(),
                                       operator)))[0] == 200
    finally:
        w.stop()
    lines = store.read_text().splitlines()
    store.write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # receipt 1 removed
    trusted = {key_id(operator.public_key()): Trusted(operator.public_key())}
    with pytest.raises(ConfigError, match="chain breaks"):
        WitnessService(ReceiptFile(store), wkey, trusted, 300.0)
    with pytest.raises(ConfigError, match="needs at least one key to trust"):
        WitnessService(ReceiptFile(tmp_path / "new.jsonl"), wkey, {}, 300.0)


def test_one_witness_process_per_store(running, keys, tmp_path) -> None:
    operator, wkey = keys
    trusted = {key_id(operator.public_key()): Trusted(operator.public_key())}
    with pytest.raises(ConfigError, match="in use by another witness"):
        WitnessService(running.service.store, wkey, trusted, 300.0)
    running.service.close()  # released: a restart on the store is allowed
    WitnessService(running.service.store, wkey, trusted, 300.0).close()


def test_off_loopback_only_over_tls(tmp_path, keys) -> None:
    operator, wkey = keys
    trusted = {key_id(operator.public_key()): Trusted(operator.public_key())}
    service = WitnessService(ReceiptFile(tmp_path / "r.jsonl"), wkey, trusted, 300.0)
    service.close()
    with pytest.raises(ConfigError, match="without TLS"):
        make_server(service, "0.0.0.0:0")
    pki = make_pki(tmp_path)
    server = make_server(service, "127.0.0.1:0", (pki.cert, pki.key))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        c = signed("p", "r", 1, H1, _now(), operator)
        (receipt,) = HttpWitness(url, wkey.public_key(), ca_file=pki.ca).submit([c])
        assert receipt.checkpoint == c
        # a certificate from a CA the client does not trust: no answer is believed
        with pytest.raises(HeadwaterError, match="did not answer"):
            HttpWitness(url, wkey.public_key(), ca_file=pki.other_ca).read()
        # plain HTTP to the TLS port is not served
        with pytest.raises(HeadwaterError):
            HttpWitness(url.replace("https", "http"), timeout_s=3).read()
    finally:
        server.shutdown()
        server.server_close()


def test_a_store_that_fails_answers_503_and_keeps_nothing(running, keys, monkeypatch) -> None:
    operator, _ = keys

    def full_disk(receipts) -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr(running.service.store, "append", full_disk)
    status, body = running.post(_body(signed("p", "r", 1, H1, _now(), operator)))
    assert status == 503 and "no space left" in body["error"]
    assert running.service.log.receipts == []
