"""Lineage: sources now; row-level tracing arrives with the lineage tables."""

from __future__ import annotations

import json

import grpc

from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

_SOURCE_COLUMNS = (
    "source_id, uri, content_sha256, row_count, schema_json, format, size_bytes, origin, "
    "licence, node_id, labels, run_id, producer_id, event_id"
)
_ROW_LINEAGE = "needs the row-level lineage tables and resolution (issue 3)"


def _source(row: tuple) -> query_pb2.Source:
    (source_id, uri, sha, rows, schema_json, fmt, size, origin, licence, node_id, labels,
     run_id, producer_id, event_id) = row
    return query_pb2.Source(
        source_id=source_id, uri=uri, content_sha256=sha, row_count=rows,
        schema=[events_pb2.Column(**c) for c in json.loads(schema_json or "[]")],
        format=fmt, size_bytes=size, origin=origin, licence=licence, node_id=node_id,
        labels=dict(labels), run_id=run_id, producer_id=producer_id, event_id=event_id,
    )


class LineageService(query_pb2_grpc.LineageServicer):
    def __init__(self, store: Store) -> None:
        self._store = store

    def GetSource(self, request: query_pb2.GetSourceRequest, context: grpc.ServicerContext):
        if not request.source_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "source_id is empty")
        rows = self._store.query(
            f"SELECT {_SOURCE_COLUMNS} FROM sources FINAL WHERE source_id = {{id:String}}",
            {"id": request.source_id},
        )
        if not rows:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no source with id {request.source_id!r}")
        return _source(rows[0])

    def Sources(self, request: query_pb2.SourcesRequest, context: grpc.ServicerContext):
        rows = self._store.query(
            f"SELECT {_SOURCE_COLUMNS} FROM sources FINAL "
            "WHERE {run:String} = '' OR run_id = {run:String} ORDER BY registered_at, source_id",
            {"run": request.run_id},
        )
        return query_pb2.SourcesResponse(sources=[_source(r) for r in rows])

    def _not_built(self, name: str, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"Lineage.{name} is not built yet: "
                      f"{_ROW_LINEAGE}")

    def TraceRows(self, request, context):
        self._not_built("TraceRows", context)

    def Ancestors(self, request, context):
        self._not_built("Ancestors", context)

    def Ops(self, request, context):
        self._not_built("Ops", context)

    def DescribeNode(self, request, context):
        self._not_built("DescribeNode", context)
