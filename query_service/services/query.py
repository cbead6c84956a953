"""Query.Sql: one read-only statement against the store, checked on ClickHouse's parse tree
and run inside server-side limits (query_service/sql/reader.py)."""

from __future__ import annotations

import json

import grpc

from headwater.errors import StoreError
from headwater.query_service.sql.policy import SqlRefused
from headwater.query_service.sql.reader import SqlBusy, SqlReader
from headwater.v1 import query_pb2, query_pb2_grpc

DEFAULT_MAX_ROWS = 10_000


class QueryService(query_pb2_grpc.QueryServicer):
    def __init__(self, reader: SqlReader) -> None:
        self._reader = reader

    def Sql(self, request: query_pb2.SqlRequest, context: grpc.ServicerContext):
        remaining = context.time_remaining()
        try:
            result = self._reader.run(
                request.sql, dict(request.parameters) or None,
                request.max_rows or DEFAULT_MAX_ROWS,
                seconds=remaining if remaining is not None and remaining < 1e9 else None,
                on_cancel=context.add_callback)
        except SqlRefused as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"refused: {exc}")
        except SqlBusy as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except StoreError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return query_pb2.SqlResponse(
            columns=result.columns, rows_json=json.dumps([list(r) for r in result.rows],
                                                         default=str),
            truncated=result.truncated)
