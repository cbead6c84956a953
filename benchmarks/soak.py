"""Soak: several producers and concurrent attribution queries against one `headwater serve`.

    python benchmarks/soak.py [--producers 3] [--queriers 2] [--seconds 120] [--rate 500]
                              [--interval 5] [--json] [--fast]

Loopback only, bounded in time. Starts `headwater serve` (temporary data dir), publishes
a tracked source, a model version with FEATURISATION gradient rows keyed by the source's
rows and a few recorded predictions (so attribution has lineage and something to
explain), then for --seconds runs, all at once:

- P producer processes (this script with --producer), each a trainer publishing
  TRAINING_STEP GradientBatch events (4 rows x 32 float32, keyed by rows of the tracked
  source) for a model of its own, through GrpcTransport, at --rate events/s (0: as fast
  as it can);
- Q threads issuing Attribution.Attribute for the recorded predictions, back to back.

Every --interval seconds it samples events stored per second, query p50/p99 latency over
the interval, and the resident memory (VmRSS) of serve and of the producers; prints the
samples as a table and a memory verdict: the RSS slope over the last half of the run
against the first half ("bounded" when it levels off). At the end every producer's
events are counted in the store: each published event must be stored exactly once
(count = distinct seqs = last seq = published) and nothing dead-lettered. Exit 1 if not,
or if any query failed. Every process it starts is stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import (  # noqa: E402
    HEADWATER,
    BenchmarkError,
    Child,
    _console,
    free_port,
    run_in_scratch,
    wait_for_port,
)

from headwater.producers import GrpcTransport, Publisher  # noqa: E402
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc  # noqa: E402

MODEL, VERSION, NODE, SOURCE = "soak-model", "soak-model@1", "soak-source-rows", "soak-source"
DIM, ROWS_PER_EVENT = 32, 4
SOURCE_ROWS = 100_000
err = _console(stderr=True)


# -- the producer process ---------------------------------------------------------------------


def run_producer(target: str, index: int, seconds: float, rate: float, out: Path) -> None:
    """A trainer: TRAINING_STEP gradient batches for its own model until the time is up;
    writes {producer_id, run_id, published} to `out` once every event is acked (stored)."""
    rng = np.random.default_rng(index)
    blocks = rng.standard_normal((256, ROWS_PER_EVENT * DIM)).astype("<f4")
    p = rng.random(ROWS_PER_EVENT)
    model = f"soak-train-{index}"
    transport = GrpcTransport(target, batch_size=250, timeout=120, retry_for=60)
    pub = Publisher(transport, run_id=f"soak-run-{index}-{uuid.uuid4().hex[:6]}")
    pub.publish(events_pb2.ModelVersionRecorded(model_id=model, version=f"{model}@1", step=0))
    body = events_pb2.GradientBatch(
        model_id=model, model_version=f"{model}@1", learning_rate=0.01, dim=DIM,
        dtype=events_pb2.FLOAT32, loss_weight=(1 - p).tolist(),
        curvature_weight=(p * (1 - p)).tolist(), targets=[1.0, 0.0, 1.0, 0.0],
        kind=events_pb2.GradientBatch.TRAINING_STEP, output_function="margin",
        row_keys=events_pb2.RowKeys(node_ids=[NODE], rows=[0] * ROWS_PER_EVENT))
    start = time.monotonic()
    step = 0
    while (now := time.monotonic()) - start < seconds:
        if rate > 0 and step > rate * (now - start):
            time.sleep(min(step / rate - (now - start), 0.05))
            continue
        step += 1
        first = (step * ROWS_PER_EVENT) % (SOURCE_ROWS - ROWS_PER_EVENT)
        # a fresh message per event, as the SDK's captures do: setting a bytes field again
        # on one long-lived protobuf (upb) message keeps every old value in its arena until
        # the message is freed (~1 KB per event here: the "leak" an earlier run measured)
        event = events_pb2.GradientBatch()
        event.CopyFrom(body)
        event.step = step
        event.row_keys.rows[:] = range(first, first + ROWS_PER_EVENT)
        event.gradients = blocks[step % len(blocks)].tobytes()
        pub.publish(event)
    pub.flush(timeout=300)
    pub.close()
    out.write_text(json.dumps({"producer_id": pub.producer_id, "run_id": pub.run_id,
                               "published": step + 1}))


# -- setup: a source, a model with lineage-keyed gradients, predictions ---------------------


def setup_model(target: str, rows: int, predictions: int) -> list[str]:
    """Publish the queried model; returns its prediction ids."""
    rng = np.random.default_rng(7)
    ids = [f"soak-prediction-{i}" for i in range(predictions)]
    with Publisher(GrpcTransport(target, timeout=120), run_id="soak-setup") as pub:
        pub.publish(events_pb2.SourceRegistered(
            source_id=SOURCE, uri="file:///soak/train.parquet", content_sha256="5a" * 32,
            row_count=SOURCE_ROWS, format="parquet", node_id=NODE, origin="soak benchmark"))
        pub.publish(events_pb2.ModelVersionRecorded(model_id=MODEL, version=VERSION, step=1))
        for first in range(0, rows, 1000):
            n = min(1000, rows - first)
            p = rng.random(n)
            pub.publish(events_pb2.GradientBatch(
                model_id=MODEL, model_version=VERSION, step=1, dim=DIM,
                dtype=events_pb2.FLOAT32, kind=events_pb2.GradientBatch.FEATURISATION,
                row_keys=events_pb2.RowKeys(node_ids=[NODE], rows=range(first, first + n)),
                gradients=rng.standard_normal((n, DIM)).astype("<f4").tobytes(),
                loss_weight=(1 - p).tolist(), curvature_weight=(p * (1 - p)).tolist(),
                targets=(p > 0.5).astype(float).tolist(), output_function="margin"))
        for pid in ids:
            pub.publish(events_pb2.PredictionRecorded(
                prediction_id=pid, model_id=MODEL, model_version=VERSION, output=[0.7],
                predicted_label=1, dim=DIM, dtype=events_pb2.FLOAT32, gradient_labels=["1"],
                test_gradients=rng.standard_normal(DIM).astype("<f4").tobytes()))
    return ids


# -- measuring -------------------------------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    """Resident set size of a process in MiB (Linux /proc), None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Queriers:
    """Q threads calling Attribution.Attribute back to back; latencies kept with their time."""

    def __init__(self, target: str, predictions: list[str], threads: int) -> None:
        self._channel = grpc.insecure_channel(target)
        self._stub = query_pb2_grpc.AttributionStub(self._channel)
        self._predictions = predictions
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.samples: list[tuple[float, float]] = []  # (monotonic end time, seconds)
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def query(self, prediction: str, aggregation: int) -> None:
        answer = self._stub.Attribute(query_pb2.AttributeRequest(
            prediction_id=prediction, top_k=10, aggregation=aggregation), timeout=60)
        if not (answer.rows or answer.groups):
            raise BenchmarkError(f"Attribute({prediction}) answered no rows")

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        aggregations = [query_pb2.BY_ROW, query_pb2.BY_SOURCE]
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.query(rng.choice(self._predictions), rng.choice(aggregations))
            except (grpc.RpcError, BenchmarkError) as exc:
                with self._lock:
                    self.errors.append(str(exc)[:300])
                continue
            t1 = time.monotonic()
            with self._lock:
                self.samples.append((t1, t1 - t0))

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)
        self._channel.close()

    def window(self, since: float, until: float) -> list[float]:
        with self._lock:
            return [s for t, s in self.samples if since < t <= until]


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def sql(stub: query_pb2_grpc.QueryStub, text: str, **params: str) -> list[list[Any]]:
    resp = stub.Sql(query_pb2.SqlRequest(sql=text, parameters=params, max_rows=10_000),
                    timeout=120)
    return json.loads(resp.rows_json)


