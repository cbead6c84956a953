"""Attribution speed: gradient-capture overhead per training step, attribution query latency.

    python benchmarks/attribution_speed.py                  # both MLPs; 100k and 1M rows
    python benchmarks/attribution_speed.py --rows 100000 --json
    python benchmarks/attribution_speed.py --fast --json    # seconds: small MLP, 5k rows, k=64

Capture overhead: a torch MLP trained by plain SGD (forward, cross-entropy, backward, step;
batch 64) against the same step captured (k = 512, float16) four ways: dense (the exact
vmap path with a dense P, `capture()` before the step), factored (`with capture.step(...)`:
hooks on the step's own backward, Kronecker P; no-op publish, so the event is still encoded
on the trainer's thread), factored with a BackgroundPublisher over a no-op transport (steps
held in groups of 32, projected and encoded on the worker thread), the same with a
ProcessPublisher (the held steps copied into a shared-memory ring, projected and encoded in
a worker process: the CPU of that process is reported beside the trainer's), and
factored through the real embedded path BackgroundPublisher -> Publisher -> LocalTransport
-> EventSink -> chDB, flushed at the end of every timed run of S steps (S <= 200, sized per
variant so that a run lasts about --run-seconds). Same model, same batch, one torch thread
by default; the variants are interleaved run by run and the figures are medians of per-step
times. Targets (issue 16): <= 1.2x the plain step on 784-512-512-10, <= 1.5x on 64-128-10.
The worker process's figures depend on where the kernel runs it: the report gives the share
of samples (one per 50 steps) with the trainer and the worker on the same CPU, which then
share one core; --pin puts them on different CPUs.

Query latency: N random float16 gradient rows (k = 512) of one model version, keyed by the
row keys of mini-batches cut from a tracked N-row source (so the engine's lineage grouping
runs over real lineage), published as GradientBatch events through the same real path, and
one recorded prediction. Reported: ingest rate, cold load (the engine reading the rows and
grouping them into source examples), the first query, the warm `attribute(...)` + `top(10)`
median for influence and tracin (cache loaded) with a breakdown, and memory: the RSS delta
over the load and the bytes of the cached arrays. Targets: <= 50 ms at 100k rows, <= 500 ms
at 1M. Progress goes to stderr; figures to stdout (one JSON object with --json).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from headwater.producers.capture import Recorder, margin_weights
from headwater.producers.capture.kronecker import factors_of
from headwater.producers.capture.torch import TorchCapture
from headwater.producers.publisher import BackgroundPublisher, Publisher
from headwater.producers.tracking import Tracker, row_keys
from headwater.producers.transports.local import LocalTransport
from headwater.producers.transports.null import NullTransport
from headwater.producers.worker.process import ProcessPublisher
from headwater.query_service.attribution.engine import AttributionEngine, Model
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2

CAPTURE_TARGET = 1.2  # capture step / plain step
QUERY_TARGETS_MS = {100_000: 50.0, 1_000_000: 500.0}  # warm attribute + top(10), by rows
METHODS = ("influence", "tracin")
MODEL_ID = "speed-model"
PREDICTION_ID = "speed-prediction"
INSERT_BYTES = 32 * 2**20  # gradient bytes per sink insert while loading the store

err = Console(stderr=True, width=None if sys.stderr.isatty() else 150)


class BenchmarkError(RuntimeError):
    """The benchmark could not measure what it claims (bad arguments, wrong stored data)."""


# -- helpers -------------------------------------------------------------------------------


def make_progress(quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, disable=quiet)


@contextmanager
def step(progress: Progress, description: str, total: int = 1) -> Iterator[Callable[[int], None]]:
    """A progress task; yields `advance(done)`, and completes the task on exit. Off a
    terminal (logs, CI) rich draws no live bars, so plain lines say where the run is."""
    task = progress.add_task(description, total=total)
    lines = not progress.disable and not progress.console.is_terminal
    start, tenths = time.perf_counter(), [0]

    def advance(done: int) -> None:
        progress.update(task, completed=done)
        if lines and total > 1 and 10 * done // total > tenths[0]:
            tenths[0] = 10 * done // total
            progress.console.print(f"{description}: {done:,}/{total:,} "
                                   f"({time.perf_counter() - start:.1f} s)")

    if lines:
        progress.console.print(f"{description} ...")
    try:
        yield advance
    finally:
        progress.update(task, completed=total)
        if lines:
            progress.console.print(f"{description}: done in {time.perf_counter() - start:.1f} s")


def rss_mb() -> float:
    """Resident set size of this process now (Linux /proc; elsewhere the peak RSS)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def interleaved(variants: Mapping[str, Callable[[], object]], repeats: int,
                on_round: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each variant over `repeats` rounds; each round runs every variant
    once, starting one further along each round, so drift and noise hit all alike."""
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
        if on_round is not None:
            on_round(r + 1)
    return times


CLOCKS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter, "thread_cpu": time.thread_time, "process_cpu": time.process_time}


def process_cpu_of(pid: int) -> Callable[[], float]:
    """A clock: the CPU seconds (user + system) another process has used so far (Linux
    /proc, 1/CLK_TCK resolution: 10 ms)."""
    tick = os.sysconf("SC_CLK_TCK")

    def clock() -> float:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    return clock


def cpu_now(pid: int | str = "thread-self") -> int:
    """The CPU a process (or, by default, the calling thread) last ran on (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[36])


def pin_apart(worker_pid: int) -> tuple[int, int]:
    """Pin the calling (trainer's) thread to one CPU and the worker process to another:
    (trainer CPU, worker CPU). Unpinned, the kernel often runs a worker woken by the
    trainer on the trainer's own core while the other core runs other work."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise BenchmarkError(f"--pin needs 2 CPUs; this process may use {cpus}")
    os.sched_setaffinity(0, {cpus[0]})
    os.sched_setaffinity(worker_pid, {cpus[1]})
    return cpus[0], cpus[1]


def interleaved_clocks(variants: Mapping[str, Callable[[], object]], repeats: int,
                       clocks: Mapping[str, Callable[[], float]] = CLOCKS
                       ) -> dict[str, dict[str, list[float]]]:
    """As interleaved(), with several clocks per call: wall time, the CPU time of the
    calling (trainer's) thread, and the CPU time of the whole process (worker threads and an
    embedded chDB included), plus any given (a worker process's CPU). On a loaded machine
    the wall clock also counts the time other processes held the cores; the CPU clocks count
    only this process's own work."""
    names = list(variants)
    times: dict[str, dict[str, list[float]]] = {n: {c: [] for c in clocks} for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = {c: clock() for c, clock in clocks.items()}
            variants[name]()
            for c, clock in clocks.items():
                times[name][c].append(clock() - start[c])
    return times


def median_ms(seconds: list[float], per: int = 1) -> float:
    return round(1000 * statistics.median(seconds) / per, 3)


def positive_int_list(text: str) -> list[int]:
    """'100000,1000000' -> [100000, 1000000]; a clear error for anything else."""
    try:
        values = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated row counts; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"row counts must be >= 1; got {text!r}")
    return values


# -- capture overhead ----------------------------------------------------------------------


def mlp(sizes: tuple[int, ...], seed: int) -> torch.nn.Sequential:
    """Linear layers of `sizes` with ReLU between them."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


VARIANTS = ("dense", "factored", "factored_bg", "factored_proc", "factored_sink")
CAPTURE_TARGETS = {"64-128-10": 1.5, "784-512-512-10": 1.2}  # issue 16, by model


def capture_overhead(sizes: tuple[int, ...], parameters: str, *, k: int, batch: int,
                     repeats: int, run_s: float, store: Store, seed: int = 0,
                     pin: bool = False, max_steps: int = 200) -> dict:
    """Median per-step ms of plain SGD against SGD captured five ways, interleaved:
    dense (vmap + dense P, a pass of its own before the step, no-op publish), factored
    (hooks on the step's own backward, no-op publish: the event is still encoded on the
    trainer's thread), factored_bg (BackgroundPublisher -> Publisher -> no-op transport:
    encoding and hashing on the worker thread), factored_proc (ProcessPublisher -> no-op
    transport in the worker process; its CPU is the worker_cpu clock) and factored_sink
    (BackgroundPublisher ->
    LocalTransport -> EventSink -> chDB, flushed at the end of every run). `pin`: the
    trainer's thread and the worker process on different CPUs (pin_apart). A run is at
    most `max_steps` steps; its final flush (the worker draining up to one group) is
    inside the run's clock, so short runs show that latency, long ones the steady state."""
    model = mlp(sizes, seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, sizes[0], generator=gen)
    y = torch.randint(0, sizes[-1], (batch,), generator=gen)
    keys = events_pb2.RowKeys(node_ids=["speed-batch"], rows=range(batch))
    name = "-".join(map(str, sizes))
    common = {"parameters": parameters, "k": k, "dtype": "float16"}
    dense = TorchCapture(lambda event: None, model, f"{name}-dense", mode="dense", **common)
    factored = TorchCapture(lambda event: None, model, f"{name}-factored", mode="factored",
                            **common)
    nowhere = BackgroundPublisher(Publisher(NullTransport(), run_id=f"speed-bg-{name}"))
    background = TorchCapture(nowhere, model, f"{name}-bg", mode="factored", **common)
    elsewhere = ProcessPublisher(Publisher(NullTransport(), run_id=f"speed-proc-{name}"))
    in_process = TorchCapture(elsewhere, model, f"{name}-proc", mode="factored", **common)
    pinned = pin_apart(elsewhere.pid) if pin else None
    sink_bg = BackgroundPublisher(Publisher(LocalTransport(EventSink(store, "local")),
                                            run_id=f"speed-{name}"))
    sink = TorchCapture(sink_bg, model, f"{name}-sink", mode="factored", **common)
    for capture in (dense, factored, background, in_process, sink):
        capture.record_version(step=0)

    def train_step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    def dense_step() -> None:
        dense.capture(x, y, keys, learning_rate=0.05)  # its own pass, before the step
        train_step()

    def hooked(capture: TorchCapture) -> Callable[[], None]:
        def go() -> None:
            opt.zero_grad()
            with capture.step(x, y, keys, learning_rate=0.05):
                torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return go

    steps_of = {"plain": train_step, "dense": dense_step, "factored": hooked(factored),
                "factored_bg": hooked(background), "factored_proc": hooked(in_process),
                "factored_sink": hooked(sink)}
    flushes: list[float] = []
    together = [0, 0]  # factored_proc: samples with the trainer and worker on one CPU, all

    def run(variant: str) -> Callable[[], None]:
        fn = steps_of[variant]
        fn()  # warm-up; the median of 5 steps sizes the variant's runs to about run_s (one
        # step alone can be the first of a ring, or a wait for the worker: 80 steps, not 200)
        if variant == "factored_proc":  # one pass over the worker's ring first: a fresh
            for _ in range(elsewhere.slots):  # slot's shared memory faults in on the step
                fn()  # that fills it (+0.24 ms a step on 64-128-10, +1.1 ms on 784-512-512-10)
        sizing = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            sizing.append(time.perf_counter() - start)
        steps = max(3, min(max_steps, math.ceil(run_s / statistics.median(sizing))))
        counts[variant] = steps
        publisher: Any = {"factored_bg": nowhere, "factored_proc": elsewhere,
                          "factored_sink": sink_bg}.get(variant)

        def go() -> None:
            for i in range(steps):
                fn()
                if variant == "factored_proc" and i % 50 == 0:  # ~0.3 µs a step
                    together[0] += cpu_now() == cpu_now(elsewhere.pid)
                    together[1] += 1
            if publisher is not None:  # the run's events are out before the clock stops
                start = time.perf_counter()
                publisher.flush()
                if variant == "factored_sink":
                    flushes.append(time.perf_counter() - start)
        return go

    counts: dict[str, int] = {}
    variants = {v: run(v) for v in steps_of}
    for go in variants.values():
        go()  # warm-up: first calls, first sink insert
    flushes.clear()
    together[:] = [0, 0]
    clocked = interleaved_clocks(variants, repeats,
                                 {**CLOCKS, "worker_cpu": process_cpu_of(elsewhere.pid)})
    times = {v: t["wall"] for v, t in clocked.items()}
    plain = median_ms(times["plain"], counts["plain"])
    target = CAPTURE_TARGETS.get(name, CAPTURE_TARGET)
    out = {"model": name, "parameters": parameters,
           "captured_params": factored.projection.input_dim,
           "projection": factored.projection.kind, "dense_projection": dense.projection.kind,
           "k": factored.projection.output_dim, "dense_k": dense.projection.output_dim,
           "factors": factors_of(factored.projection.factors)
           if factored.projection.kind == "kronecker" else [],
           "batch": batch, "steps_per_run": counts, "runs": repeats, "plain_ms": plain,
           "target": target, "pinned": list(pinned) if pinned else None,
           "factored_proc_same_cpu": round(together[0] / max(1, together[1]), 3)}
    for variant in VARIANTS:
        ms = median_ms(times[variant], counts[variant])
        out[f"{variant}_ms"] = ms
        out[f"ratio_{variant}"] = round(ms / plain, 3)
        out[f"meets_target_{variant}"] = ms / plain <= target
    for clock in ("thread_cpu", "process_cpu"):  # the same runs, CPU clocks
        base = median_ms(clocked["plain"][clock], counts["plain"])
        out[f"plain_{clock}_ms"] = base
        for variant in VARIANTS:
            ms = median_ms(clocked[variant][clock], counts[variant])
            out[f"ratio_{variant}_{clock}"] = round(ms / base, 3)
    # the worker process's CPU per step, and trainer process + worker process together
    proc = clocked["factored_proc"]
    out["factored_proc_worker_cpu_ms"] = median_ms(proc["worker_cpu"], counts["factored_proc"])
    out["ratio_factored_proc_total_cpu"] = round(statistics.median(
        [a + b for a, b in zip(proc["process_cpu"], proc["worker_cpu"], strict=True)])
        / counts["factored_proc"] * 1000 / out["plain_process_cpu_ms"], 3)
    out["breakdown_ms"] = capture_breakdown(factored, x, y, keys, repeats)
    out["breakdown_ms"]["sink_flush"] = median_ms(flushes)
    for publisher in (nowhere, elsewhere, sink_bg):
        publisher.close()
        publisher.publisher.close()
    return out


def capture_breakdown(capture: TorchCapture, x: torch.Tensor, y: torch.Tensor,
                      keys: events_pb2.RowKeys, repeats: int) -> dict[str, float]:
    """Median ms of parts of a factored capture: a margin pass of its own (forward +
    backward to the layer outputs + projection: what featurise and predictions cost per
    batch) and encoding one GradientBatch event."""
    phi, weights, _ = capture.features(x, y)
    parts = {
        "margin_pass": lambda: capture.features(x, y),
        "encode_event": lambda: capture.publish_gradients(phi, weights, keys,
                                                          learning_rate=0.05, step=0),
    }
    times = interleaved(parts, max(3, repeats))
    return {name: median_ms(t) for name, t in times.items()}


# -- query latency -------------------------------------------------------------------------


class RandomGradients(Recorder):
    """A Recorder publishing given (random) gradient rows: the query side sees only stored
    rows, so the values in them do not change its cost."""

    framework = "synthetic"

    def parameter_hash(self) -> str:
        return hashlib.sha256(f"{self.model_id}/{self.version}".encode()).hexdigest()


def load_store(store: Store, rows: int, k: int, batch_rows: int, seed: int,
               progress: Progress) -> dict:
    """Publish `rows` gradient rows of one version and one prediction through the real sink;
    returns the ingest figures."""
    per_insert = max(1, INSERT_BYTES // (batch_rows * k * 2))  # float16: 2 bytes a value
    transport = LocalTransport(EventSink(store, "local"), batch_size=per_insert)
    publisher = Publisher(transport, run_id=f"speed-query-{rows}")
    source = events_pb2.SourceRegistered(
        source_id="speed-source", uri="file:///bench/train.parquet", content_sha256="0" * 64,
        row_count=rows, format="parquet")
    publisher.publish(source)
    tracker = Tracker(publisher.publish)
    data = tracker.array(np.zeros((rows, 1), dtype=np.float32), source=source)
    recorder = RandomGradients(publisher.publish, MODEL_ID, 4 * k, k=k, dtype="float16")
    recorder.record_version(step=0)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    with step(progress, f"publish {rows:,} gradient rows (k={k}) -> chDB", rows) as advance:
        done = 0
        for s, batch in enumerate(tracker.batches(data, batch_rows, seed=seed)):
            n = len(batch)
            phi = rng.standard_normal((n, k), dtype=np.float32) / np.float32(math.sqrt(k))
            recorder.publish_gradients(phi, margin_weights(rng.normal(1.0, 2.0, n)),
                                       row_keys(batch), learning_rate=0.05 / n, step=s,
                                       targets=rng.integers(0, 10, n))
            done += n
            advance(done)
        test = rng.standard_normal((1, k), dtype=np.float32) / np.float32(math.sqrt(k))
        recorder.publish_prediction(test, [1.5], 3, prediction_id=PREDICTION_ID)
        publisher.flush()
    seconds = time.perf_counter() - start
    return {"ingest_s": round(seconds, 2), "ingest_rows_per_s": round(rows / seconds),
            "events": math.ceil(rows / batch_rows), "rows_per_event": batch_rows,
            "events_per_insert": per_insert}


def cached_mb(model: Model) -> float:
    """Bytes of the engine's cached NumPy arrays for a model (examples' Python objects not
    counted)."""
    total = 0
    for b in model.blocks:
        arrays = [b.phi, b.q, b.w, b.lr, b.step, b.target, b.example]
        total += sum(a.nbytes for a in arrays) + (b.latest.nbytes if b.latest is not None else 0)
    total += sum(c.nbytes for c, _ in model.curvature.values())
    return round(total / 2**20, 1)


def top10(engine: AttributionEngine, method: str) -> list:
    """The query timed: attribute the recorded prediction, take the 10 largest |scores|."""
    return engine.attribute(PREDICTION_ID, method=method).top(10)


def query_breakdown(engine: AttributionEngine, method: str, repeats: int) -> dict[str, float]:
    """Median ms of each part of a warm query: the engine's staleness check (a row count),
    reading the test gradient, scoring, and top(10)."""
    model = engine.model(MODEL_ID)
    _, tests = engine.test_gradients(PREDICTION_ID)

    def score() -> Any:
        return (engine.influence(model, tests) if method == "influence"
                else engine.tracin(model, tests))

    result = engine.attribute(PREDICTION_ID, method=method)
    parts = {"staleness_check": lambda: engine.model(MODEL_ID),
             "test_gradient": lambda: engine.test_gradients(PREDICTION_ID),
             "score": score, "top10": lambda: result.top(10)}
    return {name: median_ms(t) for name, t in interleaved(parts, repeats).items()}


def query_latency(rows: int, k: int, batch_rows: int, repeats: int, work: Path, seed: int,
                  progress: Progress) -> dict:
    """Ingest, cold load, first and warm query times for one store of `rows` gradient rows."""
    store = Store(f"chdb://{work / f'query-{rows}'}")
    store.migrate()
    try:
        out: dict[str, Any] = {"rows": rows, "k": k, "dtype": "float16"}
        out.update(load_store(store, rows, k, batch_rows, seed, progress))
        engine = AttributionEngine(store)
        gc.collect()
        before = rss_mb()
        with step(progress, f"cold load of {rows:,} rows (lineage grouping included)"):
            start = time.perf_counter()
            model = engine.model(MODEL_ID)
            out["cold_load_s"] = round(time.perf_counter() - start, 3)
        out["rss_delta_mb"] = round(rss_mb() - before, 1)
        out["examples"] = len(model.examples)
        if len(model.examples) != rows:
            raise BenchmarkError(f"the engine grouped {rows} tracked rows into "
                                 f"{len(model.examples)} examples; expected one per row")
        queries = {m: partial(top10, engine, m) for m in METHODS}
        with step(progress, f"queries over {rows:,} rows: first, then {repeats} warm rounds",
                  repeats + 1) as advance:
            for method, query in queries.items():
                start = time.perf_counter()
                query()
                out[f"{method}_first_ms"] = round(1000 * (time.perf_counter() - start), 1)
            advance(1)
            warm = interleaved(queries, repeats, on_round=lambda r: advance(r + 1))
        target = QUERY_TARGETS_MS.get(rows)
        out["target_ms"] = target
        for method in METHODS:
            out[f"{method}_warm_ms"] = median_ms(warm[method])
            out[f"{method}_warm_min_ms"] = round(1000 * min(warm[method]), 3)
            out[f"{method}_meets_target"] = (None if target is None
                                             else out[f"{method}_warm_ms"] <= target)
            out[f"{method}_breakdown_ms"] = query_breakdown(engine, method, max(3, repeats // 2))
        out["cached_arrays_mb"] = cached_mb(engine.model(MODEL_ID))
        return out
    finally:
        store.close()


# -- command line --------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=positive_int_list, default=[100_000, 1_000_000],
                    help="stored gradient rows for the query benchmark, comma-separated")
    ap.add_argument("--k", type=int, default=512, help="projection dimension")
    ap.add_argument("--batch", type=int, default=64, help="training batch (capture)")
    ap.add_argument("--batch-rows", type=int, default=1024,
                    help="gradient rows per published GradientBatch (query store)")
    ap.add_argument("--models", default="64,128,10;784,512,512,10",
                    help="MLP layer sizes for capture, ';'-separated")
    ap.add_argument("--parameters", default="all,last_layer")
    ap.add_argument("--repeats", type=int, default=15, help="interleaved timed runs/queries")
    ap.add_argument("--run-seconds", type=float, default=0.5,
                    help="about how long one timed capture run lasts (sets steps per run)")
    ap.add_argument("--max-steps", type=int, default=200,
                    help="most steps in one timed capture run (each run ends with a flush: "
                    "longer runs weigh the worker's final drain less)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0: torch's default); batch-64 steps of these MLPs gain "
                    "little from more, and on a busy machine extra threads wait on each other")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-capture", action="store_true")
    ap.add_argument("--skip-query", action="store_true")
    ap.add_argument("--fast", action="store_true",
                    help="seconds: 64-128-10 MLP only, 5000 rows at k=64, few repeats")
    ap.add_argument("--pin", action="store_true",
                    help="pin the trainer's thread and the worker process to different CPUs")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    args = ap.parse_args(argv)
    if args.fast:
        args.models, args.rows, args.k, args.repeats, args.run_seconds = (
            "64,128,10", [5000], 64, 5, 0.05)
        args.batch_rows = min(args.batch_rows, 500)
    try:
        args.models = [tuple(int(v) for v in m.split(",")) for m in args.models.split(";")]
    except ValueError:
        ap.error(f"--models must be ';'-separated lists of layer sizes; got {args.models!r}")
    if any(len(m) < 2 or min(m) < 1 for m in args.models):
        ap.error(f"every --models entry needs >= 2 positive layer sizes; got {args.models}")
    args.parameters = [p for p in args.parameters.split(",") if p]
    if bad := [p for p in args.parameters if p not in ("all", "last_layer")]:
        ap.error(f"--parameters takes all and/or last_layer; got {bad}")
    if args.threads < 0:
        ap.error(f"--threads must be >= 0; got {args.threads}")
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        ap.error(f"--pin needs 2 CPUs; this process may use {sorted(os.sched_getaffinity(0))}")
    for name in ("k", "batch", "batch_rows", "repeats", "max_steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    return args


def run(args: argparse.Namespace) -> dict:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # Other processes on the machine slow every variant; the load average says how busy it was.
    figures: dict[str, Any] = {"machine": {"cpus": os.cpu_count(),
                                           "torch_threads": torch.get_num_threads(),
                                           "load_average_start": round(os.getloadavg()[0], 2)}}
    progress = make_progress(args.quiet)
    with progress, tempfile.TemporaryDirectory(prefix="hw-speed-") as tmp:
        work = Path(tmp)
        if not args.skip_capture:
            store = Store(f"chdb://{work / 'capture'}")
            store.migrate()
            cases = [(m, p) for m in args.models for p in args.parameters]
            figures["capture"] = []
            with step(progress, "capture overhead (interleaved runs)", len(cases)) as advance:
                for i, (sizes, parameters) in enumerate(cases):
                    figures["capture"].append(capture_overhead(
                        sizes, parameters, k=args.k, batch=args.batch, repeats=args.repeats,
                        run_s=args.run_seconds, store=store, seed=args.seed,
                        pin=args.pin, max_steps=args.max_steps))
                    advance(i + 1)
            store.close()
        if not args.skip_query:
            figures["query"] = [query_latency(n, args.k, args.batch_rows, args.repeats, work,
                                              args.seed, progress) for n in args.rows]
    figures["machine"]["load_average_end"] = round(os.getloadavg()[0], 2)
    return figures


def report(figures: dict) -> None:
    m = figures["machine"]
    print(f"machine: {m['cpus']} CPUs, torch threads {m['torch_threads']}, load average "
          f"{m['load_average_start']} at start, {m['load_average_end']} at end")
    for c in figures.get("capture", []):
        b = c["breakdown_ms"]
        verdict = {v: "met" if c[f"meets_target_{v}"] else "NOT met" for v in VARIANTS}
        print(f"capture {c['model']} MLP, parameters={c['parameters']} "
              f"({c['captured_params']:,} params), batch {c['batch']}: plain step "
              f"{c['plain_ms']:.2f} ms (target <= {c['target']}x)")
        print(f"    dense ({c['dense_projection']} k={c['dense_k']}, vmap, no-op publish): "
              f"{c['dense_ms']:.2f} ms = {c['ratio_dense']}x ({verdict['dense']})")
        print(f"    factored ({c['projection']} k={c['k']}, hooks, no-op publish): "
              f"{c['factored_ms']:.2f} ms = {c['ratio_factored']}x ({verdict['factored']}); "
              f"+ background publisher: {c['factored_bg_ms']:.2f} ms = "
              f"{c['ratio_factored_bg']}x ({verdict['factored_bg']}); + process publisher: "
              f"{c['factored_proc_ms']:.2f} ms = {c['ratio_factored_proc']}x "
              f"({verdict['factored_proc']}); -> sink -> chDB: "
              f"{c['factored_sink_ms']:.2f} ms = {c['ratio_factored_sink']}x "
              f"({verdict['factored_sink']})")
        for clock, what in (("thread_cpu", "trainer-thread CPU"),
                            ("process_cpu", "trainer process CPU, worker thread and chDB "
                             "included")):
            print(f"    {what}: plain {c[f'plain_{clock}_ms']:.2f} ms; dense "
                  f"{c[f'ratio_dense_{clock}']}x, factored {c[f'ratio_factored_{clock}']}x, "
                  f"+ background {c[f'ratio_factored_bg_{clock}']}x, + process "
                  f"{c[f'ratio_factored_proc_{clock}']}x, -> sink "
                  f"{c[f'ratio_factored_sink_{clock}']}x")
        print(f"    worker process CPU: {c['factored_proc_worker_cpu_ms']:.3f} ms a step; "
              f"trainer process + worker process CPU {c['ratio_factored_proc_total_cpu']}x "
              "the plain step's process CPU; trainer and worker on the same CPU in "
              f"{100 * c['factored_proc_same_cpu']:.0f} % of samples"
              + (f" (pinned to CPUs {c['pinned'][0]} and {c['pinned'][1]})" if c["pinned"]
                 else ""))
        if c["factors"]:
            print("    factors: " + "; ".join(c["factors"]))
        print(f"    parts: margin pass (featurise/prediction) {b['margin_pass']:.2f} ms, "
              f"encode event {b['encode_event']:.2f} ms, sink flush {b['sink_flush']:.1f} ms;"
              f" median of {c['runs']} runs, steps per run {c['steps_per_run']}")
    for q in figures.get("query", []):
        print(f"query over {q['rows']:,} stored rows (k={q['k']}, {q['dtype']}): ingest "
              f"{q['ingest_rows_per_s']:,} rows/s ({q['ingest_s']} s), cold load "
              f"{q['cold_load_s']:.2f} s, RSS +{q['rss_delta_mb']:,.0f} MB (cached arrays "
              f"{q['cached_arrays_mb']:,.0f} MB), {q['examples']:,} examples")
        for method in METHODS:
            target = q["target_ms"]
            meets = ("" if target is None else f"  (target <= {target:.0f} ms: "
                     f"{'met' if q[f'{method}_meets_target'] else 'NOT met'})")
            b = q[f"{method}_breakdown_ms"]
            print(f"    {method}: warm attribute + top(10) median {q[f'{method}_warm_ms']:.1f} "
                  f"ms (min {q[f'{method}_warm_min_ms']:.1f}), first {q[f'{method}_first_ms']:.0f}"
                  f" ms{meets}; parts: " + ", ".join(f"{k} {v:.1f}" for k, v in b.items()))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    figures = run(args)
    if args.json:
        print(json.dumps(figures))
    else:
        report(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
