"""Issue 23, hostile cases for Compliance.RegisterProducerKey and Compliance.AttestHead on a
token-auth serve: wrong roles refused, oversized fields refused naming the field, a head
signed for another producer or with garbage refused, a replayed signed head kept once; the
registration records the admin's identity."""

from __future__ import annotations

import json

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.secure_serve import TOKENS, SecureServe

from conftest import stop
from headwater.producers import GrpcTransport, Publisher
from headwater.producers.transports.channel import ClientSecurity, open_channel
from headwater.query_service.compliance.signing import public_pem
from headwater.query_service.compliance.witness import signed
from headwater.query_service.server.auth import Role
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, tokens_file):
    d = tmp_path_factory.mktemp("keys")
    s = SecureServe(d / "data", {"HEADWATER_AUTH_TOKENS_FILE": str(tokens_file)},
                    d / "serve.log")
    yield s
    stop(s.proc)


def _stub(serve: SecureServe, role: Role) -> query_pb2_grpc.ComplianceStub:
    return query_pb2_grpc.ComplianceStub(
        open_channel(serve.target, ClientSecurity(token=TOKENS[role])))


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def _sql(serve: SecureServe, text: str) -> list:
    stub = query_pb2_grpc.QueryStub(open_channel(serve.target,
                                                 ClientSecurity(token=TOKENS[Role.AUDITOR])))
    return json.loads(stub.Sql(query_pb2.SqlRequest(sql=text), timeout=30).rows_json)


def _attest(stub, head):
    return stub.AttestHead(query_pb2.AttestHeadRequest(
        producer_id=head.producer_id, run_id=head.run_id, seq=head.seq,
        head_hash=head.head_hash, written_at=head.written_at, key_id=head.key_id,
        signature=head.signature), timeout=30)


def test_roles_sizes_forgery_and_replay(keyed) -> None:
    publisher = Publisher(GrpcTransport(keyed.target, token=TOKENS[Role.PRODUCER]),
                          run_id="hostile-run", producer_id="trainer-h")
    last = [publisher.publish(events_pb2.SourceRegistered(
        source_id=f"h{i}", uri=f"file:///h{i}.csv", row_count=1,
        content_sha256=f"{i:064x}")) for i in range(3)][-1]
    publisher.flush()
    publisher.close()
    key = Ed25519PrivateKey.generate()
    register = query_pb2.RegisterProducerKeyRequest(producer_id="trainer-h",
                                                    public_key_pem=public_pem(key.public_key()))
    for role in (Role.PRODUCER, Role.UNLEARNER, Role.READER, Role.AUDITOR):
        assert _code(lambda r=role: _stub(keyed, r).RegisterProducerKey(
            register, timeout=30)) == grpc.StatusCode.PERMISSION_DENIED, role
    admin = _stub(keyed, Role.ADMIN)
    assert _code(lambda: admin.RegisterProducerKey(query_pb2.RegisterProducerKeyRequest(
        producer_id="p" * 300, public_key_pem=register.public_key_pem), timeout=30)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        admin.RegisterProducerKey(query_pb2.RegisterProducerKeyRequest(
            producer_id="trainer-h", public_key_pem="x" * 100_000), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "public_key_pem" in err.value.details()
    assert admin.RegisterProducerKey(register, timeout=30).created
    ((by,),) = _sql(keyed, "SELECT registered_by FROM producer_keys")
    assert by.startswith("token=admin-bot role=admin ") and TOKENS[Role.ADMIN] not in by

    head = signed("trainer-h", "hostile-run", last.seq, last.hash.hex(), "t", key)
    assert _code(lambda: _attest(_stub(keyed, Role.READER), head)) == \
        grpc.StatusCode.PERMISSION_DENIED
    producer = _stub(keyed, Role.PRODUCER)
    _attest(producer, head)
    _attest(producer, head)  # replayed: kept once
    assert _sql(keyed, "SELECT count() FROM head_attestations") == [[1]]
    other = signed("someone-else", "hostile-run", last.seq, last.hash.hex(), "t", key)
    assert _code(lambda: _attest(producer, other)) == grpc.StatusCode.FAILED_PRECONDITION
    garbage = head.__class__(**{**head.__dict__, "signature": "A" * 5000})
    assert _code(lambda: _attest(producer, garbage)) == grpc.StatusCode.INVALID_ARGUMENT
    not_base64 = head.__class__(**{**head.__dict__, "signature": "***"})
    assert _code(lambda: _attest(producer, not_base64)) == grpc.StatusCode.FAILED_PRECONDITION
