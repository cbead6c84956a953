"""TraceRows replies (query_service/services/lineage.py): paging tokens and the reply-size
bound, on a real in-process store (the servicer called directly; no server)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from headwater.producers import LocalTransport, Publisher
from headwater.producers.tracking import Tracker, row_keys
from headwater.producers.tracking.sources import describe_array
from headwater.query_service.services import lineage as service
from headwater.stream_processors import EventSink, Store
from headwater.v1 import query_pb2


class Aborted(Exception):
    pass


class Context:
    """The part of grpc.ServicerContext the servicer uses: abort raises."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted(details)


@pytest.fixture(scope="module")
def standardised(tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[Store, query_pb2.TraceRowsRequest]]:
    store = Store(f"chdb://{tmp_path_factory.mktemp('trace') / 'data'}")
    store.migrate()
    with Publisher(LocalTransport(EventSink(store, "t")), run_id="trace-reply") as pub:
        tracker = Tracker(pub.publish)
        values = np.random.default_rng(0).normal(size=(40, 3))
        src = pub.publish(describe_array(values, uri="memory://reply/x")).source_registered
        x = tracker.array(values, source=src)
        z = (x - x.mean(0)) / x.std(0)
    yield store, query_pb2.TraceRowsRequest(rows=row_keys(z))
    store.close()


def test_default_reply_names_each_aggregate_once(standardised) -> None:
    store, request = standardised
    reply = service.LineageService(store).TraceRows(request, Context())
    assert len(reply.traces) == 40 and len(reply.aggregates) == 2
    for t in reply.traces:  # its own row first, then the two aggregates by reference
        assert [(s.uri, s.row) for s in t.sources] == [("memory://reply/x", t.row)]
        assert sorted(t.aggregate_refs) == [0, 1]
    assert {a.op_name for a in reply.aggregates} == {"numpy.mean", "numpy.std"}
    assert {(a.node_rows, tuple((c.uri, c.rows) for c in a.sources))
            for a in reply.aggregates} == {(40, (("memory://reply/x", 40),))}


def test_an_expanded_reply_over_the_bound_is_refused(standardised, monkeypatch) -> None:
    store, request = standardised
    monkeypatch.setattr(service, "MAX_SOURCE_REFS", 40 * 40 - 1)  # every key lists 40 rows
    expanded = query_pb2.TraceRowsRequest(rows=request.rows, expand_aggregates=True)
    context = Context()
    with pytest.raises(Aborted):
        service.LineageService(store).TraceRows(expanded, context)
    assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "page_size" in context.details and "1600 source rows" in context.details
    paged = query_pb2.TraceRowsRequest(rows=request.rows, expand_aggregates=True, page_size=20)
    reply = service.LineageService(store).TraceRows(paged, Context())
    assert len(reply.traces) == 20 and reply.next_page_token == "20"


@pytest.mark.parametrize("token", ["abc", "0", "41", "-3", "1e3", "٣"])
def test_forged_page_tokens_are_refused(standardised, token: str) -> None:
    store, request = standardised
    forged = query_pb2.TraceRowsRequest(rows=request.rows, page_size=5, page_token=token)
    context = Context()
    with pytest.raises(Aborted):
        service.LineageService(store).TraceRows(forged, context)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in context.details
