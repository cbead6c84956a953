"""Unlearning over gRPC: record forget requests on the log, serve them to the trainer's
listener, report their progress. The model is changed by the listener, where it lives."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc

from headwater.errors import PublishError, StoreError
from headwater.producers.envelope import EnvelopeBuilder, default_producer_id
from headwater.producers.publisher import Publisher
from headwater.query_service.lineage.forgetting import (
    TargetError,
    affected,
    keys_of,
    model_keys,
    node_keys,
    request_id,
    target_rows,
)
from headwater.query_service.lineage.graph import BadRowKey, LineageGraph, UnknownNode
from headwater.query_service.server.principal import describe
from headwater.stream_processors.processors.validate import InvalidEvent, validate_event
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

PublisherFor = Callable[[str], Publisher]  # run id -> a publisher writing to the event log
POLL_SECONDS = 0.25
# Longest a publish (send + flush) may take before its "publishing" record counts as never
# sent, so a repeat publishes it again (the store keeps one request per id either way).
PUBLISH_SECONDS = 120
DONE = ("APPLIED", "ALREADY_APPLIED", "FAILED")


class LogPublishers:
    """One service publisher (its own hash chain) per run, built on demand."""

    def __init__(self, transport_factory: Callable[[], object]) -> None:
        self._factory = transport_factory
        self._producer = "headwater-service-" + default_producer_id()
        self._publishers: dict[str, Publisher] = {}
        self._lock = threading.Lock()

    def __call__(self, run_id: str) -> Publisher:
        with self._lock:
            if run_id not in self._publishers:
                self._publishers[run_id] = Publisher(self._factory(), run_id,  # type: ignore[arg-type]
                                                     self._producer)
            return self._publishers[run_id]

    def close(self) -> None:
        """Close every publisher (each Forget already flushed its own send): at shutdown,
        so a Kafka producer's connections and threads end with the service."""
        with self._lock:
            publishers, self._publishers = list(self._publishers.values()), {}
        for publisher in publishers:
            publisher.close()


@contextmanager
def _errors(context: grpc.ServicerContext) -> Iterator[None]:
    try:
        yield
    except (TargetError, BadRowKey) as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except UnknownNode as exc:
        context.abort(grpc.StatusCode.NOT_FOUND, f"no lineage node {exc.args[0]!r}")
    except (PublishError, StoreError) as exc:
        context.abort(grpc.StatusCode.UNAVAILABLE, f"could not record on the event log: {exc}")


def requester(context: grpc.ServicerContext) -> str:
    """Who asked for an erasure: the authenticated identity (token name and role, client
    certificate subject), never the socket address; `unauthenticated` without token auth."""
    return " ".join(f for f in describe(context).split(" ") if not f.startswith("peer="))


def _check_event(run_id: str, event: events_pb2.ForgetRequested) -> None:
    """Refuse a request whose event the log would reject (unknown method number, over-long
    run id, ...) before it is published: a rejected event would leave a gap in the
    service's hash chain."""
    try:
        validate_event(EnvelopeBuilder(run_id, "headwater-service-check").wrap(event))
    except InvalidEvent as exc:
        raise TargetError(f"the request cannot be recorded: {exc}") from exc


