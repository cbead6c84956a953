"""Every write records the authenticated principal (issue 14, row 15 and deliverable 7):
forget requests' `requested_by` and every ingested record name the token (by its name in the
token file, never the token), its role, the client certificate's subject under mTLS, and the
peer address."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.secure_serve import (
    TOKENS,
    Pki,
    SecureServe,
    secure_env,
    source_event,
    tls_channel,
)

from conftest import Serve, stop
from headwater.producers.envelope import EnvelopeBuilder
from headwater.producers.transports.base import Ack, Record
from headwater.producers.transports.channel import ClientSecurity, open_channel
from headwater.query_service.server.app import build_server
from headwater.query_service.server.auth import Principal, Role
from headwater.query_service.server.principal import _CURRENT, describe
from headwater.query_service.server.transport_security import ServerSecurity
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

PEER = r"peer=ipv4:127\.0\.0\.1:\d+"


@pytest.fixture(scope="module")
def mutual(tmp_path_factory: pytest.TempPathFactory, pki: Pki,
           tokens_file: Path) -> Iterator[SecureServe]:
    """serve with mTLS (clients need a certificate of the test CA) and token auth."""
    d = tmp_path_factory.mktemp("mutual")
    s = SecureServe(d / "data", secure_env(pki, tokens_file, mutual=True), d / "serve.log")
    yield s
    stop(s.proc)


@pytest.fixture(scope="module")
def tokens_only(tmp_path_factory: pytest.TempPathFactory,
                tokens_file: Path) -> Iterator[SecureServe]:
    """serve with token auth on plaintext loopback."""
    d = tmp_path_factory.mktemp("tokens")
    s = SecureServe(d / "data", {"HEADWATER_AUTH_TOKENS_FILE": str(tokens_file)},
                    d / "serve.log")
    yield s
    stop(s.proc)


def _forget_and_read_back(channel_for, run_id: str) -> str:
    """Register a source (producer), forget it (admin), read the request back through
    Unlearning.Pending (unlearner): its `requested_by`."""
    event = EnvelopeBuilder(run_id).wrap(source_event(1))
    ingest = query_pb2_grpc.IngestStub(channel_for(Role.PRODUCER))
    (ack,) = ingest.PublishBatch(query_pb2.EventBatch(events=[event.SerializeToString()]),
                                 timeout=30).acks
    assert ack.status == ack.ACCEPTED, ack.error
    unlearning = query_pb2_grpc.UnlearningStub(channel_for(Role.ADMIN))
    unlearning.Forget(query_pb2.ForgetRequest(
        run_id=run_id, model_id="clf", reason="withdrawn",
        target=events_pb2.ForgetTarget(source_ids=["clinic-1"])), timeout=60)
    pending = query_pb2_grpc.UnlearningStub(channel_for(Role.UNLEARNER)).Pending(
        query_pb2.PendingRequest(run_id=run_id), timeout=30)
    (item,) = pending.requests
    return item.request.requested_by


def test_forget_records_the_token_name_and_role(tokens_only: SecureServe) -> None:
    """Issue 14 row 15 (requested_by was the socket address): with token auth the forget
    request names the admin token's name and role (issue 23: not the peer); never the token."""
    def channel_for(role: Role) -> grpc.Channel:
        return open_channel(tokens_only.target, ClientSecurity(token=TOKENS[role]))

    by = _forget_and_read_back(channel_for, "identity-tokens")
    assert by == "token=admin-bot role=admin", by  # issue 23: the identity, not the address
    assert TOKENS[Role.ADMIN] not in by


def test_forget_records_the_client_certificate_subject(mutual: SecureServe, pki: Pki) -> None:
    """Issue 14 row 15 (forget with an admin token and a client certificate recorded
    neither): under mTLS requested_by names the token and the certificate's subject."""
    def channel_for(role: Role) -> grpc.Channel:
        return tls_channel(pki, TOKENS[role], mutual.target, client_cert=True)

    by = _forget_and_read_back(channel_for, "identity-mtls")
    assert by == "token=admin-bot role=admin cert=CN=trainer", by


def test_forget_without_auth_says_unauthenticated(tmp_path: Path) -> None:
    """Issue 14 row 15, dev mode: without a token file the record says so (no address)."""
    serve = Serve(tmp_path / "data")
    serve.start()
    try:
        by = _forget_and_read_back(lambda role: grpc.insecure_channel(serve.target),
                                   "identity-open")
    finally:
        serve.stop()
    assert by == "unauthenticated", by


