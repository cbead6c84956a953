"""The one object a trainer holds: wraps payloads in chained envelopes and publishes them;
BackgroundPublisher moves that work (and building the payloads) off the trainer's thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import Message
from opentelemetry import context as otel_context

from headwater.errors import PublishError
from headwater.producers import head_signing, telemetry
from headwater.producers.envelope import EnvelopeBuilder
from headwater.producers.transports.base import Transport
from headwater.v1 import events_pb2


class Publisher:
    """Publishes events of one run through one transport; use as a context manager."""

    def __init__(self, transport: Transport, run_id: str, producer_id: str | None = None,
                 signing_key: Ed25519PrivateKey | str | Path | None = None, *,
                 attest_target: str | None = None, attest_every_events: int = 1000,
                 attest_every_seconds: float = 60.0):
        """`signing_key` (or HEADWATER_PRODUCER_KEY_FILE): this producer's Ed25519 key; its
        chain heads are then signed and attested (head_signing) at flush, close and every
        `attest_every_events` events / `attest_every_seconds` s."""
        self.transport = transport
        self.envelopes = EnvelopeBuilder(run_id, producer_id)
        self.heads = head_signing.signer_for(
            transport, signing_key, attest_target=attest_target,
            every_events=attest_every_events, every_seconds=attest_every_seconds)
        telemetry.configure_from_env()  # OTEL_EXPORTER_OTLP_ENDPOINT set: export, unasked
        self._tracer = telemetry.tracer()
        self._counter = telemetry.meter().create_counter(
            "headwater.publish.events", description="events handed to a transport"
        )

    @property
    def run_id(self) -> str:
        return self.envelopes.run_id

    @property
    def producer_id(self) -> str:
        return self.envelopes.producer_id

    def publish(self, payload: Message) -> events_pb2.Event:
        """Wrap `payload` in the next envelope, hand it to the transport, return the event."""
        event = self.envelopes.wrap(payload)
        self.transport.send(
            event.run_id, event.event_id, event.SerializeToString(deterministic=True)
        )
        self._counter.add(1, {"payload": event.WhichOneof("payload") or ""})
        if self.heads is not None and self.heads.observe(event):
            self.transport.flush()  # the head must be stored before it is attested
            self.heads.attest()
        return event

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything published so far is stored; raise PublishError if not."""
        with self._tracer.start_as_current_span("headwater.publish.flush"):
            self.transport.flush(timeout)
            if self.heads is not None:
                self.heads.attest()

    def close(self) -> None:
        with self._tracer.start_as_current_span("headwater.publish.close"):
            try:
                if self.heads is not None:
                    self.transport.flush()
                    self.heads.attest(final=True)
            finally:
                self.transport.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


Build = Callable[[], Message | list[Message | Exception]]
_STOP = object()


class Failures:
    """What failed on a publishing worker, kept (the first five messages and a count) until
    the next flush or close raises it (thread-safe)."""

    def __init__(self) -> None:
        self._errors: list[str] = []
        self._failed = 0
        self._lock = threading.Lock()

    def add(self, exc: BaseException | str) -> None:
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._failed += 1
            if len(self._errors) < 5:
                self._errors.append(text)

    def take(self) -> tuple[int, list[str]]:
        """(count, messages) so far, and forget them."""
        with self._lock:
            failed, errors = self._failed, self._errors
            self._failed, self._errors = 0, []
        return failed, errors


def raise_failures(failed: int, errors: list[str], where: str = "the publishing worker"
                   ) -> None:
    """PublishError naming `failed` failures (their first messages), if any."""
    if failed:
        more = f" (and {failed - len(errors)} more)" if failed > len(errors) else ""
        raise PublishError(f"{failed} event(s) failed on {where}: " + "; ".join(errors) + more)


class BackgroundPublisher:
    """Builds payloads, chains and sends them on one worker thread, in submission order.

    The queue holds at most `max_pending` payloads not yet built: a trainer that outruns
    the worker waits in `submit` (back-pressure; memory stays bounded). A payload that
    fails to build or send does not stop the worker; `flush` (and `close`) wait for
    everything submitted so far and raise PublishError naming the failures. Publish every
    event of the producer through it (a Tracker too: it is callable), so the hash chain
    follows submission order. A build may return a list of payloads (a capture's group
    of steps, projected together): they are published in order, as one queue entry; an
    exception in that list is a failure of that entry alone, raised at flush.
    """

    def __init__(self, publisher: Publisher, max_pending: int = 64) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.publisher = publisher
        self._queue: queue.Queue[object] = queue.Queue(max_pending)
        self._failures = Failures()
        self._closed = False
        self._before_flush: list[Callable[[], None]] = []
        self._worker = threading.Thread(target=self._run, name="headwater-publish",
                                        daemon=True)
        self._worker.start()

    def submit(self, build: Build) -> None:
        """Queue build() to be built and published by the worker (blocks while full)."""
        if self._closed:
            raise PublishError("BackgroundPublisher is closed")
        # the caller's trace context (a training step's span) goes with it to the worker
        self._queue.put((build, otel_context.get_current()))

    def __call__(self, payload: Message) -> None:
        """Queue an already built payload (the plain publish-callable form)."""
        self.submit(lambda: payload)

    def before_flush(self, drain: Callable[[], None]) -> None:
        """Call `drain` at the start of every flush and close (on the caller's thread): a
        capture that holds steps back to project them as a group submits them there."""
        self._before_flush.append(drain)

    def _drain(self) -> None:
        for drain in self._before_flush:
            drain()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._queue.task_done()
                return
            try:
                self._publish(cast(tuple[Build, otel_context.Context], item))
            except Exception as exc:  # noqa: BLE001 - kept and raised at flush
                self._failure(exc)
            finally:
                del item  # what a job holds (a group of steps) is freed now, not at the next
                self._queue.task_done()

    def _publish(self, item: tuple[Build, otel_context.Context]) -> None:
        """Build one queue entry's payload(s) and publish them, in the submitter's context."""
        build, context = item
        token = otel_context.attach(context)
        try:
            built = build()
            for payload in built if isinstance(built, list) else [built]:
                if isinstance(payload, Exception):  # one entry of a group failed
                    self._failure(payload)
                else:
                    self.publisher.publish(payload)
        finally:
            otel_context.detach(token)

    def _failure(self, exc: Exception) -> None:
        self._failures.add(exc)

    def _raise_errors(self) -> None:
        raise_failures(*self._failures.take())

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every submitted payload is published and stored; raise PublishError
        for any that failed."""
        self._drain()
        self._queue.join()
        self._raise_errors()
        self.publisher.flush(timeout)

    def close(self) -> None:
        """Flush, then stop the worker (the wrapped Publisher stays open)."""
        if self._closed:
            return
        try:
            self._drain()
            self._queue.join()
            self._raise_errors()
        finally:
            self._closed = True
            self._queue.put(_STOP)
            self._worker.join()
        self.publisher.flush()

    def __enter__(self) -> BackgroundPublisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
