"""The unlearning listener: applies forget requests where the model lives, between steps.

    listener = UnlearningListener(publisher, "127.0.0.1:50051", model_id="clf",
                                  dataset=train, apply=Unlearner(model, x, y), capture=capture)
    for step, rows in enumerate(batches_of_row_indices):
        rows = listener.keep(rows)              # forgotten rows never train again
        ...                                     # the normal training step
        listener.poll()                         # applies new requests, publishes outcomes

`apply(rows, request)` receives the dataset rows (indices into `dataset`) that the request
removes, must change the model and return an `Outcome`; `Unlearner(model, x, y, ...)` is the
standard one (`headwater.producers.unlearning.unlearn` on those rows). The listener
publishes `UnlearningApplied` (with a new model version when a capture is attached).

Roles (docs/security.md): the server accepts `UnlearningApplied` only from a token of role
`unlearner`, which may publish nothing else, and a trainer's `producer` token may not publish
it. So the listener publishes outcomes through a publisher of its own: `GrpcTransport` to
`target` with the listener's `token` (its own hash chain, producer id
`<trainer producer id>.unlearning-<random>`, the same run). The new model version stays on the
trainer's publisher. Where the service has no Ingest (Kafka mode, `headwater query-service`),
pass `outcomes=` a ready publisher (e.g. a `KafkaTransport` one).
Requests come from the service's `Unlearning.Pending`, which reads the event log: a request
counts as done only once its `UnlearningApplied` is stored, so a restarted trainer re-reads
every request, learns which rows are already forgotten, and applies only what was not
applied yet.

After the trainer records a later version, `listener.reverify()` measures the applied
requests' verification again on that version and publishes it (status REVERIFIED), so an
evidence report for that version shows figures measured there.

A request whose `apply` raises is published FAILED (the error says which attempt, and when
the next one is due) and the exception re-raised to the caller of `poll`; later polls try it
again after `retry_after` seconds, doubling each time, `max_attempts` times in all, then
leave it (FAILED on the log, a warning logged) until the listener is made again.
"""

from __future__ import annotations

import copy
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headwater.producers.capture.linear import LinearCapture
from headwater.producers.capture.recorder import Recorder
from headwater.producers.checkpoints import Checkpoint, Checkpoints
from headwater.producers.publisher import Publisher
from headwater.producers.tracking.tracker import Tracker
from headwater.producers.transports.channel import (
    open_channel,
    read_token_file,
    security_from_env,
)
from headwater.producers.transports.grpc import GrpcTransport
from headwater.producers.unlearning.api import unlearn, verify
from headwater.producers.unlearning.choice import choose_method
from headwater.producers.unlearning.linear import LinearModel
from headwater.producers.unlearning.recipe import Recipe
from headwater.producers.unlearning.replay import (
    LoadRows,
    Step,
    plan_partial,
    plan_replay,
    replay_forget,
)
from headwater.producers.unlearning.rows import Rows
from headwater.producers.unlearning.verification import gap_closed
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

log = logging.getLogger("headwater.unlearning")


@dataclass(frozen=True)
class Outcome:
    """What applying a request did to the model: the verification, the method that ran and
    why, its cost (replay: the estimate before, the steps replayed; approximate: the Newton
    and fine-tune steps), and the model when it is a new object (a LinearModel)."""

    verification: events_pb2.Verification
    method: int = events_pb2.UNLEARNING_METHOD_UNSPECIFIED  # NEWTON / FINE_TUNE / REPLAY
    model: Any = None
    reason: str = ""
    estimated_replay_steps: int = 0
    estimated_replay_seconds: float = 0.0
    steps_replayed: int = 0
    checkpoint_uri: str = ""
    newton_steps: int = 0
    fine_tune_steps: int = 0

    def record(self, event: events_pb2.UnlearningApplied) -> None:
        """Copy the method, reason, cost and verification into `event`."""
        event.method = self.method
        event.verification.CopyFrom(self.verification)
        event.method_reason = self.reason
        event.estimated_replay_steps = self.estimated_replay_steps
        event.estimated_replay_seconds = self.estimated_replay_seconds
        event.steps_replayed = self.steps_replayed
        event.checkpoint_uri = self.checkpoint_uri
        event.newton_steps = self.newton_steps
        event.fine_tune_steps = self.fine_tune_steps


Apply = Callable[[np.ndarray, events_pb2.ForgetRequested], Outcome]


