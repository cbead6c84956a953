"""A bad setting is named the way the user set it: the HEADWATER_* variable, or the flag."""

from __future__ import annotations

import subprocess
import sys

import pytest

from headwater.cli.common import load_settings
from headwater.errors import ConfigError


@pytest.mark.parametrize("variable, value, words", [
    ("HEADWATER_BATCH_SIZE", "abc", "valid integer"),
    ("HEADWATER_BATCH_SIZE", "0", "greater than 0"),
    ("HEADWATER_KAFKA_CONFIG", "{not json", "not a JSON object"),
    ("HEADWATER_LISTEN", "nowhere", "must be HOST:PORT"),
])
def test_the_variable_set_is_named(monkeypatch: pytest.MonkeyPatch, variable: str, value: str,
                                   words: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value).startswith(f"{variable} (setting {variable[10:].lower()}): ")
    assert words in str(err.value)


def test_a_flag_is_named_as_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADWATER_BATCH_SIZE", raising=False)
    with pytest.raises(ConfigError, match=r"^setting batch_size \(its command-line flag\)"):
        load_settings(batch_size=0)


def test_the_command_line_says_it_in_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "headwater.cli", "process"],
                          env={"HEADWATER_BATCH_SIZE": "lots", "PATH": ""},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == ("headwater: error: HEADWATER_BATCH_SIZE (setting batch_size): "
                                   "Input should be a valid integer, unable to parse string as "
                                   "an integer")
