"""The sink's claims on event ids: overlapping batches one after the other, others at once."""

from __future__ import annotations

import threading
import time

import pytest

from headwater.stream_processors.inflight import InFlight


def test_an_overlapping_batch_waits_and_a_disjoint_one_does_not() -> None:
    claims = InFlight()
    order: list[str] = []

    def overlapping() -> None:
        with claims.held(["b", "c"]):
            order.append("overlapping")

    with claims.held(["a", "b"]):
        t = threading.Thread(target=overlapping)
        t.start()
        with claims.held(["x", "y"]):  # disjoint: at once
            order.append("disjoint")
        time.sleep(0.2)
        assert t.is_alive()  # still waiting for "b"
        order.append("first")
    t.join(5)
    assert order == ["disjoint", "first", "overlapping"] and len(claims) == 0


def test_claims_are_released_when_the_batch_fails() -> None:
    claims = InFlight()
    with pytest.raises(RuntimeError), claims.held(["a", "a", "b"]):
        raise RuntimeError("store down")
    assert len(claims) == 0
    with claims.held(["a"]):  # not left waiting on a failed batch
        pass
