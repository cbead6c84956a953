"""Fast version of benchmarks/lineage_overhead.py: it runs and its figures are sane."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_lineage_benchmark_fast() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "lineage_overhead.py"), "--keys", "500",
         "--ops", "8", "--rows", "2000", "--volume-rows", "100000", "--aggregates",
         "--sizes", "1000", "--repeats", "3", "--json"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    # the overhead is of real tracking: every op of the 10-op chain recorded, on every run
    # (a ratio alone cannot tell: an implementation that tracks nothing measures ~1x)
    assert figures["overhead"]["1000"]["ops_recorded_per_run"] >= 10
    assert figures["overhead"]["1000"]["headwater_ratio"] > 0
    assert figures["resolution"]["keys"] == 500
    # rows that passed the broadcast mean depend on every row it averaged (thousands);
    # rows concatenated after it depend on one source row
    low, high = figures["resolution"]["source_rows_per_key"]
    assert low == 1 and high > 1000
    volume = figures["event_volume"]
    assert volume["slice x[::3]"]["bytes"] < 100 and volume["reverse x[::-1]"]["bytes"] < 100
    assert volume["sorted 50% subset"]["bytes_per_row"] < 2