class Unlearner:
    """The standard `apply`: unlearn the requested rows, read from the trainer's own training
    data (x, y) (dataset row i is (x[i], y[i])), with every row forgotten so far kept out of
    the retained set. The model is changed in place (torch) or replaced (`.model`, a
    LinearModel is immutable). A request asking `verify_with_retrain` retrains from scratch:
    LinearModel refits itself; a torch model needs `retrain(x_kept, y_kept)`.

    With `checkpoints` (the trainer's `headwater.producers.checkpoints.Checkpoints` hook, on
    this model) a request can be applied exactly by replay: method REPLAY, or auto when the
    replay's estimated seconds are within `replay_budget` (else the approximate method, with
    the reason recorded). `load_rows(keys)` gives the replay the (x, y) of dataset rows
    (default: x[keys], y[keys]); `step(model, optimizer, x, y)` the trainer's step (default:
    `replay.train_step` with the hook's recipe). The approximate methods target the hook's
    recipe (or `recipe=`): the trainer's own objective without the rows."""

    def __init__(self, model: Any, x: Any, y: Any, *, test: Rows | None = None,
                 held_out: Rows | None = None,
                 retrain: Callable[[Any, Any], Any] | None = None,
                 checkpoints: Checkpoints | None = None, replay_budget: float = 60.0,
                 load_rows: LoadRows | None = None, step: Step | None = None,
                 recipe: Recipe | None = None, **options: Any) -> None:
        self.model = model
        self.x, self.y = _rows_of(x), _rows_of(y)
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)}")
        if checkpoints is not None and checkpoints.model is not model:
            raise ValueError("the checkpoint hook holds another model than this Unlearner's; "
                             "a replay restores into the hook's model")
        if not (isinstance(replay_budget, (int, float)) and replay_budget >= 0):
            raise ValueError(f"replay_budget must be seconds >= 0; got {replay_budget!r}")
        self.test, self.held_out, self.retrain, self.options = test, held_out, retrain, options
        self.checkpoints, self.replay_budget, self.step = checkpoints, float(replay_budget), step
        self.load_rows = load_rows or (lambda keys: (self.x[keys], self.y[keys]))
        self.recipe = recipe if recipe is not None else \
            checkpoints.recipe if checkpoints is not None else None
        self.gone = np.zeros(0, dtype=np.int64)
        self.approximate = np.zeros(0, dtype=np.int64)  # removed only approximately so far
        self.results: list[Any] = []  # UnlearnResult or ReplayReport per applied request

    def __call__(self, rows: np.ndarray, request: events_pb2.ForgetRequested) -> Outcome:
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self.x)):
            raise IndexError(f"request {request.request_id} names dataset rows up to "
                             f"{rows.max()} but the trainer holds {len(self.x)}")
        keep = np.setdiff1d(np.arange(len(self.x)), np.union1d(rows, self.gone))
        retrain: Any = False
        if request.verify_with_retrain:
            if isinstance(self.model, LinearModel):
                retrain = True
            elif self.retrain is not None:
                fn = self.retrain
                retrain = lambda: fn(self.x[keep], self.y[keep])  # noqa: E731
            else:
                raise ValueError("the request asks verify_with_retrain but this Unlearner was "
                                 "given no retrain(x, y) for its torch model")
        plan = plan_replay(self.checkpoints, rows) if self.checkpoints is not None else None
        if plan is not None and len(self.approximate):
            # a replay restores a checkpoint that may predate an earlier approximate
            # removal: it starts early enough to remove those rows exactly too
            plan = plan_replay(self.checkpoints, np.union1d(rows, self.approximate)) \
                if plan.first_use is not None else plan
        if plan is not None and plan.first_use is None and self._logged_from_the_start() \
                and request.method in (events_pb2.UNLEARNING_METHOD_UNSPECIFIED,
                                       events_pb2.REPLAY):
            # the journal covers every step and none used these rows: the model never saw
            # them, so nothing is changed (a correction would remove what was never there)
            assert self.checkpoints is not None
            self.gone = np.union1d(self.gone, rows)
            v = verify(self.model, self.model, (self.x[rows], self.y[rows]), self.test,
                       self.held_out, task=self.checkpoints.task)
            return Outcome(v, events_pb2.UNLEARNING_METHOD_UNSPECIFIED, None,
                           "nothing to remove: no logged step used these rows (they stay "
                           "out of later training)")
        partial = None
        if plan is not None and plan.first_use is not None and (
                not plan.possible or plan.estimated_seconds > self.replay_budget
                or request.method == events_pb2.PARTIAL_REPLAY):
            assert self.checkpoints is not None
            partial = plan_partial(self.checkpoints, np.union1d(rows, self.approximate),
                                   self.replay_budget)
        choice = choose_method(
            request.method, replay_possible=plan is not None and plan.possible,
            why_not=plan.reason if plan is not None else "",
            estimated_steps=plan.steps if plan is not None else 0,
            estimated_seconds=plan.estimated_seconds if plan is not None else 0.0,
            budget_seconds=self.replay_budget if self.checkpoints is not None else None,
            partial=(partial.checkpoint.step, partial.steps, partial.estimated_seconds)
            if partial is not None and partial.checkpoint is not None else None)
        estimate: dict[str, Any] = {
            "estimated_replay_steps": plan.steps if plan else 0,
            "estimated_replay_seconds": plan.estimated_seconds if plan else 0.0}
        if choice.method == events_pb2.REPLAY:
            outcome = self._replay(rows, keep, retrain, choice.reason, estimate)
        elif choice.method == events_pb2.PARTIAL_REPLAY:
            assert partial is not None and partial.checkpoint is not None
            outcome = self._replay(rows, keep, retrain, choice.reason, estimate,
                                   start=partial.checkpoint)
        else:
            result = unlearn(self.model, (self.x[rows], self.y[rows]),
                             (self.x[keep], self.y[keep]), test=self.test,
                             held_out=self.held_out, method=choice.method, retrain=retrain,
                             inplace=True, recipe=self.recipe, **self.options)
            self.model = result.model
            self.results.append(result)
            if self.checkpoints is not None:
                self.approximate = np.union1d(self.approximate, rows)
            outcome = Outcome(result.verification, result.method, result.model, choice.reason,
                              newton_steps=int(result.detail.get("newton_steps", 0)),
                              fine_tune_steps=int(result.detail.get("fine_tune_steps", 0)),
                              **estimate)
        self.gone = np.union1d(self.gone, rows)
        return outcome

    def reverify(self, rows: np.ndarray, request: events_pb2.ForgetRequested,
                 first: events_pb2.Verification) -> events_pb2.Verification:
        """The request's figures measured again on the model as it is now (a later version):
        forget-set loss, test accuracy and membership AUC after; the "before" figures are
        the first measurement's (the model before the erasure is not kept); with
        verify_with_retrain, the comparison with a model retrained now without every row
        forgotten so far. Parameter distance is not measured (NaN): it needs that model."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            raise ValueError(f"request {request.request_id}: no rows to verify")
        keep = np.setdiff1d(np.arange(len(self.x)), np.union1d(rows, self.gone))
        retrain: Callable[[], Any] | None = None
        if request.verify_with_retrain:
            model = self.model
            if isinstance(model, LinearModel):
                def refit() -> LinearModel:
                    return LinearModel.fit(self.x[keep], self.y[keep], l2=model.l2,
                                           task=model.task)
                retrain = refit
            elif self.retrain is not None:
                fn = self.retrain
                retrain = lambda: fn(self.x[keep], self.y[keep])  # noqa: E731
        task = (self.model.task if isinstance(self.model, LinearModel) else
                self.checkpoints.task if self.checkpoints is not None else
                self.options.get("task") or "classification")
        now = verify(self.model, self.model, (self.x[rows], self.y[rows]), self.test,
                     self.held_out, retrain=retrain, task=task)
        v = events_pb2.Verification()
        v.CopyFrom(now)  # the "after" and retrain figures, at this version
        v.forget_loss_before = first.forget_loss_before
        v.test_accuracy_before = first.test_accuracy_before
        v.membership_auc_before = first.membership_auc_before
        v.parameter_distance = float("nan")
        if v.retrained:
            v.gap_closed = gap_closed(first.forget_loss_before, now.forget_loss_after,
                                      now.retrain_forget_loss)
        return v

    def _logged_from_the_start(self) -> bool:
        """The hook's journal holds every step since step 0 (not attached mid-run)."""
        steps = self.checkpoints.steps if self.checkpoints is not None else {}
        return bool(steps) and min(steps) == 0

    def _replay(self, rows: np.ndarray, keep: np.ndarray, retrain: Any, reason: str,
                estimate: dict[str, Any], start: Checkpoint | None = None) -> Outcome:
        """Exact replay, or with `start` (a checkpoint after the rows' first use) the
        partial one, whose rows stay in the earlier checkpoints (so a later replay starts
        before their first use)."""
        assert self.checkpoints is not None
        before = copy.deepcopy(self.model)
        targets = np.union1d(rows, self.approximate)
        report = replay_forget(self.checkpoints, np.union1d(rows, self.gone), self.load_rows,
                               rows=targets, step=self.step, start=start)
        self.approximate = targets if start is not None else np.zeros(0, dtype=np.int64)
        self.results.append(report)
        v = verify(before, self.model, (self.x[rows], self.y[rows]), self.test,
                   self.held_out, retrain=retrain or None,
                   task=self.checkpoints.task)
        method = events_pb2.REPLAY if start is None else events_pb2.PARTIAL_REPLAY
        return Outcome(v, method, None, reason, steps_replayed=report.steps_replayed,
                       checkpoint_uri=report.checkpoint_uri, **estimate)


