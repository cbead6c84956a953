"""Log output: level and format (text or JSON lines), one event per line, secrets redacted,
status lines never wrapped."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from headwater import logs

SECRETS = ("clickhouse dsn http://auditor:hunter2@ch:8123/db failed; "
           "kafka {'sasl.password': 's3cr3t', 'sasl.username': 'svc'} sasl.password=s3cr3t "
           "Authorization: Bearer tok-123.abc")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    yield out
    logs.configure()  # back to the default for the rest of the session


def test_json_lines_one_event_per_line_with_secrets_redacted(stream: io.StringIO) -> None:
    logs.configure("info", "json", stream)
    log = logging.getLogger("headwater.test")
    log.debug("not shown at info")
    log.warning("line one\nline two " + SECRETS)
    try:
        raise RuntimeError("boom with http://u:pw@host:1/x")
    except RuntimeError:
        log.exception("failed")
    logs.status("headwater serve: gRPC on 127.0.0.1:50051 " + "x" * 300)
    lines = stream.getvalue().splitlines()
    events = [json.loads(line) for line in lines]  # every line is one whole JSON object
    assert [e["level"] for e in events] == ["warning", "error", "info"]
    assert events[0]["message"].startswith("line one\nline two")
    assert events[0]["logger"] == "headwater.test" and events[0]["time"].endswith("Z")
    for secret in ("hunter2", "s3cr3t", "tok-123", ":pw@"):
        assert secret not in stream.getvalue()
    assert "auditor:***@ch:8123" in events[0]["message"] and "svc" in events[0]["message"]
    assert "RuntimeError" in events[1]["exception"]
    assert events[2]["logger"] == logs.STATUS_LOGGER and events[2]["message"].endswith("x" * 300)


def test_text_format_redacts_and_filters_by_level(stream: io.StringIO) -> None:
    logs.configure("error", "text", stream)
    logging.getLogger("headwater.test").warning("hidden")
    logging.getLogger("headwater.test").error(SECRETS)
    text = stream.getvalue()
    assert "hidden" not in text and "ERROR headwater.test: clickhouse dsn" in text
    assert "hunter2" not in text and "s3cr3t" not in text and "tok-123" not in text


def test_json_log_lines_carry_the_current_trace() -> None:
    script = """
import io, json, logging
from opentelemetry.sdk.trace import TracerProvider
from headwater import logs
out = io.StringIO(); logs.configure("info", "json", out)
with TracerProvider().get_tracer("t").start_as_current_span("s") as span:
    logging.getLogger("x").info("inside")
    ctx = span.get_span_context()
event = json.loads(out.getvalue())
assert event["trace_id"] == f"{ctx.trace_id:032x}" and event["span_id"] == f"{ctx.span_id:016x}"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("level, fmt, words", [("loud", "text", "log level 'loud'"),
                                              ("info", "xml", "log format 'xml'")])
def test_bad_choices_are_named(level: str, fmt: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        logs.configure(level, fmt)


def test_status_lines_are_never_wrapped() -> None:
    """A status line wider than the terminal stays one line (COLUMNS=40, stderr a file)."""
    script = ("from headwater import logs; logs.configure(); "
              "logs.status('headwater process: ' + 'y' * 200); "
              "from headwater.cli.common import console; "
              "console.print('headwater: 3 event(s) written to ' + 'z' * 200)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env={"COLUMNS": "40", "PATH": ""})
    assert done.stderr.splitlines() == ["headwater process: " + "y" * 200,
                                        "headwater: 3 event(s) written to " + "z" * 200]


def test_the_command_line_takes_level_and_format_from_flags_and_variables() -> None:
    done = subprocess.run([sys.executable, "-m", "headwater.cli", "--log-format", "json",
                           "sql", "--data-dir", "/nonexistent/x", "SELECT 1"],
                          capture_output=True, text=True, timeout=60,
                          env={"HEADWATER_LOG_LEVEL": "INFO", "PATH": ""})
    assert done.returncode == 2
    event = json.loads(done.stderr.strip().splitlines()[-1])
    assert event["level"] == "error" and "no Headwater store" in event["message"]
