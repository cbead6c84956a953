"""The cyclic garbage collector paused while a batch is processed (the sink's shell).

Decoding a batch keeps a few Python objects alive per event (the parsed event, its fields
read once, its Accepted) until the batch is stored, and every 700 allocations CPython runs
a collection that walks the young objects, and now and then every object alive: on 8,000
small events that was ~8 µs of CPU per event (issue 18, docs/design-decisions.md). A batch
makes no reference cycles that must be freed before it ends (its objects are freed by
reference counting when it returns), so the collector waits until no batch is in hand.
Several threads may hold it (serve stores concurrent calls): the last one out turns the
collector back on, if it was on.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0
_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic collector for the body (reentrant and thread-safe)."""
    global _holders, _was_enabled
    with _lock:
        if _holders == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _was_enabled:
                gc.enable()
