"""Service side: ClickHouse schema and store, pure processors, and the two runners.

`EventSink` and `Store` are imported on first use, so the pure processors (decode,
validate, rows, gradients, chunks) load without the ClickHouse client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {"EventSink": "headwater.stream_processors.sink",
            "Store": "headwater.stream_processors.store"}
__all__ = [
    "EventSink",
    "Store",
]

if TYPE_CHECKING:
    from headwater.stream_processors.sink import EventSink
    from headwater.stream_processors.store import Store


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
