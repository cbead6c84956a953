"""Issue 14, rows 1-5: auditors' SQL cannot reach the host, write, stick to the writer's
session, run forever, or fetch more rows than it returns (Query.Sql on a real serve with
TLS and tokens, and the policy against every function of this engine version)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.secure_serve import (
    TOKENS,
    Pki,
    SecureServe,
    make_pki,
    secure_env,
    source_event,
    tls_channel,
    write_tokens,
)

from conftest import stop
from headwater.producers import GrpcTransport, Publisher
from headwater.query_service.server.auth import Role
from headwater.query_service.sql.policy import (
    DENIED_FUNCTIONS,
    SYSTEM_FUNCTIONS_SQL,
    TABLE_FUNCTIONS,
    SqlLimits,
    SqlRefused,
    allowed_functions,
    allowlist,
    check_statement,
    denial,
)
from headwater.query_service.sql.reader import SqlReader
from headwater.stream_processors.store import Store
from headwater.v1 import query_pb2, query_pb2_grpc

# --- the policy against this engine version -------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    store = Store(f"chdb://{tmp_path_factory.mktemp('sandbox') / 'clickhouse'}")
    store.migrate()
    yield store
    store.close()


@pytest.fixture(scope="module")
def reader(engine: Store) -> Iterator[SqlReader]:
    r = SqlReader(engine, SqlLimits(seconds=5, max_rows=1000))
    yield r
    r.close()


def test_every_function_of_the_engine_is_reviewed(engine: Store) -> None:
    """A new engine version adds functions: each must be allowed (sql/functions.txt) or
    refused with a reason, and the shipped list must be what the rules give for this engine
    (regenerate with `python -m headwater.query_service.sql.policy`)."""
    rows = [tuple(r) for r in engine.query(SYSTEM_FUNCTIONS_SQL)]
    assert len(rows) > 1000
    assert sorted(allowed_functions()) == allowlist(rows)  # type: ignore[arg-type]
    categories_of = {r[0]: r[3] for r in rows}
    for name, case_insensitive, alias_to, categories in rows:
        key = f"ci:{name.lower()}" if case_insensitive else name
        refused = denial(name, categories) or (
            alias_to and denial(alias_to, categories_of.get(alias_to, "")))
        assert (key in allowed_functions()) != bool(refused), name
    for name in ("file", "hostName", "sleep", "dictGet", "addressToSymbol", "joinGet"):
        assert name not in allowed_functions()


def test_every_refused_function_is_refused_by_the_reader(engine: Store,
                                                         reader: SqlReader) -> None:
    """Each function the rules deny is refused before anything runs, whatever its case."""
    rows = engine.query(SYSTEM_FUNCTIONS_SQL)
    categories_of = {r[0]: r[3] for r in rows}
    denied = [name for name, _, alias, cats in rows
              if denial(name, cats) or (alias and denial(alias, categories_of.get(alias, "")))]
    assert set(DENIED_FUNCTIONS) - {"catboostEvaluate"} <= set(denied)
    for name in denied:
        for spelled in {name, name.upper()}:
            with pytest.raises(SqlRefused, match="refused"):
                reader.run(f"SELECT {spelled}('/etc/hostname')", None, 10)


def test_every_table_function_but_the_generators_is_refused(engine: Store,
                                                            reader: SqlReader) -> None:
    """file, url, s3, remote, executable, python, mysql, ... every table function this
    engine has, except generators that read nothing."""
    names = [r[0] for r in engine.query("SELECT name FROM system.table_functions")]
    assert {"file", "url", "s3", "remote", "executable", "python", "input"} <= set(names)
    for name in names:
        if name in TABLE_FUNCTIONS:
            continue
        with pytest.raises(SqlRefused, match=f"table function {name}|cannot parse|can parse"):
            reader.run(f"SELECT * FROM {name}('/etc/passwd')", None, 10)
    assert reader.run("SELECT count() FROM numbers(10)", None, 10).rows == [(10,)]


@pytest.mark.parametrize("sql, reason", [
    ("SELECT file('/proc/self/environ')", "function file"),
    ("SELECT FILE('/proc/self/environ')", "function FILE"),
    ("SELECT 1 INTO OUTFILE '/tmp/hw-sandbox-out' TRUNCATE", "INTO OUTFILE"),
    ("SHOW TABLES INTO OUTFILE '/tmp/hw-sandbox-out'", "INTO OUTFILE"),
    ("INSERT INTO dead_letters (error) VALUES ('x')", "only reads"),
    ("ALTER TABLE events DELETE WHERE 1", "only reads"),
    ("SET readonly = 0", "only reads"),
    ("SYSTEM SHUTDOWN", "only reads"),
    ("KILL QUERY WHERE 1", "only reads"),
    ("EXPLAIN SELECT 1", "only reads"),
    ("SELECT 1 SETTINGS max_execution_time = 0", "SETTINGS"),
    ("SELECT 1 FORMAT JSON", "FORMAT"),
    ("SELECT * FROM system.users", "outside the headwater database"),
    ("SELECT * FROM `system`.`processes`", "outside the headwater database"),
    ("SELECT 1 IN system.users", "outside the headwater database"),
    ("SELECT * FROM other_db.t", "outside the headwater database"),
    ("SHOW TABLES FROM system", "another database"),
    ("DESCRIBE TABLE url('http://127.0.0.1:9/', CSV)", "table function url"),
    ("SELECT (SELECT hostName())", "function hostName"),
    ("SELECT arrayMap(x -> file(x), ['/etc/passwd'])", "function file"),
    ("SELECT 1; SELECT 2", "one statement"),
])
def test_hostile_statements_are_refused(reader: SqlReader, sql: str, reason: str) -> None:
    with pytest.raises(SqlRefused, match=reason):
        reader.run(sql, None, 10)
    assert not Path("/tmp/hw-sandbox-out").exists()


def test_ordinary_reads_pass(reader: SqlReader) -> None:
    for sql in ["SELECT count() FROM events", "SELECT * FROM headwater.events LIMIT 1",
                "WITH t AS (SELECT 1 AS a) SELECT a FROM t UNION ALL SELECT 2",
                "SELECT arrayMap(x -> x * 2, [1, 2])", "SELECT CAST(1 AS String), COUNT(*) "
                "FROM system.one", "SELECT row_number() OVER (ORDER BY number) FROM numbers(3)",
                "DESCRIBE TABLE events", "SHOW TABLES", "SELECT {r:String} AS run"]:
        reader.run(sql, {"r": "x"} if "{r" in sql else None, 10)


def test_tree_lines_that_hide_a_database_are_refused() -> None:
    """Quoted names whose printed form is ambiguous (spaces, several dots) are refused."""
    tree = ["SelectWithUnionQuery (children 1)", " ExpressionList (children 1)",
            "  SelectQuery (children 2)", "   ExpressionList (children 1)", "    Asterisk",
            "   TablesInSelectQuery (children 1)", "    TablesInSelectQueryElement (children 1)",
            "     TableExpression (children 1)", "      TableIdentifier headwater x.evil"]
    with pytest.raises(SqlRefused, match="plain identifiers"):
        check_statement(tree, "headwater")
    tree[-1] = "      TableIdentifier headwater.x.evil"
    with pytest.raises(SqlRefused, match="plain identifiers"):
        check_statement(tree, "headwater")
    tree[-1] = "      TableIdentifier headwater.events (alias e)"
    assert check_statement(tree, "headwater") == "SelectWithUnionQuery"


def test_rows_are_streamed_and_cut_at_the_limit(reader: SqlReader) -> None:
    """Row 5: 5M rows asked with max_rows=1 fetch one block, not 5M rows."""
    started = time.perf_counter()
    result = reader.run("SELECT number, toString(number) FROM numbers(5000000)", None, 1)
    assert result.rows == [(0, "0")] and result.truncated
    assert time.perf_counter() - started < 2.0  # fetching every row takes several seconds
    exact = reader.run("SELECT number FROM numbers(3)", None, 3)
    assert exact.rows == [(0,), (1,), (2,)] and not exact.truncated
    capped = reader.run("SELECT number FROM numbers(5000)", None, 10**9)  # the setting wins
    assert len(capped.rows) == 1000 and capped.truncated


def test_a_long_read_stops_at_the_limit_and_blocks_no_write(engine: Store) -> None:
    """Row 4: the statement runs on its own client; the store writes meanwhile; the
    server's time limit ends it."""
    reader = SqlReader(engine, SqlLimits(seconds=2))
    failure: list[BaseException] = []

    def long_read() -> None:
        try:
            reader.run("SELECT sum(number) FROM numbers(1000000000000)", None, 1)
        except BaseException as exc:  # noqa: BLE001 - inspected below
            failure.append(exc)

    started = time.perf_counter()
    worker = threading.Thread(target=long_read)
    worker.start()
    time.sleep(0.3)
    t0 = time.perf_counter()
    engine.command("INSERT INTO schema_migrations (version, name, checksum) "
                   "VALUES (9999, 'probe', 'x')")
    assert time.perf_counter() - t0 < 1.0
    worker.join(10)
    assert not worker.is_alive()
    assert "Timeout exceeded" in str(failure[0])
    assert time.perf_counter() - started < 5
    engine.command("ALTER TABLE schema_migrations DELETE WHERE version = 9999 "
                   "SETTINGS mutations_sync = 1")
    reader.close()


