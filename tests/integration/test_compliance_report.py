"""The EU AI Act compliance report: built from a real serve run with an applied erasure,
schema-valid, sealed and signed, checked after tampering, rendered as HTML that headless
Chromium shows with its lineage graph, and free of personal values."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import jsonschema
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.audit_pipeline import key_pair
from support.chromium import chromium, dump_dom, has_colour, screenshot

from conftest import REPO, Serve, run_headwater
from headwater.errors import ConfigError
from headwater.producers.capture import LinearCapture
from headwater.producers.publisher import Publisher
from headwater.producers.tracking import Tracker, row_keys
from headwater.producers.tracking.sources import load_csv
from headwater.producers.transports.grpc import GrpcTransport
from headwater.producers.transports.local import LocalTransport
from headwater.producers.unlearning import LinearModel
from headwater.producers.unlearning.listener import Unlearner, UnlearningListener
from headwater.query_service.compliance.builder import ReportError, build_report
from headwater.query_service.compliance.config import load_config, parse_config
from headwater.query_service.compliance.html import SOURCE_FILL, TRAINING_FILL, render_html
from headwater.query_service.compliance.model import ComplianceReport, json_schema, schema_text
from headwater.query_service.compliance.signing import check, report_text, seal
from headwater.stream_processors.sink import EventSink
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

CONFIG = {
    "system_name": "Sepsis early warning",
    "intended_purpose": "Flag adult inpatients at risk of sepsis for clinician review",
    "provider": "Headwater Health Ltd",
    "human_oversight_contacts": [{"name": "Dr. A. Rivera", "role": "clinical lead",
                                  "email": "oversight@example.org"}],
    "monitoring": "weekly calibration review",
}  # deployer and input_data_relevance left out on purpose


def _csv(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    cols = [f"f{i}" for i in range(x.shape[1])] + ["label"]
    rows = [",".join(f"{v:.6f}" for v in r) + f",{int(t)}" for r, t in zip(x, y, strict=True)]
    path.write_text(",".join(cols) + "\n" + "\n".join(rows) + "\n")
    return path




@pytest.fixture(scope="module")
def erased(tmp_path_factory):
    """Two hospitals, a model trained on both, hospital_b forgotten (v1 -> v2), the
    remaining rows re-featurised at v2 and a prediction recorded there."""
    from sklearn.datasets import load_breast_cancer

    tmp = tmp_path_factory.mktemp("report")
    srv = Serve(tmp / "data")
    srv.start()
    try:
        data = load_breast_cancer()
        xa, ya = data.data[:150, :5], data.target[:150]
        xb, yb = data.data[150:260, :5], data.target[150:260]
        publisher = Publisher(GrpcTransport(srv.target), run_id="report-run")
        tracker = Tracker(publisher.publish)
        cols = [f"f{i}" for i in range(5)]
        a = load_csv(tracker, _csv(tmp / "hospital_a.csv", xa, ya), columns=cols,
                     origin="hospital A export", licence="data-sharing agreement 12")
        b = load_csv(tracker, _csv(tmp / "hospital_b.csv", xb, yb), columns=cols,
                     origin="hospital B export")
        x = np.concatenate([a, b])
        x = (x - x.mean(0)) / x.std(0)
        y = np.concatenate([ya, yb]).astype(float)
        xs = np.asarray(x)
        model = LinearModel.fit(xs, y, l2=1.0)
        capture = LinearCapture(publisher.publish, "clf", 5)
        capture.set_parameters(model.coef, model.intercept)
        capture.record_version(step=1, config={"l2": 1.0})
        for start in range(0, len(xs), 64):
            batch = x[start:start + 64]
            capture.capture(np.asarray(batch), y[start:start + 64], row_keys(batch),
                            learning_rate=0.0, featurisation=True)
        capture.record_prediction(xs[0], label=int(y[0]), prediction_id="p0")
        publisher.flush()

        channel = grpc.insecure_channel(srv.target)
        sources = query_pb2_grpc.LineageStub(channel).Sources(
            query_pb2.SourcesRequest(), timeout=30).sources
        source_b = next(s.source_id for s in sources if s.uri.endswith("hospital_b.csv"))
        forget = query_pb2_grpc.UnlearningStub(channel).Forget(query_pb2.ForgetRequest(
            run_id="report-run", model_id="clf", reason="hospital_b withdrew consent",
            verify_with_retrain=True,
            target=events_pb2.ForgetTarget(source_ids=[source_b])), timeout=60)
        unlearner = Unlearner(model, x, y)
        listener = UnlearningListener(publisher, srv.target, model_id="clf", dataset=x,
                                      capture=capture, apply=unlearner)
        (applied,) = listener.poll(force=True)
        assert applied.new_version == "v2"
        capture.set_parameters(unlearner.model.coef, unlearner.model.intercept)
        keep = listener.keep(np.arange(len(xs)))  # the trainer drops forgotten rows
        kept, kept_y = x[keep], y[keep]
        for start in range(0, len(keep), 64):  # and re-featurises what is left at v2
            batch = kept[start:start + 64]
            capture.capture(np.asarray(batch), kept_y[start:start + 64], row_keys(batch),
                            learning_rate=0.0, featurisation=True)
        capture.record_prediction(xs[3], label=int(y[3]), prediction_id="p1")
        publisher.flush()
        publisher.close()
        yield {"serve": srv, "tmp": tmp, "source_b": source_b,
               "request_id": forget.request_id, "applied": applied}
    finally:
        srv.stop()


def _rpc_report(serve: Serve, **fields) -> query_pb2.ReportResponse:
    stub = query_pb2_grpc.ComplianceStub(grpc.insecure_channel(serve.target))
    return stub.Report(query_pb2.ReportRequest(**fields), timeout=120)


def test_schema_file_is_current():
    path = REPO / "docs/schema/compliance-report.schema.json"
    assert path.read_text() == schema_text(), (
        "docs/schema/compliance-report.schema.json is stale: regenerate with "
        "`python -m headwater.query_service.compliance.model > "
        "docs/schema/compliance-report.schema.json`")


def test_report_over_rpc_shows_the_erasure(erased):
    response = _rpc_report(erased["serve"], model_id="clf", config_json=json.dumps(CONFIG))
    report = json.loads(response.json)
    jsonschema.validate(report, json_schema())
    assert response.sha256 == report["integrity"]["content_sha256"] and not response.signed

    assert report["system"]["model_version"] == "v2"  # the latest
    assert report["system"]["system_name"] == CONFIG["system_name"]
    assert report["system"]["missing"] == []
    deployment = report["deployment"]
    assert deployment["missing"] == ["deployer", "input_data_relevance"]
    assert deployment["deployer"] is None and deployment["input_data_relevance"] is None
    assert deployment["human_oversight_contacts"][0]["name"] == "Dr. A. Rivera"

    lineage = report["model_lineage"]
    assert [v["version"] for v in lineage] == ["v1", "v2"]
    assert lineage[1]["parent_version"] == "v1" and lineage[0]["config"] == {"l2": 1.0}
    assert lineage[1]["config"] == {"unlearned": erased["request_id"]}
    assert all(len(v["parameter_hash"]) >= 16 for v in lineage)

    (erasure,) = report["erasure_log"]
    assert erasure["request_id"] == erased["request_id"]
    # issue 23: 150 rows reached only through the mean/std were not recomputed: partial,
    # said so, with every disposition listed
    assert erasure["state"] == "partially_applied", erasure["state_reason"]
    assert "150 aggregate dependencies retained" in erasure["state_reason"]
    assert erasure["requested_by"] == "unauthenticated" and not erasure["requester_authenticated"]
    items = {d["item"]: d for d in erasure["dispositions"]}
    assert items["training_rows"]["status"] == "removed" and items["training_rows"]["count"] == 110
    assert items["aggregate_dependencies"]["count"] == 150
    assert items["gradient_rows"]["status"] == "tombstoned" and items["gradient_rows"]["count"]
    assert erasure["verified_at_version"] == "v2"
    assert erasure["version_note"] == "measured at the reported version"
    assert [t["target"] for t in erasure["targets"]][0] == "forget-set loss rose"
    assert erasure["reason"] == "hospital_b withdrew consent"
    assert erasure["target"]["source_ids"] == [erased["source_b"]]
    assert erasure["affected_via"] == {"row": 110, "aggregation": 150}
    (outcome,) = erasure["outcomes"]
    v = erased["applied"].verification
    assert outcome["status"] == "APPLIED" and outcome["rows_forgotten"] == 110
    assert (outcome["previous_version"], outcome["new_version"]) == ("v1", "v2")
    assert outcome["verification"]["forget_loss_before"] == pytest.approx(v.forget_loss_before)
    assert outcome["verification"]["forget_loss_after"] == pytest.approx(v.forget_loss_after)
    assert outcome["verification"]["gap_closed"] == pytest.approx(v.gap_closed)

    governance = report["data_governance"]
    by_name = {Path(s["uri"]).name: s for s in governance["sources"]}
    assert set(by_name) == {"hospital_a.csv", "hospital_b.csv"}
    a = by_name["hospital_a.csv"]
    assert a["origin"] == "hospital A export" and a["licence"] == "data-sharing agreement 12"
    assert a["row_count"] == 150 and len(a["content_sha256"]) == 64
    from headwater.producers.tracking.sources import file_sha256

    assert a["content_sha256"] == file_sha256(erased["tmp"] / "hospital_a.csv")
    assert [c["name"] for c in a["columns"]][:2] == ["f0", "f1"]
    # 5 batches of 64 at v1, 3 at v2; each reaches both files (mean/std aggregate)
    assert a["training_nodes"] == len(governance["training_nodes"]) == 8
    names = [p["op_name"] for p in a["preparation"]]
    assert len(names) >= 4 and all(p["output_node_id"] for p in a["preparation"])
    assert a["time_range"]["first_used_at"] <= a["time_range"]["last_used_at"]
    edges = governance["pipeline"]["edges"]
    assert {e["input_node_id"] for e in edges} >= {s["source_id"] for s in
                                                    governance["sources"]} or edges

    keeping = report["record_keeping"]
    assert keeping["ok"] and keeping["runs"] == ["report-run"] and keeping["events"] > 10

    samples = report["attribution_samples"]
    assert samples["status"] == "computed" and samples["predictions_recorded"] == 1
    (sample,) = samples["samples"]
    assert sample["prediction_id"] == "p1" and sample["error"] is None
    top = [s["source_id"] for s in sample["top_sources"]]
    assert top and erased["source_b"] not in top  # forgotten rows are not attributed

    assert not check(response.json).ok  # unsigned: refused unless allowed
    assert check(response.json, allow_unsigned=True).ok

    v1 = json.loads(_rpc_report(erased["serve"], model_id="clf", model_version="v1").json)
    jsonschema.validate(v1, json_schema())
    assert [v["version"] for v in v1["model_lineage"]] == ["v1"]
    assert v1["attribution_samples"]["samples"][0]["prediction_id"] == "p0"
    assert v1["system"]["missing"] == ["system_name", "intended_purpose"]
    assert v1["system"]["system_name"] is None

    for fields, code, message in [
            ({}, grpc.StatusCode.INVALID_ARGUMENT, "model_id is empty"),
            ({"model_id": "nope"}, grpc.StatusCode.NOT_FOUND, "no recorded versions"),
            ({"model_id": "clf", "model_version": "v9"}, grpc.StatusCode.NOT_FOUND,
             "has no version 'v9'"),
            ({"model_id": "clf", "config_json": '{"deployer": 3}'},
             grpc.StatusCode.INVALID_ARGUMENT, "field deployer")]:
        with pytest.raises(grpc.RpcError) as err:
            _rpc_report(erased["serve"], **fields)
        assert err.value.code() == code and message in err.value.details(), fields


def test_signature_verifies_and_tampering_fails(erased, tmp_path):
    body = json.loads(_rpc_report(erased["serve"], model_id="clf").json)
    key = Ed25519PrivateKey.generate()
    sealed = seal(body, key)
    text = report_text(sealed)
    good = check(text, key.public_key())
    assert good.ok, good.failures
    assert good.content_sha256 == sealed["integrity"]["content_sha256"]

    # one byte changed inside a value: the hash and the signature both fail
    i = text.index("hospital_b withdrew consent")
    tampered = text[:i] + "H" + text[i + 1:]
    result = check(tampered, key.public_key())
    assert not result.ok
    assert any(f.startswith("content hash") for f in result.failures)
    assert any("does not verify" in f for f in result.failures)

    # re-hashed by the tamperer, still not signed by the key
    forged = json.loads(tampered)
    forged["integrity"]["content_sha256"] = seal(forged, None)["integrity"]["content_sha256"]
    result = check(json.dumps(forged), key.public_key())
    assert result.failures == ["signature: does not verify over the report's content (the "
                               "report was changed after signing, or the signature is not "
                               "of this report)"]

    # re-signed by another key (issue 23): refused against the publisher's key, and refused
    # without a trusted key, saying so (the embedded key proves nothing)
    other = seal(forged, Ed25519PrivateKey.generate())
    result = check(json.dumps(other), key.public_key())
    assert any("not by the given public key" in f for f in result.failures)
    alone = check(json.dumps(other))
    assert not alone.ok and any("no trusted public key given" in f for f in alone.failures)
    assert not check(text).ok  # even the genuine report needs the trusted key

    # not schema-valid: named
    broken = dict(sealed, schema_version="9")
    result = check(json.dumps(seal(broken, key)), key.public_key())
    assert any(f.startswith("schema: schema_version") for f in result.failures)


def test_cli_report_check_and_html(erased, tmp_path):
    srv = erased["serve"]
    private, public = key_pair(tmp_path, "signing")
    config = tmp_path / "compliance.toml"
    config.write_text('system_name = "Sepsis early warning"\nprovider = "Headwater Health"\n'
                      'deployer = "St. Elsewhere"\nmonitoring = "weekly"\n'
                      'intended_purpose = "triage support"\n'
                      'input_data_relevance = "adult inpatients only"\n'
                      '[[human_oversight_contacts]]\nname = "Dr. Rivera"\n')
    out, page = tmp_path / "report.json", tmp_path / "report.html"
    done = srv.cli("audit", "report", "--model", "clf", "--out", str(out), "--html", str(page),
                   "--config", str(config), "--signing-key", str(private))
    assert done.returncode == 0, done.stderr
    assert "via serve" in done.stderr and "signed by key" in done.stderr
    report = json.loads(out.read_text())
    jsonschema.validate(report, json_schema())
    assert report["deployment"]["missing"] == [] and report["system"]["missing"] == []
    assert report["deployment"]["deployer"] == "St. Elsewhere"

    ok = run_headwater("audit", "check", str(out), "--public-key", str(public))
    assert ok.returncode == 0, ok.stderr
    untrusted = run_headwater("audit", "check", str(out))
    assert untrusted.returncode == 1 and "no trusted public key given" in untrusted.stderr
    trusted_env = run_headwater("audit", "check", str(out),
                                env={"HEADWATER_REPORT_PUBLIC_KEY": str(public)})
    assert trusted_env.returncode == 0, trusted_env.stderr
    assert "OK" in ok.stdout and report["integrity"]["signature"]["key_id"] in ok.stdout

    text = out.read_bytes()
    i = text.index(b'"St. Elsewhere"') + 1
    bad = tmp_path / "tampered.json"
    bad.write_bytes(text[:i] + b"T" + text[i + 1:])
    failed = run_headwater("audit", "check", str(bad), "--public-key", str(public))
    assert failed.returncode == 1
    assert "FAILED content hash" in failed.stderr and "FAILED signature" in failed.stderr

    html = page.read_text()
    assert '<svg id="lineage-graph"' in html and "hospital_a.csv" in html
    assert "<script" not in html and "http://" not in html.replace(
        "http://www.w3.org/2000/svg", "")
    assert erased["request_id"] in html

    # with serve stopped the command reads the data directory itself
    srv.stop()
    try:
        local = tmp_path / "local.json"
        env = {"HEADWATER_COMPLIANCE_CONFIG": str(config),
               "HEADWATER_SIGNING_KEY": str(private)}
        done = run_headwater("audit", "report", "--model", "clf", "--model-version", "v1",
                             "--out", str(local), "--data-dir", str(srv.data_dir), env=env)
        assert done.returncode == 0, done.stderr
        assert "via the store" in done.stderr
        again = json.loads(local.read_text())
        assert again["system"]["model_version"] == "v1" and again["erasure_log"]
        assert run_headwater("audit", "check", str(local), "--public-key",
                             str(public)).returncode == 0
        missing = run_headwater("audit", "report", "--model", "clf", "--out", str(local),
                                "--data-dir", str(srv.data_dir), "--signing-key",
                                str(tmp_path / "nope.pem"))
        assert missing.returncode == 2 and "nope.pem does not exist" in missing.stderr
    finally:
        srv.start()


def test_config_missing_fields_and_errors(tmp_path):
    assert load_config(None).system_name is None
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"system_name": "  ", "signing_key": "k.pem"}))
    config = load_config(path)
    assert config.signing_key == tmp_path / "k.pem"
    from headwater.query_service.compliance.config import SYSTEM_FIELDS, missing

    assert missing(config, SYSTEM_FIELDS) == ["system_name", "intended_purpose"]
    for text, name, message in [("{", "c.json", "not valid JSON"),
                                ("x = ", "c.toml", "not valid TOML"),
                                ('{"colour": "red"}', "c.json", "field colour"),
                                ('{"human_oversight_contacts": [{}]}', "c.json",
                                 "field human_oversight_contacts.0.name")]:
        with pytest.raises(ConfigError, match=message):
            parse_config(text, name)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")


def test_personal_values_never_leave_the_store(store, tmp_path):
    names = [f"Zebulon-Quixote-{i:04d}" for i in range(40)]
    ids = [918273645 + 7919 * i for i in range(40)]
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] > 0).astype(int)
    path = tmp_path / "patients.csv"
    path.write_text("patient_name,national_id,ward,a,b,c,label\n" + "".join(
        f"{n},{i},Zebulon-Ward-{i % 3},{r[0]:.5f},{r[1]:.5f},{r[2]:.5f},{t}\n"
        for n, i, r, t in zip(names, ids, x, y, strict=True)))  # ward: few values
    publisher = Publisher(LocalTransport(EventSink(store, "local")), run_id="privacy")
    tracker = Tracker(publisher.publish)
    data = load_csv(tracker, path, columns=["national_id", "a", "b", "c"],
                    personal=["patient_name", "national_id", "ward"], origin="ward export")
    features = data[:, 1:]
    capture = LinearCapture(publisher.publish, "ward", 3)
    model = LinearModel.fit(np.asarray(features), y.astype(float), l2=1.0)
    capture.set_parameters(model.coef, model.intercept)
    capture.record_version(step=1)
    capture.capture(np.asarray(features), y.astype(float), row_keys(features),
                    learning_rate=0.0, featurisation=True)
    capture.record_prediction(np.asarray(features)[0], label=int(y[0]), prediction_id="w0")
    publisher.flush()

    report = build_report(store, "ward", config=parse_config("{}", "c.json"))
    (source,) = report.data_governance.sources
    assert source.personal_columns == ["patient_name", "national_id", "ward"]
    (counted,) = report.data_governance.split_statistics.sources  # issue 23: counts only
    ward = next(c for c in counted.by_split["all rows"] if c.column == "ward")
    assert counted.status == "computed" and sorted(ward.value_counts or {}) == [
        "value 1", "value 2", "value 3"]
    assert report.attribution_samples.samples[0].top_sources[0].source_id == source.source_id
    key = Ed25519PrivateKey.generate()
    text = report_text(seal(report.model_dump(mode="json"), key))
    page = render_html(ComplianceReport.model_validate_json(text))
    for value in [*names, *map(str, ids)]:
        assert value not in text and value not in page, value
    assert "Zebulon" not in text + page
    jsonschema.validate(json.loads(text), json_schema())
    with pytest.raises(ReportError, match="no recorded versions"):
        build_report(store, "absent")


# -- the page in a real browser -------------------------------------------------------------

@pytest.mark.timeout(600)
def test_html_report_in_headless_chromium(erased, tmp_path):
    browser = chromium()  # fails naming what is missing (support.tools)
    body = json.loads(_rpc_report(erased["serve"], model_id="clf",
                                  config_json=json.dumps(CONFIG)).json)
    page = tmp_path / "report.html"
    page.write_text(render_html(ComplianceReport.model_validate(body)))
    pixels, console = screenshot(browser, page, tmp_path)
    assert console == [], console
    assert pixels.shape[:2] == (900, 1200)
    assert pixels.std() > 10  # not blank
    assert has_colour(pixels, SOURCE_FILL) and has_colour(pixels, TRAINING_FILL)
    dom = dump_dom(browser, page, tmp_path)
    assert '<svg id="lineage-graph"' in dom and "hospital_b.csv" in dom
    assert "Sepsis early warning" in dom
