"""Pure processors for unlearning events: requests, outcomes, forgotten-row tombstones."""

from __future__ import annotations

import json

import pyarrow as pa

from headwater.stream_processors.processors.decode import Accepted
from headwater.stream_processors.processors.gradients import (
    arrow_table,
    of_payload,
    row_nodes,
    ts_column,
)
from headwater.stream_processors.processors.rows import TS, micros
from headwater.v1 import events_pb2

REMOVED_VIA = ("row", "join")  # rows that are removed; "aggregation" is only reported

FORGET_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("run_id", pa.string()), ("model_id", pa.string()),
    ("source_ids", pa.list_(pa.string())), ("source_rows_json", pa.string()),
    ("target_keys", pa.uint64()), ("reason", pa.string()), ("requested_by", pa.string()),
    ("method", pa.string()), ("verify_with_retrain", pa.bool_()),
    ("affected_rows", pa.uint64()), ("affected_via", pa.map_(pa.string(), pa.uint64())),
    ("event_id", pa.string()), ("requested_at", TS),
])

_VERIFICATION = ("forget_loss_before", "forget_loss_after", "test_accuracy_before",
                 "test_accuracy_after", "membership_auc", "parameter_distance", "retrained",
                 "retrain_forget_loss", "gap_closed", "distance_to_retrained",
                 "retrain_membership_auc", "retrain_test_accuracy", "membership_auc_before")
# which method ran, why, and its cost (migration 0020)
_METHOD_COST = (("method_reason", pa.string()), ("estimated_replay_steps", pa.uint64()),
                ("estimated_replay_seconds", pa.float64()), ("steps_replayed", pa.uint64()),
                ("checkpoint_uri", pa.string()), ("newton_steps", pa.uint32()),
                ("fine_tune_steps", pa.uint32()))

APPLIED_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("run_id", pa.string()), ("model_id", pa.string()),
    ("status", pa.string()), ("error", pa.string()), ("method", pa.string()),
    ("previous_version", pa.string()), ("new_version", pa.string()),
    ("rows_forgotten", pa.uint64()), ("duration_seconds", pa.float64()),
    *[(name, pa.bool_() if name == "retrained" else pa.float64()) for name in _VERIFICATION],
    *_METHOD_COST, ("event_id", pa.string()), ("applied_at", TS),
])

FORGOTTEN_SCHEMA = pa.schema([
    ("model_id", pa.string()), ("node_id", pa.string()), ("row", pa.uint64()),
    ("request_id", pa.string()), ("via", pa.string()), ("forgotten_at", TS),
    ("run_id", pa.string()),  # the request's run: its tombstones hide only that run's rows
])


def method_name(value: int) -> str:
    return events_pb2.UnlearningMethod.Name(value)


def forget_request_rows(batch: list[Accepted]) -> pa.Table:
    found = of_payload(batch, "forget_requested")
    ps = [e.forget_requested for e in found]
    return arrow_table(FORGET_SCHEMA, {
        "request_id": [p.request_id for p in ps], "run_id": [e.run_id for e in found],
        "model_id": [p.model_id for p in ps],
        "source_ids": [list(p.target.source_ids) for p in ps],
        "source_rows_json": [json.dumps([{"source_id": s.source_id, "rows": list(s.rows)}
                                         for s in p.target.source_rows]) for p in ps],
        "target_keys": [len(p.target.row_keys.rows) for p in ps],
        "reason": [p.reason for p in ps], "requested_by": [p.requested_by for p in ps],
        "method": [method_name(p.method) for p in ps],
        "verify_with_retrain": [p.verify_with_retrain for p in ps],
        "affected_rows": [sum(len(a.rows.rows) for a in p.affected) for p in ps],
        "affected_via": [_via_counts(p) for p in ps],
        "event_id": [e.event_id for e in found],
        "requested_at": ts_column([micros(e.emitted_at) for e in found]),
    })


def _via_counts(p: events_pb2.ForgetRequested) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for a in p.affected:
        counts[a.via] = counts.get(a.via, 0) + len(a.rows.rows)
    return sorted(counts.items())


def unlearning_applied_rows(batch: list[Accepted]) -> pa.Table:
    found = of_payload(batch, "unlearning_applied")
    ps = [e.unlearning_applied for e in found]
    columns: dict[str, object] = {
        "request_id": [p.request_id for p in ps], "run_id": [e.run_id for e in found],
        "model_id": [p.model_id for p in ps],
        "status": [events_pb2.UnlearningApplied.Status.Name(p.status) for p in ps],
        "error": [p.error for p in ps], "method": [method_name(p.method) for p in ps],
        "previous_version": [p.previous_version for p in ps],
        "new_version": [p.new_version for p in ps],
        "rows_forgotten": [p.rows_forgotten for p in ps],
        "duration_seconds": [p.duration_seconds for p in ps],
        "event_id": [e.event_id for e in found],
        "applied_at": ts_column([micros(e.emitted_at) for e in found]),
    }
    for name in _VERIFICATION:
        columns[name] = [getattr(p.verification, name) for p in ps]
    for name, _ in _METHOD_COST:
        columns[name] = [getattr(p, name) for p in ps]
    return arrow_table(APPLIED_SCHEMA, columns)


def forgotten_rows(batch: list[Accepted]) -> pa.Table:
    """Tombstones: the removed training-row keys of every ForgetRequested."""
    cols: dict[str, list] = {f.name: [] for f in FORGOTTEN_SCHEMA}
    for e in of_payload(batch, "forget_requested"):
        p = e.forget_requested
        for a in p.affected:
            if a.via not in REMOVED_VIA:
                continue
            n = len(a.rows.rows)
            cols["node_id"] += row_nodes(a.rows)
            cols["row"] += list(a.rows.rows)
            cols["model_id"] += [p.model_id] * n
            cols["request_id"] += [p.request_id] * n
            cols["via"] += [a.via] * n
            cols["forgotten_at"] += [micros(e.emitted_at)] * n
            cols["run_id"] += [e.run_id] * n
    cols["forgotten_at"] = ts_column(cols["forgotten_at"])  # type: ignore[assignment]
    return arrow_table(FORGOTTEN_SCHEMA, cols)