@dataclass
class Sample:
    t: float  # seconds since the producers started
    stored: int  # events stored so far (all producers, setup excluded)
    events_per_s: float  # over the interval
    queries: int  # answered in the interval
    p50_ms: float | None
    p99_ms: float | None
    serve_rss_mb: float | None
    producers_rss_mb: float | None  # sum over the producer processes still running


def slope_mb_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute."""
    if len(points) < 2:
        return None
    t, y = np.array(points).T
    if np.ptp(t) == 0:
        return None
    return float(np.polyfit(t, y, 1)[0] * 60)


def memory_verdict(samples: list[Sample], key: str = "serve_rss_mb") -> dict[str, Any]:
    """RSS slope over the first and last half of the run. Bounded: the last half's slope
    is at most half the first half's, or under 2 MiB/min (levelled off)."""
    points = [(s.t, getattr(s, key)) for s in samples if getattr(s, key) is not None]
    half = len(points) // 2
    first, last = slope_mb_per_min(points[:half + 1]), slope_mb_per_min(points[half:])
    bounded = None
    if first is not None and last is not None:
        bounded = last <= max(0.5 * first, 2.0)
    return {"first_half_mb_per_min": first, "last_half_mb_per_min": last,
            "rss_start_mb": points[0][1] if points else None,
            "rss_peak_mb": max(p[1] for p in points) if points else None,
            "rss_end_mb": points[-1][1] if points else None,
            "verdict": None if bounded is None else ("bounded" if bounded else "growing")}


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Report:
    settings: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    producers: list[dict[str, Any]] = field(default_factory=list)
    events_published: int = 0
    events_stored: int = 0
    seconds: float = 0.0
    events_per_s: float = 0.0
    queries: int = 0
    query_errors: list[str] = field(default_factory=list)
    p50_ms: float | None = None
    p99_ms: float | None = None
    memory: dict[str, Any] = field(default_factory=dict)  # serve
    producers_memory: dict[str, Any] = field(default_factory=dict)  # sum over producers
    dead_letters: int = 0
    exactly_once: bool = False


