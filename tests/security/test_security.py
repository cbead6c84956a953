"""Security: TLS, bearer tokens and roles on a real `headwater serve`, secrets hygiene."""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.secure_serve import (
    TOKENS,
    Pki,
    SecureServe,
    secure_env,
    source_event,
    tls_channel,
)

from conftest import free_port, run_headwater, stop
from headwater.cli import main as cli_main
from headwater.errors import ConfigError
from headwater.producers import GrpcTransport, Publisher, PublishError
from headwater.producers.transports.channel import (
    ChannelConfigError,
    ClientSecurity,
    open_channel,
)
from headwater.query_service.redaction import redact_config
from headwater.query_service.server.app import build_server
from headwater.query_service.server.auth import (
    Principal,
    Role,
    TokenFile,
    hash_token,
    parse_tokens,
    roles_for,
)
from headwater.query_service.server.transport_security import ServerSecurity, check_exposure
from headwater.query_service.settings import Settings
from headwater.stream_processors.dsn import redact_dsn
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

# --- a throwaway PKI, one token per role, the server (tests/support/secure_serve.py) ---

@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory, pki: Pki,
           tokens_file: Path) -> Iterator[SecureServe]:
    d = tmp_path_factory.mktemp("secure")
    s = SecureServe(d / "data", secure_env(pki, tokens_file), d / "serve.log")
    yield s
    stop(s.proc)


def _tls(pki: Pki, token: str | None = None, target: str = "") -> grpc.Channel:
    return tls_channel(pki, token, target)


_source = source_event


# --- the running server ----------------------------------------------------------------------

