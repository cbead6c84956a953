"""docs/sources.md "Ops and their precision" is the op registry's table (registry.ops_markdown):
every registered NumPy and torch function with its precision class. Rewrite the table
with `HEADWATER_WRITE_DOCS=1 pytest tests/unit/test_ops_doc.py`."""

from __future__ import annotations

import os

import pytest

from conftest import REPO
from headwater.producers.tracking import registry
from headwater.producers.tracking.array import UNTRACKED

torch = pytest.importorskip("torch")
from headwater.producers.tracking.torch import tensor as torch_core  # noqa: E402

BEGIN = "<!-- ops table: generated, do not edit by hand -->\n"
END = "<!-- ops table end -->"
DOC = REPO / "docs" / "sources.md"


def _not_recorded(framework: str, rule: object) -> bool:
    return rule is UNTRACKED or rule in (torch_core.PASS, torch_core.UNTRACKED)


def test_sources_doc_lists_every_registered_op_with_its_precision() -> None:
    table = registry.ops_markdown(_not_recorded)
    text = DOC.read_text()
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    wanted = head + BEGIN + table + END + tail
    if os.environ.get("HEADWATER_WRITE_DOCS") == "1":
        DOC.write_text(wanted)
    assert text == wanted, ("docs/sources.md's op table is stale: rewrite it with "
                            "HEADWATER_WRITE_DOCS=1 pytest tests/unit/test_ops_doc.py")
    names = {registry.NAMES[fw][f] for fw in ("numpy", "torch") for f in registry.RULES[fw]}
    for name in names:  # each op one row, with a class of the vocabulary
        (line,) = [row for row in table.splitlines() if row.startswith(f"| `{name}` |")]
        assert line.split(" | ")[1] in registry.CLASSES
    assert "| `numpy.tile` | exact |" in table and "| `numpy.mean` | aggregate |" in table
    assert "| `numpy.cumsum` | not understood |" in table
    assert "| `numpy.zeros_like` | not recorded |" in table


def test_a_precision_outside_the_vocabulary_is_refused() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        registry.rule("numpy", "tile", precision="mostly")
