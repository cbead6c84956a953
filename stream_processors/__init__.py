"""Service side: ClickHouse schema and store, pure processors, and the two runners.

`EventSink` and `Store` are imported on first use, so the pure processors (decode,
validate, rows, gradients, chunks) load without the ClickHouse client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headwater.lazy import lazy_exports

_EXPORTS = {"EventSink": "headwater.stream_processors.sink",
            "Store": "headwater.stream_processors.store"}
__all__ = [
    "EventSink",
    "Store",
]

if TYPE_CHECKING:
    from headwater.stream_processors.sink import EventSink
    from headwater.stream_processors.store import Store


__getattr__ = lazy_exports(__name__, _EXPORTS)
