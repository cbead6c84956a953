"""Query.Sql: one read-only statement against the store (readonly=1 is enforced by
ClickHouse itself, so writes and settings changes are refused there)."""

from __future__ import annotations

import json

import grpc

from headwater.stream_processors.errors import StoreError
from headwater.stream_processors.store import Store
from headwater.v1 import query_pb2, query_pb2_grpc

DEFAULT_MAX_ROWS = 10_000


def one_statement(sql: str) -> str:
    """The statement without surrounding blanks and trailing ';'. Embedded chDB runs every
    ';'-separated statement and leaves the extra results on the connection, where the
    next query of any caller reads them, so the caller refuses any ';' still inside."""
    return sql.strip().rstrip(";").rstrip()


class QueryService(query_pb2_grpc.QueryServicer):
    def __init__(self, store: Store) -> None:
        self._store = store

    def Sql(self, request: query_pb2.SqlRequest, context: grpc.ServicerContext):
        sql = one_statement(request.sql)
        if not sql:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sql is empty")
        if ";" in sql:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "one statement only: ';' is refused anywhere but at the end (pass "
                          "text containing ';' as a {name:String} parameter)")
        limit = request.max_rows or DEFAULT_MAX_ROWS
        try:
            columns, rows = self._store.query_columns(
                sql, dict(request.parameters) or None, readonly=True
            )
        except StoreError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return query_pb2.SqlResponse(
            columns=columns, rows_json=json.dumps([list(r) for r in rows[:limit]], default=str),
            truncated=len(rows) > limit,
        )
