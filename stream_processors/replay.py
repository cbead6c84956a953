"""Replay: rebuild every derived table from the stored raw events, and compare the result.

The event log (`events`) is the source of truth; everything else is derived from it by the
EventSink's row builders. Replaying the log in (run, producer, seq) order through the same
builders must give the same derived tables as the incremental path did — after broker or
processor crashes and redeliveries included. The comparison is by content: per table the
row count and an order-free checksum over every column (read FINAL); the curvature sketch,
whose parts depend on how events were batched, is compared as the sum of its parts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import numpy as np
from pydantic import BaseModel

from headwater.errors import StoreError
from headwater.producers.transports.base import Record
from headwater.stream_processors.processors.derived import DERIVED
from headwater.stream_processors.processors.gradients import part_matrix
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store

SKETCH = "curvature_parts"
REBUILT: tuple[str, ...] = (*DERIVED, SKETCH)
# A sketch is a float64 sum: batching changes the order of additions, not the value.
SKETCH_RTOL = 1e-9


class ReplayStats(BaseModel):
    events: int = 0
    rejected: int = 0  # stored events that no longer decode/validate (listed in `errors`)
    errors: list[str] = []


class TableDigest(BaseModel):
    rows: int
    checksum: str


class TableComparison(BaseModel):
    table: str
    incremental: TableDigest
    replayed: TableDigest
    equal: bool
    detail: str = ""


class ReplayReport(BaseModel):
    source: str
    target: str
    in_place: bool
    run_id: str
    stats: ReplayStats
    tables: list[TableComparison]

    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables) and self.stats.rejected == 0


# -- reading the log -------------------------------------------------------------------


def count_events(store: Store, run_id: str = "") -> int:
    return int(store.query("SELECT count() FROM events FINAL "
                           "WHERE {run:String} = '' OR run_id = {run:String}",
                           {"run": run_id})[0][0])


def raw_batches(store: Store, run_id: str = "", batch_size: int = 2000
                ) -> Iterator[list[Record]]:
    """The stored events (FINAL: one per key) in (run, producer, seq, event_id) order, in
    batches; keyset pagination on the table's sort key, so memory stays one batch."""
    cursor: tuple[str, str, int, str] = ("", "", 0, "")
    while True:
        table = store.query_arrow(
            "SELECT run_id, producer_id, seq, event_id, raw, topic, partition, offset "
            "FROM events FINAL WHERE ({run:String} = '' OR run_id = {run:String}) "
            "AND (run_id, producer_id, seq, event_id) > "
            "({r:String}, {p:String}, {s:UInt64}, {e:String}) "
            "ORDER BY run_id, producer_id, seq, event_id LIMIT {n:UInt32}",
            {"run": run_id, "r": cursor[0], "p": cursor[1], "s": cursor[2], "e": cursor[3],
             "n": batch_size})
        if table.num_rows == 0:
            return
        cols = {name: table[name].to_pylist() for name in table.column_names}
        yield [Record(value=raw, topic=_text(topic), partition=part, offset=off)
               for raw, topic, part, off in zip(cols["raw"], cols["topic"], cols["partition"],
                                                cols["offset"], strict=True)]
        last = table.num_rows - 1
        cursor = (_text(cols["run_id"][last]), _text(cols["producer_id"][last]),
                  int(cols["seq"][last]), _text(cols["event_id"][last]))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# -- rebuilding ---------------------------------------------------------------------------


def truncate_derived(store: Store) -> None:
    """Empty every table `replay` rebuilds (never events, dead letters or chunks)."""
    for table in REBUILT:
        store.command(f"TRUNCATE TABLE IF EXISTS {table}")


def derived_rows(store: Store) -> dict[str, int]:
    return {t: int(store.query(f"SELECT count() FROM {t}")[0][0]) for t in REBUILT}


def replay(source: Store, target: Store, run_id: str = "", batch_size: int = 2000,
           on_batch: Callable[[int], None] | None = None) -> ReplayStats:
    """Feed the stored events of `source` through an EventSink writing derived tables of
    `target` (which may be `source` itself, after truncate_derived)."""
    sink = EventSink(target, "replay")
    stats = ReplayStats()
    for records in raw_batches(source, run_id, batch_size):
        rejected = sink.derive(records)
        stats.events += len(records)
        stats.rejected += len(rejected)
        stats.errors += [r.error for r in rejected][: max(0, 20 - len(stats.errors))]
        if on_batch is not None:
            on_batch(len(records))
    return stats


# -- comparing ----------------------------------------------------------------------------


def _columns(store: Store, table: str) -> list[str]:
    rows = store.query("SELECT name FROM system.columns WHERE database = {db:String} "
                       "AND table = {t:String} ORDER BY position",
                       {"db": store.database, "t": table})
    if not rows:
        raise StoreError(f"table {store.database}.{table} does not exist (run migrate)")
    return [r[0] for r in rows]


