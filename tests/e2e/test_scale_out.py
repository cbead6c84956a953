"""Scale-out simulation: three `headwater process` members of one consumer group on a
6-partition topic (Tansu broker), each with its own chDB directory.

Shows: the partitions are balanced (2 each); SIGKILL of one member moves its partitions to
the other two (3 each); every published event is stored, and stored once — except events the
killed member had stored but not yet committed, which Kafka redelivers to the new owner.
With one shared ClickHouse (production) those copies collapse in the ReplacingMergeTree;
with per-process chDB stores (one machine) they show up as one extra copy in the killed
member's store, and the test checks that this is the only duplication there is.

Assignments are read from the runner's own log lines ("assigned partitions [...]"), so the
members run the real CLI entry point with Python logging at INFO.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import REPO, Broker, run_headwater, stop
from headwater.cli.status import consumer_lag
from headwater.producers.envelope import EnvelopeBuilder
from headwater.v1 import events_pb2

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(900)]  # > the waits' ceilings

PARTITIONS = 6
MEMBERS = 3
_AT_INFO = ("import sys; from headwater.cli import main; "
            "main(['--log-level', 'info', *sys.argv[1:]])")
_ASSIGNED = re.compile(r"headwater\.process: (assigned|revoked) partitions \[([\d, ]*)\]")


class Member:
    """One `headwater process` child with its own chDB directory; output drained."""

    def __init__(self, broker: Broker, topic: str, group: str, data: Path) -> None:
        self.data = data
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _AT_INFO, "process", "--dsn", f"chdb://{data}",
             "--kafka-bootstrap", broker.bootstrap, "--topic", topic, "--group", group,
             "--batch-size", "500", "--partitions", str(PARTITIONS)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = self.proc.stdout
        threading.Thread(target=lambda: self.lines.extend(out), daemon=True).start()

    def assignment(self) -> set[int]:
        """Partitions held now, by the last assign/revoke lines of the runner's log."""
        held: set[int] = set()
        for line in list(self.lines):
            m = _ASSIGNED.search(line)
            if m:
                parts = {int(p) for p in m.group(2).split(",") if p.strip()}
                held = held | parts if m.group(1) == "assigned" else held - parts
        return held


def _committed(broker: Broker, topic: str, group: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
    finally:
        consumer.close()


def _wait(what: str, check, members: list[Member], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in members:
            if m.proc.poll() is not None:
                pytest.fail(f"a processor exited ({m.proc.returncode}):\n"
                            + "".join(m.lines[-30:]))
        if check():
            return
        time.sleep(0.25)
    logs = "\n---\n".join("".join(m.lines[-15:]) for m in members)
    pytest.fail(f"{what} not reached after {timeout:.0f}s; assignments "
                f"{[sorted(m.assignment()) for m in members]}\n{logs}")


def _drained(broker: Broker, topic: str, group: str) -> bool:
    try:
        return sum(consumer_lag(broker.bootstrap, topic, group, {}).values()) == 0
    except Exception:  # the coordinator is busy rebalancing: ask again
        return False


def _publish(broker: Broker, topic: str, tag: str, count: int, runs: list[EnvelopeBuilder],
             rate: float | None = None) -> list[tuple[str, int]]:
    """`count` events round-robin over the runs (run r -> partition r % 6, so every chain
    stays in order in one partition); returns (event_id, partition) of each acked event."""
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                         "linger.ms": 5})
    acked: list[tuple[str, int]] = []
    failed: list[str] = []

    def done(err, msg) -> None:
        if err is not None:
            failed.append(str(err))

    started = time.monotonic()
    for i in range(count):
        r = i % len(runs)
        event = runs[r].wrap(events_pb2.SourceRegistered(
            source_id=f"src-{tag}-{i}", uri=f"s3://bucket/{tag}/{i}.parquet",
            content_sha256="0" * 64, row_count=i, format="parquet"))
        producer.produce(topic, value=event.SerializeToString(deterministic=True),
                         key=event.run_id.encode(), partition=r % PARTITIONS, on_delivery=done)
        acked.append((event.event_id, r % PARTITIONS))
        producer.poll(0)
        if rate is not None:
            ahead = (i + 1) / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    assert producer.flush(30) == 0 and not failed, failed[:3]
    return acked


