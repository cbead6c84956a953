"""Where ingest's time goes in the store and the sink (issue 18): the figures behind
docs/design-decisions.md, "Ingest: a part per table per batch".

    python benchmarks/ingest_costs.py [--rounds 2] [--events 16000] [--json]

Every case runs in this process on a fresh chDB directory; cases that are compared run
alternately, `--rounds` times, so the machine's load falls on each of them alike:
- part: CPU and wall time of a one-row insert into each table a batch writes (each insert
  writes a MergeTree part), beside a 2-column MergeTree and a Memory table;
- insert API: rows/s and CPU per row inserting the small events' gradient rows (4,000 per
  insert) through clickhouse-connect (a temporary Arrow file for chDB), through
  `Store.insert` (chdb's `send_insert(..., "ArrowStream")`, stream_processors/chdb_insert.py)
  and through `INSERT ... SELECT FROM Python(t)`;
- trainer insert: CPU per trainer event of its `gradients` insert, blob column ZSTD(1) or
  LZ4 (migration 0030), with and without the engine's merge of the block;
- batch: CPU per event of `EventSink.ingest` on small events in batches of each size;
- overlap: the same sink with its parallel writes and worker thread, and with both
  replaced by one-after-the-other calls;
- trainer tables: CPU per trainer event (user + kernel) of a 200-event batch's inserts
  (13 MB a table, the Kafka runner's batch size) with the engine's merges stopped: `events`
  and `gradients` as wide parts (before migration 0031) and as compact parts, each alone
  and both, and `events` whose raw bytes lack the gradient bytes (what the log would write
  if φ were stored once, in `gradients`);
- sketch: CPU per trainer event (64 x 512 float16) of the curvature part, one BLAS thread;
- python stages: thread CPU per small event of the sink's pure stages on one batch of
  freshly parsed events (decode and validate, the row builders, the sketch's sum, the
  first-write screen with receipts and acks), with the cyclic collector running and paused
  (as EventSink.ingest runs them: stream_processors/gc_pause.py), alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).parent))
from ingest import payload_factory  # noqa: E402

from headwater.producers.envelope import EnvelopeBuilder  # noqa: E402
from headwater.producers.transports.base import Record  # noqa: E402
from headwater.stream_processors.gc_pause import gc_paused  # noqa: E402
from headwater.stream_processors.processors.batch_bounds import within_months  # noqa: E402
from headwater.stream_processors.processors.decode import decode_batch  # noqa: E402
from headwater.stream_processors.processors.first_write import screen  # noqa: E402
from headwater.stream_processors.processors.gradients import gradient_rows  # noqa: E402
from headwater.stream_processors.processors.rows import event_rows, receipt_rows  # noqa: E402
from headwater.stream_processors.processors.sketch import curvature_parts  # noqa: E402
from headwater.stream_processors.processors.validate import DEFAULT_LIMITS  # noqa: E402
from headwater.stream_processors.sink import EventSink, _acks, _sketch_part  # noqa: E402
from headwater.stream_processors.store import Store  # noqa: E402
from headwater.v1 import events_pb2  # noqa: E402


def records(kind: str, n: int, seed: int = 3) -> list[Record]:
    payload, env = payload_factory(kind, seed=seed), EnvelopeBuilder("costs", "costs")
    return [Record(env.wrap(payload(i)).SerializeToString(deterministic=True))
            for i in range(n)]


def timed(body: Callable[[], Any]) -> tuple[float, float]:
    """(wall s, CPU s of this process) of body()."""
    cpu, wall = time.process_time(), time.perf_counter()
    body()
    return time.perf_counter() - wall, time.process_time() - cpu


def new_store(work: Path, name: str) -> Store:
    store = Store(f"chdb://{work / name}")
    store.migrate()
    return store


def part_costs(store: Store, reps: int) -> dict[str, tuple[float, float]]:
    """ms (wall, CPU) per one-row insert, each table its own part."""
    store.command("CREATE TABLE IF NOT EXISTS two_columns (a String, b UInt64) "
                  "ENGINE = MergeTree ORDER BY a")
    store.command("CREATE TABLE IF NOT EXISTS memory_table (a String, b UInt64) ENGINE = Memory")
    rows = {"memory_table": "(a) VALUES ('x')", "two_columns": "(a) VALUES ('x')",
            "event_receipts": "(event_id) VALUES ('x')",
            "curvature_parts": "(part_id) VALUES ('x')",
            "gradients": "(event_id) VALUES ('x')", "events": "(event_id) VALUES ('x')"}
    out = {}
    for table, values in rows.items():
        store.command(f"INSERT INTO {table} {values}")  # warm
        wall, cpu = timed(lambda t=table, v=values: [  # type: ignore[misc]
            store.command(f"INSERT INTO {t} {v}") for _ in range(reps)])
        out[table] = (wall / reps * 1e3, cpu / reps * 1e3)
    return out


def insert_apis(store: Store, recs: list[Record]) -> dict[str, tuple[float, float]]:
    """(gradient rows/s, CPU µs per row) through each insert API, the same Arrow tables of
    1,000 events' rows each, without the engine's merge of the block as the sink inserts."""
    import chdb

    accepted, _ = decode_batch(recs)
    tables = [gradient_rows(accepted[i:i + 1000]) for i in range(0, len(accepted), 1000)]
    assert store.dsn.path is not None
    conn = chdb.connect(str(store.dsn.path.resolve()))  # a second handle on the same engine
    conn.query(f"USE {store.database}")
    columns = ", ".join(tables[0].column_names)
    no_merge = {"optimize_on_insert": "0"}
    file_client = store.open_client()

    def python_table(t: pa.Table) -> None:
        frame = t  # noqa: F841 - chdb's Python() finds the table by this local name
        conn.query(f"INSERT INTO gradients ({columns}) SETTINGS optimize_on_insert = 0 "
                   f"SELECT {columns} FROM Python(frame)")

    cases: dict[str, Callable[[pa.Table], None]] = {
        "clickhouse-connect (temporary file)":
            lambda t: file_client.insert_arrow("gradients", t, settings=no_merge),
        "Store.insert (chdb send_insert stream)": lambda t: store.insert("gradients", t, no_merge),
        "chdb INSERT SELECT FROM Python()": python_table}
    rows = sum(t.num_rows for t in tables)
    wall = dict.fromkeys(cases, 0.0)
    cpu = dict.fromkeys(cases, 0.0)
    names = list(cases)
    for i, t in enumerate(tables):  # the APIs take turns, table by table, in rotating order
        for name in names[i % len(names):] + names[:i % len(names)]:
            w, c = timed(lambda f=cases[name], t=t: f(t))  # type: ignore[misc]
            wall[name] += w
            cpu[name] += c
    out = {name: (rows / wall[name], cpu[name] / rows * 1e6) for name in cases}
    conn.close()
    file_client.close()
    return out


def insert_settings(store: Store, recs: list[Record], reps: int) -> dict[str, float]:
    """CPU µs per trainer event of its `gradients` insert (64 rows of 1 KB blobs), with the
    blob column ZSTD(1) (before migration 0030) or LZ4, and with or without the engine's
    merge of the inserted block (optimize_on_insert); the median of `reps` alternations."""
    accepted, _ = decode_batch(recs)
    rows = gradient_rows(accepted)
    ddl = store.query("SHOW CREATE TABLE gradients")[0][0]
    store.command(ddl.replace(f"{store.database}.gradients", "gradients_zstd", 1)
                  .replace("CODEC(LZ4)", "CODEC(ZSTD(1))"))
    cases = {f"{codec}, {merge}": (table, {} if merge == "merge" else
                                   {"optimize_on_insert": "0"})
             for codec, table in (("ZSTD(1)", "gradients_zstd"), ("LZ4", "gradients"))
             for merge in ("merge", "no merge")}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(reps):
        for name in (list(cases) if r % 2 else list(cases)[::-1]):
            cpu[name].append(timed(lambda n=name: store.insert(  # type: ignore[misc]
                cases[n][0], rows, cases[n][1]))[1])
    return {name: statistics.median(v) / len(accepted) * 1e6 for name, v in cpu.items()}


def trainer_tables(store: Store, recs: list[Record], reps: int) -> dict[str, float]:
    """CPU µs per trainer event (this process, user + kernel: most of a blob insert's CPU
    is the kernel's page-cache copy) of each insert case, the median of `reps` rotations;
    merges stopped, so each insert is measured alone (a stream pays merges later too)."""
    accepted, _ = decode_batch(recs)
    now = datetime.now(timezone.utc)
    grads, events = gradient_rows(accepted), event_rows(accepted, "costs", now)
    # the log's rows if φ were written once: each event's raw bytes without its gradients
    slim = []
    for a in accepted:
        event = events_pb2.Event()
        event.CopyFrom(a.event)
        event.gradient_batch.gradients = b""
        slim.append(event.SerializeToString(deterministic=True))
    raw = events.schema.get_field_index("raw")
    slim_events = events.set_column(raw, "raw", pa.array(slim, pa.binary()))
    for table in ("events", "gradients"):  # copies with the engine's default part format
        ddl = store.query(f"SHOW CREATE TABLE {table}")[0][0]
        store.command(ddl.replace(f"{store.database}.{table}", f"{table}_wide", 1)
                      .replace("min_bytes_for_wide_part = 134217728", "index_granularity = 8192"))
    store.command("SYSTEM STOP MERGES")
    no_merge = {"optimize_on_insert": "0"}

    def both(suffix: str) -> None:
        store.insert(f"events{suffix}", events, no_merge)
        store.insert(f"gradients{suffix}", grads, no_merge)

    cases: dict[str, Callable[[], None]] = {
        "gradients, wide": lambda: store.insert("gradients_wide", grads, no_merge),
        "gradients, compact": lambda: store.insert("gradients", grads, no_merge),
        "events, wide": lambda: store.insert("events_wide", events, no_merge),
        "events, compact": lambda: store.insert("events", events, no_merge),
        "events + gradients, wide": lambda: both("_wide"),
        "events + gradients, compact": lambda: both(""),
        "events without φ, compact": lambda: store.insert("events", slim_events, no_merge),
    }
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    try:
        for r in range(reps):
            for name in names[r % len(names):] + names[:r % len(names)]:
                cpu[name].append(timed(cases[name])[1])
    finally:
        store.command("SYSTEM START MERGES")
    return {name: statistics.median(v) / len(accepted) * 1e6 for name, v in cpu.items()}


class _Inline:
    """An executor that runs each call at once (the sink without its worker thread)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        done: Future = Future()
        try:
            done.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller like a thread's
            done.set_exception(exc)
        return done


def sink_cost(work: Path, recs: list[Record], batch: int, overlap: bool = True
              ) -> tuple[float, float]:
    """(events/s, CPU µs per event) of EventSink.ingest on `recs` in `batch`-event calls,
    on a fresh store (chDB hosts one directory per process at a time: closed after)."""
    store = new_store(work, f"sink-{time.monotonic_ns()}")
    sink = EventSink(store, "costs")
    insert_all = store.insert_all
    if not overlap:
        sink._worker = _Inline()  # type: ignore[assignment]
        store.insert_all = lambda tables, settings=None: [  # type: ignore[method-assign]
            store.insert(t, r, (settings or {}).get(t)) for t, r in tables]
    try:
        wall, cpu = timed(lambda: [sink.ingest(recs[i:i + batch])
                                   for i in range(0, len(recs), batch)])
    finally:
        store.insert_all = insert_all  # type: ignore[method-assign]
        store.close()
    return len(recs) / wall, cpu / len(recs) * 1e6


def sketch_cost(recs: list[Record]) -> float:
    """CPU µs per trainer event of its curvature part (best of 3, one BLAS thread)."""
    accepted, _ = decode_batch(recs)
    with threadpool_limits(1, "blas"):
        best = min(timed(lambda: curvature_parts(accepted, set(), 0))[1] for _ in range(3))
    return best / len(accepted) * 1e6


def python_stages(n: int, reps: int) -> dict[str, dict[str, float]]:
    """Thread CPU µs per small event of each pure stage of EventSink.ingest on an n-event
    batch, the median of `reps` fresh batches (protobuf reads are cheaper the second time),
    with the cyclic collector running and paused, the two taking turns."""
    sink = EventSink.__new__(EventSink)  # the row builders only: no store
    sink.transport = "costs"
    now = datetime.now(timezone.utc)
    warm, _ = decode_batch(records("gradient", 50, seed=99))  # one-time imports and caches
    _sketch_part(sink._rows(warm, now).tables["gradients"], [], now)
    receipt_rows(warm, "costs", now)
    cpu: dict[str, dict[str, list[float]]] = {}
    for r in range(2 * reps):
        case = "collector running" if (r + r // 2) % 2 else "collector paused"
        recs = records("gradient", n, seed=100 + r)
        stages = cpu.setdefault(case, {})
        with (gc_paused() if case == "collector paused" else nullcontext()):
            t = time.thread_time()
            accepted, _ = decode_batch(recs)
            accepted, _ = within_months(accepted, DEFAULT_LIMITS.months_per_batch)
            stages.setdefault("decode and validate", []).append(time.thread_time() - t)
            t = time.thread_time()
            rows = sink._rows(accepted, now)
            stages.setdefault("rows", []).append(time.thread_time() - t)
            t = time.thread_time()
            _sketch_part(rows.tables["gradients"], [], now)
            stages.setdefault("sketch sum", []).append(time.thread_time() - t)
            t = time.thread_time()
            new = screen(accepted, {}).new
            receipt_rows(new, "costs", now)
            _acks(new, [], [])
            stages.setdefault("screen, receipts, acks", []).append(time.thread_time() - t)
    return {case: {name: statistics.median(v) / n * 1e6 for name, v in stages.items()}
            for case, stages in cpu.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--events", type=int, default=16_000, help="small events per sink case")
    ap.add_argument("--batches", default="1000,2000,8000", help="sink batch sizes")
    ap.add_argument("--part-reps", type=int, default=30)
    ap.add_argument("--insert-reps", type=int, default=8,
                    help="alternations of the trainer insert settings (median)")
    ap.add_argument("--trainer-batch", type=int, default=200,
                    help="trainer events per insert of the trainer-tables case (200: 13 MB)")
    ap.add_argument("--stage-events", type=int, default=8000,
                    help="small events per batch of the python-stages case")
    ap.add_argument("--stage-reps", type=int, default=4,
                    help="fresh batches per collector setting in the python-stages case")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    work = Path(tempfile.mkdtemp(prefix="headwater-ingest-costs-"))
    small, trainer = records("gradient", args.events), records("trainer", 100)
    trainer_batch = records("trainer", args.trainer_batch, seed=4)
    load = [os.getloadavg()[0]]
    result: dict[str, Any] = {"part_ms": [], "insert_rows_per_s": [],
                              "trainer_insert_cpu_us": [], "trainer_tables_cpu_us": [],
                              "sink": [],
                              "overlap": [], "sketch_us_per_trainer_event": [],
                              "python_stages_us": []}
    try:
        for r in range(args.rounds):
            store = new_store(work, f"store-{r}")
            try:
                result["part_ms"].append(part_costs(store, args.part_reps))
                result["insert_rows_per_s"].append(insert_apis(store, small[:10_000]))
                result["trainer_insert_cpu_us"].append(
                    insert_settings(store, trainer, args.insert_reps))
                result["trainer_tables_cpu_us"].append(
                    trainer_tables(store, trainer_batch, args.insert_reps))
            finally:
                store.close()
            for b in batches:
                eps, us = sink_cost(work, small, b)
                result["sink"].append({"batch": b, "events_per_s": eps, "cpu_us": us})
            for overlap in (True, False):
                eps, us = sink_cost(work, small, 2000, overlap)
                result["overlap"].append({"overlap": overlap, "events_per_s": eps,
                                          "cpu_us": us})
            result["sketch_us_per_trainer_event"].append(sketch_cost(trainer))
            result["python_stages_us"].append(python_stages(args.stage_events,
                                                            args.stage_reps))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load.append(os.getloadavg()[0])
    result["load_average"] = load
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"1-min load average {load[0]:.1f} at the start, {load[1]:.1f} at the end")
    print("one-row insert (a part), ms wall / CPU, per round:")
    for table in result["part_ms"][0]:
        print(f"  {table:20s} " + "  ".join(f"{p[table][0]:5.2f} / {p[table][1]:5.2f}"
                                            for p in result["part_ms"]))
    print("gradient rows/s and CPU µs per row per insert API, per round:")
    for api in result["insert_rows_per_s"][0]:
        print(f"  {api:40s} " + "  ".join(f"{r[api][0]:9,.0f}/s {r[api][1]:5.2f} µs"
                                          for r in result["insert_rows_per_s"]))
    print("trainer event's gradients insert, CPU µs (median), per round:")
    for case in result["trainer_insert_cpu_us"][0]:
        print(f"  {case:20s} " + "  ".join(f"{r[case]:7.0f}"
                                          for r in result["trainer_insert_cpu_us"]))
    print(f"trainer batch's inserts ({args.trainer_batch} events, merges stopped), CPU µs "
          "per event (median), per round:")
    for case in result["trainer_tables_cpu_us"][0]:
        print(f"  {case:28s} " + "  ".join(f"{r[case]:7.0f}"
                                          for r in result["trainer_tables_cpu_us"]))
    print("EventSink.ingest on small events (events/s, CPU µs per event):")
    for s in result["sink"]:
        print(f"  batch {s['batch']:6d}: {s['events_per_s']:8,.0f}/s  {s['cpu_us']:6.1f} µs")
    for s in result["overlap"]:
        name = "parallel writes + worker" if s["overlap"] else "one after the other   "
        print(f"  {name} (batch 2000): {s['events_per_s']:8,.0f}/s  {s['cpu_us']:6.1f} µs")
    print("curvature part, CPU µs per trainer event (1 BLAS thread): "
          + ", ".join(f"{v:.0f}" for v in result["sketch_us_per_trainer_event"]))
    print(f"pure stages of EventSink.ingest, {args.stage_events}-event batch, thread CPU µs "
          "per small event (median), per round:")
    for case in result["python_stages_us"][0]:
        for stage in result["python_stages_us"][0][case]:
            print(f"  {case:18s} {stage:24s} " + "  ".join(
                f"{r[case][stage]:6.1f}" for r in result["python_stages_us"]))
        print(f"  {case:18s} {'total':24s} " + "  ".join(
            f"{sum(r[case].values()):6.1f}" for r in result["python_stages_us"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