def _run_filter(table: str, columns: list[str]) -> str:
    """Rows of one run ({run:String}); tables without run_id reach it through another."""
    if "run_id" in columns:
        return "run_id = {run:String}"
    if table == "forgotten_rows":
        return ("request_id IN (SELECT request_id FROM forget_requests FINAL "
                "WHERE run_id = {run:String})")
    if table == SKETCH:
        return ("(model_id, model_version) IN (SELECT model_id, model_version FROM gradients "
                "FINAL WHERE run_id = {run:String})")
    raise ValueError(f"no run filter for {table}")


def table_digest(store: Store, table: str, run_id: str = "") -> TableDigest:
    """Row count and an order-free checksum over every column of `table` FINAL."""
    columns = _columns(store, table)
    where = f"WHERE {_run_filter(table, columns)}" if run_id else ""
    hashed = ", ".join(f"`{c}`" for c in columns)
    count, total = store.query(
        f"SELECT count(), sum(cityHash64({hashed})) FROM {table} FINAL {where}",
        {"run": run_id})[0]
    return TableDigest(rows=int(count), checksum=f"{int(total):016x}")


class Sketch(BaseModel):
    """One (model, version, kind, projection) sketch: the sum of its parts."""

    rows: int
    event_ids: list[str]
    matrix: list[float]


def sketches(store: Store, run_id: str = "") -> dict[str, Sketch]:
    """Every curvature sketch, keyed "model/version/kind/projection/dim"."""
    where = f"WHERE {_run_filter(SKETCH, _columns(store, SKETCH))}" if run_id else ""
    table = store.query_arrow(
        "SELECT model_id, model_version, kind, projection_id, dim, rows, event_ids, matrix, "
        "layout "
        f"FROM {SKETCH} {where}", {"run": run_id})
    cols = {name: table[name].to_pylist() for name in table.column_names}
    sums: dict[str, tuple[int, list[str], np.ndarray]] = {}
    for i in range(table.num_rows):
        key = "/".join(_text(cols[c][i]) for c in
                       ("model_id", "model_version", "kind", "projection_id")) + \
            f"/{cols['dim'][i]}"
        matrix = part_matrix(cols["matrix"][i], int(cols["rows"][i]), int(cols["dim"][i]),
                             _text(cols["layout"][i])).ravel()
        rows, ids, total = sums.get(key, (0, [], np.zeros_like(matrix)))
        sums[key] = (rows + int(cols["rows"][i]),
                     ids + [_text(e) for e in cols["event_ids"][i]], total + matrix)
    return {k: Sketch(rows=r, event_ids=sorted(ids), matrix=m.tolist())
            for k, (r, ids, m) in sums.items()}


def _sketch_digest(found: dict[str, Sketch]) -> TableDigest:
    text = "\n".join(f"{k}:{s.rows}:{','.join(s.event_ids)}" for k, s in sorted(found.items()))
    return TableDigest(rows=sum(s.rows for s in found.values()),
                       checksum=hashlib.sha256(text.encode()).hexdigest()[:16])


def compare_sketches(incremental: dict[str, Sketch], replayed: dict[str, Sketch]
                     ) -> TableComparison:
    """Equal when each sketch counted the same events (each once) and the matrices agree
    to float64 rounding."""
    problems = []
    for key in sorted(incremental.keys() | replayed.keys()):
        a, b = incremental.get(key), replayed.get(key)
        if a is None or b is None:
            problems.append(f"{key}: only in {'replayed' if a is None else 'incremental'}")
            continue
        if len(set(a.event_ids)) != len(a.event_ids):
            problems.append(f"{key}: the incremental sketch counted an event twice")
        if a.rows != b.rows or a.event_ids != b.event_ids:
            problems.append(f"{key}: counted {a.rows} rows of {len(a.event_ids)} events, "
                            f"replay {b.rows} rows of {len(b.event_ids)} events")
            continue
        x, y = np.asarray(a.matrix), np.asarray(b.matrix)
        scale = max(float(np.abs(y).max(initial=0.0)), 1e-300)
        diff = float(np.abs(x - y).max(initial=0.0)) / scale
        if diff > SKETCH_RTOL:
            problems.append(f"{key}: matrices differ (max relative difference {diff:.3g})")
    return TableComparison(table=SKETCH, incremental=_sketch_digest(incremental),
                           replayed=_sketch_digest(replayed), equal=not problems,
                           detail="; ".join(problems[:5]))


def digests(store: Store, run_id: str = "") -> dict[str, TableDigest | dict[str, Sketch]]:
    """What `compare` needs of one side, read before a rebuild in place destroys it."""
    out: dict[str, TableDigest | dict[str, Sketch]] = {
        t: table_digest(store, t, run_id) for t in DERIVED}
    out[SKETCH] = sketches(store, run_id)
    return out


def compare(incremental: dict, replayed: dict) -> list[TableComparison]:
    """Per rebuilt table: equal row count and checksum (sketch: see compare_sketches)."""
    result = []
    for table in DERIVED:
        a, b = incremental[table], replayed[table]
        equal = a == b
        detail = "" if equal else f"{a.rows} rows incremental, {b.rows} replayed" + (
            "; contents differ" if a.rows == b.rows else "")
        result.append(TableComparison(table=table, incremental=a, replayed=b, equal=equal,
                                      detail=detail))
    result.append(compare_sketches(incremental[SKETCH], replayed[SKETCH]))
    return result
