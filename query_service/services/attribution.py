"""Attribution over gRPC: top-k training rows (with source rows and op chains) or groups,
most helpful and most harmful apart; AttributeAll streams every row's (or group's) score."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import numpy as np

from headwater.errors import AttributionError, BadRowKey, NotFound, NoTrainingSteps
from headwater.query_service.attribution.engine import AttributionEngine
from headwater.query_service.attribution.knn_shapley import knn_shapley
from headwater.query_service.attribution.raw_features import raw_features_gradient
from headwater.query_service.attribution.scoring import (
    Example,
    Result,
    TestGradient,
    unsign,
)
from headwater.query_service.lineage.graph import LineageGraph
from headwater.query_service.services.lineage import op_info
from headwater.query_service.tables import select_ops
from headwater.stream_processors.processors.gradients import DTYPES, NP_DTYPE
from headwater.stream_processors.store import Store
from headwater.v1 import query_pb2, query_pb2_grpc

_METHOD = {query_pb2.ATTRIBUTION_METHOD_UNSPECIFIED: "default",
           query_pb2.INFLUENCE: "influence", query_pb2.TRACIN: "tracin"}
_AGGREGATION = {query_pb2.AGGREGATION_UNSPECIFIED: "row", query_pb2.BY_ROW: "row",
                query_pb2.BY_SOURCE: "source", query_pb2.BY_SOURCE_FILE: "source_file",
                query_pb2.BY_OP: "op"}
DEFAULT_TOP_K = 10
MAX_TOP_K = 10_000  # a top list; AttributeAll streams every score
CHUNK_ROWS = 2048  # rows (or groups) per AttributeChunk


def _top_k(value: int) -> int:
    if value > MAX_TOP_K:
        raise AttributionError(f"top_k={value} is over the limit of {MAX_TOP_K}")
    return value or DEFAULT_TOP_K


def test_gradient(msg: query_pb2.TestGradient) -> TestGradient:
    """A TestGradient request message as the engine's test gradient (checked)."""
    if not msg.model_id:
        raise AttributionError("test_gradient.model_id is empty")
    if msg.dtype not in DTYPES:
        raise AttributionError(f"test_gradient.dtype {msg.dtype} is not FLOAT16/32/64")
    np_type = NP_DTYPE[DTYPES[msg.dtype][0]]
    if msg.dim == 0 or len(msg.gradient) != msg.dim * np.dtype(np_type).itemsize:
        raise AttributionError(f"test_gradient.gradient has {len(msg.gradient)} bytes; dim "
                               f"{msg.dim} of {DTYPES[msg.dtype][0]} expected")
    phi = np.frombuffer(msg.gradient, np_type).astype(np.float64)
    if not np.isfinite(phi).all():
        raise AttributionError("test_gradient.gradient contains NaN or infinity")
    return TestGradient(msg.model_version, msg.projection.projection_id, phi, "")


def _row(example: Example, score: float, ops: list[query_pb2.OpInfo]
         ) -> query_pb2.AttributedRow:
    return query_pb2.AttributedRow(
        node_id=example.node_id, row=example.row, score=score,
        sources=[query_pb2.SourceRowRef(source_id=s.source_id, uri=s.uri, row=s.row)
                 for s in example.sources], ops=ops)


def response(result: Result, aggregation: str, top_k: int, store: Store
             ) -> query_pb2.AttributeResponse:
    """The top lists: by |score| (`rows`), and most helpful / most harmful apart; the ops
    of the listed rows read in one query."""
    out = query_pb2.AttributeResponse(method=result.method, model_version=result.model_version,
                                      damping=result.damping,
                                      damping_source=result.damping_source)
    if aggregation == "row":
        lists = ((out.rows, result.top(top_k)), (out.helpful, result.ranked(top_k, +1)),
                 (out.harmful, result.ranked(top_k, -1)))
        ops = _op_infos(store, {o for _, ranked in lists for e, _ in ranked for o in e.op_ids})
        for field, ranked in lists:
            field.extend(_row(example, score, [ops[o] for o in example.op_ids])
                         for example, score in ranked)
    else:
        for key, label, score, rows in result.groups(aggregation,
                                                     LineageGraph(store))[:top_k]:
            out.groups.append(query_pb2.AttributedGroup(key=key, label=label, score=score,
                                                        rows=rows))
    return out


def chunks(result: Result, aggregation: str, store: Store
           ) -> Iterator[query_pb2.AttributeChunk]:
    """Every example's (or group's) score, CHUNK_ROWS per message; rows carry their source
    rows and their ops' ids and names (read in one query)."""
    head = {"method": result.method, "model_version": result.model_version,
            "damping": result.damping}
    if aggregation != "row":
        groups = result.groups(aggregation, LineageGraph(store))
        for start in range(0, max(len(groups), 1), CHUNK_ROWS):
            yield query_pb2.AttributeChunk(**head, total=len(groups), groups=[
                query_pb2.AttributedGroup(key=key, label=label, score=score, rows=rows)
                for key, label, score, rows in groups[start:start + CHUNK_ROWS]])
        return
    examples, scores = result.model.examples, result.scores
    ids = sorted({o for e in examples for o in e.op_ids})
    names = {o.op_id: o.op_name for o in select_ops(
        store, "op_id IN {ids:Array(String)}", {"ids": ids})} if ids else {}
    for start in range(0, max(len(examples), 1), CHUNK_ROWS):
        yield query_pb2.AttributeChunk(**head, total=len(examples), rows=[
            _row(e, float(s), [query_pb2.OpInfo(op_id=o, op_name=names.get(o, ""))
                               for o in e.op_ids])
            for e, s in zip(examples[start:start + CHUNK_ROWS],
                            scores[start:start + CHUNK_ROWS], strict=True)])


