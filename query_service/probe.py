"""Readiness / liveness probe of a `headwater process` pod (it serves no port): exit 0 when
the pod's Kafka and ClickHouse answer, 1 with one line per unreachable dependency.

Run as `python -m headwater.query_service.probe`; settings come from the same HEADWATER_*
variables as the processor, so the probe checks exactly what the processor uses.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from headwater.query_service.settings import Settings
from headwater.stream_processors.dsn import parse_dsn
from headwater.stream_processors.errors import HeadwaterError


def clickhouse_ping_url(dsn: str) -> str | None:
    """The server's /ping URL for an http(s) DSN; None for embedded chDB (nothing to ask)."""
    parsed = parse_dsn(dsn)
    if parsed.embedded:
        return None
    parts = urlsplit(parsed.raw)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/ping"


def problems(settings: Settings, timeout: float = 4.0) -> list[str]:
    """What this pod cannot reach, one line each (empty: ready)."""
    from headwater.stream_processors.kafka_runner import check_reachable

    found = []
    if not settings.kafka_bootstrap:
        found.append("no Kafka configured: set HEADWATER_KAFKA_BOOTSTRAP")
    else:
        try:
            check_reachable(settings.kafka_bootstrap, settings.kafka_config, timeout=timeout)
        except HeadwaterError as exc:
            found.append(str(exc))
    url = clickhouse_ping_url(settings.resolved_dsn)
    if url is not None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310
                body = reply.read(64)
            if body.strip() != b"Ok.":
                found.append(f"ClickHouse at {url} answered {body[:32]!r}, not Ok.")
        except (urllib.error.URLError, OSError) as exc:
            found.append(f"cannot reach ClickHouse at {url}: {exc}")
    return found


def main() -> int:
    found = problems(Settings())
    for line in found:
        print(f"headwater probe: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
