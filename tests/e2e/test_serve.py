"""`headwater serve` end to end: GrpcTransport in, SQL and gRPC out, log checks."""

from __future__ import annotations

import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import Serve, free_port, run_headwater
from headwater.producers import GrpcTransport, Publisher, PublishError
from headwater.producers.envelope import EnvelopeBuilder, event_hash
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc


def _source(i: int) -> events_pb2.SourceRegistered:
    return events_pb2.SourceRegistered(
        source_id=f"hospital-{i}", uri=f"file:///data/hospital_{i}.csv",
        content_sha256=f"{i:064x}", row_count=10 * i, format="csv", origin="test",
        schema=[events_pb2.Column(name="x", dtype="float64")],
    )


def _sql(serve: Serve, query: str) -> list[dict]:
    done = serve.cli("sql", query, "--format", "json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_events_published_over_grpc_are_stored_and_queryable(serve: Serve) -> None:
    with Publisher(GrpcTransport(serve.target, batch_size=7), run_id="run-1") as pub:
        events = [pub.publish(_source(i)) for i in range(25)]
    rows = _sql(serve, "SELECT count() AS n, uniqExact(event_id) AS ids FROM events FINAL")
    assert rows == [{"n": 25, "ids": 25}]
    stored = _sql(serve, "SELECT event_id FROM events FINAL ORDER BY seq")
    assert [r["event_id"] for r in stored] == [e.event_id for e in events]

    channel = grpc.insecure_channel(serve.target)
    lineage = query_pb2_grpc.LineageStub(channel)
    source = lineage.GetSource(query_pb2.GetSourceRequest(source_id="hospital-3"))
    assert (source.uri, source.row_count, source.run_id) == ("file:///data/hospital_3.csv", 30,
                                                             "run-1")
    assert source.event_id == events[3].event_id
    with pytest.raises(grpc.RpcError) as err:
        lineage.GetSource(query_pb2.GetSourceRequest(source_id="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(lineage.Sources(query_pb2.SourcesRequest(run_id="run-1")).sources) == 25


def test_republishing_the_same_events_keeps_one_row_each(serve: Serve) -> None:
    builder = EnvelopeBuilder("run-2")
    raws = [builder.wrap(_source(i)) for i in range(10)]
    for _ in range(3):
        t = GrpcTransport(serve.target)
        for e in raws:
            t.send(e.run_id, e.event_id, e.SerializeToString(deterministic=True))
        t.close()
    assert _sql(serve, "SELECT count() AS n FROM events FINAL") == [{"n": 10}]


def test_rejected_event_raises_and_is_dead_lettered(serve: Serve) -> None:
    t = GrpcTransport(serve.target)
    good = EnvelopeBuilder("run-3").wrap(_source(1))
    t.send("run-3", "bad", b"\xff\xff not an event")
    t.send("run-3", good.event_id, good.SerializeToString(deterministic=True))
    with pytest.raises(PublishError, match="1 event\\(s\\) rejected.*bad: undecodable") as err:
        t.flush()
    assert err.value.failed_event_ids == ["bad"]
    assert _sql(serve, "SELECT count() AS n FROM events FINAL") == [{"n": 1}]
    dead = _sql(serve, "SELECT transport, error FROM dead_letters FINAL")
    assert len(dead) == 1 and dead[0]["transport"] == "grpc"


def test_client_streaming_publish_acks_every_event(serve: Serve) -> None:
    builder = EnvelopeBuilder("run-4")
    batches = [query_pb2.EventBatch(events=[builder.wrap(_source(i)).SerializeToString()
                                            for i in range(b * 5, b * 5 + 5)]) for b in range(3)]
    batches[1].events.append(b"junk")
    stub = query_pb2_grpc.IngestStub(grpc.insecure_channel(serve.target))
    response = stub.Publish(iter(batches))
    assert (response.accepted, response.rejected) == (15, 1)
    assert [a.index for a in response.acks] == list(range(16))
    assert response.acks[10].status == query_pb2.EventAck.REJECTED


def test_report_names_what_is_wrong(serve: Serve) -> None:
    report = query_pb2_grpc.ComplianceStub(grpc.insecure_channel(serve.target)).Report
    calls = [
        (query_pb2.ReportRequest(), grpc.StatusCode.INVALID_ARGUMENT, "model_id is empty"),
        (query_pb2.ReportRequest(model_id="m"), grpc.StatusCode.NOT_FOUND,
         "model 'm' has no recorded versions"),
    ]
    for request, code, message in calls:
        with pytest.raises(grpc.RpcError) as err:
            report(request)
        assert err.value.code() == code
        assert message in err.value.details()


def test_health_and_reflection(serve: Serve) -> None:
    channel = grpc.insecure_channel(serve.target)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "headwater.v1.Ingest", "headwater.v1.Lineage"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
            health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(stub.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answer.list_services_response.service}
    assert {"headwater.v1.Ingest", "headwater.v1.Lineage", "headwater.v1.Compliance"} <= names


def test_sql_is_read_only(serve: Serve) -> None:
    done = serve.cli("sql", "DROP TABLE events")
    assert done.returncode == 2 and "only reads are accepted" in done.stderr
    assert {"name": "events"} in _sql(serve, "SHOW TABLES")


def _send(serve: Serve, events: list[events_pb2.Event]) -> None:
    t = GrpcTransport(serve.target)
    for e in events:
        t.send(e.run_id, e.event_id, e.SerializeToString(deterministic=True))
    t.close()


def test_status_reports_an_intact_log(serve: Serve) -> None:
    builder = EnvelopeBuilder("run-ok")
    _send(serve, [builder.wrap(_source(i)) for i in range(4)])
    done = serve.cli("status", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["log_ok"] and report["events_by_type"] == {"source_registered": 4}


def test_status_detects_a_seq_gap_and_a_broken_chain(serve: Serve) -> None:
    a = EnvelopeBuilder("run-x", "producer-gap")
    gap = [a.wrap(_source(i)) for i in range(5)]
    del gap[2]  # seq 3 never arrives
    b = EnvelopeBuilder("run-x", "producer-break")
    broken = [b.wrap(_source(i)) for i in range(4)]
    broken[2].prev_hash = bytes(32)  # links to the wrong predecessor, yet hashes itself right
    broken[2].hash = event_hash(broken[2])
    _send(serve, gap + broken)
    done = serve.cli("status", "--json")
    assert done.returncode == 1
    reported = json.loads(done.stdout)["problems"]
    problems = {(p["producer_id"], p["kind"], p["seq"]) for p in reported}
    assert ("producer-gap", "gap", 3) in problems
    assert ("producer-break", "break", 3) in problems
    # seq 4 still names the original seq 3 as its predecessor: the link after it breaks too
    assert ("producer-break", "break", 4) in problems
    assert ("producer-break", "break", 2) not in problems
    text = serve.cli("status")
    assert "gap" in text.stdout and "break" in text.stdout and text.returncode == 1

    verify = query_pb2_grpc.ComplianceStub(grpc.insecure_channel(serve.target)).VerifyLog(
        query_pb2.VerifyLogRequest(run_id="run-x", recompute_hashes=True))
    assert not verify.ok and {p.kind for p in verify.problems} == {"gap", "break"}
    assert {p.producer_id: p.events for p in verify.producers} == {
        "producer-gap": 4, "producer-break": 4}


def test_second_serve_on_the_same_dir_is_refused(serve: Serve) -> None:
    done = run_headwater("serve", "--data-dir", str(serve.data_dir), "--listen",
                         f"127.0.0.1:{free_port()}", timeout=60)
    assert done.returncode == 2
    # serve records its gRPC address in the lock: the refusal names where to go instead
    assert f"in use by headwater serve (pid {serve.proc.pid}" in done.stderr, done.stderr
    assert f"--listen {serve.target}" in done.stderr and "Traceback" not in done.stderr
    assert _sql(serve, "SELECT 1 AS one") == [{"one": 1}]  # the first server keeps working
