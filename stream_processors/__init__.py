"""Service side: ClickHouse schema and store, pure processors, and the two runners."""

from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store

__all__ = ["EventSink", "Store"]