def _rows_of(a: Any) -> Any:
    """A tracked array becomes a plain one; tensors stay tensors (row indexing is the same)."""
    return a if hasattr(a, "detach") else np.asarray(a)


UNLEARNER_TOKEN_ENV = "HEADWATER_UNLEARNER_TOKEN"
UNLEARNER_TOKEN_FILE_ENV = "HEADWATER_UNLEARNER_TOKEN_FILE"


def _listener_token(token: str | None) -> str | None:
    """`token`, else HEADWATER_UNLEARNER_TOKEN / _FILE; None leaves the choice to the
    channel (HEADWATER_TOKEN / HEADWATER_TOKEN_FILE)."""
    if token is not None:
        return token
    if os.environ.get(UNLEARNER_TOKEN_ENV):
        return os.environ[UNLEARNER_TOKEN_ENV]
    if os.environ.get(UNLEARNER_TOKEN_FILE_ENV):
        return read_token_file(Path(os.environ[UNLEARNER_TOKEN_FILE_ENV]),
                               UNLEARNER_TOKEN_FILE_ENV)
    return None


def outcomes_producer_id(trainer: str) -> str:
    """The producer id of a listener's own outcomes publisher: the trainer's, so an auditor
    links the two, plus a random suffix, so two listeners (or a listener made again in the
    same process) never share a hash chain."""
    return f"{trainer}.unlearning-{secrets.token_hex(4)}"


