"""The unlearning listener: applies forget requests where the model lives, between steps.

    listener = UnlearningListener(publisher, "127.0.0.1:50051", model_id="clf",
                                  dataset=train, apply=my_apply, capture=capture)
    for step, rows in enumerate(batches_of_row_indices):
        rows = listener.keep(rows)              # forgotten rows never train again
        ...                                     # the normal training step
        listener.poll()                         # applies new requests, publishes outcomes

`apply(rows, request)` receives the dataset rows (indices into `dataset`) that the request
removes and must change the model (e.g. `headwater.producers.unlearning.unlearn`) and return
an `Outcome`. The listener publishes `UnlearningApplied` (with a new model version when a
capture is attached). Requests come from the service's `Unlearning.Pending`, which reads the
event log: a request counts as done only once its `UnlearningApplied` is stored, so a
restarted trainer re-reads every request, learns which rows are already forgotten, and
applies only what was not applied yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from headwater.producers.capture import Recorder
from headwater.producers.tracking import Tracker
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc


@dataclass(frozen=True)
class Outcome:
    """What applying a request did to the model."""

    verification: events_pb2.Verification
    method: int = events_pb2.UNLEARNING_METHOD_UNSPECIFIED  # NEWTON / FINE_TUNE


Apply = Callable[[np.ndarray, events_pb2.ForgetRequested], Outcome]


class UnlearningListener:
    """Consumes one run's forget requests for one model and applies them in order."""

    def __init__(self, publisher: Any, target: str, *, model_id: str, dataset: Any,
                 apply: Apply, capture: Recorder | None = None, min_interval: float = 1.0,
                 timeout: float = 60.0) -> None:
        self.publisher = publisher
        self.model_id = model_id
        self.node_id = _node_of(dataset)
        self.apply = apply
        self.capture = capture
        self.min_interval = min_interval
        self.timeout = timeout
        self._stub = query_pb2_grpc.UnlearningStub(grpc.insecure_channel(target))
        self._last_poll = float("-inf")
        self.forgotten = np.zeros(0, dtype=np.int64)
        self.applied: list[events_pb2.UnlearningApplied] = []
        self.applied_ids: set[str] = set()
        for item in self._pending(include_applied=True):  # a restart: what is gone stays gone
            if item.applied:
                self.applied_ids.add(item.request.request_id)
                self.forgotten = np.union1d(self.forgotten, self._rows(item))

    def _pending(self, include_applied: bool = False) -> list[query_pb2.PendingForget]:
        # Publish what the trainer sent so far first: the service reads the stored log.
        self.publisher.flush()
        response = self._stub.Pending(query_pb2.PendingRequest(
            run_id=self.publisher.run_id, model_id=self.model_id, node_ids=[self.node_id],
            include_applied=include_applied), timeout=self.timeout)
        return list(response.requests)

    def _rows(self, item: query_pb2.PendingForget) -> np.ndarray:
        keys = item.rows
        nodes = [keys.node_ids[i] for i in keys.node_index] if keys.node_index else \
            [keys.node_ids[0]] * len(keys.rows) if keys.rows else []
        return np.unique(np.array([r for n, r in zip(nodes, keys.rows, strict=True)
                                   if n == self.node_id], dtype=np.int64))

    def keep(self, rows: Any) -> np.ndarray:
        """`rows` (dataset row indices) without the forgotten ones."""
        rows = np.asarray(rows, dtype=np.int64)
        return rows[~np.isin(rows, self.forgotten)]

    def poll(self, force: bool = False) -> list[events_pb2.UnlearningApplied]:
        """Apply every new request (at most every `min_interval` seconds unless forced)."""
        now = time.monotonic()
        if not force and now - self._last_poll < self.min_interval:
            return []
        self._last_poll = now
        done = []
        for item in self._pending():
            if item.request.request_id in self.applied_ids:
                continue
            done.append(self._apply(item))
        return done

    def _apply(self, item: query_pb2.PendingForget) -> events_pb2.UnlearningApplied:
        request = item.request
        rows = self._rows(item)
        new = np.setdiff1d(rows, self.forgotten)
        previous = self.capture.version if self.capture else ""
        started = time.perf_counter()
        event = events_pb2.UnlearningApplied(
            request_id=request.request_id, model_id=self.model_id,
            previous_version=previous, rows_forgotten=len(new))
        if len(new) == 0:  # nothing left to remove: the model is not touched
            event.status = event.ALREADY_APPLIED
            event.new_version = previous
        else:
            try:
                outcome = self.apply(new, request)
            except Exception as exc:  # noqa: BLE001 - reported on the log, then re-raised
                event.status = event.FAILED
                event.error = f"{type(exc).__name__}: {exc}"
                event.duration_seconds = time.perf_counter() - started
                self.publisher.publish(event)
                self.publisher.flush()
                raise
            event.status = event.APPLIED
            event.method = outcome.method
            event.verification.CopyFrom(outcome.verification)
            self.forgotten = np.union1d(self.forgotten, new)
            if self.capture is not None:
                event.new_version = self.capture.record_version(
                    config={"unlearned": request.request_id})
        event.duration_seconds = time.perf_counter() - started
        self.publisher.publish(event)
        self.publisher.flush()
        self.applied_ids.add(request.request_id)
        self.applied.append(event)
        return event


def _node_of(dataset: Any) -> str:
    if isinstance(dataset, str):
        return dataset
    tracker = getattr(dataset, "tracker", None) or getattr(dataset, "_hw_tracker", None)
    if isinstance(tracker, Tracker):
        return tracker.node_of(dataset) if hasattr(dataset, "_hw_node") else dataset.node_id
    node = getattr(dataset, "node_id", None)
    if isinstance(node, str) and node:
        return node
    raise TypeError("dataset must be a tracked array/tensor/frame or a lineage node id; got "
                    f"{type(dataset).__name__}")
