"""gc_paused: the collector is off while any holder is inside, back on (if it was on) when
the last one leaves, also when a body raises, and left off when it was off before."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from headwater.stream_processors.gc_pause import gc_paused


@pytest.fixture(autouse=True)
def _restore_gc():
    enabled = gc.isenabled()
    yield
    (gc.enable if enabled else gc.disable)()


def test_paused_inside_and_restored_after_nesting_and_errors() -> None:
    gc.enable()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer holder is still inside
    assert gc.isenabled()
    with pytest.raises(ValueError), gc_paused():
        raise ValueError("a failed batch")
    assert gc.isenabled()


def test_left_off_when_it_was_off() -> None:
    gc.disable()
    with gc_paused():
        pass
    assert not gc.isenabled()


@contextmanager
def _held_by_another_thread() -> Iterator[None]:
    """Another thread inside gc_paused() for the body; it leaves when the body ends."""
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with gc_paused():
            inside.set()
            release.wait(10)

    other = threading.Thread(target=hold)
    other.start()
    try:
        assert inside.wait(10)
        yield
    finally:
        release.set()
        other.join(10)


def test_threads_overlapping_release_once_the_last_leaves() -> None:
    gc.enable()
    with _held_by_another_thread():
        with gc_paused():
            pass
        assert not gc.isenabled()  # the other thread still holds it
    assert gc.isenabled()


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_overlapping_holders_still_collect_other_threads_cycles(monkeypatch) -> None:
    """Holders that overlap without end must not starve the collector: a holder leaving a
    pause older than MAX_PAUSE_S collects, so a cycle dropped meanwhile is freed while
    another holder is still inside (and is not freed by a fresh pause)."""
    import weakref

    from headwater.stream_processors import gc_pause

    gc.enable()
    with _held_by_another_thread():
        cycle = _Cycle()
        gone = weakref.ref(cycle)
        del cycle
        monkeypatch.setattr(gc_pause, "MAX_PAUSE_S", 1e9)
        with gc_paused():
            pass
        assert gone() is not None  # a young pause: the collector still waits
        monkeypatch.setattr(gc_pause, "MAX_PAUSE_S", 0.0)
        with gc_paused():
            pass
        assert gone() is None  # collected by the leaving holder
        assert not gc.isenabled()  # the other holder is still inside
    assert gc.isenabled()