def _op_infos(store: Store, ids: set[str]) -> dict[str, query_pb2.OpInfo]:
    """OpInfo of each op id (one query; an op never recorded has its id only)."""
    found = {o.op_id: op_info(o) for o in select_ops(
        store, "op_id IN {ids:Array(String)}", {"ids": sorted(ids)})} if ids else {}
    return {i: found.get(i) or query_pb2.OpInfo(op_id=i) for i in ids}


@contextmanager
def _errors(context: grpc.ServicerContext) -> Iterator[None]:
    try:
        yield
    except NoTrainingSteps as exc:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    except NotFound as exc:
        context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
    except AttributionError as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except BadRowKey as exc:  # stored lineage disagrees with the stored gradient row keys
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, lineage_conflict(exc))


def lineage_conflict(exc: BadRowKey) -> str:
    return (f"the model's training rows do not fit the stored lineage ({exc}); a later "
            "event re-registered one of their nodes with fewer rows")


class AttributionService(query_pb2_grpc.AttributionServicer):
    def __init__(self, store: Store, engine: AttributionEngine | None = None) -> None:
        self._store = store
        self.engine = engine or AttributionEngine(store)

    def _result(self, request: query_pb2.AttributeRequest) -> tuple[Result, str]:
        """(scores of every example, aggregation) of one request."""
        kind = request.WhichOneof("query")
        method = _METHOD.get(request.method)
        aggregation = _AGGREGATION.get(request.aggregation)
        if method is None or aggregation is None:
            raise AttributionError(f"unknown method {request.method} or aggregation "
                                   f"{request.aggregation}")
        if not (np.isfinite(request.damping) and request.damping >= 0):
            raise AttributionError(f"damping must be a finite number >= 0; got "
                                   f"{request.damping}")
        run = request.run_id  # scope: one run's training rows (engine.py, "Runs")
        common = {"method": method, "damping": request.damping, "versions": request.versions}
        if kind == "prediction_id":
            result = self.engine.attribute(request.prediction_id, run_id=run, **common)
        elif kind == "test_gradient":
            result = self.engine.attribute(model_id=request.test_gradient.model_id,
                                           test=test_gradient(request.test_gradient),
                                           run_id=run, **common)
        elif kind == "raw_features":
            if request.raw_features.model_id:
                run = self.engine.run_of(request.raw_features.model_id, run)
            model_id, test = raw_features_gradient(self._store, request.raw_features, run)
            result = self.engine.attribute(model_id=model_id, test=test, run_id=run, **common)
        else:
            raise AttributionError("give prediction_id, test_gradient or raw_features")
        return result, aggregation

    def _attribute(self, request: query_pb2.AttributeRequest) -> query_pb2.AttributeResponse:
        top_k = _top_k(request.top_k)
        result, aggregation = self._result(request)
        return response(result, aggregation, top_k, self._store)

    def Attribute(self, request: query_pb2.AttributeRequest, context: grpc.ServicerContext):
        with _errors(context):
            return self._attribute(request)

    def AttributeAll(self, request: query_pb2.AttributeRequest,
                     context: grpc.ServicerContext) -> Iterator[query_pb2.AttributeChunk]:
        """Every training example's score (or every group's), streamed; top_k is ignored."""
        with _errors(context):
            result, aggregation = self._result(request)
            yield from chunks(result, aggregation, self._store)

    def AttributeBatch(self, request: query_pb2.AttributeBatchRequest,
                       context: grpc.ServicerContext):
        with _errors(context):
            return query_pb2.AttributeBatchResponse(
                responses=[self._attribute(r) for r in request.requests])

    def SelfInfluence(self, request: query_pb2.SelfInfluenceRequest,
                      context: grpc.ServicerContext):
        with _errors(context):
            if not request.model_id:
                raise AttributionError("model_id is empty")
            result = self.engine.self_influence(request.model_id, request.model_version,
                                                run_id=request.run_id)
            out = response(result, "row", _top_k(request.top_k), self._store)
            return query_pb2.SelfInfluenceResponse(rows=out.rows)

    def Value(self, request: query_pb2.ValueRequest, context: grpc.ServicerContext):
        with _errors(context):
            return self._value(request)

    def _value(self, request: query_pb2.ValueRequest) -> query_pb2.ValueResponse:
        """KNN-Shapley values of the training examples for one labelled test point, in the
        gradient-feature space of the test point's model version (see docs/attribution.md)."""
        run = request.run_id
        if request.prediction_id:
            model_id, run, tests = self.engine.prediction(request.prediction_id, run)
            test = tests[-1]
            label = float(test.label)  # the label the prediction's gradient explains
        elif request.HasField("test_gradient"):
            model_id = request.test_gradient.model_id
            test = test_gradient(request.test_gradient)
            label = request.label
        else:
            raise AttributionError("give prediction_id or test_gradient")
        model = self.engine.model(model_id, run)
        x, y, examples, binary = self.engine.embedding(model, test)
        k = request.k_neighbours or 5
        test_x = unsign(test.phi[None, :], np.array([label])) if binary else test.phi[None, :]
        values = knn_shapley(x, y, test_x, np.array([label]), k)
        scores = np.zeros(len(model.examples))
        scores += np.bincount(examples, values, len(scores))
        result = Result("knn_shapley", test.version, scores, model)
        aggregation = _AGGREGATION.get(request.aggregation, "row")
        out = response(result, aggregation, _top_k(request.top_k), self._store)
        return query_pb2.ValueResponse(rows=out.rows, groups=out.groups)
