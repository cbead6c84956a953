"""Issue 23, third wave: verification at the version the report covers. The trainer applies
a forget request at v2, trains on without the rows, records v3 and re-verifies there
(UnlearningListener.reverify: UnlearningApplied REVERIFIED, figures measured on v3, the
before figures the first measurement's); the report for v3 uses v3's figures and says so,
the report for v2 uses v2's, and a v4 recorded without re-verifying says plainly that its
figures are from v3 and not re-verified. Re-verifying a model that moved after its version
was recorded is refused."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from conftest import Serve
from headwater.producers.capture import LinearCapture
from headwater.producers.publisher import Publisher
from headwater.producers.tracking import Tracker, row_keys
from headwater.producers.tracking.sources import load_csv
from headwater.producers.transports.grpc import GrpcTransport
from headwater.producers.unlearning import LinearModel
from headwater.producers.unlearning.listener import Unlearner, UnlearningListener
from headwater.query_service.compliance.builder import build_report
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reverify")
    srv = Serve(tmp / "data")
    srv.start()
    stopped = False
    try:
        rng = np.random.default_rng(3)
        xs = rng.normal(size=(120, 4))
        y = (xs[:, 0] - xs[:, 1] + 0.5 * rng.normal(size=120) > 0).astype(float)
        publisher = Publisher(GrpcTransport(srv.target), run_id="rv-run")
        table = tmp / "clinic.csv"
        table.write_text("f0,f1,f2,f3,label\n" + "".join(
            ",".join(f"{v:.6f}" for v in r) + f",{int(t)}\n" for r, t in zip(xs, y, strict=True)))
        x = load_csv(Tracker(publisher.publish), table, columns=["f0", "f1", "f2", "f3"],
                     origin="clinic", licence="consent")
        xs = np.asarray(x)
        model = LinearModel.fit(xs, y, l2=1.0)
        capture = LinearCapture(publisher.publish, "clf", 4)
        capture.set_parameters(model.coef, model.intercept)
        capture.record_version(step=1)
        for start in range(0, 120, 40):
            batch = x[start:start + 40]
            capture.capture(np.asarray(batch), y[start:start + 40], row_keys(batch),
                            learning_rate=0.1, step=1 + start // 40)
        publisher.flush()
        channel = grpc.insecure_channel(srv.target)
        query_pb2_grpc.UnlearningStub(channel).Forget(query_pb2.ForgetRequest(
            run_id="rv-run", model_id="clf", reason="consent withdrawn",
            verify_with_retrain=True, target=events_pb2.ForgetTarget(
                row_keys=events_pb2.RowKeys(node_ids=[x.node_id], rows=list(range(20))))),
            timeout=60)
        unlearner = Unlearner(model, xs, y, test=(xs[100:], y[100:]))
        listener = UnlearningListener(publisher, srv.target, model_id="clf", dataset=x,
                                      capture=capture, apply=unlearner)
        (applied,) = listener.poll(force=True)
        assert applied.new_version == "v2" and listener.reverify() == []  # measured there
        # training goes on without the forgotten rows (a stronger penalty): v3
        keep = listener.keep(np.arange(120))
        unlearner.model = LinearModel.fit(xs[keep], y[keep], l2=4.0)
        capture.set_parameters(unlearner.model.coef, unlearner.model.intercept)
        capture.record_version()
        (again,) = listener.reverify()
        assert listener.reverify() == []  # once per version
        # v4: recorded, then the model moves on before anyone re-verifies
        capture.record_version()
        capture.set_parameters(unlearner.model.coef * 0.5, unlearner.model.intercept)
        with pytest.raises(ValueError, match="no longer v4"):
            listener.reverify()
        listener.close()
        publisher.close()
        srv.stop()
        stopped = True
        with Store(f"chdb://{tmp / 'data' / 'clickhouse'}", create=False) as store:
            reports = {v: build_report(store, "clf", v).model_dump(mode="json")
                       for v in ("v2", "v3", "v4")}
        yield {"applied": applied, "again": again, "reports": reports}
    finally:
        if not stopped:
            srv.stop()


def test_the_trainer_reverifies_at_the_later_version(trained) -> None:
    first, again = trained["applied"].verification, trained["again"]
    assert again.status == events_pb2.UnlearningApplied.REVERIFIED
    assert (again.previous_version, again.new_version, again.rows_forgotten) == ("v2", "v3", 0)
    v = again.verification
    # the before figures are the first measurement's; the after ones are v3's own
    assert v.forget_loss_before == first.forget_loss_before
    assert v.membership_auc_before == first.membership_auc_before
    assert v.forget_loss_after != first.forget_loss_after
    assert np.isnan(v.parameter_distance)  # needs the pre-erasure model: not measured
    # v3 is the model refitted without the rows at l2=4, which is also what the retrain
    # recipe fits: it matches retraining exactly
    assert v.retrained and v.distance_to_retrained == pytest.approx(0.0, abs=1e-6)
    assert v.gap_closed == pytest.approx(1.0)


def test_the_report_uses_figures_at_its_own_version(trained) -> None:
    reports = trained["reports"]
    (v3,) = reports["v3"]["erasure_log"]
    assert v3["verified_at_version"] == "v3"
    assert v3["version_note"].startswith("measured at the reported version v3: re-verified")
    assert [o["status"] for o in v3["outcomes"]] == ["APPLIED", "REVERIFIED"]
    gap = next(t for t in v3["targets"] if t["target"] == "matches retraining")
    assert gap["value"] == pytest.approx(1.0) and gap["met"]
    (v2,) = reports["v2"]["erasure_log"]
    assert v2["verified_at_version"] == "v2"
    assert v2["version_note"] == "measured at the reported version"
    assert gap["value"] != next(t for t in v2["targets"]
                                if t["target"] == "matches retraining")["value"]
    (v4,) = reports["v4"]["erasure_log"]
    assert v4["verified_at_version"] == "v3"
    assert "not re-verified there" in v4["version_note"] and "1 version(s) later" in \
        v4["version_note"]
