"""A run's lineage as OpenLineage RunEvents (spec 2-0-2), for lineage tools (Marquez, ...).

Shape of the export (see docs/sql.md, "OpenLineage export"):
- one job per op, `<run>.<op_name>.<op_id>` in namespace `headwater`, whose run has the
  runId uuid5(<run>/<op_id>) and a `parent` facet naming the run's own job; then
- one job per run, named `<run>`, runId uuid5(<run>): its inputs are the datasets the run
  read (sources and nodes from outside the run), its outputs the nodes no op consumed.
Every event is a COMPLETE event timed when the op was recorded, listed in topological order
(an op after the ops that made its inputs), the run's event last.
Sources are datasets named by URI (`file:///d/a.csv` -> namespace `file`, name `/d/a.csv`);
other lineage nodes are datasets `<node_id>` in namespace `headwater://<run>`. Only names,
types, counts and hashes are exported, never values (personal columns are listed by name).
"""

from __future__ import annotations

import heapq
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote, urlsplit

from headwater import __version__
from headwater.errors import UnknownRun
from headwater.query_service.tables import ColumnMap, Reader, select_ops
from headwater.query_service.tables import LineageOp as Op  # one row of lineage_ops

PRODUCER = f"urn:headwater:{__version__}"
JOB_NAMESPACE = "headwater"
NODE_NAMESPACE = "headwater://{run}"
_SPEC = "https://openlineage.io/spec"
RUN_EVENT_SCHEMA = f"{_SPEC}/2-0-2/OpenLineage.json#/$defs/RunEvent"
_FACET_SCHEMAS = {
    "schema": f"{_SPEC}/facets/1-2-0/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet",
    "dataSource": f"{_SPEC}/facets/1-0-1/DatasourceDatasetFacet.json"
                  "#/$defs/DatasourceDatasetFacet",
    "version": f"{_SPEC}/facets/1-0-1/DatasetVersionDatasetFacet.json"
               "#/$defs/DatasetVersionDatasetFacet",
    "columnLineage": f"{_SPEC}/facets/1-2-0/ColumnLineageDatasetFacet.json"
                     "#/$defs/ColumnLineageDatasetFacet",
    "outputStatistics": f"{_SPEC}/facets/1-0-2/OutputStatisticsOutputDatasetFacet.json"
                        "#/$defs/OutputStatisticsOutputDatasetFacet",
    "parent": f"{_SPEC}/facets/1-2-0/ParentRunFacet.json#/$defs/ParentRunFacet",
    "jobType": f"{_SPEC}/facets/2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet",
    # Headwater's own facets (fields documented in docs/sql.md)
    "headwater_source": "urn:headwater:openlineage:facets:1-0-0:HeadwaterSourceDatasetFacet",
    "headwater_rowLineage":
        "urn:headwater:openlineage:facets:1-0-0:HeadwaterRowLineageDatasetFacet",
    "headwater_op": "urn:headwater:openlineage:facets:1-0-0:HeadwaterOpRunFacet",
}
# uuid5 namespace of every runId this module makes: same run (and op) -> same UUID
_RUN_UUIDS = uuid.uuid5(uuid.NAMESPACE_URL, "urn:headwater:openlineage:run")
# ColumnMapping.transformation -> OpenLineage transformation (type, subtype)
_DIRECT = ("IDENTITY", "TRANSFORMATION", "AGGREGATION")
_INDIRECT = ("JOIN", "GROUP_BY", "FILTER", "SORT", "WINDOW", "CONDITIONAL")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)



@dataclass(frozen=True)
class Column:
    name: str
    dtype: str
    personal: bool


@dataclass(frozen=True)
class Source:
    source_id: str
    uri: str
    content_sha256: str
    row_count: int
    schema: tuple[Column, ...]
    format: str
    size_bytes: int
    origin: str
    licence: str


@dataclass(frozen=True)
class Node:
    node_id: str
    kind: str  # source | op
    run_id: str
    rows: int
    columns: tuple[str, ...]
    source: Source | None  # for kind == "source"


@dataclass(frozen=True)
class RunLineage:
    run_id: str
    ops: tuple[Op, ...]  # any order; exported topologically
    nodes: Mapping[str, Node]  # the run's nodes and every node its ops read


# -- pure functions -------------------------------------------------------------------------

