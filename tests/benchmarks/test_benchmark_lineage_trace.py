"""Fast version of benchmarks/lineage_trace.py: it runs, and the summarised answer is the
row's own source row plus the two aggregates (mean, std), while the expanded one lists the
whole source per key."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_lineage_trace_benchmark_fast() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "lineage_trace.py"), "--rows", "300",
         "--keys", "300", "--expand-keys", "5", "--repeats", "1", "--json"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    summary, expanded = figures["summarised"], figures["expanded"]
    assert summary["keys"] == 300 and summary["direct_rows_per_key"] == 1
    assert sorted(a.split(" via ")[1] for a in summary["aggregates"]) == ["numpy.mean", "numpy.std"]
    assert all(a.startswith("all 300 rows of ") for a in summary["aggregates"])
    assert expanded["rows_per_key"] == 300
    # five expanded keys already outweigh three hundred summarised ones
    assert expanded["reply_bytes"] > summary["reply_bytes"] / 3
