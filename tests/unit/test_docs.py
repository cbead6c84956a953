"""The docs name what the code has: every setting is in docs/configuration.md."""

from __future__ import annotations

from conftest import REPO
from headwater.query_service.settings import Settings


def test_every_setting_is_documented() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    missing = [f"HEADWATER_{name.upper()}" for name in Settings.model_fields
               if f"`HEADWATER_{name.upper()}`" not in doc]
    assert not missing, f"settings missing from docs/configuration.md: {missing}"
