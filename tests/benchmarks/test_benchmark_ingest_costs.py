"""benchmarks/ingest_costs.py: a short run reports every case with positive figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_short_run_reports_every_case() -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ingest_costs.py"),
                           "--rounds", "1", "--events", "1200", "--batches", "300,1200",
                           "--part-reps", "2", "--insert-reps", "2", "--trainer-batch", "20",
                           "--stage-events", "300", "--stage-reps", "1", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(report["part_ms"][0]) == {"memory_table", "two_columns", "event_receipts",
                                         "curvature_parts", "gradients", "events"}
    assert all(wall > 0 and cpu > 0 for wall, cpu in report["part_ms"][0].values())
    assert len(report["insert_rows_per_s"][0]) == 3
    assert all(rows_per_s > 0 and cpu_us > 0
               for rows_per_s, cpu_us in report["insert_rows_per_s"][0].values())
    assert set(report["trainer_insert_cpu_us"][0]) == {
        "ZSTD(1), merge", "ZSTD(1), no merge", "LZ4, merge", "LZ4, no merge"}
    assert all(v > 0 for v in report["trainer_insert_cpu_us"][0].values())
    assert set(report["trainer_tables_cpu_us"][0]) == {
        "gradients, wide", "gradients, compact", "events, wide", "events, compact",
        "events + gradients, wide", "events + gradients, compact", "events without φ, compact"}
    assert all(v > 0 for v in report["trainer_tables_cpu_us"][0].values())
    assert [s["batch"] for s in report["sink"]] == [300, 1200]
    assert [s["overlap"] for s in report["overlap"]] == [True, False]
    assert all(s["events_per_s"] > 0 and s["cpu_us"] > 0
               for s in report["sink"] + report["overlap"])
    assert report["sketch_us_per_trainer_event"][0] > 0
    stages = report["python_stages_us"][0]
    assert set(stages) == {"collector running", "collector paused"}
    assert all(set(v) == {"decode and validate", "rows", "sketch sum",
                          "screen, receipts, acks"} and all(x > 0 for x in v.values())
               for v in stages.values())
