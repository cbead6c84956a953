"""Compliance: log verification and the signed EU AI Act report of a model version."""

from __future__ import annotations

import grpc

from headwater.errors import ConfigError, HeadwaterError, RequestError
from headwater.logs import status
from headwater.query_service.attribution.engine import AttributionEngine
from headwater.query_service.compliance.builder import ReportError, build_report
from headwater.query_service.compliance.config import (
    ReportSettings,
    load_config,
    parse_config,
    signing_key_path,
)
from headwater.query_service.compliance.evidence import check_derived, runs_of
from headwater.query_service.compliance.log_reader import verify_stored_log
from headwater.query_service.compliance.producer_keys import (
    AttestationRefused,
    KeyConflict,
    attest,
    register,
)
from headwater.query_service.compliance.signing import load_private_key, report_text, seal
from headwater.query_service.compliance.witness import Checkpoint
from headwater.query_service.compliance.witness_client import open_witness
from headwater.query_service.lineage.graph import BadRowKey
from headwater.query_service.server.principal import describe
from headwater.query_service.services.attribution import lineage_conflict
from headwater.stream_processors.store import Store
from headwater.v1 import query_pb2, query_pb2_grpc


def _iso(ts) -> str:
    return ts.isoformat() if ts else ""


class ComplianceService(query_pb2_grpc.ComplianceServicer):
    def __init__(self, store: Store, engine: AttributionEngine) -> None:
        """`engine` (the Attribution service's) is not used for reports: a report scores
        over the derived tables rebuilt from verified events, with an engine of its own."""
        self._store = store

    def VerifyLog(self, request: query_pb2.VerifyLogRequest, context: grpc.ServicerContext):
        report = verify_stored_log(self._store, request.run_id, request.recompute_hashes)
        tables, excluded = [], {}
        if request.check_derived:
            tables, excluded, rejected = check_derived(self._store,
                                                       runs_of(self._store, request.run_id))
            excluded.update({f"(rejected {i})": r for i, r in enumerate(rejected)})
        return query_pb2.VerifyLogResponse(
            ok=report.ok and not excluded and all(t.equal for t in tables),
            events=report.events,
            producers=[
                query_pb2.ProducerChain(
                    producer_id=p.producer_id, run_id=p.run_id, events=p.events,
                    first_seq=p.first_seq, last_seq=p.last_seq,
                    first_emitted_at=_iso(p.first_emitted_at),
                    last_emitted_at=_iso(p.last_emitted_at), head_hash=p.head_hash.hex(),
                )
                for p in report.producers
            ],
            problems=[query_pb2.ChainProblem(producer_id=x.producer_id, kind=x.kind, seq=x.seq,
                                             detail=x.detail) for x in report.problems],
            notes=[query_pb2.ChainProblem(producer_id=x.producer_id, kind=x.kind, seq=x.seq,
                                          detail=x.detail) for x in report.notes],
            first_emitted_at=_iso(report.first_emitted_at),
            last_emitted_at=_iso(report.last_emitted_at),
            hashes_recomputed=report.hashes_recomputed,
            retention_days=report.retention_days or 0,
            derived_tables=[query_pb2.DerivedTableCheck(
                table=t.table, equal=t.equal, rows_stored=t.incremental.rows,
                rows_from_events=t.replayed.rows, detail=t.detail) for t in tables],
            excluded_events=[query_pb2.ExcludedEvent(event_id=e, reason=r)
                             for e, r in excluded.items()],
        )

    def Report(self, request: query_pb2.ReportRequest, context: grpc.ServicerContext):
        """Build, seal and (with HEADWATER_SIGNING_KEY) sign the report."""
        if not request.model_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "model_id is empty")
        try:
            config = parse_config(request.config_json, "request.config_json") \
                if request.config_json else None
        except ConfigError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            config = config or load_config()
            key_path = signing_key_path(config)
            key = load_private_key(key_path) if key_path else None
        except ConfigError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"server configuration: {exc}")
        try:
            report = build_report(self._store, request.model_id, request.model_version, config,
                                  max_samples=request.max_samples or 5,
                                  recompute_hashes=request.recompute_hashes)
        except ReportError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except BadRowKey as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, lineage_conflict(exc))
        sealed = seal(report.model_dump(mode="json"), key)
        return query_pb2.ReportResponse(json=report_text(sealed),
                                        sha256=sealed["integrity"]["content_sha256"],
                                        signed=key is not None)

    def RegisterProducerKey(self, request: query_pb2.RegisterProducerKeyRequest,
                            context: grpc.ServicerContext):
        """Register a producer's Ed25519 key (role admin); one key per producer."""
        try:
            kid, created = register(self._store, request.producer_id, request.public_key_pem,
                                    describe(context))
        except KeyConflict as exc:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except RequestError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return query_pb2.RegisterProducerKeyResponse(key_id=kid, created=created)

    def AttestHead(self, request: query_pb2.AttestHeadRequest, context: grpc.ServicerContext):
        """Keep a producer's signed chain head and append it to the witness (if set)."""
        head = Checkpoint(request.producer_id, request.run_id, request.seq, request.head_hash,
                          request.written_at, request.key_id, request.signature)
        try:
            new = attest(self._store, head, describe(context))
        except AttestationRefused as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except RequestError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        witness = ReportSettings().witness
        if witness is not None and new:
            try:
                open_witness(witness).append([head])
            except HeadwaterError as exc:  # kept here; a witness endpoint refused or is down
                status(f"AttestHead: {head.producer_id} seq {head.seq} kept but not "
                       f"witnessed: {exc}")
                return query_pb2.AttestHeadResponse(witnessed=False)
        return query_pb2.AttestHeadResponse(witnessed=witness is not None)
