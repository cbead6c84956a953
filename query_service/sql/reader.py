"""Runs auditors' SQL (Query.Sql) inside limits the statement cannot change.

Each statement is parsed by ClickHouse (`EXPLAIN AST`, nothing runs) and checked by
sql.policy; it then runs on a client of its own (its own chDB handle or HTTP session), so a
long read never waits for or blocks ingest and no setting it meets sticks to the writer's
session. Limits ride on the query as settings (readonly=1 last, so the statement cannot
change them): execution time (also bounded by the caller's deadline), memory and result
rows; rows are streamed and the stream is closed at the row limit. A query whose caller
goes away is killed.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError

from headwater.errors import SqlBusy, StoreError
from headwater.query_service.sql.policy import SqlLimits, SqlRefused, check_statement
from headwater.stream_processors.store import Store, first_line


@dataclass(frozen=True)
class SqlResult:
    columns: list[str]
    rows: list[tuple]
    truncated: bool



def one_statement(sql: str) -> str:
    """The statement without surrounding blanks and trailing ';'. Embedded chDB runs every
    ';'-separated statement, so any ';' still inside is refused."""
    sql = sql.strip().rstrip(";").rstrip()
    if not sql:
        raise SqlRefused("sql is empty")
    if ";" in sql:
        raise SqlRefused("one statement only: ';' is refused anywhere but at the end (pass "
                         "text containing ';' as a {name:String} parameter)")
    return sql


class SqlReader:
    """A small pool of read-only clients on the store's database, `limits.concurrent` wide."""

    def __init__(self, store: Store, limits: SqlLimits | None = None) -> None:
        self._store = store
        self.limits = limits or SqlLimits()
        self._slots = threading.BoundedSemaphore(self.limits.concurrent)
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def run(self, sql: str, parameters: dict[str, Any] | None, max_rows: int,
            seconds: float | None = None,
            on_cancel: Callable[[Callable[[], None]], Any] | None = None) -> SqlResult:
        """Check and run one statement. `seconds`: the caller's remaining time (the time
        limit is the smaller of it and the setting); `on_cancel(kill)`: registers `kill`
        to be called when the caller goes away. Raises SqlRefused, SqlBusy, StoreError."""
        sql = one_statement(sql)
        limit = min(max_rows or self.limits.max_rows, self.limits.max_rows)
        budget = min(self.limits.seconds, seconds) if seconds else self.limits.seconds
        if budget <= 0:
            raise StoreError("the caller's deadline has already passed")
        if not self._slots.acquire(blocking=False):
            raise SqlBusy(f"{self.limits.concurrent} SQL statements are already running "
                          "(HEADWATER_SQL_MAX_CONCURRENT); retry shortly")
        client = None
        tag = f"headwater-sql-{uuid.uuid4()}"
        try:
            client = self._client()
            tree = self._explain(client, sql, parameters)
            kind = check_statement(tree, self._store.database)
            with self._lock:
                self._running.add(tag)
            if on_cancel is not None:
                on_cancel(lambda: self.kill(tag))
            if kind in ("DescribeQuery", "ShowTables"):  # small, and not streamable
                return self._fetch_whole(client, sql, parameters, limit, budget, tag)
            return self._fetch(client, sql, parameters, limit, budget, tag)
        finally:
            with self._lock:
                self._running.discard(tag)
            if client is not None:
                self._idle.put(client)
            self._slots.release()

    def kill(self, tag: str) -> None:
        """Stop the statement tagged `tag` if it still runs (the caller went away)."""
        with self._lock:
            if tag not in self._running:
                return
        try:
            self._store.command("KILL QUERY WHERE Settings['log_comment'] = {t:String} ASYNC",
                                {"t": tag})
        except StoreError:
            pass  # it ended on its own meanwhile, or the server is gone: nothing to stop

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get().close()

    def _client(self) -> Any:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self._store.open_client()

    def _settings(self, seconds: float, rows: int, tag: str) -> dict[str, Any]:
        # readonly=1 comes last: once set, the statement can change no setting
        return {"max_execution_time": round(max(seconds, 0.001), 3),
                "timeout_overflow_mode": "throw", "max_memory_usage": self.limits.memory_bytes,
                "max_result_rows": rows + 1, "result_overflow_mode": "break",
                "log_comment": tag, "readonly": 1}

    def _explain(self, client: Any, sql: str, parameters: dict[str, Any] | None) -> list[str]:
        """ClickHouse's parse tree of `sql`: EXPLAIN AST parses and does not run it."""
        try:
            # no settings here: the driver would append them as a SETTINGS clause, which
            # binds to the explained statement and would show in its tree
            result = client.query(f"EXPLAIN AST {sql}", parameters=parameters)
        except ClickHouseError as exc:
            raise SqlRefused(f"not a statement ClickHouse can parse: {first_line(exc)}") \
                from None
        return [row[0] for row in result.result_rows]

    def _fetch(self, client: Any, sql: str, parameters: dict[str, Any] | None, limit: int,
               seconds: float, tag: str) -> SqlResult:
        rows: list[tuple] = []
        truncated = False
        try:
            with client.query_row_block_stream(
                    sql, parameters=parameters,
                    settings=self._settings(seconds, limit, tag)) as stream:
                columns = list(stream.source.column_names)
                for block in stream:
                    room = limit - len(rows)
                    rows.extend(block[:room])
                    if len(block) > room:
                        truncated = True
                        break
                    if len(rows) >= limit:
                        truncated = _more(stream)
                        break
        except ClickHouseError as exc:
            raise StoreError(first_line(exc)) from exc
        return SqlResult(columns, rows, truncated)


    def _fetch_whole(self, client: Any, sql: str, parameters: dict[str, Any] | None,
                     limit: int, seconds: float, tag: str) -> SqlResult:
        try:
            result = client.query(sql, parameters=parameters,
                                  settings=self._settings(seconds, limit, tag))
        except ClickHouseError as exc:
            raise StoreError(first_line(exc)) from exc
        rows = list(result.result_rows)
        return SqlResult(list(result.column_names), rows[:limit], len(rows) > limit)


def _more(stream: Any) -> bool:
    """Whether the stream holds another row (consumes at most one block)."""
    try:
        return bool(next(stream))
    except StopIteration:
        return False

