"""Log output for every `headwater` command: the level, plain text or JSON lines (one event
per line, never wrapped), and secrets redacted from every message.

`configure` is called once by the CLI (HEADWATER_LOG_LEVEL / --log-level,
HEADWATER_LOG_FORMAT / --log-format); status lines of the long-running commands go through
`status`, so in JSON they are events too.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("text", "json")
STATUS_LOGGER = "headwater.status"

_REDACTED = "***"
_json = False  # status lines as JSON events (configure sets it)
# What a secret looks like inside free text: a URL's password (DSNs, broker and collector
# URLs), a bearer token, and key=value / "key": "value" pairs whose key ends in a secret's
# name (as headwater.query_service.redaction hides Kafka settings).
_SECRETS = (
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+(@)", re.I), rf"\1{_REDACTED}\2"),
    (re.compile(r"(\bbearer\s+)[A-Za-z0-9._~+/=-]+", re.I), rf"\1{_REDACTED}"),
    (re.compile(r"""(\b[\w.-]*(?:password|secret|token|jaas\.config|credentials?)"""
                r"""(?:=|['"]\s*:\s*))('[^']*'|"[^"]*"|[^\s,;}'"]+)""", re.I), rf"\1{_REDACTED}"),
)


def redact(text: str) -> str:
    """`text` with passwords in URLs, bearer tokens and secret key=value pairs replaced."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class JsonLines(logging.Formatter):
    """One JSON object per record on one line: time (UTC, RFC 3339), level, logger, message,
    the exception if any, and the current OpenTelemetry trace and span ids when a span is
    recording (so a log line joins its trace)."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            event["exception"] = redact(self.formatException(record.exc_info))
        event.update(_trace_ids())
        return json.dumps(event, ensure_ascii=False, default=str)


class RedactedText(logging.Formatter):
    """The plain-text format with secrets redacted (tracebacks keep their lines)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _trace_ids() -> dict[str, str]:
    trace = sys.modules.get("opentelemetry.trace")  # never import it just to log
    if trace is None:
        return {}
    context = trace.get_current_span().get_span_context()  # type: ignore[attr-defined]
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def configure(level: str = "warning", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Route every log record to `stream` (stderr) at `level` in `fmt`; status lines always
    show (INFO on their own logger). Replaces earlier handlers: calling it again reconfigures."""
    if level.lower() not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    if fmt.lower() not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLines() if fmt.lower() == "json" else
                         RedactedText("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    global _json
    _json = fmt.lower() == "json"
    logging.getLogger(STATUS_LOGGER).setLevel(logging.INFO)


def error(message: str) -> None:
    """The one line a failed command ends with: a JSON event (logger `headwater`) in the
    JSON format, else `headwater: error: MESSAGE` on stderr."""
    if _json:
        logging.getLogger("headwater").error(message)
    else:
        print(f"headwater: error: {redact(message)}", file=sys.stderr, flush=True)


def status(message: str) -> None:
    """A long-running command's status line: a JSON event in the JSON format, else printed
    on stderr as one line however wide (never wrapped to the terminal)."""
    if _json:
        logging.getLogger(STATUS_LOGGER).info(message)
    else:
        print(redact(message), file=sys.stderr, flush=True)