def test_concurrency_is_capped(engine: Store) -> None:
    reader = SqlReader(engine, SqlLimits(seconds=3, concurrent=1))
    done = threading.Event()
    threading.Thread(target=lambda: (_swallow(reader.run, "SELECT sum(number) FROM "
                                              "numbers(1000000000000)", None, 1),
                                     done.set())).start()
    time.sleep(0.3)
    from headwater.query_service.sql.reader import SqlBusy
    with pytest.raises(SqlBusy, match="HEADWATER_SQL_MAX_CONCURRENT"):
        reader.run("SELECT 1", None, 1)
    assert done.wait(10)
    assert reader.run("SELECT 1", None, 1).rows == [(1,)]
    reader.close()


def _swallow(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - the timeout is expected
        pass


# --- through a real serve with TLS and tokens -----------------------------------------------

@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServe]:
    d = tmp_path_factory.mktemp("sql-secure")
    (d / "pki").mkdir()
    pki: Pki = make_pki(d / "pki")
    env = {**secure_env(pki, write_tokens(d / "tokens")), "HEADWATER_SQL_TIMEOUT_SECONDS": "20",
           "HEADWATER_SQL_MAX_CONCURRENT": "1"}
    s = SecureServe(d / "data", env, d / "serve.log")
    s.pki = pki  # type: ignore[attr-defined]
    yield s
    stop(s.proc)


