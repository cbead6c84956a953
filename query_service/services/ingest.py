"""Ingest: trainers publish encoded events; the ack comes after ClickHouse stored them.

Each event is checked against the caller's role before it reaches the sink (the role x
payload matrix, auth.ROLE_PAYLOADS): a payload the role may not publish is refused on its
own (ack REJECTED naming the payload and the role) and kept in `dead_letters`; the rest of
the batch proceeds. Every record carries the caller's principal (principal.describe).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

import grpc
from google.protobuf.message import DecodeError

from headwater.errors import StoreError
from headwater.producers.transports.base import Ack, Record, Sink
from headwater.query_service.server import principal as principals
from headwater.query_service.server.auth import payload_refusal
from headwater.stream_processors.gc_pause import gc_paused
from headwater.stream_processors.processors.decode import Rejected
from headwater.stream_processors.processors.rows import dead_letter_rows
from headwater.stream_processors.sink import EventSink
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

log = logging.getLogger(__name__)
DeadLetters = Callable[[list[Rejected]], None]


def _response(acks: list[Ack], offset: int = 0) -> list[query_pb2.EventAck]:
    return [
        query_pb2.EventAck(
            index=offset + a.index, event_id=a.event_id, error=a.error,
            status=query_pb2.EventAck.ACCEPTED if a.accepted else query_pb2.EventAck.REJECTED,
        )
        for a in acks
    ]


def _payload(value: bytes) -> events_pb2.Event | None:
    """The event, parsed by the same parser the sink uses (so the payload checked is the
    payload stored); None when it does not parse (the sink then dead-letters it)."""
    event = events_pb2.Event()
    try:
        event.ParseFromString(value)
    except (DecodeError, RuntimeError, ValueError):
        return None
    return event


def _sink_dead_letters(sink: Sink) -> DeadLetters | None:
    """Refused events go to the sink's own `dead_letters` table, as its rejections do."""
    if not isinstance(sink, EventSink):
        return None

    def write(refused: list[Rejected]) -> None:
        sink.store.insert("dead_letters", dead_letter_rows(refused, sink.transport,
                                                           datetime.now(timezone.utc)))

    return write


class IngestService(query_pb2_grpc.IngestServicer):
    def __init__(self, sink: Sink, dead_letters: DeadLetters | None = None) -> None:
        self._sink = sink
        self._dead_letters = dead_letters or _sink_dead_letters(sink)

    def _store(self, events: list[bytes], context: grpc.ServicerContext,
               who: str) -> list[Ack]:
        # The call's parsed events stay alive until it is stored: the cyclic collector
        # waits meanwhile instead of walking them every 700 allocations (gc_pause.py).
        with gc_paused():
            return self._store_call(events, context, who)

    def _store_call(self, events: list[bytes], context: grpc.ServicerContext,
                    who: str) -> list[Ack]:
        token = principals.current()
        role = token.role if token is not None else None
        records: list[Record] = []
        passed: list[int] = []  # indices of the records the sink gets
        refused: list[Rejected] = []
        for i, value in enumerate(events):
            event = _payload(value)
            # the parsed event travels with the record: the sink does not parse it again
            record = Record(value=value, principal=who, parsed=event)
            records.append(record)
            why = payload_refusal(event.WhichOneof("payload") if event else None, role)
            if why is None:
                passed.append(i)
            else:
                refused.append(Rejected(i, record, why, event))
        if refused:
            log.warning("refused %d event(s) from %s: %s", len(refused), who,
                        refused[0].error)
        try:
            if refused and self._dead_letters is not None:
                self._dead_letters(refused)
            stored = self._sink.ingest([records[i] for i in passed]) if passed else []
        except StoreError as exc:  # nothing acked: the client retries the whole batch
            context.abort(grpc.StatusCode.UNAVAILABLE, f"store write failed: {exc}")
            raise  # unreachable; abort raises
        if not refused:
            return stored
        acks = [Ack(passed[a.index] if 0 <= a.index < len(passed) else a.index, a.event_id,
                    a.accepted, a.error) for a in stored]
        acks += [Ack(r.index, r.event.event_id if r.event else "", False, r.error)
                 for r in refused]
        return sorted(acks, key=lambda a: (a.index < 0, a.index))

    def PublishBatch(self, request: query_pb2.EventBatch, context: grpc.ServicerContext):
        acks = _response(self._store(list(request.events), context,
                                     principals.describe(context)))
        accepted = sum(a.status == query_pb2.EventAck.ACCEPTED for a in acks)
        return query_pb2.PublishResponse(acks=acks, accepted=accepted,
                                         rejected=len(acks) - accepted)

    def Publish(self, request_iterator: Iterator[query_pb2.EventBatch],
                context: grpc.ServicerContext):
        acks: list[query_pb2.EventAck] = []
        who = principals.describe(context)
        for batch in request_iterator:
            acks += _response(self._store(list(batch.events), context, who),
                              offset=len(acks))
        accepted = sum(a.status == query_pb2.EventAck.ACCEPTED for a in acks)
        return query_pb2.PublishResponse(acks=acks, accepted=accepted,
                                         rejected=len(acks) - accepted)
