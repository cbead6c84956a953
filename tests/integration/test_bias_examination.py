"""Issue 23, third wave: bias examination in the evidence report (Art. 10(2)(f),(g)) on the
demo's two hospital files — differences between the sources and between the training and
test/prediction splits computed from the verified files (the hospitals' label balance
differs, which is flagged); the operator's examination and measures reported as declared,
missing ones as missing; a source file that no longer matches its hash is not read."""

from __future__ import annotations

from pathlib import Path

from support.demo_pipeline import publish_demo_pipeline

from headwater.query_service.compliance.builder import build_report
from headwater.query_service.compliance.config import ComplianceConfig
from headwater.stream_processors.store import Store


def _fill(store: Store, folder: Path) -> tuple[Path, Path]:
    return publish_demo_pipeline(store, folder, "bias-run", predictions=40)


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
