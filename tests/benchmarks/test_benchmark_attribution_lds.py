"""Small run of benchmarks/attribution_lds.py (20 subsets, 10 test points, 4 digits epochs),
every score through `headwater serve`'s AttributeAll: a broken method (random or
sign-flipped scores, a wrong default) gives an LDS about 0 or below and fails here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.timeout(1500)  # a serve, four traced trainings and ~200 AttributeAll calls
def test_lds_benchmark_fast() -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "attribution_lds.py"),
                           "--subsets", "20", "--tests", "10", "--no-trak", "--epochs", "4",
                           "--json"], capture_output=True, text=True, timeout=1400)
    assert done.returncode == 0, done.stderr[-4000:]
    figures = json.loads(done.stdout)

    bc = figures["breast_cancer"]["methods"]
    exact = bc["exact influence (closed form, local)"]["lds"]
    recorded = bc["default (L2 recorded)"]
    assert recorded["method"] == "influence" and recorded["damping"] == 1.0
    assert recorded["lds"] >= 0.85 and abs(recorded["lds"] - exact) <= 0.02, bc
    assert bc["default (no L2 recorded: spectrum rule)"]["lds"] >= 0.85, bc

    digits = figures["digits"]
    assert digits["test_accuracy"] > 0.85  # the traced run really trained
    m = digits["methods"]
    for v in (1, 5, 10):
        assert m[f"default, {v} versions"]["method"] == "influence"
        assert m[f"default, {v} versions"]["lds"] >= 0.15, (v, m)
        assert m[f"tracin, {v} versions"]["lds"] >= 0.15, (v, m)

    for learner in ("linear", "mlp"):
        stream = figures[f"stream_{learner}"]
        assert stream["test_accuracy"] >= 0.9, stream  # a learner worth explaining
        m = stream["methods"]
        assert m["default (final)"]["method"] == "tracin", m  # a one-pass learner
        assert m["default (final)"]["lds"] >= m["tracin (final test gradient)"]["lds"] - 1e-9
        assert m["default (final)"]["lds"] >= 0.1, m