def test_no_token_is_unauthenticated_but_health_stays_open(secure: SecureServe,
                                                           pki: Pki) -> None:
    channel = _tls(pki, target=secure.target)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                       timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        query_pb2_grpc.LineageStub(channel).Sources(query_pb2.SourcesRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Lineage.Sources needs role reader or auditor or admin" in err.value.details()


def test_unknown_token_is_refused_without_echoing_it(secure: SecureServe, pki: Pki) -> None:
    guess = "guessed-token-Hq3Vn8Lw2"
    stub = query_pb2_grpc.QueryStub(_tls(pki, guess, secure.target))
    with pytest.raises(grpc.RpcError) as err:
        stub.Sql(query_pb2.SqlRequest(sql="SELECT 1"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "unknown or revoked token" in err.value.details()
    assert guess not in err.value.details()
    malformed = query_pb2_grpc.QueryStub(_tls(pki, target=secure.target))
    with pytest.raises(grpc.RpcError) as err:
        malformed.Sql(query_pb2.SqlRequest(sql="SELECT 1"), timeout=10,
                      metadata=[("authorization", f"Basic {guess}")])
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert guess not in err.value.details()


def test_reader_cannot_forget_the_error_names_admin(secure: SecureServe, pki: Pki) -> None:
    stub = query_pb2_grpc.UnlearningStub(_tls(pki, TOKENS[Role.READER], secure.target))
    request = query_pb2.ForgetRequest(run_id="r", model_id="m",
                                      target=events_pb2.ForgetTarget(source_ids=["clinic-1"]))
    with pytest.raises(grpc.RpcError) as err:
        stub.Forget(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.value.details() == ("Unlearning.Forget needs role admin; the token presented "
                                   "has role reader")
    # streaming RPCs are checked too: Status is a server stream, the producer may not read it
    producer = query_pb2_grpc.UnlearningStub(_tls(pki, TOKENS[Role.PRODUCER], secure.target))
    with pytest.raises(grpc.RpcError) as err:
        list(producer.Status(query_pb2.UnlearningStatusRequest(request_id="x"), timeout=10))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_producer_publishes_with_tls_and_token_auditor_reads_it(
        secure: SecureServe, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    transport = GrpcTransport(secure.target, tls_ca_file=str(pki.ca),
                              token=TOKENS[Role.PRODUCER], batch_size=3)
    with Publisher(transport, run_id="secure-run") as pub:
        for i in range(5):
            pub.publish(_source(i))
    # the defaults come from the environment, as a trainer's deployment sets them
    monkeypatch.setenv("HEADWATER_TLS_CA_FILE", str(pki.ca))
    monkeypatch.setenv("HEADWATER_TOKEN", TOKENS[Role.READER])
    with pytest.raises(PublishError, match="PERMISSION_DENIED: Ingest.PublishBatch needs "
                                           "role producer or unlearner or admin"):
        with Publisher(GrpcTransport(secure.target, retry_for=0), run_id="secure-run") as pub:
            pub.publish(_source(9))

    sql = query_pb2.SqlRequest(sql="SELECT count() FROM events FINAL WHERE run_id = {r:String}",
                               parameters={"r": "secure-run"})
    auditor = query_pb2_grpc.QueryStub(_tls(pki, TOKENS[Role.AUDITOR], secure.target))
    assert json.loads(auditor.Sql(sql, timeout=30).rows_json) == [[5]]
    reader = query_pb2_grpc.QueryStub(_tls(pki, TOKENS[Role.READER], secure.target))
    with pytest.raises(grpc.RpcError) as err:
        reader.Sql(sql, timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "Query.Sql needs role auditor or admin" in err.value.details()
    # the auditor's SQL is read-only: ClickHouse refuses writes and setting changes
    with pytest.raises(grpc.RpcError, match="SETTINGS clause is refused"):
        auditor.Sql(query_pb2.SqlRequest(sql="SELECT 1 SETTINGS readonly=0"), timeout=10)


def test_cli_reaches_the_secure_server_with_the_auditor_token(secure: SecureServe) -> None:
    done = secure.cli("sql", "SELECT 6 * 7 AS n, count() AS sources FROM sources FINAL",
                      "--format", "json", token=TOKENS[Role.AUDITOR])
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.splitlines()[0])
    assert answer["n"] == 42 and "sources" in answer  # the server computed and returned it
    refused = secure.cli("sql", "SELECT 1", token=TOKENS[Role.PRODUCER])
    assert refused.returncode == 2
    assert "Query.Sql needs role auditor or admin; the token presented has role producer" \
        in refused.stderr
    assert TOKENS[Role.PRODUCER] not in refused.stderr + refused.stdout


def test_plaintext_client_against_tls_server_fails(secure: SecureServe, pki: Pki) -> None:
    plain = query_pb2_grpc.LineageStub(grpc.insecure_channel(secure.target))
    with pytest.raises(grpc.RpcError) as err:
        plain.Sources(query_pb2.SourcesRequest(), timeout=5,
                      metadata=[("authorization", f"Bearer {TOKENS[Role.ADMIN]}")])
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # TLS, but trusting another CA: the server's certificate is rejected
    wrong = open_channel(secure.target, ClientSecurity(tls=True, tls_ca_file=pki.other_ca,
                                                       token=TOKENS[Role.ADMIN]))
    with pytest.raises(grpc.RpcError) as err:
        query_pb2_grpc.LineageStub(wrong).Sources(query_pb2.SourcesRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tokens_never_reach_the_server_log(secure: SecureServe, pki: Pki) -> None:
    stub = query_pb2_grpc.UnlearningStub(_tls(pki, TOKENS[Role.READER], secure.target))
    with pytest.raises(grpc.RpcError):
        stub.Forget(query_pb2.ForgetRequest(run_id="r"), timeout=10)
    log = secure.log.read_text()
    assert "token auth" in log and "TLS" in log  # the start-up line says what protects it
    assert "refused PERMISSION_DENIED: Unlearning.Forget needs role admin" in log
    for token in TOKENS.values():
        assert token not in log


# --- start-up refusals -----------------------------------------------------------------------

def test_non_loopback_bind_without_tls_and_auth_is_refused(tmp_path: Path,
                                                           tokens_file: Path) -> None:
    done = run_headwater("serve", "--data-dir", str(tmp_path / "d"), "--listen",
                         f"0.0.0.0:{free_port()}", env={"HEADWATER_AUTH_TOKENS_FILE": ""})
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0" in done.stderr
    assert "missing TLS (HEADWATER_TLS_CERT_FILE + HEADWATER_TLS_KEY_FILE) and token auth" \
        in done.stderr
    assert not (tmp_path / "d").exists()  # refused before the store was opened

    only_tokens = ServerSecurity(tokens_file=tokens_file)
    with pytest.raises(ConfigError, match="missing TLS"):
        check_exposure("0.0.0.0:50051", only_tokens)
    with pytest.raises(ConfigError, match="missing token auth"):
        check_exposure("[::]:50051", ServerSecurity(cert_file=Path("c"), key_file=Path("k")))
    for loopback in ("127.0.0.1:1", "localhost:1", "[::1]:1", "127.3.4.5:1"):
        check_exposure(loopback, ServerSecurity())
    check_exposure("10.1.2.3:1", ServerSecurity(tokens_file, Path("c"), Path("k")))


def test_bad_tls_files_are_named_at_start(pki: Pki, tmp_path: Path) -> None:
    from headwater.query_service.server.transport_security import server_credentials

    with pytest.raises(ConfigError, match="is not the key of the certificate"):
        server_credentials(ServerSecurity(cert_file=pki.cert, key_file=pki.client_key))
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        server_credentials(ServerSecurity(cert_file=pki.key, key_file=pki.key))
    with pytest.raises(ConfigError, match="cannot read"):
        server_credentials(ServerSecurity(cert_file=tmp_path / "nope", key_file=pki.key))


def test_mutual_tls_requires_a_client_certificate(store, pki: Pki) -> None:
    security = ServerSecurity(cert_file=pki.cert, key_file=pki.key, client_ca_file=pki.ca)
    server, port = build_server(store, "127.0.0.1:0", security=security)
    server.start()
    try:
        target = f"127.0.0.1:{port}"
        request = health_pb2.HealthCheckRequest()
        no_cert = health_pb2_grpc.HealthStub(_tls(pki, target=target))
        with pytest.raises(grpc.RpcError) as err:
            no_cert.Check(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with_cert = open_channel(target, ClientSecurity(
            tls=True, tls_ca_file=pki.ca, client_cert_file=pki.client_cert,
            client_key_file=pki.client_key))
        assert health_pb2_grpc.HealthStub(with_cert).Check(request, timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(None)


# --- pure parts ------------------------------------------------------------------------------

def test_every_rpc_has_roles_and_forget_is_admin_only() -> None:
    services = query_pb2.DESCRIPTOR.services_by_name
    for service in services.values():
        for method in service.methods:
            roles = roles_for(f"/{service.full_name}/{method.name}")
            assert Role.ADMIN in roles, method.full_name
    assert roles_for("/headwater.v1.Unlearning/Forget") == [Role.ADMIN]
    assert roles_for("/headwater.v1.Query/Sql") == [Role.AUDITOR, Role.ADMIN]
    assert roles_for("/headwater.v1.Compliance/Report") == [Role.AUDITOR, Role.ADMIN]
    assert roles_for("/headwater.v1.Ingest/Publish") == [Role.PRODUCER, Role.UNLEARNER,
                                                          Role.ADMIN]
    assert roles_for("/headwater.v1.Unlearning/Pending") == list(Role)
    assert roles_for("/headwater.v1.Lineage/TraceRows") == [Role.READER, Role.AUDITOR,
                                                             Role.ADMIN]
    assert roles_for("/headwater.v1.Unknown/Thing") == [Role.ADMIN]


def test_token_file_formats_and_errors_hide_values() -> None:
    digest = hash_token("s3cret-token")
    lines = parse_tokens(f"# comment\n{digest} auditor alice\n\nsha256:{'a' * 64} producer\n")
    assert lines[bytes.fromhex(digest)] == Principal(Role.AUDITOR, "alice")
    assert lines[bytes.fromhex("a" * 64)] == Principal(Role.PRODUCER, "")
    as_json = parse_tokens(json.dumps({digest: "admin", f"sha256:{'b' * 64}":
                                       {"role": "reader", "name": "bob"}}))
    assert as_json[bytes.fromhex(digest)].role is Role.ADMIN
    assert as_json[bytes.fromhex("b" * 64)] == Principal(Role.READER, "bob")
    with pytest.raises(ConfigError, match="line 1: expected the SHA-256") as err:
        parse_tokens("raw-token-pasted-by-mistake admin\n")
    assert "raw-token-pasted-by-mistake" not in str(err.value)
    with pytest.raises(ConfigError, match="unknown role 'root'"):
        parse_tokens(f"{digest} root\n")


def test_token_file_is_reread_when_it_changes(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{hash_token('old')} reader\n")
    now = [0.0]
    tokens = TokenFile(path, clock=lambda: now[0])
    assert tokens.lookup("old") == Principal(Role.READER)
    path.write_text(f"{hash_token('new')} admin\n")  # rotate: the old token is revoked
    os.utime(path, ns=(1, 1))
    assert tokens.lookup("new") is None  # not checked again within a second
    now[0] = 2.0
    assert tokens.lookup("new") == Principal(Role.ADMIN)
    assert tokens.lookup("old") is None
    path.write_text("garbage-with-a-token-in-it admin\n")  # a broken rewrite keeps the table
    now[0] = 4.0
    assert tokens.lookup("new") == Principal(Role.ADMIN)
    assert "previous tokens stay in force" in caplog.text
    assert "garbage-with-a-token-in-it" not in caplog.text


def test_token_is_never_sent_in_plaintext_off_loopback() -> None:
    with pytest.raises(ChannelConfigError, match="refusing to send the token to 10.0.0.7"):
        open_channel("10.0.0.7:50051", ClientSecurity(token="t"))
    open_channel("127.0.0.1:50051", ClientSecurity(token="t")).close()  # loopback: allowed
    assert "t0k" not in repr(ClientSecurity(token="t0k"))


def test_secrets_stay_out_of_settings_errors_and_cli_output(
        capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "Pw-Xk29vLq"
    kafka = {"sasl.password": secret, "sasl.jaas.config": f"password={secret}",
             "ssl.key.password": secret, "security.protocol": "SASL_SSL"}
    settings = Settings(dsn=f"http://ingest:{secret}@127.0.0.1:1", kafka_config=kafka,
                        token=secret)
    assert secret not in repr(settings) and secret not in str(settings)
    assert redact_config(kafka)["security.protocol"] == "SASL_SSL"
    assert redact_dsn(f"https://u:{secret}/x@y@h:8443/db") == "https://u:***@h:8443/db"

    def run(*argv: str) -> str:
        """Everything a user could see: output, logs, and any traceback that escaped."""
        with pytest.raises(BaseException) as err:
            cli_main(list(argv))
        shown = "" if isinstance(err.value, SystemExit) else "".join(
            traceback.format_exception(err.value))
        captured = capsys.readouterr()
        return captured.out + captured.err + caplog.text + shown

    # an unreachable ClickHouse, a DSN with a bad port, a malformed Kafka JSON with a secret
    out = run("sql", "SELECT 1", "--dsn", f"http://ingest:{secret}@127.0.0.1:1")
    assert "http://ingest:***@127.0.0.1:1" in out and secret not in out
    out = run("sql", "SELECT 1", "--dsn", f"http://ingest:{secret}@127.0.0.1:port")
    assert "invalid port" in out and secret not in out
    monkeypatch.setenv("HEADWATER_KAFKA_CONFIG", f'{{"sasl.password": "{secret}", ')
    out = run("status", "--dsn", "http://127.0.0.1:1")
    assert "kafka_config" in out and secret not in out
    monkeypatch.setenv("HEADWATER_KAFKA_CONFIG", json.dumps(kafka))
    out = run("status", "--dsn", f"http://ingest:{secret}@127.0.0.1:1")
    assert "cannot open ClickHouse" in out and secret not in out
