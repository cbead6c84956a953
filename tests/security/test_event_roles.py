"""Events are bound to roles (issue 14, row 6 and deliverable 2): every cell of the role x
payload matrix through a real `headwater serve` with token auth, and the unlearning listener
publishing its outcomes under the `unlearner` role."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from fuzz.test_fuzz_decoder import KINDS, _valid
from support.secure_serve import TOKENS, SecureServe, write_tokens

from conftest import REPO, Serve, stop
from headwater.producers import GrpcTransport, Publisher, PublishError
from headwater.producers.capture import LinearCapture
from headwater.producers.envelope import EnvelopeBuilder
from headwater.producers.tracking import Tracker, row_keys
from headwater.producers.tracking.sources import load_csv
from headwater.producers.transports.channel import ClientSecurity, open_channel
from headwater.producers.unlearning import LinearModel
from headwater.producers.unlearning.listener import Unlearner, UnlearningListener
from headwater.query_service.server.auth import ROLE_PAYLOADS, UNAUTHENTICATED_PAYLOADS, Role
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

TRAINING = {"source_registered", "op_recorded", "model_version_recorded", "gradient_batch",
            "prediction_recorded"}
# The documented matrix (docs/security.md), written out here rather than read from the code:
# role -> payloads accepted through Ingest; None: the role may not call Ingest at all.
MATRIX: dict[str, set[str] | None] = {
    "producer": TRAINING,
    "unlearner": {"unlearning_applied"},
    "reader": None,
    "auditor": None,
    "admin": TRAINING,
    "unauthenticated": TRAINING | {"unlearning_applied"},  # no token file (loopback dev mode)
}
ONLY_BY = {
    "forget_requested": "forget requests are recorded only by Unlearning.Forget (role admin)",
    "unlearning_applied": "outcomes are published only by the trainer's unlearning listener "
                          "(role unlearner)",
}


@pytest.fixture(scope="module")
def authed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServe]:
    """serve with token auth (plaintext loopback: tokens may travel there)."""
    d = tmp_path_factory.mktemp("roles")
    tokens = write_tokens(d / "tokens")
    s = SecureServe(d / "data", {"HEADWATER_AUTH_TOKENS_FILE": str(tokens)}, d / "serve.log")
    yield s
    stop(s.proc)


@pytest.fixture(scope="module")
def open_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """serve without a token file: no roles."""
    s = Serve(tmp_path_factory.mktemp("open") / "data")
    s.start()
    yield s
    s.stop()


def _channel(target: str, token: str | None) -> grpc.Channel:
    return open_channel(target, ClientSecurity(token=token))


def _sql(target: str, token: str | None, sql: str, **params: str) -> list:
    stub = query_pb2_grpc.QueryStub(_channel(target, token))
    return json.loads(stub.Sql(query_pb2.SqlRequest(sql=sql, parameters=params),
                               timeout=30).rows_json)


def _stored(target: str, token: str | None, event_id: str) -> tuple[int, list[str]]:
    """(rows of `events` with this id, errors of `dead_letters` with this id)."""
    events = _sql(target, token, "SELECT count() FROM events WHERE event_id = {e:String}",
                  e=event_id)[0][0]
    dead = [r[0] for r in _sql(target, token, "SELECT error FROM dead_letters "
                                              "WHERE event_id = {e:String}", e=event_id)]
    return events, dead


def _event(kind: str) -> events_pb2.Event:
    return EnvelopeBuilder(f"roles-{uuid.uuid4().hex[:8]}").wrap(_valid(kind))


def _publish(target: str, token: str | None, events: list[events_pb2.Event]
             ) -> query_pb2.PublishResponse:
    stub = query_pb2_grpc.IngestStub(_channel(target, token))
    return stub.PublishBatch(query_pb2.EventBatch(
        events=[e.SerializeToString(deterministic=True) for e in events]), timeout=60)


def _reason(kind: str, who: str) -> str:
    by = "an unauthenticated client" if who == "unauthenticated" else f"role {who}"
    allowed = MATRIX[who] or set()
    why = ONLY_BY.get(kind, f"{by} publishes only {', '.join(sorted(allowed))}")
    return f"payload {kind} is not accepted from {by}: {why}"


CELLS = [(who, kind) for who in MATRIX for kind in KINDS]


@pytest.mark.parametrize(("who", "kind"), CELLS, ids=[f"{w}-{k}" for w, k in CELLS])
def test_every_cell_of_the_role_payload_matrix(who: str, kind: str, request) -> None:
    """Issue 14 row 6 (a producer publishes ForgetRequested / UnlearningApplied through
    Ingest): each role publishes each payload through a real serve's Ingest.PublishBatch;
    allowed ones are stored, refused ones get a REJECTED ack naming payload and role, are
    kept in dead_letters with that reason and never reach events."""
    if who == "unauthenticated":
        target, token, reader = request.getfixturevalue("open_serve").target, None, None
    else:
        target = request.getfixturevalue("authed").target
        token, reader = TOKENS[Role(who)], TOKENS[Role.AUDITOR]
    event = _event(kind)
    allowed = MATRIX[who]
    if allowed is None:  # the role cannot call Ingest at all
        with pytest.raises(grpc.RpcError) as err:
            _publish(target, token, [event])
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"the token presented has role {who}" in err.value.details()
        assert _stored(target, reader, event.event_id) == (0, [])
        return
    (ack,) = _publish(target, token, [event]).acks
    assert ack.event_id == event.event_id
    if kind in allowed:
        assert ack.status == ack.ACCEPTED, ack.error
        assert _stored(target, reader, event.event_id) == (1, [])
    else:
        assert ack.status == ack.REJECTED
        assert ack.error == _reason(kind, who)
        assert _stored(target, reader, event.event_id) == (0, [_reason(kind, who)])


def test_the_code_and_the_docs_hold_the_documented_matrix() -> None:
    """Issue 14 row 6: the matrix the server enforces and the one docs/security.md shows are
    the matrix above (a payload added to a role anywhere fails here)."""
    assert {r.value: set(p) for r, p in ROLE_PAYLOADS.items()} == {
        w: (p or set()) for w, p in MATRIX.items() if w != "unauthenticated"}
    assert set(UNAUTHENTICATED_PAYLOADS) == MATRIX["unauthenticated"]
    assert not any("forget_requested" in (p or ()) for p in MATRIX.values())
    text = (REPO / "docs/security.md").read_text()
    table = text[text.index("| payload |"):]
    header, _, *rows = [line for line in table.split("\n\n", 1)[0].splitlines()]
    roles = [c.strip(" `") for c in header.strip("|").split("|")][1:]
    documented: dict[str, set[str]] = {r: set() for r in roles}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        kind = re.sub(r"[`*]", "", cells[0]).split()[0]
        for role, cell in zip(roles, cells[1:], strict=True):
            if cell == "✓":
                documented[role].add(kind)
    assert set(documented) == set(MATRIX)
    for who, payloads in MATRIX.items():
        assert documented[who] == (payloads or set()), who


def test_refused_events_leave_the_rest_of_the_batch_stored(authed: SecureServe) -> None:
    """Issue 14 row 6: a producer's batch mixing training events with a forged
    ForgetRequested and UnlearningApplied: the two forgeries are refused with their index,
    dead-lettered, and every other event of the batch is stored."""
    kinds = ["source_registered", "forget_requested", "gradient_batch", "unlearning_applied",
             "op_recorded"]
    events = [_event(k) for k in kinds]
    response = _publish(authed.target, TOKENS[Role.PRODUCER], events)
    assert (response.accepted, response.rejected) == (3, 2)
    assert [a.index for a in response.acks] == list(range(5))
    assert [a.event_id for a in response.acks] == [e.event_id for e in events]
    auditor = TOKENS[Role.AUDITOR]
    for kind, event, ack in zip(kinds, events, response.acks, strict=True):
        if kind in TRAINING:
            assert ack.status == ack.ACCEPTED, ack.error
            assert _stored(authed.target, auditor, event.event_id) == (1, [])
        else:
            assert ack.status == ack.REJECTED
            assert _stored(authed.target, auditor, event.event_id) == (
                0, [_reason(kind, "producer")])


def test_a_producer_publisher_gets_the_refusal_as_an_error(authed: SecureServe) -> None:
    """Issue 14 row 6: the SDK path: a trainer's Publisher (GrpcTransport, producer token)
    publishing ForgetRequested gets a PublishError naming payload and role."""
    with pytest.raises(PublishError, match="payload forget_requested is not accepted from "
                                           "role producer"):
        with Publisher(GrpcTransport(authed.target, token=TOKENS[Role.PRODUCER],
                                     retry_for=0), run_id="forger") as pub:
            pub.publish(_valid("forget_requested"))


# --- the listener publishes outcomes as `unlearner` ------------------------------------------

def _trainer(serve: SecureServe, tmp: Path, run_id: str) -> dict:
    """Two CSV sources, a standardised training set, a linear model with one version and its
    gradients, published with the producer token."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] + 0.3 * rng.normal(size=40) > 0).astype(float)
    publisher = Publisher(GrpcTransport(serve.target, token=TOKENS[Role.PRODUCER]),
                          run_id=run_id)
    tracker = Tracker(publisher.publish)
    parts = []
    for name, rows in (("clinic_a", slice(0, 25)), ("clinic_b", slice(25, 40))):
        path = tmp / f"{run_id}_{name}.csv"
        path.write_text("f0,f1,f2,label\n" + "".join(
            ",".join(f"{v:.6f}" for v in r) + f",{int(t)}\n"
            for r, t in zip(x[rows], y[rows], strict=True)))
        parts.append(load_csv(tracker, path, columns=["f0", "f1", "f2"]))
    both = np.concatenate(parts)
    train = (both - both.mean(0)) / both.std(0)
    model = LinearModel.fit(np.asarray(train), y, l2=1.0)
    capture = LinearCapture(publisher.publish, "clf", 3)
    capture.set_parameters(model.coef, model.intercept)
    capture.record_version(step=1)
    capture.capture(np.asarray(train), y, row_keys(train), learning_rate=0.0,
                    featurisation=True)
    publisher.flush()
    lineage = query_pb2_grpc.LineageStub(_channel(serve.target, TOKENS[Role.READER]))
    source_b = next(s.source_id for s in lineage.Sources(query_pb2.SourcesRequest(),
                                                          timeout=30).sources
                    if s.uri.endswith(f"{run_id}_clinic_b.csv"))
    return {"publisher": publisher, "capture": capture, "x": train, "y": y, "model": model,
            "source_b": source_b}


