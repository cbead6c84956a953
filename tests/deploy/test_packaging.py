"""The wheel carries every subpackage: pyproject lists packages by name, so a new folder
with an __init__.py that is not listed would import in the editable checkout and be
missing from an installed wheel."""

from __future__ import annotations

from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_in_the_wheel() -> None:
    conf = _setuptools()
    listed = set(conf["packages"])
    found = set()
    for name, folder in conf["package-dir"].items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            if "__pycache__" in rel.parts:
                continue
            # a folder under a mapped root belongs to the longest mapping that holds it
            dotted = ".".join((name, *rel.parts)) if rel.parts else name
            owner = max((n for n, f in conf["package-dir"].items()
                         if (REPO / f) == init.parent or (REPO / f) in init.parent.parents),
                        key=lambda n: len(conf["package-dir"][n]))
            if owner == name:
                found.add(dotted)
    missing = sorted(found - listed)
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {missing}"

