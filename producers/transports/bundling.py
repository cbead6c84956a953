"""Many small events in one Kafka message (pure: the wire format shared by the Kafka
transport, which bundles, and the sink, which expands).

A message carrying the BUNDLE_HEADER holds a `headwater.v1.EventBatch`: each item is one
encoded Event, byte for byte what a single-event message carries. Kafka's cost is per
message (the client's produce call and delivery report, the broker's record, the
consumer's fetch), so a producer that sends many small events pays it once per bundle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from headwater.v1 import query_pb2

BUNDLE_HEADER = "headwater-bundle"  # Kafka header marking a record as one EventBatch
BUNDLE_FRAMING = 16  # bytes an item may add to a bundle: its tag and length prefix


def encode_bundle(values: list[bytes]) -> bytes:
    """The message value carrying `values` (encoded events), in order."""
    return query_pb2.EventBatch(events=values).SerializeToString()


Headers = tuple[tuple[str, bytes], ...]


@dataclass
class OpenBundle:
    """Events waiting under one message key, all with the same headers (trace context)."""

    opened: float
    headers: Headers
    ids: list[str] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    size: int = 0


class Bundler:
    """Collects small events per key into bundles of at most `max_events` events and about
    `max_bytes` bytes; a bundle is due when full, when an event of its key does not fit or
    carries other headers (at most one bundle is open per key, so a key's events keep
    their order), or `linger` seconds after its first event. The caller produces what
    `add` and `due` hand back."""

    def __init__(self, max_events: int, max_bytes: int, linger: float) -> None:
        if max_events < 1:
            raise ValueError(f"bundle_events must be >= 1; got {max_events}")
        if max_bytes < 1:
            raise ValueError(f"bundle_bytes must be >= 1; got {max_bytes}")
        if linger < 0:
            raise ValueError(f"bundle_linger must be >= 0 seconds; got {linger}")
        self.max_events, self.max_bytes, self.linger = max_events, max_bytes, linger
        self.open: dict[bytes, OpenBundle] = {}

    def takes(self, value: bytes) -> bool:
        """Whether an event of this size is bundled (a larger one is sent alone)."""
        return self.max_events > 1 and len(value) + BUNDLE_FRAMING <= self.max_bytes // 2

    def add(self, key: bytes, headers: Headers, event_id: str, value: bytes,
            now: float | None = None) -> list[tuple[bytes, OpenBundle]]:
        """Put one event in its key's bundle; returns the bundles now due: the one it did
        not fit in (or whose headers differ), and the one it filled."""
        now = time.monotonic() if now is None else now
        size = len(value) + BUNDLE_FRAMING
        out = []
        bundle = self.open.get(key)
        if bundle is not None and (bundle.size + size > self.max_bytes
                                   or bundle.headers != headers):
            out.append((key, self.open.pop(key)))
            bundle = None
        if bundle is None:
            bundle = self.open[key] = OpenBundle(now, headers)
        bundle.ids.append(event_id)
        bundle.values.append(value)
        bundle.size += size
        if len(bundle.ids) >= self.max_events:
            out.append((key, self.open.pop(key)))
        return out

    def take(self, key: bytes) -> OpenBundle | None:
        """The key's open bundle (sent before a large event of the same key)."""
        return self.open.pop(key, None)

    def due(self, now: float | None = None, everything: bool = False
            ) -> list[tuple[bytes, OpenBundle]]:
        """Bundles older than the linger (all of them with `everything`), removed."""
        now = time.monotonic() if now is None else now
        keys = [k for k, b in self.open.items() if everything or now - b.opened >= self.linger]
        return [(k, self.open.pop(k)) for k in keys]

    def next_due(self) -> float | None:
        """When the oldest open bundle is due (monotonic seconds); None when none is open."""
        if not self.open:
            return None
        return min(b.opened for b in self.open.values()) + self.linger
