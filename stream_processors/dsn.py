"""Parsing of ClickHouse DSNs: `chdb://DIR` (embedded, default) or `http(s)://host:port`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from headwater.errors import ConfigError


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
        return redact_dsn(self.raw)


def redact_dsn(raw: str) -> str:
    """`scheme://user:***@host...`: everything between the user name and the last `@` is
    hidden, so a password holding `/`, `:` or `@` does not leak either (even unparseable)."""
    scheme, sep, rest = raw.partition("://")
    if not sep:
        scheme, rest = "", raw
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return raw
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"


def parse_dsn(raw: str) -> Dsn:
    """Validate a DSN; raise ConfigError naming what is wrong (the password redacted)."""
    shown = redact_dsn(raw)
    if not raw:
        raise ConfigError("empty ClickHouse DSN; use chdb://DIR or http(s)://host:8123")
    scheme, sep, rest = raw.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ConfigError(f"DSN {shown!r} has no scheme; use chdb://DIR or http(s)://host:8123")
    if scheme == "chdb":
        if not rest:
            raise ConfigError(f"DSN {shown!r} names no directory; use chdb://DIR")
        return Dsn(raw, scheme, Path(rest).expanduser())
    if scheme in ("http", "https", "clickhouse", "clickhousedb"):
        parts = urlsplit(raw)
        if not parts.hostname:
            raise ConfigError(f"DSN {shown!r} names no host; use http(s)://host:8123")
        try:
            _ = parts.port  # raises on a non-numeric or out-of-range port
        except ValueError as exc:
            raise ConfigError(f"DSN {shown!r} has an invalid port: {exc}") from None
        return Dsn(raw, "https" if scheme == "https" else "http", None)
    raise ConfigError(
        f"unsupported DSN scheme {scheme!r} in {shown!r}; use chdb://DIR or http(s)://host:8123"
    )