def _state(serve: SecureServe, request_id: str) -> str:
    stub = query_pb2_grpc.UnlearningStub(_channel(serve.target, TOKENS[Role.READER]))
    call = stub.Status(query_pb2.UnlearningStatusRequest(request_id=request_id), timeout=30)
    try:
        return next(call).state
    finally:
        call.cancel()


def test_listener_outcomes_need_the_unlearner_role(authed: SecureServe, tmp_path: Path) -> None:
    """Issue 14 row 6 (UnlearningApplied only from the trainer's listener, under a role that
    can do nothing else): a listener holding a producer token applies the request but its
    UnlearningApplied is refused (the request stays `requested`, the forgery attempt is in
    dead_letters); the same listener with an unlearner token completes it, on a chain of
    its own derived from the trainer's producer id."""
    run = _trainer(authed, tmp_path, "listener-run")
    forget = query_pb2_grpc.UnlearningStub(_channel(authed.target, TOKENS[Role.ADMIN])).Forget(
        query_pb2.ForgetRequest(run_id="listener-run", model_id="clf", reason="withdrawn",
                                target=events_pb2.ForgetTarget(source_ids=[run["source_b"]])),
        timeout=60)

    def listener(role: Role) -> UnlearningListener:
        return UnlearningListener(run["publisher"], authed.target, model_id="clf",
                                  dataset=run["x"], capture=run["capture"],
                                  apply=Unlearner(run["model"], run["x"], run["y"]),
                                  token=TOKENS[role])

    with listener(Role.PRODUCER) as wrong:
        with pytest.raises(PublishError, match="payload unlearning_applied is not accepted "
                                               "from role producer"):
            wrong.poll(force=True)
    assert _state(authed, forget.request_id) == "requested"
    dead = _sql(authed.target, TOKENS[Role.AUDITOR],
                "SELECT error FROM dead_letters WHERE producer_id LIKE '%.unlearning-%' "
                "AND run_id = 'listener-run'")
    assert dead == [[_reason("unlearning_applied", "producer")]]

    with listener(Role.UNLEARNER) as right:
        (applied,) = right.poll(force=True)
    assert applied.status == applied.APPLIED and applied.rows_forgotten == 15
    assert _state(authed, forget.request_id) == "applied"
    ((producer,),) = _sql(authed.target, TOKENS[Role.AUDITOR],
                          "SELECT producer_id FROM events WHERE run_id = 'listener-run' AND "
                          "payload_type = 'unlearning_applied'")
    trainer = run["publisher"].producer_id
    assert producer.startswith(f"{trainer}.unlearning-")
    # the new model version stays on the trainer's own chain
    versions = _sql(authed.target, TOKENS[Role.AUDITOR],
                    "SELECT producer_id FROM events WHERE run_id = 'listener-run' AND "
                    "payload_type = 'model_version_recorded'")
    assert {p for (p,) in versions} == {trainer}
    run["publisher"].close()


