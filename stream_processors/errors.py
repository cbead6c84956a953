"""Errors of the service side, each carrying a one-line message fit for a user."""

from __future__ import annotations


class HeadwaterError(RuntimeError):
    """A failure the CLI prints as one line (no traceback)."""


class ConfigError(HeadwaterError):
    """A setting is invalid (bad DSN, bad address, ...)."""


class StoreError(HeadwaterError):
    """ClickHouse could not be reached or refused a statement."""


class DataDirLocked(StoreError):
    """Another process holds the chDB data directory."""
