"""Shared pieces of the fault tests: a small mixed workload, and the recovery checker.

After a fault, `assert_recovered` checks a store against the events the producer was told
were delivered: each stored exactly once, every producer's hash chain intact, and a replay
of the log into a fresh database giving derived tables (curvature sketches included) equal
to the incremental ones. chDB opens one data directory per process, so the checks run in a
child process (`python tests/support/faults.py DSN IDS_FILE`) over the stopped service's directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf.message import Message

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Workload:
    """Payloads of a tracked pipeline and a linear model: sources, ops, a model version,
    gradient batches (so curvature parts) and predictions, in the order a trainer emits."""

    payloads: list[Message] = field(default_factory=list)
    prediction_ids: list[str] = field(default_factory=list)
    train_node: str = ""
    train_rows: int = 0


def workload(tag: str, rows: int = 96, batch: int = 8, k: int = 16) -> Workload:
    from headwater.producers.capture import LinearCapture
    from headwater.producers.tracking import Tracker, row_keys
    from headwater.v1 import events_pb2

    w = Workload()
    rng = np.random.default_rng(zlib.crc32(tag.encode()))
    tracker = Tracker(w.payloads.append)
    source = events_pb2.SourceRegistered(
        source_id=f"src-{tag}", uri=f"file:///data/{tag}.csv", content_sha256=f"{rows:064x}",
        row_count=rows, format="csv",
        schema=[events_pb2.Column(name=f"x{i}", dtype="float64") for i in range(4)])
    w.payloads.append(source)
    x = tracker.array(rng.normal(size=(rows, 4)), source=source)
    x = (x - x.mean(0)) / x.std(0)
    y = (rng.random(rows) > 0.5).astype(float)
    capture = LinearCapture(w.payloads.append, f"model-{tag}", 4, k=k)
    capture.set_parameters(rng.normal(size=4), 0.1)
    capture.record_version(step=0)
    for step, start in enumerate(range(0, rows, batch)):
        part = x[start:start + batch]
        capture.capture(np.asarray(part), y[start:start + batch], row_keys(part),
                        learning_rate=0.1, step=step)
    for i in range(3):
        w.prediction_ids.append(f"pred-{tag}-{i}")
        capture.record_prediction(np.asarray(x[i]), label=int(y[i]),
                                  prediction_id=w.prediction_ids[-1])
    w.train_node = row_keys(x).node_ids[0]
    w.train_rows = rows
    return w


# -- the checker ------------------------------------------------------------------------------


def check_store(store, delivered: list[str]) -> list[str]:
    """Problems (empty: recovered) of `store` given the ids of delivered events.

    Exactly once is counted two ways. FINAL merges rows of equal key at read time, so
    `count() FROM events FINAL` per event id must be exactly 1: a redelivered event
    collapsed onto its key, and no second row claims the id under another key. Without
    FINAL, unmerged copies of a redelivered event may still be separate rows until a
    background merge — harmless, but they must be byte-identical copies of one event
    (one distinct (run, producer, seq, raw)), and there must be at least one.
    """
    from headwater.query_service.compliance.log_reader import verify_stored_log
    from headwater.stream_processors import replay as rp
    from headwater.stream_processors.store import Store

    problems: list[str] = []
    final = dict(store.query("SELECT event_id, count() FROM events FINAL "
                             "WHERE event_id IN {ids:Array(String)} GROUP BY event_id",
                             {"ids": delivered}))
    raw = {e: (n, k) for e, n, k in store.query(
        "SELECT event_id, count(), uniqExact(run_id, producer_id, seq, cityHash64(raw)) "
        "FROM events WHERE event_id IN {ids:Array(String)} GROUP BY event_id",
        {"ids": delivered})}
    missing = [e for e in delivered if e not in final]
    doubled = {e: n for e, n in final.items() if n != 1}
    variants = {e: k for e, (_, k) in raw.items() if k != 1}
    if missing:
        problems.append(f"{len(missing)} delivered event(s) not stored: {missing[:5]}")
    if doubled:
        problems.append(f"{len(doubled)} event(s) stored more than once (FINAL): "
                        f"{list(doubled.items())[:5]}")
    if variants:
        problems.append(f"{len(variants)} event id(s) stored with different keys/bytes: "
                        f"{list(variants.items())[:5]}")
    report = verify_stored_log(store, recompute_hashes=True)
    if not report.ok:
        problems += [f"log: {p.kind} {p.producer_id} seq {p.seq}: {p.detail}"
                     for p in report.problems[:10]]
    target = Store(store.dsn.raw, f"{store.database}_check", lock=False)
    try:
        target.command(f"DROP DATABASE IF EXISTS {target.database}")
        target.command(f"CREATE DATABASE {target.database}")
        target.migrate()
        stats = rp.replay(store, target)
        if stats.rejected:
            problems.append(f"replay rejected {stats.rejected} stored event(s): {stats.errors}")
        for t in rp.compare(rp.digests(store), rp.digests(target)):
            if not t.equal:
                problems.append(f"replay: {t.table} differs: {t.detail or t}")
        if not stats.events or not rp.derived_rows(target)["curvature_parts"]:
            problems.append(f"replay rebuilt nothing to compare ({stats.events} events)")
    finally:
        target.command(f"DROP DATABASE IF EXISTS {target.database}")
        target.close()
    return problems


def assert_recovered(dsn: str, delivered: list[str], timeout: float = 90) -> dict:
    """Run check_store over `dsn` in a child process; fail with its problems."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(delivered, f)
    try:
        r = subprocess.run([sys.executable, str(Path(__file__)), dsn, f.name], cwd=REPO,
                           capture_output=True, text=True, timeout=timeout)
    finally:
        Path(f.name).unlink()
    assert r.returncode == 0, f"checker failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert not result["problems"], "after the fault:\n  " + "\n  ".join(result["problems"])
    return result


def _main(dsn: str, ids_file: str) -> None:
    from headwater.stream_processors.store import Store

    delivered = json.loads(Path(ids_file).read_text())
    store = Store(dsn)
    try:
        store.migrate()
        problems = check_store(store, delivered)
        stored = store.query("SELECT count() FROM events FINAL")[0][0]
    finally:
        store.close()
    print(json.dumps({"problems": problems, "stored": int(stored),
                      "delivered": len(delivered)}))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
