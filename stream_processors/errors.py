"""Errors of the service side, each carrying a one-line message fit for a user."""

from __future__ import annotations


class HeadwaterError(RuntimeError):
    """A failure the CLI prints as one line (no traceback)."""


class ConfigError(HeadwaterError):
    """A setting is invalid (bad DSN, bad address, ...)."""


class StoreError(HeadwaterError):
    """ClickHouse could not be reached or refused a statement."""


class DataDirLocked(StoreError):
    """Another process holds the chDB data directory; `pid` and `address` (the gRPC address
    a serve recorded in the lock, None when none) name it."""

    def __init__(self, message: str, *, pid: str = "unknown",
                 address: str | None = None) -> None:
        super().__init__(message)
        self.pid, self.address = pid, address


class NoStore(StoreError):
    """A read found no store where it was pointed (nothing is created by a read)."""
