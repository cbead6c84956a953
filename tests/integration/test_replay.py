"""`headwater replay`: the derived tables rebuilt from the event log equal the incremental
ones; a tampered derived table is named; --in-place repairs it."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from support.faults import workload

from conftest import REPO, Serve, run_headwater
from headwater.producers import GrpcTransport, Publisher

pytestmark = pytest.mark.timeout(120)


def _replay(*args: str) -> tuple[int, dict]:
    r = run_headwater("replay", *args, "--json", timeout=90)
    assert r.stdout.strip(), r.stderr
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1])


def _command(dsn: str, statement: str) -> None:
    code = ("import sys; from headwater.stream_processors.store import Store\n"
            "s = Store(sys.argv[1]); s.command(sys.argv[2]); s.close()")
    r = subprocess.run([sys.executable, "-c", code, dsn, statement], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_replay_equals_incremental_names_a_tampered_table_and_repairs_in_place(
    serve: Serve, tmp_path
) -> None:
    w = workload(uuid.uuid4().hex[:8], rows=64, batch=8)
    with Publisher(GrpcTransport(serve.target), run_id="replay-run") as pub:
        events = [pub.publish(p) for p in w.payloads]
    serve.stop()
    data = ("--data-dir", str(serve.data_dir))
    dsn = f"chdb://{serve.data_dir / 'clickhouse'}"

    code, report = _replay(*data)
    assert code == 0 and report["equal"], report
    assert report["stats"]["events"] == len(events)
    tables = {t["table"]: t for t in report["tables"]}
    assert tables["gradients"]["replayed"]["rows"] == w.train_rows
    assert tables["curvature_parts"]["replayed"]["rows"] == w.train_rows  # sketch rows
    assert tables["predictions"]["replayed"]["rows"] == len(w.prediction_ids)

    # Only this run's rows, into the same (now filled) target database: --replace empties it.
    code, report = _replay(*data, "--run", "replay-run", "--replace")
    assert code == 0 and report["equal"] and report["run_id"] == "replay-run", report

    _command(dsn, "INSERT INTO model_versions (model_id, version) VALUES ('forged', 'v9')")
    code, report = _replay(*data, "--in-place")  # rebuilt; the report names what changed
    bad = [t for t in report["tables"] if not t["equal"]]
    assert code == 1 and [t["table"] for t in bad] == ["model_versions"], report
    assert bad[0]["detail"].startswith("2 rows incremental, 1 replayed")
    code, report = _replay(*data, "--replace")
    assert code == 0 and report["equal"], report


def test_replay_refuses_two_chdb_directories(tmp_path) -> None:
    r = run_headwater("replay", "--data-dir", str(tmp_path / "a"), "--into", str(tmp_path / "b"))
    assert r.returncode == 2
    assert "one data directory per process" in r.stderr, r.stderr
