"""benchmarks/event_hash.py: a short run times every case and every event verifies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_short_run_reports_every_case() -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "event_hash.py"),
                           "--repeat", "2", "--number", "200"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])["results"]
    assert [r["event"] for r in results] == ["source", "source_3_labels",
                                            "gradient_batch_64x512_f16"]
    for r in results:
        assert r["verified"] is True
        assert r["upb_hash_us"] > 0 and r["canonical_hash_us"] > 0 and r["ratio"] > 0
