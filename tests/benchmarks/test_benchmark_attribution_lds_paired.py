"""benchmarks/attribution_lds.py with two captures in one session (issue 16: factored vs
dense on the same subsets and test points): the paired figures are the per-cell
differences of the two captures' own LDS, with a bootstrap standard error."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from attribution_lds import paired_difference, parse_factor_shapes  # noqa: E402


def test_paired_difference_and_shapes() -> None:
    a = np.array([0.5, 0.6, 0.7, 0.4])
    diff, se = paired_difference(a, a - 0.02)
    assert diff == pytest.approx(0.02) and se == pytest.approx(0.0, abs=1e-12)
    diff, se = paired_difference(a, a[::-1])
    assert diff == pytest.approx(0.0, abs=1e-12) and 0.02 < se < 0.2
    assert parse_factor_shapes("0=23x11, 2=10x25") == {"0": (23, 11), "2": (10, 25)}
    assert parse_factor_shapes("") == {}
    with pytest.raises(ValueError, match="LAYER=ROWSxCOLS"):
        parse_factor_shapes("0=23")


@pytest.mark.timeout(900)
def test_two_captures_paired() -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "attribution_lds.py"),
                           "--tasks", "digits", "--no-trak", "--subsets", "12", "--tests",
                           "6", "--epochs", "2", "--capture", "factored,dense",
                           "--factor-shapes", "0=20x12", "--json"],
                          capture_output=True, text=True, timeout=850)
    assert done.returncode == 0, done.stderr[-4000:]
    digits = json.loads(done.stdout)["digits"]
    assert digits["captures"] == ["factored[0=20x12]", "dense"]
    m, paired = digits["methods"], digits["paired"]
    assert len(paired) == 9
    for v in (1, 5, 10):
        for cell in ("default", "tracin"):
            name = f"{cell}, {v} versions"
            got = paired[f"factored[0=20x12] - dense: {name}"]
            want = m[f"factored[0=20x12]: {name}"]["lds"] - m[f"dense: {name}"]["lds"]
            assert got["difference"] == pytest.approx(want, abs=1e-9)
            assert 0 <= got["standard_error"] < 0.5
            assert m[f"dense: {name}"]["lds"] > 0.05  # the traced runs really trained
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "attribution_lds.py"),
                          "--capture", "factored,fast"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "'fast'" in bad.stderr
