"""Ingest: trainers publish encoded events; the ack comes after ClickHouse stored them."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from headwater.producers.transports.base import Ack, Record, Sink
from headwater.stream_processors.errors import StoreError
from headwater.v1 import query_pb2, query_pb2_grpc


def _response(acks: list[Ack], offset: int = 0) -> list[query_pb2.EventAck]:
    return [
        query_pb2.EventAck(
            index=offset + a.index, event_id=a.event_id, error=a.error,
            status=query_pb2.EventAck.ACCEPTED if a.accepted else query_pb2.EventAck.REJECTED,
        )
        for a in acks
    ]


class IngestService(query_pb2_grpc.IngestServicer):
    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def _store(self, events: list[bytes], context: grpc.ServicerContext) -> list[Ack]:
        try:
            return self._sink.ingest([Record(value=v) for v in events])
        except StoreError as exc:  # nothing acked: the client retries the whole batch
            context.abort(grpc.StatusCode.UNAVAILABLE, f"store write failed: {exc}")
            raise  # unreachable; abort raises

    def PublishBatch(self, request: query_pb2.EventBatch, context: grpc.ServicerContext):
        acks = _response(self._store(list(request.events), context))
        accepted = sum(a.status == query_pb2.EventAck.ACCEPTED for a in acks)
        return query_pb2.PublishResponse(acks=acks, accepted=accepted,
                                         rejected=len(acks) - accepted)

    def Publish(self, request_iterator: Iterator[query_pb2.EventBatch],
                context: grpc.ServicerContext):
        acks: list[query_pb2.EventAck] = []
        for batch in request_iterator:
            acks += _response(self._store(list(batch.events), context), offset=len(acks))
        accepted = sum(a.status == query_pb2.EventAck.ACCEPTED for a in acks)
        return query_pb2.PublishResponse(acks=acks, accepted=accepted,
                                         rejected=len(acks) - accepted)