def test_nobody_publishes_forget_requested_through_ingest_without_auth(
        open_serve: Serve) -> None:
    """Issue 14 row 6, dev mode: without a token file there are no roles, yet a
    ForgetRequested sent through Ingest is still refused; Unlearning.Forget records it."""
    event = _event("forget_requested")
    (ack,) = _publish(open_serve.target, None, [event]).acks
    assert ack.status == ack.REJECTED
    assert ack.error == _reason("forget_requested", "unauthenticated")
    assert _stored(open_serve.target, None, event.event_id) == (0, [ack.error])


def test_listener_publishes_through_a_given_outcomes_publisher(authed: SecureServe,
                                                               tmp_path: Path) -> None:
    """Issue 14 row 6, Kafka-mode shape: `outcomes=` a ready publisher (here an unlearner
    one over gRPC; on Kafka a KafkaTransport one) carries UnlearningApplied, the listener's
    own token only reads Unlearning.Pending, and close() leaves the given publisher open."""
    run = _trainer(authed, tmp_path, "outcomes-run")
    query_pb2_grpc.UnlearningStub(_channel(authed.target, TOKENS[Role.ADMIN])).Forget(
        query_pb2.ForgetRequest(run_id="outcomes-run", model_id="clf", reason="withdrawn",
                                target=events_pb2.ForgetTarget(source_ids=[run["source_b"]])),
        timeout=60)
    outcomes = Publisher(GrpcTransport(authed.target, token=TOKENS[Role.UNLEARNER]),
                         run_id="outcomes-run", producer_id="kafka-side-listener")
    with UnlearningListener(run["publisher"], authed.target, model_id="clf",
                            dataset=run["x"], apply=Unlearner(run["model"], run["x"], run["y"]),
                            token=TOKENS[Role.PRODUCER], outcomes=outcomes) as listener:
        (applied,) = listener.poll(force=True)
    assert applied.status == applied.APPLIED
    outcomes.publish(_valid("unlearning_applied"))  # still open after the listener closed
    outcomes.close()
    rows = _sql(authed.target, TOKENS[Role.AUDITOR],
                "SELECT count() FROM events WHERE producer_id = 'kafka-side-listener'")
    assert rows == [[2]]
    run["publisher"].close()