def run_uuid(run_id: str, op_id: str | None = None) -> str:
    """The runId of a run (op_id None) or of one op of it: a name-based UUID (v5)."""
    return str(uuid.uuid5(_RUN_UUIDS, run_id if op_id is None else f"{run_id}/{op_id}"))


def dataset_name(uri: str) -> tuple[str, str]:
    """(namespace, name) of a source URI, after OpenLineage's dataset naming: a local file
    is (`file`, path); `s3://bucket/key` is (`s3://bucket`, `key`); others (scheme://host,
    path)."""
    parts = urlsplit(uri)
    if len(parts.scheme) <= 1:  # a bare path (or a Windows drive letter)
        return "file", uri
    path = unquote(parts.path)
    if parts.scheme == "file":
        host = parts.netloc if parts.netloc not in ("", "localhost") else ""
        return (f"file://{host}" if host else "file"), path
    if parts.scheme in ("s3", "s3a", "s3n", "gs", "gcs"):
        return f"{parts.scheme}://{parts.netloc}", path.lstrip("/")
    return f"{parts.scheme}://{parts.netloc}", path or "/"


def topological(ops: Sequence[Op]) -> list[Op]:
    """Ops ordered so each comes after the ops that made its inputs; ties keep the order
    given (Kahn's algorithm over a heap of positions). Raises ValueError on a cycle."""
    made_by: dict[str, list[int]] = {}
    for i, op in enumerate(ops):
        made_by.setdefault(op.output_node_id, []).append(i)
    needs = [{p for n in op.input_node_ids for p in made_by.get(n, ()) if p != i}
             for i, op in enumerate(ops)]
    users: list[list[int]] = [[] for _ in ops]
    for i, deps in enumerate(needs):
        for p in deps:
            users[p].append(i)
    waiting = [len(d) for d in needs]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(ops):
        stuck = sorted(ops[i].op_id for i, w in enumerate(waiting) if w)
        raise ValueError(f"the ops {stuck[:10]} form a cycle (an op reads a node that it, or "
                         "an op after it, produces)")
    return [ops[i] for i in order]


def event_time(micros: int) -> str:
    """ISO 8601 UTC with microseconds and a Z, from microseconds since the epoch."""
    stamp = _EPOCH + timedelta(microseconds=micros)
    return stamp.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _facet(kind: str, **fields: Any) -> dict[str, Any]:
    return {"_producer": PRODUCER, "_schemaURL": _FACET_SCHEMAS[kind], **fields}


def _source_facets(source: Source) -> dict[str, Any]:
    namespace, _ = dataset_name(source.uri)
    return {
        "schema": _facet("schema", fields=[{"name": c.name, "type": c.dtype}
                                           for c in source.schema]),
        "dataSource": _facet("dataSource", name=namespace, uri=source.uri),
        "version": _facet("version", datasetVersion=source.content_sha256),
        "headwater_source": _facet(
            "headwater_source", sourceId=source.source_id, rowCount=source.row_count,
            format=source.format, sizeBytes=source.size_bytes, origin=source.origin,
            licence=source.licence,
            personalColumns=[c.name for c in source.schema if c.personal]),
    }


class _Datasets:
    """Dataset identity (namespace, name) and static facets of every node of a run."""

    def __init__(self, lineage: RunLineage) -> None:
        self._run = lineage.run_id
        self._nodes = lineage.nodes

    def ref(self, node_id: str) -> tuple[str, str]:
        node = self._nodes.get(node_id)
        if node is not None and node.source is not None:
            return dataset_name(node.source.uri)
        run = node.run_id if node is not None and node.run_id else self._run
        return NODE_NAMESPACE.format(run=run), node_id

    def dataset(self, node_id: str, columns: Sequence[str] = ()) -> dict[str, Any]:
        namespace, name = self.ref(node_id)
        node = self._nodes.get(node_id)
        facets: dict[str, Any] = {}
        if node is not None and node.source is not None:
            facets = _source_facets(node.source)
        elif columns or (node is not None and node.columns):
            names = columns or (node.columns if node is not None else ())
            facets = {"schema": _facet("schema", fields=[{"name": c} for c in names])}
        return {"namespace": namespace, "name": name, "facets": facets}