class UnlearningService(query_pb2_grpc.UnlearningServicer):
    def __init__(self, store: Store, log: PublisherFor | None) -> None:
        self._store = store
        self._log = log
        self._lock = threading.Lock()  # one Forget at a time: ids are checked, then written

    def Forget(self, request: query_pb2.ForgetRequest, context: grpc.ServicerContext):
        with _errors(context):
            return self._forget(request, context)

    def _forget(self, request: query_pb2.ForgetRequest, context: grpc.ServicerContext):
        if self._log is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "this query service has no event log to record forget requests on: "
                          "run `headwater serve`, or give query-service HEADWATER_KAFKA_BOOTSTRAP")
        for name in ("run_id", "model_id"):
            if not getattr(request, name):
                raise TargetError(f"{name} is empty")
        t = request.target
        if not (t.source_ids or t.source_rows or t.row_keys.rows):
            raise TargetError("target names no source, source rows or row keys")
        rid = request_id(request.run_id, request.model_id, t, request.reason)
        with self._lock:
            stored = self._store.query(
                "SELECT affected_rows FROM forget_requests FINAL WHERE request_id = {r:String}",
                {"r": rid})
            if stored:  # the same request again: nothing new is recorded
                return query_pb2.ForgetResponse(request_id=rid, rows=stored[0][0])
            earlier = published(self._store, rid)
            if earlier is not None:  # published (by any replica), not stored yet: not twice
                return earlier
            graph = LineageGraph(self._store)
            found = affected(graph, target_rows(self._store, t),
                             model_keys(self._store, request.model_id, request.run_id),
                             direct_keys=zip(_nodes(t.row_keys), t.row_keys.rows, strict=True))
            groups = [events_pb2.AffectedRows(rows=keys_of(pairs), via=via)
                      for via, pairs in found.items() if pairs]
            event = events_pb2.ForgetRequested(
                request_id=rid, target=t, affected=groups, reason=request.reason,
                requested_by=requester(context), method=request.method,
                verify_with_retrain=request.verify_with_retrain, model_id=request.model_id)
            _check_event(request.run_id, event)
            assert self._log is not None  # checked above (abort raises)
            response = query_pb2.ForgetResponse(request_id=rid, affected=groups,
                                                rows=sum(len(g.rows.rows) for g in groups))
            # recorded before it is sent, so no replica ever sees it on the log unrecorded
            record_published(self._store, request, response, "publishing")
            publisher = self._log(request.run_id)
            try:
                publisher.publish(event)
                publisher.flush()
            except BaseException:
                record_published(self._store, request, response, "failed")
                raise
            record_published(self._store, request, response, "published")
        return response

    def _state(self, rid: str) -> query_pb2.UnlearningStatus | None:
        """pending (published by a query service on this store, not stored yet) ->
        requested (stored) -> applied or failed; None when the request is unknown."""
        if not self._store.query("SELECT 1 FROM forget_requests FINAL "
                                 "WHERE request_id = {r:String}", {"r": rid}):
            if published(self._store, rid) is not None:
                return query_pb2.UnlearningStatus(request_id=rid, state="pending")
            return None
        rows = self._store.query(
            "SELECT hex(e.raw) FROM unlearning_applied AS u FINAL INNER JOIN events AS e FINAL "
            "ON u.event_id = e.event_id WHERE u.request_id = {r:String} "
            "ORDER BY u.applied_at DESC LIMIT 1", {"r": rid})
        if not rows:
            return query_pb2.UnlearningStatus(request_id=rid, state="requested")
        event = events_pb2.Event.FromString(bytes.fromhex(rows[0][0]))
        applied = event.unlearning_applied
        state = "applied"
        if applied.status == applied.FAILED:
            state = "retrying" if retry_follows(applied.error) else "failed"
        return query_pb2.UnlearningStatus(request_id=rid, state=state, applied=applied)

    def Status(self, request: query_pb2.UnlearningStatusRequest,
               context: grpc.ServicerContext):
        """Stream the request's state on every change (each failed attempt of a retried
        request too) until it is applied or failed for good; a stream that showed it
        pending shows it requested before any outcome, however quickly that came."""
        last: tuple[str, str] = ("", "")
        while context.is_active():
            status = self._state(request.request_id)
            if status is None:
                context.abort(grpc.StatusCode.NOT_FOUND,
                              f"no forget request {request.request_id!r}")
            assert status is not None
            if (status.state, status.applied.error) != last:
                if last[0] == "pending" and status.state not in ("pending", "requested"):
                    # stored and then applied between two polls: the stream still shows
                    # the step a follower waits for (pending -> requested -> applied)
                    yield query_pb2.UnlearningStatus(request_id=status.request_id,
                                                     state="requested")
                last = (status.state, status.applied.error)
                yield status
            if status.state in ("applied", "failed"):
                return
            time.sleep(POLL_SECONDS)

    def Pending(self, request: query_pb2.PendingRequest, context: grpc.ServicerContext):
        with _errors(context):
            return self._pending(request)

    def _pending(self, request: query_pb2.PendingRequest) -> query_pb2.PendingResponse:
        if not request.run_id:
            raise TargetError("run_id is empty")
        rows = self._store.query(
            "SELECT f.request_id, hex(e.raw), toString(f.requested_at), "
            "f.request_id IN (SELECT request_id FROM unlearning_applied FINAL "
            "  WHERE status IN ('APPLIED', 'ALREADY_APPLIED')) AS applied "
            "FROM forget_requests AS f FINAL INNER JOIN events AS e FINAL "
            "ON f.event_id = e.event_id WHERE f.run_id = {run:String} "
            "AND ({model:String} = '' OR f.model_id = {model:String}) "
            "ORDER BY e.seq, f.requested_at", {"run": request.run_id, "model": request.model_id})
        graph = LineageGraph(self._store)
        nodes = node_keys(graph, request.node_ids) if request.node_ids else None
        out = query_pb2.PendingResponse()
        for _, raw, at, applied in rows:
            if applied and not request.include_applied:
                continue
            event = events_pb2.Event.FromString(bytes.fromhex(raw))
            forget = event.forget_requested
            item = query_pb2.PendingForget(request=forget, applied=bool(applied),
                                           requested_at=at)
            if nodes is not None:
                t = forget.target
                found = affected(graph, target_rows(self._store, t), nodes,
                                 direct_keys=zip(_nodes(t.row_keys), t.row_keys.rows,
                                                 strict=True))
                item.rows.CopyFrom(keys_of(found["row"] + found["join"]))
            out.requests.append(item)
        return out


