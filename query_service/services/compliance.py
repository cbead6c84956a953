"""Compliance: log verification now; the audit report arrives with issue 6."""

from __future__ import annotations

import grpc

from headwater.query_service.log_reader import verify_stored_log
from headwater.stream_processors.store import Store
from headwater.v1 import query_pb2, query_pb2_grpc


def _iso(ts) -> str:
    return ts.isoformat() if ts else ""


class ComplianceService(query_pb2_grpc.ComplianceServicer):
    def __init__(self, store: Store) -> None:
        self._store = store

    def VerifyLog(self, request: query_pb2.VerifyLogRequest, context: grpc.ServicerContext):
        report = verify_stored_log(self._store, request.run_id, request.recompute_hashes)
        return query_pb2.VerifyLogResponse(
            ok=report.ok, events=report.events,
            producers=[
                query_pb2.ProducerChain(
                    producer_id=p.producer_id, run_id=p.run_id, events=p.events,
                    first_seq=p.first_seq, last_seq=p.last_seq,
                    first_emitted_at=_iso(p.first_emitted_at),
                    last_emitted_at=_iso(p.last_emitted_at),
                )
                for p in report.producers
            ],
            problems=[query_pb2.ChainProblem(producer_id=x.producer_id, kind=x.kind, seq=x.seq,
                                             detail=x.detail) for x in report.problems],
        )

    def Report(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Compliance.Report is not built yet: "
                      "needs the EU AI Act report builder (issue 6)")
