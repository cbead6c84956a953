"""BackgroundPublisher (issue 16, item 2): payloads built and published on a worker in
submission order, a bounded queue that makes the trainer wait, failures raised at flush."""

from __future__ import annotations

import threading

import pytest

from headwater.errors import PublishError
from headwater.producers.envelope import hash_matches
from headwater.producers.publisher import BackgroundPublisher, Publisher
from headwater.v1 import events_pb2


class Collect:
    """A transport keeping what it is sent; `gate` holds the sender until set."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.gate = threading.Event()
        self.gate.set()
        self.threads: set[str] = set()

    def send(self, key: str, event_id: str, value: bytes) -> None:
        self.gate.wait(10)
        self.threads.add(threading.current_thread().name)
        self.sent.append(value)

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self) -> None: ...


def version(i: int) -> events_pb2.ModelVersionRecorded:
    return events_pb2.ModelVersionRecorded(model_id="m", version=f"v{i}")


def test_order_thread_and_chain() -> None:
    transport = Collect()
    with BackgroundPublisher(Publisher(transport, run_id="r"), max_pending=4) as bg:
        for i in range(50):
            bg.submit(lambda i=i: version(i))
        bg(version(50))  # the plain-callable form
        bg.flush()
    events = [events_pb2.Event.FromString(v) for v in transport.sent]
    assert [e.model_version_recorded.version for e in events] == [f"v{i}" for i in range(51)]
    assert transport.threads == {"headwater-publish"}
    assert [e.seq for e in events] == list(range(1, 52))
    assert all(hash_matches(e) for e in events)
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]


def test_bounded_queue_blocks_the_trainer() -> None:
    transport = Collect()
    transport.gate.clear()  # the worker is stuck sending the first event
    bg = BackgroundPublisher(Publisher(transport, run_id="r"), max_pending=3)
    done = threading.Event()

    def trainer() -> None:
        for i in range(10):
            bg.submit(lambda i=i: version(i))
        done.set()

    t = threading.Thread(target=trainer)
    t.start()
    assert not done.wait(0.5)  # 1 in the worker + 3 queued; the 5th submit waits
    assert bg._queue.qsize() == 3
    transport.gate.set()
    assert done.wait(10)
    t.join()
    bg.close()
    assert len(transport.sent) == 10


def test_errors_surface_at_flush_and_the_worker_goes_on() -> None:
    transport = Collect()
    bg = BackgroundPublisher(Publisher(transport, run_id="r"))

    def broken() -> events_pb2.ModelVersionRecorded:
        raise ValueError("phi has NaN")

    bg.submit(lambda: version(1))
    bg.submit(broken)
    bg.submit(lambda: "not a payload")  # type: ignore[arg-type,return-value]
    bg.submit(lambda: version(2))
    with pytest.raises(PublishError, match=r"2 event\(s\) failed .*ValueError: phi has NaN; "
                                           r"TypeError: payload must be one of"):
        bg.flush()
    assert len(transport.sent) == 2
    bg.flush()  # reported once
    bg.close()
    with pytest.raises(PublishError, match="closed"):
        bg.submit(lambda: version(3))
    with pytest.raises(ValueError, match="max_pending"):
        BackgroundPublisher(Publisher(transport, run_id="r"), max_pending=0)


def test_groups_and_before_flush() -> None:
    """A build may return a list (a capture's group): published in order, an exception in
    it failing that entry alone; before_flush callbacks run at flush and close first."""
    transport = Collect()
    bg = BackgroundPublisher(Publisher(transport, run_id="r"))
    held: list[int] = []
    bg.before_flush(lambda: bg.submit(lambda: [version(i) for i in held]) if held else None)
    bg.submit(lambda: [version(1), ValueError("step 2 refused"), version(3)])
    held[:] = [4, 5]
    with pytest.raises(PublishError, match=r"1 event\(s\) failed .*ValueError: step 2 refused"):
        bg.flush()
    names = [events_pb2.Event.FromString(v).model_version_recorded.version
             for v in transport.sent]
    assert names == ["v1", "v3", "v4", "v5"]
    held.clear()
    bg.close()
