"""Parsing of ClickHouse DSNs: `chdb://DIR` (embedded, default) or `http(s)://host:port`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from headwater.stream_processors.errors import ConfigError


@dataclass(frozen=True)
class Dsn:
    raw: str
    scheme: str  # "chdb", "http" or "https"
    path: Path | None  # chDB data directory

    @property
    def embedded(self) -> bool:
        return self.scheme == "chdb"

    @property
    def redacted(self) -> str:
        """The DSN with any password replaced, for messages and logs."""
        parts = urlsplit(self.raw)
        if parts.password is None:
            return self.raw
        netloc = f"{parts.username}:***@{parts.hostname}" + (
            f":{parts.port}" if parts.port else ""
        )
        return urlunsplit(parts._replace(netloc=netloc))


def parse_dsn(raw: str) -> Dsn:
    """Validate a DSN; raise ConfigError naming what is wrong."""
    if not raw:
        raise ConfigError("empty ClickHouse DSN; use chdb://DIR or http(s)://host:8123")
    scheme, sep, rest = raw.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ConfigError(f"DSN {raw!r} has no scheme; use chdb://DIR or http(s)://host:8123")
    if scheme == "chdb":
        if not rest:
            raise ConfigError(f"DSN {raw!r} names no directory; use chdb://DIR")
        return Dsn(raw, scheme, Path(rest).expanduser())
    if scheme in ("http", "https", "clickhouse", "clickhousedb"):
        parts = urlsplit(raw)
        if not parts.hostname:
            raise ConfigError(f"DSN {raw!r} names no host; use http(s)://host:8123")
        try:
            _ = parts.port  # raises on a non-numeric or out-of-range port
        except ValueError as exc:
            raise ConfigError(f"DSN {raw!r} has an invalid port: {exc}") from None
        return Dsn(raw, "https" if scheme == "https" else "http", None)
    raise ConfigError(
        f"unsupported DSN scheme {scheme!r} in {raw!r}; use chdb://DIR or http(s)://host:8123"
    )
