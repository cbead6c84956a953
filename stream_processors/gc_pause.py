"""The cyclic garbage collector paused while a batch is processed (the sink's shell).

Decoding a batch keeps a few Python objects alive per event (the parsed event, its fields
read once, its Accepted) until the batch is stored, and every 700 allocations CPython runs
a collection that walks the young objects, and now and then every object alive: on 8,000
small events that was ~8 µs of CPU per event (issue 18, docs/design-decisions.md). A batch
makes no reference cycles that must be freed before it ends (its objects are freed by
reference counting when it returns), so the collector waits until no batch is in hand.
Several threads may hold it (serve stores concurrent calls): the last one out turns the
collector back on, if it was on. Under steady concurrent load the holders may overlap
without end, so the collector would never run for the other threads' cyclic garbage (a
query's tracebacks, gRPC's objects): a holder leaving a pause older than MAX_PAUSE_S
collects the young generations itself (and everything every FULL_EVERY-th time).
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

MAX_PAUSE_S = 1.0  # a pause older than this collects when a holder leaves
FULL_EVERY = 30  # every 30th such collection is a full one (the old generation too)

_lock = threading.Lock()
_holders = 0
_was_enabled = False
_since = 0.0  # when the pause began, or the last collection inside it
_collections = 0


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic collector for the body (reentrant and thread-safe)."""
    global _holders, _was_enabled, _since, _collections
    with _lock:
        if _holders == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
            _since = time.monotonic()
        _holders += 1
    try:
        yield
    finally:
        generation = None
        with _lock:
            _holders -= 1
            if _holders == 0:
                if _was_enabled:
                    gc.enable()
            elif _was_enabled and time.monotonic() - _since > MAX_PAUSE_S:
                _since = time.monotonic()
                _collections += 1
                generation = 2 if _collections % FULL_EVERY == 0 else 1
        if generation is not None:  # outside the lock: a collection may take milliseconds
            gc.collect(generation)