def _transformation(op: Op, mapping: ColumnMap) -> dict[str, str]:
    kind = mapping.transformation.strip().upper()
    if not kind:
        return {"type": "DIRECT"}
    if kind in _DIRECT:
        return {"type": "DIRECT", "subtype": kind}
    if kind in _INDIRECT:
        return {"type": "INDIRECT", "subtype": kind}
    raise ValueError(f"op {op.op_id}: column mapping for {mapping.output_column!r} has "
                     f"transformation {mapping.transformation!r}; expected one of "
                     f"{', '.join(_DIRECT + _INDIRECT)}")


def column_lineage(op: Op, datasets: _Datasets) -> dict[str, Any] | None:
    """The columnLineage facet of an op's output, or None when it has no column mappings."""
    if not op.columns:
        return None
    fields: dict[str, dict[str, Any]] = {}
    whole: list[dict[str, Any]] = []
    for m in op.columns:
        if m.input >= len(op.input_node_ids):
            raise ValueError(f"op {op.op_id}: column mapping for {m.output_column!r} names "
                             f"input {m.input} but the op has {len(op.input_node_ids)} inputs")
        namespace, name = datasets.ref(op.input_node_ids[m.input])
        step = _transformation(op, m)
        refs = [{"namespace": namespace, "name": name, "field": c, "transformations": [step]}
                for c in m.input_columns]
        if m.output_column:
            fields.setdefault(m.output_column, {"inputFields": []})["inputFields"].extend(refs)
        else:
            whole.extend(refs)
    return _facet("columnLineage", fields=fields, dataset=whole)


def _params(op: Op) -> Any:
    if not op.params_json.strip():
        return {}
    try:
        return json.loads(op.params_json)
    except json.JSONDecodeError as exc:
        raise ValueError(f"op {op.op_id}: params_json is not JSON ({exc})") from None


def _job(name: str, job_type: str) -> dict[str, Any]:
    return {"namespace": JOB_NAMESPACE, "name": name, "facets": {
        "jobType": _facet("jobType", processingType="BATCH", integration="HEADWATER",
                          jobType=job_type)}}


def _event(when_us: int, run: dict[str, Any], job: dict[str, Any],
           inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"eventType": "COMPLETE", "eventTime": event_time(when_us), "producer": PRODUCER,
            "schemaURL": RUN_EVENT_SCHEMA, "run": run, "job": job, "inputs": inputs,
            "outputs": outputs}


def op_event(lineage: RunLineage, op: Op, datasets: _Datasets) -> dict[str, Any]:
    """The RunEvent of one op: its inputs, its output with row and column lineage."""
    run_id = lineage.run_id
    output = datasets.dataset(op.output_node_id, op.output_columns)
    output["facets"]["headwater_rowLineage"] = _facet(
        "headwater_rowLineage", opId=op.op_id, outputRows=op.output_rows,
        segments=op.segments, understood=op.understood, granularity=op.granularity)
    columns = column_lineage(op, datasets)
    if columns is not None:
        output["facets"]["columnLineage"] = columns
    output["outputFacets"] = {"outputStatistics": _facet("outputStatistics",
                                                         rowCount=op.output_rows)}
    run = {"runId": run_uuid(run_id, op.op_id), "facets": {
        "parent": _facet("parent", run={"runId": run_uuid(run_id)},
                         job={"namespace": JOB_NAMESPACE, "name": run_id}),
        "headwater_op": _facet("headwater_op", runId=run_id, opId=op.op_id,
                               opName=op.op_name, params=_params(op),
                               codeVersion=op.code_version),
    }}
    inputs = [datasets.dataset(n) for n in dict.fromkeys(op.input_node_ids)]
    return _event(op.recorded_us, run, _job(f"{run_id}.{op.op_name}.{op.op_id}", "OP"),
                  inputs, [output])


def run_events(lineage: RunLineage) -> list[dict[str, Any]]:
    """Every op's RunEvent in topological order, then the run's own RunEvent."""
    datasets = _Datasets(lineage)
    ops = topological(lineage.ops)
    events = [op_event(lineage, op, datasets) for op in ops]
    made = {op.output_node_id for op in ops}
    read = dict.fromkeys(n for op in ops for n in op.input_node_ids)
    own_sources = [n.node_id for n in sorted(lineage.nodes.values(), key=lambda n: n.node_id)
                   if n.kind == "source" and n.run_id == lineage.run_id]
    inputs = list(dict.fromkeys([*own_sources, *(n for n in read if n not in made)]))
    outputs = [op.output_node_id for op in ops if op.output_node_id not in read]
    times = [op.recorded_us for op in ops]
    run = {"runId": run_uuid(lineage.run_id), "facets": {}}
    events.append(_event(max(times, default=0), run, _job(lineage.run_id, "RUN"),
                         [datasets.dataset(n) for n in inputs],
                         [datasets.dataset(n) for n in dict.fromkeys(outputs)]))
    return events


