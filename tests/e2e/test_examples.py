"""The runnable scripts in examples/: each answers --help and does what it says on real
components (an embedded store, the Tansu broker with `headwater process`, the audit views)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from conftest import REPO, Broker, headwater, run_headwater, stop
from headwater.cli.status import consumer_lag
from headwater.query_service.server.app import build_server
from headwater.stream_processors.store import Store
from headwater.v1 import query_pb2, query_pb2_grpc

EXAMPLES = REPO / "examples"


def _run(script: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("script", ["numpy_pipeline.py", "torch_kafka_trainer.py",
                                    "auditor_sql.py"])
def test_help(script):
    done = _run(script, "--help", timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")


def test_numpy_pipeline_traces_a_training_row_to_its_file_row(tmp_path):
    done = _run("numpy_pipeline.py", "--data-dir", str(tmp_path), "--row", "3")
    assert done.returncode == 0, done.stderr
    # the script's split: seeded permutation, the first 25% are the test rows
    import numpy as np

    perm = np.random.default_rng(0).permutation(200)
    expected = int(perm[50 + 3])
    assert f"measurements.csv row(s) [{expected}]" in done.stdout
    assert "headwater.split" in done.stdout and "numpy.std" in done.stdout
    accuracy = float(done.stdout.split("training accuracy ")[1].split()[0])
    assert accuracy > 0.8


def _sql(data_dir: Path, query: str) -> list[dict]:
    done = run_headwater("sql", query, "--dsn", f"chdb://{data_dir}", "--format", "json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


@pytest.mark.timeout(300)
def test_torch_kafka_trainer_reaches_the_store_through_process(broker: Broker, tmp_path):
    topic = f"hw-example-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic)
    done = _run("torch_kafka_trainer.py", "--bootstrap", broker.bootstrap, "--topic", topic,
                "--epochs", "2", "--rows", "96")
    assert done.returncode == 0, done.stderr
    assert "published 6 gradient batches, 3 model versions" in done.stdout
    data = tmp_path / "clickhouse"
    proc = headwater("process", "--dsn", f"chdb://{data}", "--kafka-bootstrap",
                     broker.bootstrap, "--topic", topic, "--group", f"g-{topic}",
                     "--partitions", "1")
    lines: list[str] = []
    out = proc.stdout
    threading.Thread(target=lambda: lines.extend(out), daemon=True).start()
    try:  # until the group has committed everything on the topic (lag 0)
        deadline, lag = time.monotonic() + 90, None
        while time.monotonic() < deadline:
            assert proc.poll() is None, "".join(lines)
            try:
                lag = consumer_lag(broker.bootstrap, topic, f"g-{topic}", {})
            except Exception as exc:  # group not there yet
                lag = repr(exc)
            if isinstance(lag, dict) and lag and sum(lag.values()) == 0:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"lag {lag} after 90 s:\n{''.join(lines)}")
    finally:
        stop(proc, timeout=30)
    assert proc.returncode == 0, "".join(lines)
    by_type = {r["payload_type"]: int(r["n"]) for r in _sql(
        data, "SELECT payload_type, count() AS n FROM events FINAL "
              "WHERE run_id = 'torch-kafka-example' GROUP BY payload_type")}
    # 6 training steps and 2 featurisation batches (96 rows at the final version, 64 a batch)
    assert by_type.get("gradient_batch") == 8 and by_type.get("model_version_recorded") == 3
    assert by_type.get("prediction_recorded") == 1 and by_type.get("source_registered") == 2
    rows = _sql(data, "SELECT count() AS n FROM gradients FINAL WHERE model_id = "
                      "'torch-example' AND kind = 'TRAINING_STEP'")
    assert int(rows[0]["n"]) == 2 * 96
    # the default method explains the example's own prediction (it needs rows at the
    # prediction's version: the example featurises at its final version)
    with Store(f"chdb://{data}") as store:
        server, port = build_server(store, "127.0.0.1:0")
        server.start()
        try:
            stub = query_pb2_grpc.AttributionStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
            answer = stub.Attribute(query_pb2.AttributeRequest(
                prediction_id="torch-example-p0", top_k=5), timeout=120)
        finally:
            server.stop(grace=2).wait()
    assert answer.method.startswith("influence"), answer.method
    assert answer.model_version == "v3", answer.model_version  # the version that predicted
    assert len(answer.helpful) == 5 and all(r.score > 0 for r in answer.helpful)


def test_auditor_sql_session(tmp_path):
    data_dir = tmp_path / "store"
    filled = subprocess.run([sys.executable, str(REPO / "tests/support/audit_pipeline.py"),
                             str(data_dir)], cwd=REPO, capture_output=True, text=True,
                            timeout=180)
    assert filled.returncode == 0, filled.stderr
    done = _run("auditor_sql.py", "--data-dir", str(data_dir), "--model", "clf", "--json")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    by_query: dict[str, list[dict]] = {}
    for r in rows:
        by_query.setdefault(r.pop("query").split(" ")[0], []).append(r)
    uris = {Path(r["uri"]).name for r in by_query["sources"]}
    assert uris == {f"{run}_clinic_{c}.csv" for run in ("clean-run", "tampered-run")
                    for c in "ab"}
    erasures = {r["request_id"]: r for r in by_query["erasures:"]}
    assert set(erasures) == {"clean-run-forget-1", "tampered-run-forget-1"}
    assert erasures["clean-run-forget-1"]["reason"] == "clinic B withdrew"
    assert erasures["clean-run-forget-1"]["rows_forgotten"] == 15
    coverage = {r["run_id"]: r for r in by_query["log"]}
    assert coverage["tampered-run"]["missing_seqs"] == 1  # the deleted event shows
    assert coverage["clean-run"]["missing_seqs"] == 0
    table = _run("auditor_sql.py", "--data-dir", str(data_dir), "--model", "clf")
    assert table.returncode == 0 and "log coverage per producer" in table.stdout
    missing = _run("auditor_sql.py", "--data-dir", str(tmp_path / "nothing"), "--model", "x")
    assert missing.returncode != 0 and "no store in" in missing.stderr
