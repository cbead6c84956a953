"""A transport that drops every event: dry runs, and measuring everything before the wire."""

from __future__ import annotations

from headwater.producers.transports.spec import TransportSpec


class NullTransport:
    """Accepts and discards events; rebuilds itself in a publishing worker process."""

    rebuild_spec = TransportSpec("headwater.producers.transports.null:NullTransport")

    def send(self, key: str, event_id: str, value: bytes) -> None: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self) -> None: ...