class UnlearningListener:
    """Consumes one run's forget requests for one model and applies them in order.

    `publisher` is the trainer's (its run id, the events published so far, the new model
    versions). Outcomes (`UnlearningApplied`) go through `outcomes` when given, else through
    a publisher of the listener's own over gRPC to `target`. `token` needs role `unlearner`
    (Unlearning.Pending and UnlearningApplied only); it defaults to HEADWATER_UNLEARNER_TOKEN
    / HEADWATER_UNLEARNER_TOKEN_FILE, then HEADWATER_TOKEN / HEADWATER_TOKEN_FILE;
    `tls_ca_file` to HEADWATER_TLS_CA_FILE. `close()` closes what the listener opened."""

    def __init__(self, publisher: Any, target: str, *, model_id: str, dataset: Any,
                 apply: Apply, capture: Recorder | None = None, min_interval: float = 1.0,
                 timeout: float = 60.0, tls_ca_file: str | None = None,
                 token: str | None = None, outcomes: Any = None, max_attempts: int = 3,
                 retry_after: float = 30.0) -> None:
        if max_attempts < 1 or retry_after < 0:
            raise ValueError(f"max_attempts must be >= 1 and retry_after >= 0; got "
                             f"{max_attempts} and {retry_after}")
        token = _listener_token(token)
        self.publisher = publisher
        self._own_outcomes = outcomes is None
        self.outcomes = outcomes if outcomes is not None else Publisher(
            GrpcTransport(target, tls_ca_file=tls_ca_file, token=token, timeout=timeout),
            run_id=publisher.run_id, producer_id=outcomes_producer_id(publisher.producer_id))
        self.model_id = model_id
        self.node_id = _node_of(dataset)
        self.apply = apply
        self.capture = capture
        self.min_interval = min_interval
        self.timeout = timeout
        self.max_attempts, self.retry_after = max_attempts, retry_after
        self.failures: dict[str, tuple[int, float]] = {}  # request id -> (attempts, next at)
        self._channel = open_channel(target, security_from_env(tls_ca_file=tls_ca_file,
                                                               token=token))
        self._stub = query_pb2_grpc.UnlearningStub(self._channel)
        self._last_poll = float("-inf")
        self.forgotten = np.zeros(0, dtype=np.int64)
        self.applied: list[events_pb2.UnlearningApplied] = []
        self.applied_ids: set[str] = set()
        self.reverified: list[events_pb2.UnlearningApplied] = []
        # request id -> (its rows, the request, its first figures, where last measured):
        # the requests this listener applied, which reverify() measures again
        self._measured: dict[str, tuple[np.ndarray, events_pb2.ForgetRequested,
                                        events_pb2.Verification, str]] = {}
        for item in self._pending(include_applied=True):  # a restart: what is gone stays gone
            if item.applied:
                self.applied_ids.add(item.request.request_id)
                self.forgotten = np.union1d(self.forgotten, self._rows(item))

    def close(self) -> None:
        """Close the channel and the outcomes publisher the listener opened (not a publisher
        passed as `outcomes`, nor the trainer's)."""
        try:
            if self._own_outcomes:
                self.outcomes.close()
        finally:
            self._channel.close()

    def __enter__(self) -> UnlearningListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _publish(self, event: events_pb2.UnlearningApplied) -> None:
        """The outcome, after everything the trainer published for it (the new version)."""
        self.publisher.flush()
        self.outcomes.publish(event)
        self.outcomes.flush()

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
            rid = item.request.request_id
            if rid in self.applied_ids:
                continue
            attempts, due = self.failures.get(rid, (0, now))
            if attempts >= self.max_attempts or now < due:
                continue  # given up, or backing off: never a tight loop over a failure
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
                attempts = self.failures.get(request.request_id, (0, 0.0))[0] + 1
                wait = self.retry_after * 2 ** (attempts - 1)
                self.failures[request.request_id] = (attempts, time.monotonic() + wait)
                then = (f"next in {wait:g} s" if attempts < self.max_attempts
                        else "not tried again")
                log.warning("forget request %s failed (attempt %d of %d, %s): %s",
                            request.request_id, attempts, self.max_attempts, then, exc)
                event.status = event.FAILED
                event.error = (f"{type(exc).__name__}: {exc} (attempt {attempts} of "
                               f"{self.max_attempts}; {then})")
                event.duration_seconds = time.perf_counter() - started
                self._publish(event)
                raise
            event.status = event.APPLIED
            outcome.record(event)
            self.forgotten = np.union1d(self.forgotten, new)
            if isinstance(outcome.model, LinearModel) and isinstance(self.capture,
                                                                      LinearCapture):
                # a torch model changes in place; a LinearModel is a new object, so the
                # capture must learn its parameters before it records the new version
                self.capture.set_parameters(outcome.model.coef, outcome.model.intercept)
            if self.capture is not None:
                event.new_version = self.capture.record_version(
                    config={"unlearned": request.request_id})
                self._measured[request.request_id] = (new, request, outcome.verification,
                                                      event.new_version)
        event.duration_seconds = time.perf_counter() - started
        self._publish(event)
        self.applied_ids.add(request.request_id)
        self.applied.append(event)
        return event


    def reverify(self) -> list[events_pb2.UnlearningApplied]:
        """Measure again, at the version the capture recorded last, the verification of every
        request this listener applied that was last measured at another version, and
        publish each as UnlearningApplied with status REVERIFIED (new_version: that
        version). Call it right after `capture.record_version(...)`: the model must still be
        that version (its parameter hash is checked; ValueError otherwise). Needs a capture
        and an `apply` with a `reverify` method (Unlearner has one); else nothing is done."""
        reverify = getattr(self.apply, "reverify", None)
        if self.capture is None or reverify is None or not self._measured:
            return []
        version = self.capture.version
        if self.capture.parameter_hash() != self.capture.version_hash:
            raise ValueError(f"the model is no longer {version}: its parameters changed after "
                             "the version was recorded; call reverify() right after "
                             "record_version()")
        out = []
        for rid, (rows, request, first, at) in list(self._measured.items()):
            if at == version:
                continue
            started = time.perf_counter()
            event = events_pb2.UnlearningApplied(
                request_id=rid, model_id=self.model_id, previous_version=at,
                new_version=version, status=events_pb2.UnlearningApplied.REVERIFIED,
                verification=reverify(rows, request, first),
                method_reason=f"re-verified at {version} (last measured at {at}); nothing "
                              "removed, the before figures are the first measurement's")
            event.duration_seconds = time.perf_counter() - started
            self._publish(event)
            self._measured[rid] = (rows, request, first, version)
            self.reverified.append(event)
            out.append(event)
        return out


def _node_of(dataset: Any) -> str:
    """The lineage node of a tracked array, tensor or frame (each has `tracker` and
    `node_id`; a deferred derivation is recorded now), or a node id given as a string."""
    if isinstance(dataset, str):
        return dataset
    if isinstance(getattr(dataset, "tracker", None), Tracker):
        node = dataset.node_id
        if isinstance(node, str) and node:
            return node
    raise TypeError("dataset must be a tracked array/tensor/frame or a lineage node id; got "
                    f"{type(dataset).__name__}")