_ATTEMPT = re.compile(r"\(attempt (\d+) of (\d+); next in [0-9.e+-]+ s\)$")


def retry_follows(error: str) -> bool:
    """Whether a FAILED outcome's error says the listener tries again: it ends "(attempt n
    of N; next in X s)" while n < N (producers/unlearning/listener.py writes it); the last
    attempt, or an outcome without that suffix, is final."""
    m = _ATTEMPT.search(error)
    return m is not None and int(m.group(1)) < int(m.group(2))


def record_published(store: Store, request: query_pb2.ForgetRequest,
                     response: query_pb2.ForgetResponse, state: str) -> None:
    """One row of forget_published (migration 0024): the shared record that makes
    "pending" and deduplication hold across replicas and restarts on one store."""
    store.command(
        "INSERT INTO forget_published (request_id, run_id, model_id, state, response, "
        "updated_at) VALUES ({r:String}, {run:String}, {m:String}, {s:String}, {b:String}, "
        "now64(6))", {"r": response.request_id, "run": request.run_id, "m": request.model_id,
                      "s": state, "b": response.SerializeToString().hex()})


def published(store: Store, rid: str) -> query_pb2.ForgetResponse | None:
    """The response first given for request `rid` if a query service published it (or is
    publishing it, for at most PUBLISH_SECONDS); None if it was never sent."""
    rows = store.query(
        "SELECT state, response, dateDiff('second', updated_at, now64(6)) "
        "FROM forget_published FINAL WHERE request_id = {r:String} "
        "ORDER BY updated_at DESC LIMIT 1", {"r": rid})
    if not rows:
        return None
    state, response, age = rows[0]
    if state == "published" or (state == "publishing" and age <= PUBLISH_SECONDS):
        return query_pb2.ForgetResponse.FromString(bytes.fromhex(response))
    return None  # failed to publish, or its publisher died before the broker acknowledged


def _nodes(keys: events_pb2.RowKeys) -> list[str]:
    if keys.node_index:
        return [keys.node_ids[i] for i in keys.node_index]
    return [keys.node_ids[0]] * len(keys.rows) if keys.rows else []

