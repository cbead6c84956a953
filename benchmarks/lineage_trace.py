"""Tracing standardised rows through gRPC: aggregates summarised vs enumerated.

    python benchmarks/lineage_trace.py [--rows 10000] [--keys 10000] [--repeats 5] [--json]

A tracked pipeline (a registered source of ROWS rows, standardised (x - mean) / std,
reversed, shuffled) is recorded into an embedded chDB store; a gRPC server
(query_service.server.app.build_server, in process, 127.0.0.1) answers Lineage.TraceRows
for KEYS training rows. Prints the median wall time of one TraceRows call (a fresh
request each time; the first, cold call printed apart) and the reply size, for the default
summarised answer (direct source rows + one reference per aggregate op) and, side by side,
for `expand_aggregates` on a few keys (every aggregated row listed per key) to show what
the summary saves. The target of issue 22 is 10,000 standardised rows in <= 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from headwater.producers import LocalTransport, Publisher
from headwater.producers.tracking import Tracker, row_keys
from headwater.producers.tracking.sources import describe_array
from headwater.query_service.server.app import build_server
from headwater.stream_processors import EventSink, Store
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc


def record(store: Store, rows: int) -> events_pb2.RowKeys:
    """Record the pipeline; return the keys of its training rows (one node, all rows)."""
    values = np.random.default_rng(0).normal(size=(rows, 8))
    with Publisher(LocalTransport(EventSink(store, "bench")), run_id="bench-trace") as pub:
        tracker = Tracker(pub.publish)
        src = pub.publish(describe_array(values, uri="memory://bench/x")).source_registered
        x = tracker.array(values, source=src)
        z = (x - x.mean(0)) / x.std(0)
        shuffled = tracker.shuffle(z[::-1], seed=2)
    return row_keys(shuffled)


def timed(stub: query_pb2_grpc.LineageStub, request: query_pb2.TraceRowsRequest,
          repeats: int) -> tuple[float, list[float], query_pb2.TraceRowsResponse]:
    t0 = time.perf_counter()
    reply = stub.TraceRows(request, timeout=600)
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        reply = stub.TraceRows(request, timeout=600)
        warm.append(time.perf_counter() - t0)
    return cold, warm, reply


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000, help="source rows")
    ap.add_argument("--keys", type=int, default=10_000, help="training rows traced per call")
    ap.add_argument("--expand-keys", type=int, default=100,
                    help="keys of the expand_aggregates comparison call")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hw-bench-trace-") as tmp:
        store = Store(f"chdb://{Path(tmp) / 'data'}")
        store.migrate()
        keys = record(store, args.rows)
        n = min(args.keys, len(keys.rows))
        summary_keys = events_pb2.RowKeys(node_ids=keys.node_ids, rows=keys.rows[:n])
        n_exp = min(args.expand_keys, n)
        expand_keys = events_pb2.RowKeys(node_ids=keys.node_ids, rows=keys.rows[:n_exp])
        server, port = build_server(store, "127.0.0.1:0")
        server.start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=[
                    ("grpc.max_receive_message_length", 1 << 30)]) as channel:
                stub = query_pb2_grpc.LineageStub(channel)
                s_cold, s_warm, s_reply = timed(
                    stub, query_pb2.TraceRowsRequest(rows=summary_keys), args.repeats)
                e_cold, e_warm, e_reply = timed(
                    stub, query_pb2.TraceRowsRequest(rows=expand_keys, expand_aggregates=True),
                    args.repeats)
        finally:
            server.stop(None)
            store.close()
    first = s_reply.traces[0]
    figures = {
        "source_rows": args.rows,
        "summarised": {
            "keys": n, "cold_s": round(s_cold, 4), "median_s": round(statistics.median(s_warm), 4),
            "reply_bytes": s_reply.ByteSize(),
            "direct_rows_per_key": len(first.sources),
            "aggregates": [f"all {a.node_rows} rows of {a.node_id} via {a.op_name}"
                           for a in (s_reply.aggregates[k] for k in first.aggregate_refs)]},
        "expanded": {
            "keys": n_exp, "cold_s": round(e_cold, 4),
            "median_s": round(statistics.median(e_warm), 4),
            "reply_bytes": e_reply.ByteSize(),
            "rows_per_key": len(e_reply.traces[0].sources)},
        "target_s": 1.0,
        "load_average_1min": round(os.getloadavg()[0], 1),
        "cpus": os.cpu_count(),
    }
    if args.json:
        json.dump(figures, sys.stdout)
        print()
        return
    s, e = figures["summarised"], figures["expanded"]
    print(f"{n} standardised rows of a {args.rows}-row source traced through gRPC "
          f"(load average {figures['load_average_1min']} on {figures['cpus']} CPUs)")
    print(f"  summarised (default): median {s['median_s']:.3f} s (cold {s['cold_s']:.3f} s), "
          f"reply {s['reply_bytes'] / 1e6:.2f} MB, {s['direct_rows_per_key']} direct row(s) "
          f"per key + {'; '.join(s['aggregates'])}   [target <= 1 s]")
    print(f"  expand_aggregates, {n_exp} keys: median {e['median_s']:.3f} s "
          f"(cold {e['cold_s']:.3f} s), reply {e['reply_bytes'] / 1e6:.2f} MB, "
          f"{e['rows_per_key']} rows per key")


if __name__ == "__main__":
    main()
