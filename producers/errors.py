"""Errors the producer SDK raises to the caller (never swallowed)."""

from __future__ import annotations


class PublishError(RuntimeError):
    """Events were not (or not all) acknowledged as stored; the message says which and why."""

    def __init__(self, message: str, failed_event_ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.failed_event_ids = failed_event_ids or []