def run(args: argparse.Namespace, work: Path) -> Report:
    port = free_port()
    target = f"127.0.0.1:{port}"
    report = Report(settings={k: v for k, v in vars(args).items() if k != "producer"})
    serve: Child | None = None
    producers: list[Child] = []
    queriers: Queriers | None = None
    channel = grpc.insecure_channel(target)
    try:
        err.print(f"starting headwater serve on {target}")
        serve = Child("headwater serve", [*HEADWATER, "serve", "--data-dir",
                                          str(work / "data"), "--listen", target],
                      work / "serve.log")
        wait_for_port(port, serve, timeout=120)
        err.print(f"setup: {args.model_rows} gradient rows, {args.predictions} predictions")
        predictions = setup_model(target, args.model_rows, args.predictions)
        queriers = Queriers(target, predictions, args.queriers)
        queriers.query(predictions[0], query_pb2.BY_ROW)  # load the model once: warm
        stub = query_pb2_grpc.QueryStub(channel)
        base = sql(stub, "SELECT count() FROM events")[0][0]
        err.print(f"soak: {args.producers} producers at "
                  f"{args.rate or 'max'} events/s each, {args.queriers} query threads, "
                  f"{args.seconds:.0f} s")
        outs = [work / f"producer-{i}.json" for i in range(args.producers)]
        producers = [Child(f"producer {i}", [sys.executable, __file__, "--producer",
                                             "--target", target, "--index", str(i),
                                             "--seconds", str(args.seconds), "--rate",
                                             str(args.rate), "--out", str(outs[i])],
                           work / f"producer-{i}.log") for i in range(args.producers)]
        t0 = time.monotonic()
        queriers.start()
        last_t, last_stored = t0, 0
        while any(p.alive() for p in producers):
            time.sleep(max(0.0, args.interval - (time.monotonic() - last_t)))
            now = time.monotonic()
            stored = sql(stub, "SELECT count() FROM events")[0][0] - base
            lat = queriers.window(last_t, now)
            alive = [rss_mb(p.pid) for p in producers if p.alive()]
            sample = Sample(round(now - t0, 1), stored,
                            (stored - last_stored) / (now - last_t), len(lat),
                            _ms(percentile(lat, 50)), _ms(percentile(lat, 99)),
                            rss_mb(serve.pid),
                            round(sum(a for a in alive if a), 1) if alive else None)
            report.samples.append(sample)
            err.print(_sample_line(sample))
            last_t, last_stored = now, stored
            serve.check_alive()
            if now - t0 > args.seconds + 300:
                raise BenchmarkError("producers still running 300 s after the soak ended")
        queriers.stop()
        report.seconds = time.monotonic() - t0
        for p in producers:
            if p.stop() != 0:
                raise BenchmarkError(f"{p.name} exited with {p.proc.returncode}\n{p.tail()}")
        report.producers = [json.loads(o.read_text()) for o in outs]
        all_lat = [s for _, s in queriers.samples]
        report.queries = len(all_lat)
        report.query_errors = queriers.errors[:20]
        report.p50_ms, report.p99_ms = _ms(percentile(all_lat, 50)), _ms(percentile(all_lat, 99))
        check_stored(stub, report)
        report.memory = memory_verdict(report.samples)
        report.producers_memory = memory_verdict(report.samples, "producers_rss_mb")
        return report
    finally:
        if queriers is not None:
            queriers.stop()
        channel.close()
        for p in producers:
            p.stop(timeout=15)
        if serve is not None:
            serve.stop(timeout=60)


def check_stored(stub: query_pb2_grpc.QueryStub, report: Report) -> None:
    """Each producer's events: stored once each, seqs 1..published, nothing dead-lettered."""
    rows = sql(stub, "SELECT producer_id, count(), uniqExact(seq), min(seq), max(seq) "
                     "FROM events FINAL WHERE run_id LIKE 'soak-run-%' GROUP BY producer_id")
    by_producer = {r[0]: r[1:] for r in rows}
    ok = len(by_producer) == len(report.producers)
    for p in report.producers:
        count, distinct, first, last = by_producer.get(p["producer_id"], (0, 0, 0, 0))
        p.update(stored=count, distinct_seqs=distinct, first_seq=first, last_seq=last)
        ok &= count == distinct == last == p["published"] and first == 1
    report.events_published = sum(p["published"] for p in report.producers)
    report.events_stored = sum(p["stored"] for p in report.producers)
    report.events_per_s = report.events_stored / report.seconds if report.seconds else 0.0
    report.dead_letters = sql(stub, "SELECT count() FROM dead_letters")[0][0]
    report.exactly_once = ok and report.dead_letters == 0


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def _sample_line(s: Sample) -> str:
    return (f"t={s.t:6.1f}s stored={s.stored:>9,} {s.events_per_s:>8,.0f} ev/s "
            f"queries={s.queries:>4} p50={_fmt(s.p50_ms)} ms p99={_fmt(s.p99_ms)} ms "
            f"serve RSS={_fmt(s.serve_rss_mb)} MiB producers RSS={_fmt(s.producers_rss_mb)} MiB")


