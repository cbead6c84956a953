"""KafkaTransport's linger thread: it never keeps an unclosed transport alive."""

from __future__ import annotations

import gc
import weakref

import pytest

from headwater.producers.transports.kafka import KafkaTransport


def test_an_unclosed_transport_is_collected_and_its_linger_thread_ends() -> None:
    # no broker is needed: the event waits in the open bundle (a minute's linger)
    transport = KafkaTransport("127.0.0.1:9", "t", bundle_linger=60.0,
                               config={"log_level": 0})
    transport.send("run", "e1", b"x" * 10)
    thread = transport._linger_thread
    assert thread is not None and thread.is_alive()
    ref = weakref.ref(transport)
    del transport
    gc.collect()
    assert ref() is None
    thread.join(5)  # it wakes at least once a second and finds the transport gone
    assert not thread.is_alive()


def test_a_closed_transport_refuses_events_by_name() -> None:
    transport = KafkaTransport("127.0.0.1:9", "t", config={"log_level": 0})
    transport.close()  # nothing pending: returns at once
    with pytest.raises(RuntimeError, match=r"KafkaTransport \(t\) is closed"):
        transport.send("run", "e1", b"x")


def test_a_failed_bundle_names_its_first_events_and_counts_the_rest() -> None:
    from headwater.producers.transports.kafka import _named

    assert _named(("e1",)) == "event e1"
    assert _named(tuple(f"e{i}" for i in range(500))) == \
        "events e0, e1, e2, e3, e4 and 495 more"
