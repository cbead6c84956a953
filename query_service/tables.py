"""One typed row per stored table the query side reads, defined once: each dataclass names
its columns (a field's `sql` metadata when the column is read through an expression) and
`select` builds the query from them, so a reader indexes rows by name, never by position."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Protocol, TypeVar


class Reader(Protocol):
    """Store or RemoteStore: parameterised SQL returning rows."""

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]: ...


R = TypeVar("R")


def columns(row_type: type) -> str:
    """The SELECT list of a row type, in its field order."""
    return ", ".join(f.metadata.get("sql", f.name) for f in fields(row_type))


def select(reader: Reader, row_type: type[R], table: str, where: str,
           parameters: dict[str, Any] | None = None, order: str = "") -> list[R]:
    """Rows of `table FINAL` matching `where`, as `row_type` (its `from_row` when it has one)."""
    sql = f"SELECT {columns(row_type)} FROM {table} FINAL WHERE {where}"
    if order:
        sql += f" ORDER BY {order}"
    make = getattr(row_type, "from_row", None) or (lambda row: row_type(*row))
    return [make(row) for row in reader.query(sql, parameters)]


# -- lineage_ops ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ColumnMap:
    """OpRecorded.ColumnMapping; an empty output_column means the whole output (e.g. a
    filter or sort key), exported as the facet's dataset-level lineage."""
    output_column: str
    input: int
    input_columns: tuple[str, ...]
    transformation: str


def _column_maps(op_id: str, text: str) -> tuple[ColumnMap, ...]:
    try:
        return tuple(ColumnMap(str(m["output_column"]), int(m["input"]),
                               tuple(m["input_columns"]), str(m["transformation"]))
                     for m in json.loads(text or "[]"))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"op {op_id}: lineage_ops.columns_json is malformed ({exc})") from None


@dataclass(frozen=True)
class LineageOp:
    """One row of lineage_ops: a recorded op (the lineage graph, the OpenLineage export and
    the compliance report all read it as this)."""
    op_id: str
    op_name: str
    params_json: str
    input_node_ids: tuple[str, ...]
    output_node_id: str
    output_rows: int
    understood: bool
    granularity: str
    code_version: str
    segments: int
    columns: tuple[ColumnMap, ...] = field(metadata={"sql": "columns_json"})
    output_columns: tuple[str, ...]
    recorded_us: int = field(
        metadata={"sql": "toUnixTimestamp64Micro(recorded_at)"})  # µs since the epoch, UTC

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> LineageOp:
        (op_id, name, params, inputs, output, rows, understood, granularity, code, segments,
         columns_json, output_columns, recorded_us) = row
        return cls(op_id, name, params, tuple(inputs), output, int(rows), bool(understood),
                   granularity, code, int(segments), _column_maps(op_id, columns_json),
                   tuple(output_columns), int(recorded_us))


def select_ops(reader: Reader, where: str, parameters: dict[str, Any],
               order: str = "") -> list[LineageOp]:
    """lineage_ops rows matching `where`: the one query of that table."""
    return select(reader, LineageOp, "lineage_ops", where, parameters, order)


# -- lineage_nodes ----------------------------------------------------------------------------

@dataclass(frozen=True)
class LineageNode:
    """One row of lineage_nodes: a source or an op's output."""
    node_id: str
    kind: str  # source | op
    source_id: str
    op_id: str
    rows: int
    shape: tuple[int, ...]
    columns: tuple[str, ...]
    run_id: str

    @classmethod
    def from_row(cls, n: Sequence[Any]) -> LineageNode:
        return cls(n[0], n[1], n[2], n[3], int(n[4]), tuple(n[5]), tuple(n[6]), n[7])


# -- sources ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceRecord:
    """One row of sources: a registered source file or table."""
    source_id: str
    uri: str
    format: str
    origin: str
    licence: str
    content_sha256: str
    row_count: int
    size_bytes: int
    labels: Any  # Map(String, String)
    schema_json: str
    registered_at: datetime


# -- model_versions ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelVersionRecord:
    """One row of model_versions."""
    version: str
    parent_version: str
    step: int
    parameter_hash: str
    parameter_count: int
    framework: str
    config_json: str
    checkpoint_uri: str
    run_id: str
    recorded_at: datetime


# -- forget_requests and unlearning_applied ---------------------------------------------------

@dataclass(frozen=True)
class ForgetRequestRecord:
    """One row of forget_requests."""
    request_id: str
    run_id: str
    source_ids: list[str]
    source_rows_json: str
    target_keys: int
    reason: str
    requested_by: str
    method: str
    verify_with_retrain: bool
    affected_rows: int
    affected_via: Any  # Map(String, UInt64)
    requested_at: datetime


VERIFICATION = ("forget_loss_before", "forget_loss_after", "test_accuracy_before",
                "test_accuracy_after", "membership_auc", "parameter_distance", "retrained",
                "retrain_forget_loss", "gap_closed", "distance_to_retrained",
                "retrain_membership_auc", "retrain_test_accuracy", "membership_auc_before")


@dataclass(frozen=True)
class UnlearningAppliedRecord:
    """One row of unlearning_applied; `verification` holds the VERIFICATION columns by name;
    the method's reason and cost (migration 0020) follow the method."""
    request_id: str
    status: str
    error: str
    method: str
    method_reason: str
    estimated_replay_steps: int
    estimated_replay_seconds: float
    steps_replayed: int
    newton_steps: int
    fine_tune_steps: int
    previous_version: str
    new_version: str
    rows_forgotten: int
    duration_seconds: float
    applied_at: datetime
    verification: dict[str, Any] = field(metadata={"sql": ", ".join(VERIFICATION)})

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> UnlearningAppliedRecord:
        head = len(fields(cls)) - 1
        return cls(*row[:head], dict(zip(VERIFICATION, row[head:], strict=True)))  # type: ignore[arg-type, call-arg]