def print_report(r: Report) -> None:
    from rich.table import Table

    out = _console(stderr=False)
    table = Table(title="Headwater soak: producers + concurrent Attribute queries, over time")
    for col in ("t (s)", "stored", "events/s", "queries", "p50 ms", "p99 ms", "serve RSS MiB",
                "producers RSS MiB"):
        table.add_column(col, justify="right", no_wrap=True)
    for s in r.samples:
        table.add_row(f"{s.t:.0f}", f"{s.stored:,}", f"{s.events_per_s:,.0f}", str(s.queries),
                      _fmt(s.p50_ms), _fmt(s.p99_ms), _fmt(s.serve_rss_mb),
                      _fmt(s.producers_rss_mb))
    out.print(table)
    out.print(f"events: {r.events_published:,} published, {r.events_stored:,} stored "
              f"({'each exactly once' if r.exactly_once else 'NOT exactly once'}), "
              f"{r.dead_letters} dead letters; {r.events_per_s:,.0f} events/s over "
              f"{r.seconds:.0f} s")
    out.print(f"queries: {r.queries:,} Attribute calls, p50 {_fmt(r.p50_ms)} ms, p99 "
              f"{_fmt(r.p99_ms)} ms, {len(r.query_errors)} errors")
    for name, m in (("serve RSS", r.memory), ("producers RSS (sum)", r.producers_memory)):
        out.print(f"{name}: {_fmt(m.get('rss_start_mb'))} -> {_fmt(m.get('rss_end_mb'))} MiB "
                  f"(peak {_fmt(m.get('rss_peak_mb'))}); slope first half "
                  f"{_fmt(m.get('first_half_mb_per_min'), '+.1f')} MiB/min, last half "
                  f"{_fmt(m.get('last_half_mb_per_min'), '+.1f')} MiB/min: {m.get('verdict')}")
    out.print(f"host: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python "
              f"{platform.python_version()}; serve, producers and queriers share it.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--producers", type=int, default=3, help="producer processes (3)")
    ap.add_argument("--queriers", type=int, default=2, help="query threads (2)")
    ap.add_argument("--seconds", type=float, default=120.0, help="soak duration (120)")
    ap.add_argument("--rate", type=float, default=500.0,
                    help="events/s per producer (500); 0: as fast as possible")
    ap.add_argument("--interval", type=float, default=5.0, help="sampling interval, s (5)")
    ap.add_argument("--model-rows", type=int, default=20_000,
                    help="FEATURISATION gradient rows of the queried model (20000)")
    ap.add_argument("--predictions", type=int, default=8, help="recorded predictions (8)")
    ap.add_argument("--fast", action="store_true",
                    help="10 s, 2 s samples, 2000 model rows (for tests)")
    ap.add_argument("--json", action="store_true", help="print one JSON object, not a table")
    ap.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    # producer mode (started by the soak itself)
    ap.add_argument("--producer", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.fast:
        args.seconds, args.interval, args.model_rows = 10.0, 2.0, 2000
    if args.producers < 1 or args.queriers < 0 or args.seconds <= 0 or args.interval <= 0 \
            or args.model_rows < 1 or args.predictions < 1 or args.rate < 0:
        ap.error("--producers, --seconds, --interval, --model-rows and --predictions must be "
                 "positive; --queriers and --rate not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.producer:
        run_producer(args.target, args.index, args.seconds, args.rate, args.out)
        return 0
    work = Path(tempfile.mkdtemp(prefix="headwater-soak-"))
    report, failure = run_in_scratch(lambda w: run(args, w), work, args.keep)
    if report is not None and not report.exactly_once:
        failure = (f"published events not stored exactly once: {report.producers}, "
                   f"{report.dead_letters} dead letters")
    elif report is not None and report.query_errors:
        failure = f"{len(report.query_errors)} queries failed: {report.query_errors[:3]}"
    if args.json:
        body = asdict(report) if report else {}
        print(json.dumps({"ok": failure is None, "error": failure, **body}))
    elif report:
        print_report(report)
    if failure is not None:
        err.print(f"[bold red]soak FAILED:[/] {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
