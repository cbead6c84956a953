"""The publishing worker as a separate process, so it never holds the trainer's GIL.

A trainer step beside a thread of pure Python costs ~10x, beside a busy process ~1.04x
(benchmarks/thread_contention.py): a BackgroundPublisher's worker thread costs the trainer
through the GIL. ProcessPublisher runs the same work (projecting held steps, building
GradientBatch payloads, chaining, hashing, serialising, the transport) in a child started
with `python -m headwater.producers.worker.child`. A capture copies each held step's
arrays into a slot of a shared-memory ring (StepRing) and sends the group's small
descriptors down a pipe; every other payload goes down the same pipe, serialised, so the
child publishes everything in submission order, as the one writer of the producer's chain.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
import warnings
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, BinaryIO

from google.protobuf.message import Message

from headwater.errors import PublishError
from headwater.producers.publisher import BackgroundPublisher, Publisher, raise_failures
from headwater.producers.transports.spec import TransportSpec, spec_of
from headwater.producers.worker.pipe import read_frame, write_frame
from headwater.producers.worker.ring import StepRing

WORKER_MODULE = "headwater.producers.worker.child"
POLL_S = 0.2  # how often a waiting trainer checks that the worker process is alive


class WorkerFallback(UserWarning):
    """The publishing work cannot move to a process; it runs on a worker thread instead."""


class WorkerUnavailable(ValueError):
    """Why a ProcessPublisher cannot take this Publisher (its transport, its signing)."""


def publishing_worker(publisher: Publisher, *, process: bool = True, slots: int = 64,
                      max_pending: int = 64) -> ProcessPublisher | BackgroundPublisher:
    """A ProcessPublisher for `publisher` where its transport can be rebuilt in a child
    process; otherwise (or with process=False) a BackgroundPublisher, with one
    WorkerFallback warning naming why."""
    if process:
        try:
            return ProcessPublisher(publisher, slots=slots)
        except WorkerUnavailable as exc:
            warnings.warn(f"publishing on a worker thread, not a process: {exc}",
                          WorkerFallback, stacklevel=2)
    return BackgroundPublisher(publisher, max_pending=max_pending)


def _cleanup(owner: int, proc: subprocess.Popen[bytes], rings: list[StepRing],
             fds: list[int]) -> None:
    """Kill the child (by its pid) if it is still there, remove the rings, close the
    pipes: at close, or when the publisher is collected or the interpreter exits unclosed.
    Only in the process that started it (not in a forked copy, e.g. a DataLoader worker)."""
    if os.getpid() != owner:
        return
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for ring in rings:
        ring.close(unlink=True)
    rings.clear()
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


class RingWriter:
    """The trainer's side of one capture's ring: claim the next free slot (waiting while
    every slot is taken) and fill it, later send a group of filled slots to the worker."""

    def __init__(self, owner: ProcessPublisher, capture_id: int, ring: StepRing) -> None:
        self.owner, self.capture_id, self.ring = owner, capture_id, ring
        self.written = 0

    def full(self) -> bool:
        """Every slot holds a step the worker has not freed yet."""
        return self.written - self.ring.freed() >= self.ring.slots

    def claim(self) -> int:
        """The next slot to fill, in ring order (waiting while every slot is taken: the
        trainer's back-pressure); the caller fills it before sending its group."""
        while self.full():
            self.owner.wait_for_worker()
        slot = self.written % self.ring.slots
        self.written += 1
        return slot

    def send(self, steps: list[Any]) -> None:
        """Hand the worker a group of steps already in the ring (in the order written)."""
        self.owner.send(("steps", self.capture_id, steps))


class ProcessPublisher:
    """Publishes through a child process: the BackgroundPublisher interface (submit, a
    plain publish callable, before_flush, flush, close) plus shared-memory rings for
    captures (`open_ring`).

    `publisher`'s transport must offer a `rebuild_spec` (GrpcTransport, KafkaTransport,
    NullTransport): the child builds its own from it; a Publisher that signs its chain
    heads is not taken (WorkerUnavailable: use publishing_worker() to fall back to the
    thread). The child continues `publisher`'s chain (its producer id, seq and last hash)
    and hands it back at close, so the chain keeps one writer at a time. `slots`: steps a
    capture's ring holds (the trainer waits when all are taken). `submit(build)` calls
    build() here, on the caller's thread, and sends the payload (a closure cannot cross
    processes); a capture's held steps go through its ring instead.
    """

    def __init__(self, publisher: Publisher, *, slots: int = 64,
                 close_timeout: float = 60.0) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        spec = spec_of(publisher.transport)
        if isinstance(spec, str):
            raise WorkerUnavailable(spec)
        if publisher.heads is not None:
            raise WorkerUnavailable("the Publisher signs its chain heads (signing_key); its "
                                    "key is not handed to a child process")
        self.publisher = publisher
        self.slots = slots
        self.close_timeout = close_timeout
        self._closed = False
        self._before_flush: list[Callable[[], None]] = []
        self._rings: list[StepRing] = []
        self._captures = 0
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - read on failure, closed at close
        cmd_r, cmd_w = os.pipe()
        reply_r, reply_w = os.pipe()
        wake_r, wake_w = os.pipe()
        env = dict(os.environ)  # the child imports what this process can (a transport's module)
        env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] +
                                            [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, str(cmd_r), str(reply_w), str(wake_w)],
                pass_fds=(cmd_r, reply_w, wake_w), stdin=subprocess.DEVNULL,
                stdout=self._stderr, stderr=self._stderr, env=env)
        except BaseException:
            for fd in (cmd_w, reply_r, wake_r):
                os.close(fd)
            self._stderr.close()
            raise
        finally:
            for fd in (cmd_r, reply_w, wake_w):
                os.close(fd)
        self._cmd, self._wake = cmd_w, wake_r
        self._reply: BinaryIO = os.fdopen(reply_r, "rb")
        self._fds = [cmd_w, wake_r]
        self._finalizer = weakref.finalize(self, _cleanup, os.getpid(), self._proc, self._rings,
                                           self._fds)
        envelopes = publisher.envelopes
        self.send(("init", {
            "run_id": envelopes.run_id, "producer_id": envelopes.producer_id,
            "head": envelopes.head(), "transport": spec}))

    @property
    def pid(self) -> int:
        """The worker process's id."""
        return self._proc.pid

    # -- the trainer's side ------------------------------------------------------------------

    def send(self, message: tuple[Any, ...]) -> None:
        """One message down the command pipe (blocks while the pipe is full)."""
        if self._closed:
            raise PublishError("ProcessPublisher is closed")
        try:
            write_frame(self._cmd, message)
        except OSError as exc:  # a broken pipe: the child is gone, or going
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            raise PublishError(self._death() or f"the publishing process is gone ({exc})"
                               ) from None

    def submit(self, build: Callable[[], Message | list[Message | Exception]]) -> None:
        """Build now (a closure stays in this process) and send the payload(s); a build
        that fails is raised at flush, as on a worker thread."""
        try:
            built = build()
        except Exception as exc:  # noqa: BLE001 - raised at flush, as on a worker thread
            built = [exc]
        for payload in built if isinstance(built, list) else [built]:
            if isinstance(payload, Exception):
                self.send(("failure", f"{type(payload).__name__}: {payload}"))
            else:
                self(payload)

    def __call__(self, payload: Message) -> None:
        """Send an already built payload (the plain publish-callable form)."""
        self.send(("payload", type(payload).__name__, payload.SerializeToString()))

    def before_flush(self, drain: Callable[[], None]) -> None:
        """Call `drain` at the start of every flush and close (a capture's partial group)."""
        self._before_flush.append(drain)

    def open_ring(self, config: dict[str, Any], slot_bytes: int) -> RingWriter:
        """A ring of `slots` slots of `slot_bytes` for one capture, whose settings the
        worker needs to build its events (`config`, see worker.child.CaptureBuilder)."""
        ring = StepRing.create(self.slots, slot_bytes)
        self._rings.append(ring)
        self._captures += 1
        self.send(("capture", self._captures, config, ring.name, ring.slots, ring.slot_bytes))
        return RingWriter(self, self._captures, ring)

    def wait_for_worker(self) -> None:
        """Sleep until the worker frees slots (or POLL_S passes); raise if it died."""
        ready, _, _ = select.select([self._wake], [], [], POLL_S)
        if ready:
            os.read(self._wake, 4096)
        death = self._death()
        if death:
            raise PublishError(death)

    def _death(self) -> str:
        """Why the worker process is gone ('' while it runs)."""
        code = self._proc.poll()
        if code is None:
            return ""
        return (f"the publishing process (pid {self._proc.pid}) exited with status {code}"
                + self._stderr_tail())

    def _stderr_tail(self) -> str:
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - 2000))
        tail = self._stderr.read().decode(errors="replace").strip()
        return f"; its last output: {tail}" if tail else ""

    def _answer(self, timeout: float | None) -> tuple[Any, ...]:
        """The worker's reply to the request just sent (raises if it dies first)."""
        waited = 0.0
        while True:
            ready, _, _ = select.select([self._reply], [], [], POLL_S)
            if ready:
                reply = read_frame(self._reply)
                if reply is None:
                    raise PublishError(self._death() or "the publishing process closed its "
                                       "reply pipe")
                return reply
            death = self._death()
            if death:
                raise PublishError(death)
            waited += POLL_S
            if timeout is not None and waited > timeout:
                raise PublishError(f"the publishing process did not answer within "
                                   f"{timeout:.0f} s")

    def _drain(self) -> None:
        for drain in self._before_flush:
            drain()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything sent so far is published and stored; raise PublishError
        naming what failed (a payload, a step, the transport) or a dead worker."""
        self._drain()
        self.send(("flush", timeout))
        _, failed, errors = self._answer(None)
        raise_failures(failed, errors, "the publishing process")

    def close(self) -> None:
        """Flush, stop the worker, remove the rings, hand the chain back to the Publisher
        (which stays open). Idempotent; the worker is killed (by pid) if it does not stop
        within close_timeout."""
        if self._closed:
            return
        failed, errors, state = 0, [], None
        try:
            self._drain()
            self.send(("close",))
            _, failed, errors, state = self._answer(self.close_timeout)
        finally:
            self._closed = True
            try:
                self._proc.wait(self.close_timeout)
            except subprocess.TimeoutExpired:
                pass
            self._finalizer()  # kills it if still there, unlinks the rings, closes pipes
            self._reply.close()
            self._stderr.close()
            if state is not None:
                self.publisher.envelopes.resume(*state)
        raise_failures(failed, errors, "the publishing process")

    def __enter__(self) -> ProcessPublisher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = ["ProcessPublisher", "RingWriter", "TransportSpec", "WorkerFallback",
           "WorkerUnavailable", "publishing_worker"]
