"""`headwater demo --fast` runs end to end and its outputs are real."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_headwater
from headwater.producers.sources import file_sha256


def test_demo_fast(tmp_path: Path) -> None:
    done = run_headwater("demo", "--fast", "--output", str(tmp_path), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads((tmp_path / "demo-summary.json").read_text())
    assert figures["log_ok"] and figures["dead_letters"] == 0
    by_type = figures["events_by_type"]
    assert by_type["source_registered"] == 2
    assert by_type["gradient_batch"] == figures["steps"] > 0
    assert by_type["prediction_recorded"] == 40
    assert figures["events_verified"] == sum(by_type.values())
    assert figures["test_accuracy"] > 0.85  # a trained model, not a constant
    b = tmp_path / "data" / "hospital_b.csv"
    assert figures["hospital_b_rows"] == len(b.read_text().splitlines()) - 1
    # the stored source hash is the real file's
    done = run_headwater("sql", "SELECT content_sha256 FROM sources FINAL WHERE uri LIKE "
                         "'%hospital_b.csv'", "--format", "csv", "--data-dir",
                         str(tmp_path / ".headwater"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == file_sha256(b)
