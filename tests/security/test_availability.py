"""Availability under slow or idle clients (issue 14, deliverable 5): health checks and unary
calls keep answering while idle streams pile up, streams are capped per role, and idle or
overlong streams are ended."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.secure_serve import TOKENS, SecureServe, source_event, write_tokens

from conftest import run_headwater, stop
from headwater.producers import GrpcTransport, Publisher
from headwater.producers.transports.channel import ClientSecurity, open_channel
from headwater.query_service.server.auth import Role
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

WORKERS = 4  # HEADWATER_RPC_WORKERS: the unary pool
CAP = 3  # HEADWATER_STREAMS_PER_ROLE
IDLE = 3.0  # HEADWATER_STREAM_IDLE_SECONDS
MAX = 6.0  # HEADWATER_STREAM_MAX_SECONDS


@pytest.fixture
def busy(tmp_path: Path) -> Iterator[SecureServe]:
    """serve (plaintext loopback, token auth) with small pools, caps and timeouts."""
    env = {"HEADWATER_AUTH_TOKENS_FILE": str(write_tokens(tmp_path / "tokens")),
           "HEADWATER_RPC_WORKERS": str(WORKERS), "HEADWATER_STREAMS_PER_ROLE": str(CAP),
           "HEADWATER_STREAM_IDLE_SECONDS": str(IDLE),
           "HEADWATER_STREAM_MAX_SECONDS": str(MAX)}
    s = SecureServe(tmp_path / "data", env, tmp_path / "serve.log")
    yield s
    stop(s.proc)


def _channel(serve: SecureServe, role: Role | None) -> grpc.Channel:
    return open_channel(serve.target, ClientSecurity(token=TOKENS[role] if role else None))


def _health_ms(channel: grpc.Channel) -> float:
    stub = health_pb2_grpc.HealthStub(channel)
    start = time.perf_counter()
    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    return (time.perf_counter() - start) * 1000


def _code(call: grpc.Future, timeout: float) -> tuple[grpc.StatusCode, str]:
    try:
        call.result(timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_idle_streams_cannot_starve_health_or_lineage(busy: SecureServe) -> None:
    """Row 9: 8 never-finished Publish (producer) or Status (reader) streams made health and
    lineage time out until they closed (8 worker threads, no cap). Here: 2x the worker pool of
    each kind stays open; health answers within 100 ms, Lineage answers, streams beyond the
    per-role cap are refused at once, idle ones are ended after the idle timeout."""
    with Publisher(GrpcTransport(busy.target, token=TOKENS[Role.PRODUCER]),
                   run_id="avail-run") as pub:
        pub.publish(source_event(1))
    admin = query_pb2_grpc.UnlearningStub(_channel(busy, Role.ADMIN))
    rid = admin.Forget(query_pb2.ForgetRequest(
        run_id="avail-run", model_id="m", target=events_pb2.ForgetTarget(
            source_ids=["clinic-1"])), timeout=30).request_id  # pending: Status stays open

    release = threading.Event()

    def silent() -> Iterator[query_pb2.EventBatch]:
        release.wait(60)  # a client that opens the stream and never sends
        return
        yield

    producer = query_pb2_grpc.IngestStub(_channel(busy, Role.PRODUCER))
    reader = query_pb2_grpc.UnlearningStub(_channel(busy, Role.READER))
    opened = time.monotonic()
    publishes = [producer.Publish.future(silent()) for _ in range(2 * WORKERS)]
    statuses = [reader.Status(query_pb2.UnlearningStatusRequest(request_id=rid))
                for _ in range(2 * WORKERS)]
    try:
        time.sleep(1.0)  # every stream reached the server
        probe = _channel(busy, None)
        slowest = max(_health_ms(probe) for _ in range(5))
        # answered while every stream still held its slot (a starved health check would
        # have waited until the idle timeout ended them): a causal check, not a stopwatch
        still_open = sum(not call.done() for call in publishes)
        assert still_open >= CAP, (
            f"health answered ({slowest:.0f} ms) only after the idle streams were ended")
        lineage = query_pb2_grpc.LineageStub(_channel(busy, Role.READER))
        sources = lineage.Sources(query_pb2.SourcesRequest(), timeout=5)
        assert [s.source_id for s in sources.sources] == ["clinic-1"]

        # beyond the cap: refused at once, naming the cap and its setting
        first = []
        for call in statuses:
            try:
                first.append(next(call).state)
            except grpc.RpcError as exc:
                first.append(exc.code())
                assert "cap 3, HEADWATER_STREAMS_PER_ROLE" in exc.details()
        assert first.count("requested") == CAP
        assert first.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 2 * WORKERS - CAP
        refused = [c for c in publishes if c.done()]
        assert len(refused) == 2 * WORKERS - CAP
        for call in refused:
            code, details = _code(call, 0)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert ("Ingest.Publish: too many concurrent streams for role producer (cap 3, "
                    "HEADWATER_STREAMS_PER_ROLE)") in details

        # idle client streams are ended after the idle timeout, not held forever
        for call in publishes:
            if call not in refused:
                code, details = _code(call, IDLE + 60)
                assert code == grpc.StatusCode.DEADLINE_EXCEEDED, details
                assert "no message for 3 s" in details
                assert "HEADWATER_STREAM_IDLE_SECONDS" in details
        assert time.monotonic() - opened < IDLE + 60  # a ceiling; the codes say who ended them
        # ... and the server streams after their maximum duration
        for call, state in zip(statuses, first, strict=True):
            if state == "requested":
                with pytest.raises(grpc.RpcError) as err:
                    list(call)
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "HEADWATER_STREAM_MAX_SECONDS" in err.value.details()
        assert MAX - 1 < time.monotonic() - opened < MAX + 60  # ended at the maximum
    finally:
        release.set()

    # the slots are free again: a stream that sends its batch is served
    batch = query_pb2.EventBatch(events=[])
    reply = producer.Publish(iter([batch]), timeout=10)
    assert reply.accepted == 0 and reply.rejected == 0
    assert "ended Ingest.Publish: no message for 3 s" in busy.log.read_text()


def test_forget_wait_follows_past_the_stream_maximum(busy: SecureServe) -> None:
    """Row 9 (sibling): the server ends Unlearning.Status after HEADWATER_STREAM_MAX_SECONDS;
    `forget --wait --timeout T` longer than that calls again, and reports its own T."""
    with Publisher(GrpcTransport(busy.target, token=TOKENS[Role.PRODUCER]),
                   run_id="wait-run") as pub:
        pub.publish(source_event(2))
    started = time.monotonic()
    done = run_headwater("forget", "--run", "wait-run", "--model", "m", "--source", "clinic-2",
                         "--wait", "--timeout", str(MAX + 3), "--listen", busy.target,
                         env={"HEADWATER_TOKEN": TOKENS[Role.ADMIN]})
    took = time.monotonic() - started
    assert done.returncode == 2
    assert f"was not applied within {MAX + 3:g} s" in done.stderr, done.stderr
    assert took > MAX + 2, took  # not cut short when the server ended the first stream
    assert done.stdout.count(": requested") == 1  # the state is shown once, not per call