class _Keep:
    """A sink that keeps the records it is handed."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def ingest(self, records: list[Record]) -> list[Ack]:
        self.records += records
        return [Ack(i, "", True) for i in range(len(records))]


def test_every_ingested_record_carries_the_principal(store, pki: Pki,
                                                     tokens_file: Path) -> None:
    """Issue 14 row 15 / deliverable 7 (every write records the authenticated principal):
    records handed to the sink by Ingest.PublishBatch and the streaming Ingest.Publish carry
    the token name, role, certificate subject and peer (the sink stores Record.principal)."""
    sink = _Keep()
    security = ServerSecurity(tokens_file=tokens_file, cert_file=pki.cert, key_file=pki.key,
                              client_ca_file=pki.ca)
    server, port = build_server(store, "127.0.0.1:0", sink=sink, security=security)
    server.start()
    try:
        target = f"127.0.0.1:{port}"
        builder = EnvelopeBuilder("identity-ingest")
        events = [builder.wrap(source_event(i)).SerializeToString() for i in range(3)]
        ingest = query_pb2_grpc.IngestStub(
            tls_channel(pki, TOKENS[Role.PRODUCER], target, client_cert=True))
        ingest.PublishBatch(query_pb2.EventBatch(events=events[:2]), timeout=30)
        admin = query_pb2_grpc.IngestStub(
            tls_channel(pki, TOKENS[Role.ADMIN], target, client_cert=True))
        admin.Publish(iter([query_pb2.EventBatch(events=events[2:])]), timeout=30)
    finally:
        server.stop(None)
    assert [r.value for r in sink.records] == events
    for record, name in zip(sink.records, ["producer", "producer", "admin"], strict=True):
        assert re.fullmatch(rf"token={name}-bot role={name} cert=CN=trainer {PEER}",
                            record.principal), record.principal


class _Context:
    def __init__(self, auth: dict, peer: str) -> None:
        self._auth, self._peer = auth, peer

    def auth_context(self) -> dict:
        return self._auth

    def peer(self) -> str:
        return self._peer


def test_the_principal_string_stays_one_line_of_fields() -> None:
    """Issue 14 row 15: a token name or certificate subject cannot forge another field
    (whitespace becomes `_`, control characters are dropped); an unnamed token says so."""
    context = _Context({"x509_common_name": [b"evil role=admin\nx"]}, "ipv4:127.0.0.1:9")
    token = _CURRENT.set(Principal(Role.PRODUCER, "bob  role=admin"))
    try:
        assert describe(context) == ("token=bob__role=admin role=producer "
                                     "cert=CN=evil_role=admin_x peer=ipv4:127.0.0.1:9")
    finally:
        _CURRENT.reset(token)
    token = _CURRENT.set(Principal(Role.READER))
    try:
        assert describe(_Context({}, "")) == "token=(unnamed) role=reader"
    finally:
        _CURRENT.reset(token)
    assert describe(_Context({}, "ipv6:[::1]:7")) == "unauthenticated peer=ipv6:[::1]:7"


def test_stored_events_and_dead_letters_name_who_sent_them(tokens_only: SecureServe) -> None:
    """Issue 14 row 15 / deliverable 7: through a real serve, the stored event and the
    dead letter of a refused one (a forged ForgetRequested, row 6) both carry the producer
    token's principal, so a forgery attempt names its sender."""
    builder = EnvelopeBuilder("identity-stored")
    good = builder.wrap(source_event(7))
    forged = builder.wrap(events_pb2.ForgetRequested(
        request_id="forged-1", model_id="clf", reason="forged",
        target=events_pb2.ForgetTarget(source_ids=["clinic-7"])))
    ingest = query_pb2_grpc.IngestStub(open_channel(
        tokens_only.target, ClientSecurity(token=TOKENS[Role.PRODUCER])))
    response = ingest.PublishBatch(query_pb2.EventBatch(
        events=[good.SerializeToString(), forged.SerializeToString()]), timeout=30)
    assert [a.status for a in response.acks] == [query_pb2.EventAck.ACCEPTED,
                                                 query_pb2.EventAck.REJECTED]
    sql = query_pb2_grpc.QueryStub(open_channel(
        tokens_only.target, ClientSecurity(token=TOKENS[Role.AUDITOR])))

    def principals(table: str, event_id: str) -> list[str]:
        rows = sql.Sql(query_pb2.SqlRequest(
            sql=f"SELECT principal FROM {table} WHERE event_id = {{e:String}}",
            parameters={"e": event_id}), timeout=30).rows_json
        return [r[0] for r in json.loads(rows)]

    (stored,) = principals("events", good.event_id)
    (dead,) = principals("dead_letters", forged.event_id)
    for who in (stored, dead):
        assert re.fullmatch(rf"token=producer-bot role=producer {PEER}", who), who
    assert principals("events", forged.event_id) == []
