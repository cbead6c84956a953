"""ProcessPublisher (issue 16, fourth wave): the publishing work in a child process fed by a
shared-memory ring. The same events as the worker thread for the same steps (φ bytes
included), one chain, back-pressure, failures raised at flush, a dead child reported (not a
hang), the shared memory removed, close idempotent, the thread fallback warned once."""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from support.spool_transport import SpoolTransport, read_spool

from headwater.errors import PublishError
from headwater.producers.envelope import hash_matches
from headwater.producers.publisher import BackgroundPublisher, Publisher
from headwater.producers.tracking import Tracker
from headwater.producers.transports.null import NullTransport
from headwater.producers.transports.spec import TransportSpec, spec_of
from headwater.producers.worker.process import (
    ProcessPublisher,
    WorkerFallback,
    WorkerUnavailable,
    publishing_worker,
)
from headwater.v1 import events_pb2

BATCH = 16


def _train(publish: object, steps: int, *, group: int = 4, version_at: int = 5,
           smooth_from: int | None = None) -> None:
    """A small MLP trained by SGD with capture.step; a model version and a tracked op in
    the middle (events of the trainer's own between held steps)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    from headwater.producers.capture.torch import TorchCapture

    capture = TorchCapture(publish, model, "m", k=40, seed=1, group=group)
    x_all = torch.randn(steps * BATCH, 6, generator=torch.Generator().manual_seed(3))
    tracker = Tracker(publish)
    tracker.shuffle(tracker.array(x_all.numpy()))  # an op recorded: an event of the trainer's
    labels = torch.randint(0, 3, (steps * BATCH,), generator=torch.Generator().manual_seed(4))
    x, y = torch.empty(BATCH, 6), torch.empty(BATCH, dtype=torch.long)  # refilled each step
    for s in range(steps):
        x.copy_(x_all[s * BATCH:(s + 1) * BATCH])
        y.copy_(labels[s * BATCH:(s + 1) * BATCH])
        keys = events_pb2.RowKeys(node_ids=["batch"], rows=range(s * BATCH, (s + 1) * BATCH))
        opt.zero_grad()
        with capture.step(x, y, keys, learning_rate=0.1, step=s):
            smoothing = 0.2 if smooth_from is not None and s >= smooth_from else 0.0
            F.cross_entropy(model(x), y, label_smoothing=smoothing).backward()
        opt.step()
        if s == version_at:
            capture.record_version(s)


def _events(path: Path) -> list[events_pb2.Event]:
    return [events_pb2.Event.FromString(v) for v in read_spool(path)]


def _chained(events: list[events_pb2.Event], producer: str) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert all(hash_matches(e) for e in events)
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    assert {e.producer_id for e in events} == {producer}


def test_same_events_as_the_worker_thread_on_one_chain(tmp_path: Path) -> None:
    threaded, in_child = tmp_path / "thread.spool", tmp_path / "process.spool"
    publisher = Publisher(SpoolTransport(str(threaded)), run_id="r", producer_id="p")
    with BackgroundPublisher(publisher) as bg:
        _train(bg, 19)
    publisher = Publisher(SpoolTransport(str(in_child)), run_id="r", producer_id="p")
    with ProcessPublisher(publisher, slots=3) as pp:  # fewer slots than a group: drained early
        _train(pp, 19)
        child = pp.pid
    a, b = _events(threaded), _events(in_child)
    kinds = [e.WhichOneof("payload") for e in b]
    assert kinds.count("gradient_batch") == 19 and "model_version_recorded" in kinds
    assert "op_recorded" in kinds  # the tracker's events go through the child too
    grads_a = [e.gradient_batch for e in a if e.HasField("gradient_batch")]
    grads_b = [e.gradient_batch for e in b if e.HasField("gradient_batch")]
    assert grads_a == grads_b  # φ bytes, weights, keys, steps, versions, in order
    assert [e.WhichOneof("payload") for e in a] == kinds
    _chained(b, "p")
    # the chain is handed back: the Publisher goes on from the child's last event
    event = publisher.publish(events_pb2.ModelVersionRecorded(model_id="m", version="v9"))
    assert event.seq == len(b) + 1 and event.prev_hash == b[-1].hash
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # the child is gone


def test_a_full_ring_makes_the_trainer_wait(tmp_path: Path) -> None:
    hold = tmp_path / "go"
    publisher = Publisher(SpoolTransport(str(tmp_path / "s"), hold=str(hold)), run_id="r")
    pp = ProcessPublisher(publisher, slots=2)
    done = threading.Event()
    problems: list[BaseException] = []

    def trainer() -> None:
        try:
            _train(pp, 8, group=1, version_at=-1)
        except BaseException as exc:  # noqa: BLE001 - reported below
            problems.append(exc)
        done.set()

    thread = threading.Thread(target=trainer)
    thread.start()
    # the child is stuck sending the first event: 2 slots fill, the 3rd step waits
    assert not done.wait(3.0)
    hold.touch()
    assert done.wait(60)
    thread.join()
    assert not problems
    pp.close()
    kinds = [e.WhichOneof("payload") for e in _events(tmp_path / "s")]
    assert kinds.count("gradient_batch") == 8


def test_failures_are_raised_at_flush_and_close(tmp_path: Path) -> None:
    publisher = Publisher(SpoolTransport(str(tmp_path / "s"), fail_after=3), run_id="r")
    pp = ProcessPublisher(publisher)
    _train(pp, 6, version_at=-1)
    with pytest.raises(PublishError, match=r"failed on the publishing process: "
                                           r"PublishError: spool refuses event"):
        pp.flush()
    pp.flush()  # reported once
    pp.close()


def test_a_refused_loss_fails_its_step_alone(tmp_path: Path) -> None:
    publisher = Publisher(SpoolTransport(str(tmp_path / "s")), run_id="r")
    with pytest.raises(PublishError, match="LossMismatch"):  # noqa: PT012
        with ProcessPublisher(publisher) as pp:
            _train(pp, 8, smooth_from=6, version_at=-1)
    grads = [e for e in _events(tmp_path / "s") if e.HasField("gradient_batch")]
    assert [e.gradient_batch.step for e in grads] == list(range(6))


def test_a_killed_child_is_reported_not_waited_for(tmp_path: Path) -> None:
    publisher = Publisher(SpoolTransport(str(tmp_path / "s")), run_id="r")
    pp = ProcessPublisher(publisher, slots=2)
    _train(pp, 3, group=1, version_at=-1)
    pp.flush()
    ring = pp._rings[0].name
    assert Path("/dev/shm", ring.lstrip("/")).exists()
    os.kill(pp.pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(PublishError, match=r"publishing process \(pid \d+\) exited with "
                                           r"status -9"):
        _train(pp, 6, group=1, version_at=-1)  # the ring fills; the wait sees the death
        pp.flush()
    assert time.monotonic() - start < 60  # a bound on a hang, not a speed check
    with pytest.raises(PublishError, match="exited with status -9"):
        pp.close()
    assert not Path("/dev/shm", ring.lstrip("/")).exists()  # unlinked on the error too
    pp.close()  # idempotent
    with pytest.raises(PublishError, match="closed"):
        pp(events_pb2.ModelVersionRecorded(model_id="m", version="v1"))


def test_close_removes_the_shared_memory_and_is_idempotent(tmp_path: Path) -> None:
    publisher = Publisher(SpoolTransport(str(tmp_path / "s")), run_id="r")
    pp = ProcessPublisher(publisher)
    _train(pp, 4, version_at=-1)
    names = [r.name for r in pp._rings]
    assert names and all(Path("/dev/shm", n.lstrip("/")).exists() for n in names)
    pp.close()
    pp.close()
    assert not any(Path("/dev/shm", n.lstrip("/")).exists() for n in names)
    assert pp._proc.returncode == 0


def test_a_transport_that_cannot_be_rebuilt_falls_back_with_one_warning() -> None:
    class InMemory:
        def send(self, key: str, event_id: str, value: bytes) -> None: ...

        def flush(self, timeout: float | None = None) -> None: ...

        def close(self) -> None: ...

    with pytest.raises(WorkerUnavailable, match="InMemory cannot be rebuilt"):
        ProcessPublisher(Publisher(InMemory(), run_id="r"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        worker = publishing_worker(Publisher(InMemory(), run_id="r"))
    assert isinstance(worker, BackgroundPublisher)
    assert [str(w.message) for w in caught if w.category is WorkerFallback] == [
        "publishing on a worker thread, not a process: InMemory cannot be rebuilt in another "
        "process (it offers no rebuild_spec; GrpcTransport, KafkaTransport and NullTransport "
        "do)"]
    worker.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        process = publishing_worker(Publisher(NullTransport(), run_id="r"))
    assert isinstance(process, ProcessPublisher)
    process.close()


def test_a_transport_the_child_cannot_build_is_raised_at_flush(tmp_path: Path) -> None:
    class Broken(NullTransport):
        rebuild_spec = TransportSpec("headwater.producers.transports.null:NoSuchTransport")

    pp = ProcessPublisher(Publisher(Broken(), run_id="r"))
    pp(events_pb2.ModelVersionRecorded(model_id="m", version="v1"))
    with pytest.raises(PublishError, match="could not be rebuilt here: AttributeError"):
        pp.flush()
    pp.close()


def test_rebuild_specs_of_the_network_transports() -> None:
    from headwater.producers.transports.grpc import GrpcTransport

    grpc_transport = GrpcTransport("127.0.0.1:1", batch_size=7, token="secret-token")
    spec = spec_of(grpc_transport)
    assert isinstance(spec, TransportSpec)
    rebuilt = spec.build()
    assert isinstance(rebuilt, GrpcTransport) and rebuilt.target == "127.0.0.1:1"
    assert rebuilt._batch_size == 7
    assert "secret-token" not in repr(spec) or spec.kwargs["token"] == "secret-token"
    rebuilt.close()
    grpc_transport.close()
    import grpc

    with_credentials = GrpcTransport("127.0.0.1:1", credentials=grpc.local_channel_credentials())
    assert "no rebuild_spec" in str(spec_of(with_credentials))
    with_credentials.close()


def test_a_signing_publisher_is_not_taken() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    publisher = Publisher(NullTransport(), run_id="r", signing_key=Ed25519PrivateKey.generate(),
                          attest_target="127.0.0.1:1")
    with pytest.raises(WorkerUnavailable, match="signs its chain heads"):
        ProcessPublisher(publisher)


def test_tracked_tensors_reach_the_ring_without_recorded_ops(tmp_path: Path) -> None:
    """TrackedTensors in the held steps: the copy into the ring records no op (only the
    model's forward and the loss are recorded, as without a capture)."""
    from headwater.producers.capture.torch import TorchCapture
    from headwater.producers.tracking.torch import row_keys, track_tensor

    events: list = []
    tracker = Tracker(events.append)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    with ProcessPublisher(Publisher(SpoolTransport(str(tmp_path / "s")), run_id="r")) as pp:
        capture = TorchCapture(pp, model, "m", k=16, group=2)
        for _ in range(4):
            x, y = torch.randn(BATCH, 5), torch.randint(0, 3, (BATCH,))
            xt, yt = track_tensor(tracker, x), track_tensor(tracker, y)
            before = len(events)
            with capture.step(xt, yt, row_keys(xt), learning_rate=0.1):
                F.cross_entropy(model(xt), yt).backward()
            assert [e.op_name for e in events[before:]] == [
                "torch.nn.functional.linear", "torch.tanh", "torch.nn.functional.linear",
                "torch.nn.functional.cross_entropy"]
        assert capture._ring is not None  # the steps after the first went through the ring
    kinds = [e.WhichOneof("payload") for e in _events(tmp_path / "s")]
    assert kinds.count("gradient_batch") == 4


def test_a_forked_copy_leaves_the_worker_and_its_rings_alone(tmp_path: Path) -> None:
    """A forked child of the trainer (a DataLoader worker) that drops its copy of the
    publisher neither kills the worker process nor removes the rings."""
    pp = ProcessPublisher(Publisher(SpoolTransport(str(tmp_path / "s")), run_id="r"))
    _train(pp, 3, group=1, version_at=-1)
    pp.flush()
    ring = Path("/dev/shm", pp._rings[0].name.lstrip("/"))
    pid = os.fork()
    if pid == 0:  # the forked copy: run the finalizer it inherited, then leave at once
        pp._finalizer()
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert ring.exists() and pp._proc.poll() is None
    _train(pp, 2, group=1, version_at=-1)
    pp.close()
    assert not ring.exists()


def test_a_forged_rebuild_spec_or_message_is_refused_by_name(tmp_path: Path) -> None:
    """A rebuild_spec that is not a TransportSpec, or whose settings cannot travel, is
    refused before any process starts; a message the child does not know is named at
    flush, and what was sent before it is still published."""

    class NotASpec(NullTransport):
        rebuild_spec = ("headwater.producers.transports.null:NullTransport",)  # type: ignore[assignment]

    class Unpicklable(NullTransport):
        rebuild_spec = TransportSpec("headwater.producers.transports.null:NullTransport",
                                     kwargs={"hook": lambda: None})

    with pytest.raises(WorkerUnavailable, match="rebuild_spec is tuple, not a TransportSpec"):
        ProcessPublisher(Publisher(NotASpec(), run_id="r"))
    with pytest.raises(WorkerUnavailable, match="settings cannot be sent to another process"):
        ProcessPublisher(Publisher(Unpicklable(), run_id="r"))
    spool = tmp_path / "s"
    pp = ProcessPublisher(Publisher(SpoolTransport(str(spool)), run_id="r", producer_id="p"))
    pp(events_pb2.ModelVersionRecorded(model_id="m", version="v1"))
    pp.send(("exec", "import os; os.system('true')"))
    with pytest.raises(PublishError, match="a message it does not know: 'exec'"):
        pp.flush()
    pp.close()
    assert [e.WhichOneof("payload") for e in _events(spool)] == ["model_version_recorded"]
