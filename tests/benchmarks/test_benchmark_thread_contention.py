"""benchmarks/thread_contention.py runs end to end and reports every neighbour (no timing
asserts: the machine's load decides those)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "thread_contention.py"


def test_every_neighbour_is_measured() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--steps", "5", "--repeats", "1",
                           "--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    rows = {r["neighbour"]: r for r in result["rows"]}
    assert set(rows) == {"alone", "python thread", "torch thread", "sha256 thread",
                         "busy process"}
    assert rows["alone"]["cpu_ratio"] == 1.0
    assert all(r["cpu_ms"] > 0 and r["wall_ms"] > 0 for r in rows.values())


def test_bad_arguments_are_refused() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--steps", "0"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--steps and --repeats must be >= 1" in done.stderr
