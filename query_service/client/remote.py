"""A read-only stand-in for Store that runs SQL through a running server's Query.Sql.

In embedded mode `headwater serve` owns the chDB directory; the CLI's read commands
(`sql`, `status`) reach the data through it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import grpc

from headwater.errors import HeadwaterError
from headwater.stream_processors.log_integrity import LogReport, Problem, ProducerSummary
from headwater.v1 import query_pb2, query_pb2_grpc


class RemoteStore:
    def __init__(self, target: str, timeout: float = 30.0,
                 channel: grpc.Channel | None = None) -> None:
        """`channel`: TLS/token secured (query_service.channel.open_channel); default: one
        opened from the HEADWATER_* settings."""
        from headwater.query_service.client.channel import open_channel
        from headwater.query_service.settings import Settings

        self.target = target
        self._channel = channel or open_channel(Settings(listen=target))
        self._stub = query_pb2_grpc.QueryStub(self._channel)
        self._timeout = timeout

    def query_columns(self, sql: str, parameters: dict[str, Any] | None = None
                      ) -> tuple[list[str], list[tuple]]:
        """The server's Query.Sql: checked and bounded there (read-only)."""
        request = query_pb2.SqlRequest(
            sql=sql, parameters={k: str(v) for k, v in (parameters or {}).items()},
            max_rows=1_000_000,
        )
        try:
            response = self._stub.Sql(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.UNAVAILABLE:
                raise HeadwaterError(f"no headwater server answering at {self.target}") from None
            raise HeadwaterError(exc.details()) from None  # type: ignore[attr-defined]
        return list(response.columns), [tuple(r) for r in json.loads(response.rows_json)]

    def verify_log(self, run_id: str = "", recompute_hashes: bool = False) -> LogReport:
        """The server's Compliance.VerifyLog, as the LogReport a local check returns."""
        return _log_report(self._verify(run_id, recompute_hashes, check_derived=False))

    def verify_log_and_derived(self, run_id: str = "", recompute_hashes: bool = False
                               ) -> tuple[LogReport, list[Any], dict[str, str]]:
        """One VerifyLog that also compares every derived table with a rebuild from the log
        (the server's own store): the report, the comparisons, the events left out."""
        from headwater.stream_processors.replay import TableComparison, TableDigest

        r = self._verify(run_id, recompute_hashes, check_derived=True)
        tables = [TableComparison(table=t.table, equal=t.equal, detail=t.detail,
                                  incremental=TableDigest(rows=t.rows_stored, checksum=""),
                                  replayed=TableDigest(rows=t.rows_from_events, checksum=""))
                  for t in r.derived_tables]
        return _log_report(r), tables, {x.event_id: x.reason for x in r.excluded_events}

    def _verify(self, run_id: str, recompute_hashes: bool, check_derived: bool
                ) -> query_pb2.VerifyLogResponse:
        try:
            return query_pb2_grpc.ComplianceStub(self._channel).VerifyLog(
                query_pb2.VerifyLogRequest(run_id=run_id, recompute_hashes=recompute_hashes,
                                           check_derived=check_derived),
                timeout=max(self._timeout, 300.0) if check_derived else self._timeout)
        except grpc.RpcError as exc:
            raise HeadwaterError(f"VerifyLog at {self.target} failed: "
                                 f"{exc.details()}") from None  # type: ignore[attr-defined]

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        return self.query_columns(sql, parameters)[1]

    def close(self) -> None:
        self._channel.close()


def _time(iso: str) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


def _log_report(r: query_pb2.VerifyLogResponse) -> LogReport:
    return LogReport(
        events=r.events,
        producers=[ProducerSummary(p.producer_id, p.run_id, p.events, p.first_seq,
                                   p.last_seq, _time(p.first_emitted_at),
                                   _time(p.last_emitted_at), bytes.fromhex(p.head_hash))
                   for p in r.producers],
        problems=[Problem(p.producer_id, p.kind, p.seq, p.detail) for p in r.problems],
        notes=[Problem(p.producer_id, p.kind, p.seq, p.detail) for p in r.notes],
        hashes_recomputed=r.hashes_recomputed,
        retention_days=r.retention_days or None,
    )