def _sql(secure: SecureServe, sql: str, timeout: float = 30, max_rows: int = 0):
    channel = tls_channel(secure.pki, TOKENS[Role.AUDITOR], secure.target)  # type: ignore[attr-defined]
    try:
        return query_pb2_grpc.QueryStub(channel).Sql(
            query_pb2.SqlRequest(sql=sql, max_rows=max_rows), timeout=timeout)
    finally:
        channel.close()


def _publish(secure: SecureServe, n: int, start: int = 0) -> None:
    transport = GrpcTransport(secure.target, tls_ca_file=str(secure.pki.ca),  # type: ignore[attr-defined]
                              token=TOKENS[Role.PRODUCER])
    publisher = Publisher(transport, "run-sql", "trainer-sql")
    try:
        for i in range(start, start + n):
            publisher.publish(source_event(i))
        publisher.flush()
    finally:
        publisher.close()


def test_rows_1_to_3_through_the_server(secure: SecureServe, tmp_path: Path) -> None:
    """file() and INTO OUTFILE are refused INVALID_ARGUMENT; a refused INSERT leaves ingest
    working (readonly no longer sticks to the writer's session)."""
    out = tmp_path / "written-by-sql"
    for sql, reason in [("SELECT file('/proc/self/environ')", "function file"),
                        (f"SELECT 1 INTO OUTFILE '{out}' TRUNCATE", "INTO OUTFILE"),
                        ("INSERT INTO dead_letters (error) VALUES ('x')", "only reads")]:
        with pytest.raises(grpc.RpcError) as refused:
            _sql(secure, sql)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason in refused.value.details()
    assert not out.exists()
    count = "SELECT count() FROM events WHERE run_id = 'run-sql'"
    (before,), = json.loads(_sql(secure, count).rows_json)  # other tests publish here too
    _publish(secure, 3, start=100)
    assert json.loads(_sql(secure, count).rows_json) == [[before + 3]]


def test_row_4_a_read_whose_caller_gives_up_is_killed_and_ingest_goes_on(
        secure: SecureServe) -> None:
    """The client's 1 s deadline ends the statement on the server (the setting would let it
    run 20 s), and publishing during it is not held up. The server runs one statement at a
    time here, so a second statement is refused RESOURCE_EXHAUSTED until the first is gone."""
    with pytest.raises(grpc.RpcError) as ended:
        _sql(secure, "SELECT sum(number) FROM numbers(1000000000000)", timeout=1.0)
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _wait_for_a_free_slot(secure, time.perf_counter())
    # a caller with no deadline that cancels: only the kill can stop the statement early
    channel = tls_channel(secure.pki, TOKENS[Role.AUDITOR], secure.target)  # type: ignore[attr-defined]
    call = query_pb2_grpc.QueryStub(channel).Sql.future(
        query_pb2.SqlRequest(sql="SELECT sum(number) FROM numbers(1000000000000)"))
    time.sleep(1.0)
    call.cancel()
    channel.close()
    gave_up = time.perf_counter()
    _publish(secure, 2, start=10)
    assert time.perf_counter() - gave_up < 5
    _wait_for_a_free_slot(secure, gave_up)


def _wait_for_a_free_slot(secure: SecureServe, gave_up: float) -> None:
    while True:
        try:
            assert json.loads(_sql(secure, "SELECT 1").rows_json) == [[1]]
            break
        except grpc.RpcError as busy:
            assert busy.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.perf_counter() - gave_up < 8, "the abandoned statement still runs"
            time.sleep(0.2)


def test_row_5_five_million_rows_with_max_rows_1(secure: SecureServe) -> None:
    response = _sql(secure, "SELECT number, repeat('x', 100) FROM numbers(5000000)",
                    max_rows=1)
    assert json.loads(response.rows_json) == [[0, "x" * 100]] and response.truncated