# -- reading a run from the store -----------------------------------------------------------

# Lineage nodes, each with its source row when it is a source: the run's nodes and every
# node its ops read (inputs may come from other runs; _NODES_SQL), or nodes by id.
_NODES_OF = """
SELECT n.node_id, n.kind, n.run_id, n.rows, n.columns, s.source_id, s.uri,
       s.content_sha256, s.row_count, s.schema_json, s.format, s.size_bytes, s.origin,
       s.licence
FROM (SELECT * FROM lineage_nodes FINAL WHERE @nodes@) AS n
ANY LEFT JOIN (SELECT * FROM sources FINAL) AS s ON n.source_id = s.source_id
ORDER BY n.node_id
"""
_NODES_SQL = _NODES_OF.replace("@nodes@", """run_id = {run:String} OR node_id IN
      (SELECT arrayJoin(input_node_ids) FROM lineage_ops FINAL WHERE run_id = {run:String})""")
# the nodes an op reads or makes, by id (live delivery: load_ops)
_NODES_BY_ID_SQL = _NODES_OF.replace("@nodes@", "node_id IN {nodes:Array(String)}")


def _schema(source_id: str, text: str) -> tuple[Column, ...]:
    try:
        return tuple(Column(str(c["name"]), str(c["dtype"]), bool(c["personal"]))
                     for c in json.loads(text or "[]"))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"source {source_id}: sources.schema_json is malformed ({exc})") \
            from None


def _node(row: Sequence[Any]) -> Node:
    node_id, kind, run, rows, columns, source_id = row[:6]
    source = None
    if kind == "source" and source_id:  # the join found the node's sources row
        uri, sha, count, schema_json, fmt, size, origin, licence = row[6:]
        source = Source(source_id, uri, sha, int(count), _schema(source_id, schema_json), fmt,
                        int(size), origin, licence)
    return Node(node_id, kind, run, int(rows), tuple(columns), source)


def load_run(reader: Reader, run_id: str) -> RunLineage:
    """A run's ops and nodes, in two queries. Raises UnknownRun when nothing was recorded."""
    if not run_id:
        raise UnknownRun("run id is empty")
    params = {"run": run_id}
    ops = tuple(select_ops(reader, "run_id = {run:String}", params,
                           order="recorded_at, event_id, op_id"))
    nodes = {n.node_id: n for n in map(_node, reader.query(_NODES_SQL, params))}
    if not ops and not any(n.run_id == run_id for n in nodes.values()):
        raise UnknownRun(f"no lineage recorded for run {run_id!r} (no sources, no ops)")
    return RunLineage(run_id, ops, nodes)


def load_ops(reader: Reader, event_ids: Sequence[str]) -> list[RunLineage]:
    """The ops recorded by these events, one RunLineage per run holding them and every node
    they read or made (enough for op_event: what the export says of each op)."""
    ids = list(event_ids)
    runs = [r for (r,) in reader.query(
        "SELECT DISTINCT run_id FROM lineage_ops FINAL WHERE event_id IN {ids:Array(String)} "
        "ORDER BY run_id", {"ids": ids})]
    found = []
    for run in runs:
        ops = tuple(select_ops(reader, "run_id = {run:String} AND event_id IN {ids:Array(String)}",
                               {"run": run, "ids": ids}, order="recorded_at, event_id, op_id"))
        touched = sorted({n for op in ops for n in (*op.input_node_ids, op.output_node_id)})
        nodes = {n.node_id: n for n in map(_node, reader.query(_NODES_BY_ID_SQL,
                                                               {"nodes": touched}))}
        found.append(RunLineage(run, ops, nodes))
    return found


def op_events(lineage: RunLineage) -> list[dict[str, Any]]:
    """The RunEvents of `lineage`'s ops alone (no run event), in topological order."""
    datasets = _Datasets(lineage)
    return [op_event(lineage, op, datasets) for op in topological(lineage.ops)]


def export_run(reader: Reader, run_id: str) -> list[dict[str, Any]]:
    """The OpenLineage RunEvents of a run read from the store (see run_events)."""
    return run_events(load_run(reader, run_id))
