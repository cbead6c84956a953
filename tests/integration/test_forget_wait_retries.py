"""`headwater forget --wait` follows a request through the listener's retries: a failed
attempt that will be retried is "retrying" (the stream goes on), the next attempt's outcome
ends it; the last failed attempt is "failed" and the command ends with an error saying so."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from headwater.cli import cli
from headwater.errors import HeadwaterError
from headwater.producers import GrpcTransport, Publisher
from headwater.producers.capture import LinearCapture
from headwater.producers.tracking import Tracker, row_keys
from headwater.producers.tracking.sources import track_array
from headwater.producers.unlearning import LinearModel
from headwater.producers.unlearning.listener import Unlearner, UnlearningListener
from headwater.query_service.server.app import build_server
from headwater.query_service.services.unlearning import retry_follows
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def target(store: Store) -> Iterator[str]:
    server, port = build_server(store, "127.0.0.1:0", sink=EventSink(store, "grpc"))
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=2).wait()


def _run(target: str, run_id: str) -> tuple[Publisher, Any, Unlearner]:
    """A run with a tracked 20-row dataset, a fitted model's version and its gradients."""
    publisher = Publisher(GrpcTransport(target), run_id=run_id)
    x = track_array(Tracker(publisher.publish), np.random.default_rng(2).normal(size=(20, 3)),
                    uri=f"memory://{run_id}/data")
    raw = np.asarray(x)
    y = (raw[:, 0] > 0).astype(float)
    model = LinearModel.fit(raw, y, l2=1.0)
    capture = LinearCapture(publisher.publish, "clf", 3)
    capture.set_parameters(model.coef, model.intercept)
    capture.record_version(step=1)
    capture.capture(raw, y, row_keys(x), learning_rate=0.0, featurisation=True)
    publisher.flush()
    return publisher, x, Unlearner(model, raw, y)


def _wait_cli(target: str, run_id: str, node_id: str, results: list[Any]) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(CliRunner().invoke(cli, [
        "forget", "--run", run_id, "--model", "clf", "--rows", f"{node_id}:0-2", "--wait",
        "--timeout", "120", "--json", "--listen", target])), daemon=True)
    thread.start()
    return thread


def _poll_until_done(listener: UnlearningListener, thread: threading.Thread) -> None:
    while thread.is_alive():
        try:
            listener.poll(force=True)
        except RuntimeError:
            pass
        thread.join(0.1)


def _states(output: str) -> list[tuple[str, str]]:
    lines = [json.loads(ln) for ln in output.splitlines() if ln.startswith("{")][1:]
    return [(ln["state"], ln.get("applied", {}).get("error", "")) for ln in lines]


def test_wait_follows_a_retried_request_to_applied(store: Store, target: str) -> None:
    publisher, x, unlearner = _run(target, "run-wait-retry")
    attempts: list[int] = []

    def apply(rows, request):
        attempts.append(len(rows))
        if len(attempts) == 1:
            raise RuntimeError("the model is locked")
        return unlearner(rows, request)

    results: list[Any] = []
    with UnlearningListener(publisher, target, model_id="clf", dataset=x, apply=apply,
                            min_interval=0.0, max_attempts=3, retry_after=0.5) as listener:
        thread = _wait_cli(target, "run-wait-retry", x.node_id, results)
        _poll_until_done(listener, thread)
    (done,) = results
    assert done.exit_code == 0, done.output
    states = _states(done.output)
    assert ("retrying", "RuntimeError: the model is locked (attempt 1 of 3; next in 0.5 s)"
            ) in states, states
    assert states[-1][0] == "applied" and len(attempts) == 2


def test_wait_ends_failed_after_the_last_attempt(store: Store, target: str) -> None:
    publisher, x, _ = _run(target, "run-wait-fail")

    def apply(rows, request):
        raise RuntimeError("the model is locked")

    results: list[Any] = []
    with UnlearningListener(publisher, target, model_id="clf", dataset=x, apply=apply,
                            min_interval=0.0, max_attempts=2, retry_after=0.2) as listener:
        thread = _wait_cli(target, "run-wait-fail", x.node_id, results)
        _poll_until_done(listener, thread)
    (done,) = results
    # `headwater` prints the HeadwaterError as its one-line error and exits 2
    assert isinstance(done.exception, HeadwaterError), done.output
    assert "will not try it again" in str(done.exception)
    assert "attempt 2 of 2; not tried again" in str(done.exception)
    assert [s for s, _ in _states(done.output)][-1] == "failed"


def test_retry_follows_reads_the_listeners_suffix() -> None:
    assert retry_follows("E: x (attempt 1 of 3; next in 30 s)")
    assert retry_follows("E: x (attempt 2 of 3; next in 1e+02 s)")
    assert not retry_follows("E: x (attempt 3 of 3; not tried again)")
    assert not retry_follows("E: x (attempt 3 of 3; next in 1 s)")  # n = N: final
    assert not retry_follows("E: x")  # an outcome from an older listener: final
