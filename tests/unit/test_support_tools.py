"""A program a test needs and cannot find fails the test naming it; only an explicit
HEADWATER_TEST_WITHOUT turns that into a skip (issue 25: no silent skips)."""

from __future__ import annotations

import pytest
from support import tools


def test_a_missing_program_fails_naming_it_and_the_opt_out(monkeypatch) -> None:
    monkeypatch.delenv(tools.OPT_OUT, raising=False)
    with pytest.raises(pytest.fail.Exception, match="no-such-tool is not installed: by hand.*"
                       "HEADWATER_TEST_WITHOUT=no-such-tool"):
        tools.require("no-such-tool", how="by hand")


def test_the_opt_out_skips_only_the_programs_it_names(monkeypatch) -> None:
    monkeypatch.setenv(tools.OPT_OUT, "kubectl, no-such-tool")
    with pytest.raises(pytest.skip.Exception, match="no-such-tool is not installed"):
        tools.require("no-such-tool", how="by hand")
    monkeypatch.setenv(tools.OPT_OUT, "kubectl")
    with pytest.raises(pytest.fail.Exception):
        tools.require("no-such-tool", how="by hand")


def test_a_present_program_is_found_by_any_of_its_names() -> None:
    assert tools.require("shell", "no-such-shell", "sh", how="-").endswith("/sh")