def _stored(data: Path) -> list[dict]:
    """(event_id, partition, offset, copies) of every event in one member's store."""
    r = run_headwater("sql", "SELECT event_id, partition, offset, count() AS copies FROM events "
                      "FINAL GROUP BY event_id, partition, offset", "--dsn", f"chdb://{data}",
                      "--format", "json", timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def test_three_processors_balance_rebalance_and_store_every_event_once(
    broker: Broker, tmp_path: Path
) -> None:
    topic, group, tag = f"hw-scale-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}", "sc"
    broker.create_topic(topic, partitions=PARTITIONS)
    runs = [EnvelopeBuilder(f"run-{tag}-{r}") for r in range(2 * PARTITIONS)]
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    members = [Member(broker, topic, group, tmp_path / f"member-{i}") for i in range(MEMBERS)]
    try:
        # 1. balanced: every member holds 2 partitions, together all 6
        _wait("a balanced assignment", lambda: sorted(len(m.assignment()) for m in members)
              == [2, 2, 2] and set().union(*(m.assignment() for m in members))
              == set(range(PARTITIONS)), members, timeout=180)
        timings["balanced"] = time.monotonic() - t0
        before = [m.assignment() for m in members]
        wave_a = _publish(broker, topic, tag, 3000, runs)
        _wait("wave A committed", lambda: _drained(broker, topic, group), members, timeout=180)
        timings["wave_a"] = time.monotonic() - t0

        # 2. kill one member (SIGKILL: no clean leave) in the middle of wave B
        victim, survivors = members[0], members[1:]
        wave_b: list[tuple[str, int]] = []
        publisher = threading.Thread(target=lambda: wave_b.extend(
            _publish(broker, topic, tag, 3000, runs, rate=1500.0)))
        publisher.start()
        time.sleep(1.0)
        killed_at = time.monotonic()
        stop(victim.proc, signal.SIGKILL)
        committed_by_victim = {p: o for p, o in _committed(broker, topic, group).items()
                               if p in before[0]}
        publisher.join(60)
        _wait("the victim's partitions moved to the survivors",
              lambda: sorted(len(m.assignment()) for m in survivors) == [3, 3]
              and set().union(*(m.assignment() for m in survivors)) == set(range(PARTITIONS)),
              survivors, timeout=180)
        timings["rebalanced_after_kill"] = time.monotonic() - killed_at
        _wait("wave B committed", lambda: _drained(broker, topic, group), survivors,
              timeout=180)
        for m in survivors:
            stop(m.proc, timeout=30)
            assert m.proc.returncode == 0, "".join(m.lines[-30:])
    finally:
        for m in members:
            if m.proc.poll() is None:
                stop(m.proc, signal.SIGKILL)

    # 3. every event stored; each store holds an event once; across stores only the
    #    victim's stored-but-uncommitted events appear twice
    published = dict(wave_a + wave_b)
    stores = [_stored(m.data) for m in members]
    where: dict[str, list[int]] = {}
    for i, rows in enumerate(stores):
        assert all(int(r["copies"]) == 1 for r in rows), f"member {i} stored an event twice"
        assert {int(r["partition"]) for r in rows} <= before[i] | (
            set(range(PARTITIONS)) if i else set()), f"member {i} read a partition not its own"
        for r in rows:
            where.setdefault(r["event_id"], []).append(i)
    assert set(where) == set(published), (
        f"{len(set(published) - set(where))} event(s) lost, "
        f"{len(set(where) - set(published))} unknown")
    twice = {e for e, at in where.items() if len(at) > 1}
    victim_rows = {r["event_id"]: r for r in stores[0]}
    unexplained = [e for e in twice if len(where[e]) != 2 or 0 not in where[e]
                   or int(victim_rows[e]["offset"])
                   < committed_by_victim.get(int(victim_rows[e]["partition"]), -1)]
    assert not unexplained, f"{len(unexplained)} duplicate(s) not explained by the kill"
    wave_a_ids = {e for e, _ in wave_a}
    for i, rows in enumerate(stores):  # wave A: each member stored exactly its 2 partitions
        got = {int(r["partition"]) for r in rows if r["event_id"] in wave_a_ids}
        assert got == before[i], (i, got, before[i])
    print(f"\nscale-out: {len(published)} events, 3 members x 2 partitions, kill -> 2 x 3; "
          f"duplicates from the kill: {len(twice)}; per-member stored "
          f"{[len(s) for s in stores]}; timings (s) "
          f"{ {k: round(v, 1) for k, v in timings.items()} }")
