"""benchmarks/soak.py --fast: figures over time, and every published event stored once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "soak.py"


def test_fast_soak_reports_figures_and_stores_every_event_once() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--fast", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["error"] is None
    assert report["settings"]["seconds"] == 10 and report["settings"]["producers"] == 3
    # every published event stored exactly once: count = distinct seqs = last seq
    assert report["exactly_once"] and report["dead_letters"] == 0
    assert len(report["producers"]) == 3
    for p in report["producers"]:
        assert p["published"] > 1
        assert p["stored"] == p["distinct_seqs"] == p["last_seq"] == p["published"]
        assert p["first_seq"] == 1
    assert report["events_stored"] == report["events_published"] > 0
    assert report["events_per_s"] > 0
    # figures over time
    samples = report["samples"]
    assert len(samples) >= 3
    assert [s["t"] for s in samples] == sorted(s["t"] for s in samples)
    assert samples[-1]["stored"] == report["events_stored"]
    assert all(s["serve_rss_mb"] and s["serve_rss_mb"] > 50 for s in samples)
    assert any(s["producers_rss_mb"] for s in samples)
    assert report["queries"] > 0 and not report["query_errors"]
    assert 0 < report["p50_ms"] <= report["p99_ms"]
    for m in (report["memory"], report["producers_memory"]):
        assert m["verdict"] in ("bounded", "growing")
        assert m["rss_start_mb"] > 0 and m["rss_peak_mb"] >= m["rss_end_mb"] > 0
