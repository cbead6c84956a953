"""The lineage graph as stored in ClickHouse, read lazily for resolution and description."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

import numpy as np

from headwater.errors import BadRowKey, UnknownNode
from headwater.query_service.tables import LineageNode, columns, select_ops
from headwater.query_service.tables import LineageNode as Node  # one row of lineage_nodes
from headwater.query_service.tables import LineageOp as OpRow  # one row of lineage_ops
from headwater.stream_processors.lineage_resolve import OpView, Trace, oldest_first, trace_each
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2


@dataclass(frozen=True)
class SourceRef:
    source_id: str
    uri: str


_NODE_COLUMNS = columns(LineageNode)


_to_node = LineageNode.from_row

T = TypeVar("T")
_OpRow = tuple[str, str, tuple[str, ...], events_pb2.RowMap]
# Every op and node of recently read runs, shared by requests (ops and nodes are immutable
# events; the signature check in _load_run_of notices any change). Oldest run dropped first.
_RUNS: dict[tuple[str, str, str], tuple[tuple, dict[str, _OpRow], dict[str, Node]]] = {}
_RUNS_LOCK = threading.Lock()
_RUNS_KEPT = 16


def _memo(lookup: Callable[[str], T]) -> Callable[[str], T]:
    """Memoise a by-id lookup, its UnknownNode misses included (lru_cache keeps no
    exceptions, so every repeated miss would cost its queries again)."""
    found: dict[str, T | UnknownNode] = {}

    def get(key: str) -> T:
        if key not in found:
            try:
                found[key] = lookup(key)
            except UnknownNode as exc:
                found[key] = exc
        value = found[key]
        if isinstance(value, UnknownNode):
            raise UnknownNode(*value.args)
        return value

    return get


class LineageGraph:
    """Reads nodes and ops on demand; one instance per request keeps reads consistent."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._nodes: dict[str, Node] = {}
        self._ops_by_output: dict[str, _OpRow] = {}
        self._runs_loaded: set[str] = set()
        self.node = _memo(self._node)
        self.op_of = lru_cache(maxsize=None)(self._op_of)
        self.op = _memo(self._op)
        self.source = _memo(self._source)

    def _node(self, node_id: str) -> Node:
        if node_id in self._nodes:
            return self._nodes[node_id]
        rows = self._store.query(f"SELECT {_NODE_COLUMNS} FROM lineage_nodes FINAL "
                                 "WHERE node_id = {id:String}", {"id": node_id})
        if not rows:
            raise UnknownNode(node_id)
        return _to_node(rows[0])

    def _op_of(self, node_id: str) -> OpView | None:
        known = self._nodes.get(node_id)
        if known is not None and known.kind == "source":
            return None  # no op produces a source: no query needed
        if node_id not in self._ops_by_output:
            self._load_run_of(node_id)
        if node_id not in self._ops_by_output:  # not in that run: ask for this node alone
            self._load_ops("output_node_id = {id:String}", {"id": node_id})
        op = self._ops_by_output.get(node_id)
        if op is None:
            return None
        op_id, name, inputs, row_map = op
        sizes = tuple(self._input_rows(n) for n in inputs)
        return OpView(op_id, name, inputs, sizes, tuple(row_map.segments))

    def _load_run_of(self, node_id: str) -> None:
        """Read every op and node of the node's run in two queries (pipelines rarely span
        runs; inputs from other runs are read one by one)."""
        known = self._nodes.get(node_id)
        runs = [(known.run_id,)] if known is not None else self._store.query(
            "SELECT run_id FROM lineage_nodes FINAL WHERE node_id = {id:String}",
            {"id": node_id})
        if not runs or runs[0][0] in self._runs_loaded:
            return
        run = runs[0][0]
        self._runs_loaded.add(run)
        params = {"run": run}
        # one cheap query says whether the run's stored rows changed since another request
        # read them (any insert, replacement or merge changes the count or the xor)
        signature = tuple(self._store.query(
            "SELECT (SELECT (count(), groupBitXor(cityHash64(event_id))) FROM lineage_ops "
            "WHERE run_id = {run:String}), (SELECT (count(), groupBitXor(cityHash64(event_id)))"
            " FROM lineage_nodes WHERE run_id = {run:String})", params)[0])
        key = (self._store.dsn.redacted, self._store.database, run)
        with _RUNS_LOCK:
            cached = _RUNS.get(key)
        if cached is None or cached[0] != signature:
            ops = self._read_ops("run_id = {run:String}", params)
            nodes = {n.node_id: n for n in map(_to_node, self._store.query(
                f"SELECT {_NODE_COLUMNS} FROM lineage_nodes FINAL WHERE run_id = {{run:String}}",
                params))}
            cached = (signature, ops, nodes)
            with _RUNS_LOCK:
                _RUNS[key] = cached
                while len(_RUNS) > _RUNS_KEPT:
                    _RUNS.pop(next(iter(_RUNS)))
        self._ops_by_output.update(cached[1])
        self._nodes.update(cached[2])

    def _load_ops(self, where: str, params: dict) -> None:
        self._ops_by_output.update(self._read_ops(where, params))

    def _read_ops(self, where: str, params: dict) -> dict[str, _OpRow]:
        table = self._store.query_arrow(
            "SELECT op_id, op_name, input_node_ids, output_node_id, row_map "
            f"FROM lineage_ops FINAL WHERE {where}", params)
        out: dict[str, _OpRow] = {}
        for op_id, name, inputs, output, row_map in zip(*(table[c].to_pylist() for c in (
                "op_id", "op_name", "input_node_ids", "output_node_id", "row_map")),
                strict=True):
            raw = row_map if isinstance(row_map, bytes) else row_map.encode("latin-1")
            out[_text(output)] = (_text(op_id), _text(name), tuple(_text(i) for i in inputs),
                                  events_pb2.RowMap.FromString(raw))
        return out

    def _input_rows(self, node_id: str) -> int:
        try:
            return self.node(node_id).rows
        except UnknownNode:
            return 0  # an input never described: "all rows" of it resolves to none

    def _op(self, op_id: str) -> OpRow:
        rows = select_ops(self._store, "op_id = {id:String}", {"id": op_id})
        if not rows:
            raise UnknownNode(op_id)
        return rows[0]

    def _source(self, node_id: str) -> SourceRef:
        node = self.node(node_id)
        rows = self._store.query("SELECT uri FROM sources FINAL WHERE source_id = {id:String}",
                                 {"id": node.source_id})
        return SourceRef(node.source_id, rows[0][0] if rows else "")

    # -- queries ------------------------------------------------------------------------

    def trace_rows(self, keys: events_pb2.RowKeys,
                   expand: bool = True) -> list[tuple[str, int, Trace]]:
        """(node, row, trace) for every key, rows of one node resolved together; without
        `expand` each trace's aggregates stand for their rows (see `trace_each`)."""
        n = len(keys.rows)
        if keys.node_index and len(keys.node_index) != n:
            raise BadRowKey(f"node_index has {len(keys.node_index)} entries for {n} rows")
        if n and not keys.node_ids:
            raise BadRowKey("rows are given but node_ids is empty")
        index = np.asarray(keys.node_index, dtype=np.int64) if keys.node_index else \
            np.zeros(n, dtype=np.int64)
        if n and index.max() >= len(keys.node_ids):
            raise BadRowKey("node_index points past node_ids")
        rows = np.asarray(keys.rows, dtype=np.int64)
        out: list[tuple[str, int, Trace] | None] = [None] * n
        for i, node_id in enumerate(keys.node_ids):
            where = np.flatnonzero(index == i)
            if where.size == 0:
                continue
            node = self.node(node_id)
            bad = rows[where] >= node.rows
            if bad.any():
                raise BadRowKey(f"row {int(rows[where][bad][0])} of node {node_id} is out of "
                                f"range (the node has {node.rows} rows)")
            for j, t in zip(where, trace_each(node_id, rows[where], self.op_of,
                                                  expand=expand), strict=True):
                out[j] = (node_id, int(rows[j]), t)
        return [o for o in out if o is not None]

    def ancestors(self, node_id: str) -> list[Node]:
        self.node(node_id)
        seen: list[str] = []
        stack = [node_id]
        while stack:
            current = stack.pop()
            op = self.op_of(current)
            for parent in op.input_node_ids if op else ():
                if parent not in seen:
                    seen.append(parent)
                    stack.append(parent)
        return [self.node(n) for n in seen if self._known(n)]

    def ops(self, node_id: str) -> list[OpRow]:
        self.node(node_id)
        return [self.op(o) for o in oldest_first(node_id, self.op_of)]

    def _known(self, node_id: str) -> bool:
        try:
            self.node(node_id)
            return True
        except UnknownNode:
            return False


def _text(value: str | bytes) -> str:
    # Arrow results carry ClickHouse String columns as binary
    return value.decode() if isinstance(value, bytes) else value
