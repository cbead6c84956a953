"""Issue 23, third wave: bias examination in the evidence report (Art. 10(2)(f),(g)) on the
demo's two hospital files — differences between the sources and between the training and
test/prediction splits computed from the verified files (the hospitals' label balance
differs, which is flagged); the operator's examination and measures reported as declared,
missing ones as missing; a source file that no longer matches its hash is not read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from headwater.demo.data import write_hospital_files
from headwater.demo.train import Recipe, code_version, prepare
from headwater.producers import LocalTransport, Publisher
from headwater.producers.capture import LinearCapture
from headwater.producers.tracking import Tracker, row_keys
from headwater.query_service.compliance.builder import build_report
from headwater.query_service.compliance.config import ComplianceConfig
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2


def _fill(store: Store, folder: Path) -> tuple[Path, Path]:
    paths = write_hospital_files(folder)
    with Publisher(LocalTransport(EventSink(store, "local")), run_id="bias-run") as pub:
        data = prepare(Tracker(pub.publish, code_version=code_version()), paths,
                       Recipe.of(fast=True))
        x = np.asarray(data.x_train)
        capture = LinearCapture(pub.publish, "clf", x.shape[1])
        capture.set_parameters(np.zeros(x.shape[1]), 0.0)
        capture.record_version(step=1)
        capture.capture(x, data.y_train, row_keys(data.x_train), learning_rate=0.1, step=1)
        for i in range(40):
            capture.record_prediction(np.asarray(data.x_test)[i], prediction_id=f"p{i}",
                                      input_rows=events_pb2.RowKeys(
                                          node_ids=[data.x_test.node_id], rows=[i]))
        pub.flush()
    return paths


def test_bias_examination_computed_and_declared(store, tmp_path) -> None:
    paths = _fill(store, tmp_path)
    measures = ["re-weighting by hospital", "per-hospital accuracy reviewed each release"]
    config = ComplianceConfig(bias_measures=measures)
    report = build_report(store, "clf", config=config, max_samples=0).model_dump(mode="json")
    bias = report["data_governance"]["bias_examination"]
    assert bias["status"] == "computed" and "2 of 2 source file(s)" in bias["detail"]
    assert bias["declared_measures"] == measures
    assert bias["declared_examination"] is None and bias["missing"] == ["bias_examination"]
    found = {(d["between"], d["column"]): d for d in bias["differences"]}
    # between the hospitals: the label balance (diagnosis) differs, flagged by TVD
    label = found[("sources", "label")]
    assert label["measure"] == "value shares" and label["flagged"]
    assert label["total_variation"] > 0.1 and sum(label["rows"]) == 569
    # a numeric feature: SMD and KS with its critical value
    radius = found[("sources", "mean_radius")]
    assert radius["measure"] == "numeric" and radius["ks_critical"] > 0
    # between the splits: the training rows against the rows the predictions drew on
    split = found[("splits", "label")]
    assert split["groups"] == ["training", "test/prediction"] and split["rows"][1] == 40
    assert bias["flagged"] == sum(d["flagged"] for d in bias["differences"])
    section = next(s for s in report["sections"] if s["section"] == "bias_examination")
    assert section["status"] == "computed" and "missing: bias_examination" in section["detail"]

    # a source file rewritten after registration is not read: nothing is computed from it
    paths[1].write_text(paths[1].read_text() + paths[1].read_text().splitlines()[-1] + "\n")
    again = build_report(store, "clf", max_samples=0).model_dump(mode="json")
    bias = again["data_governance"]["bias_examination"]
    assert "1 of 2 source file(s)" in bias["detail"] and "no longer hashes" in bias["detail"]
    assert not [d for d in bias["differences"] if d["between"] == "sources"]
    assert bias["missing"] == ["bias_examination", "bias_measures"]
