"""Event ids a sink is storing right now, so that two batches holding the same event never
pass the first-write screen together (serve's concurrent calls: a client's retry, a replay
beside the live stream). Both would find no receipt, both store the event, and the
curvature sketch would count it twice; waiting for the other batch turns the event into a
repeat, screened against the receipt the first one wrote (or new again, if it failed)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class InFlight:
    """Claims on event ids, one batch at a time per id (in this process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: dict[str, threading.Event] = {}  # id -> the claiming batch's "done"

    @contextmanager
    def held(self, ids: Iterable[str]) -> Iterator[None]:
        """Claim every id, first waiting for batches that hold any of them; released (and
        the waiters woken) when the block ends, however it ends. A batch waits only while
        it holds no claim, so two batches cannot wait on each other."""
        ids = list(dict.fromkeys(ids))
        mine = threading.Event()
        while True:
            with self._lock:
                busy = {self._owner[i] for i in ids if i in self._owner}
                if not busy:
                    for i in ids:
                        self._owner[i] = mine
                    break
            for other in busy:
                other.wait()
        try:
            yield
        finally:
            with self._lock:
                for i in ids:
                    if self._owner.get(i) is mine:
                        del self._owner[i]
            mine.set()

    def __len__(self) -> int:
        return len(self._owner)
