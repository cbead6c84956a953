"""`headwater demo --fast` runs end to end and its outputs are real: an attribution that
traces to a row of a hospital file, an unlearning whose forget-set loss rose, a signed
report that validates against the published schema, commands that work as printed, and a
report page that headless Chromium draws with its charts."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from support.chromium import chromium, dump_dom, has_colour, screenshot

from conftest import REPO, run_headwater
from headwater.producers.tracking.sources import file_sha256
from headwater.query_service.compliance.html import (
    AFTER_FILL,
    BEFORE_FILL,
    RETRAINED_FILL,
    SOURCE_FILL,
    TRAINING_FILL,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("demo")
    done = run_headwater("demo", "--fast", "--output", str(out), timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads((out / "demo-summary.json").read_text())
    return {"out": out, "stdout": done.stdout, **figures}


def _file_row(demo: dict, train_row: int) -> tuple[str, int]:
    """Which hospital file row a training row is, recomputed from the pipeline's recipe:
    concatenate a then b, seeded permutation, the first ceil(0.2 n) rows are the test set."""
    n_a, n_b = demo["rows_per_file"]
    perm = np.random.default_rng(demo["seed"]).permutation(n_a + n_b)
    i = int(perm[math.ceil(demo["test_size"] * (n_a + n_b)) + train_row])
    return ("hospital_a.csv", i) if i < n_a else ("hospital_b.csv", i - n_a)


def test_demo_outputs_are_real(demo):
    assert demo["log_ok"] and demo["dead_letters"] == 0
    by_type = demo["events_by_type"]
    assert by_type["source_registered"] == 2 and by_type["forget_requested"] == 1
    # the erasure's outcome, and its re-verification at the final version (issue 23)
    assert by_type["unlearning_applied"] == 2 and demo["erasures_stored"] == 2
    assert demo["events_verified"] == sum(by_type.values())
    assert demo["test_accuracy"] > 0.85  # a trained model, not a constant

    # attribution: non-empty, each top row traces to the file row it really is
    assert demo["top_rows"], "no attribution rows"
    for r in demo["top_rows"]:
        # split first, then standardised with the training rows' own mean/std (issue 23)
        assert r["node_id"] == demo["train_node"] and "headwater.split" in r["ops"]
        (src,) = r["sources"]
        name, row = _file_row(demo, r["row"])
        assert src["uri"].endswith(name) and src["row"] == row
    before = {Path(g["uri"]).name for g in demo["by_source_before"]}
    after = {Path(g["uri"]).name for g in demo["by_source_after"]}
    assert before == {"hospital_a.csv", "hospital_b.csv"} and after == {"hospital_a.csv"}
    assert {Path(g["uri"]).name for g in demo["by_source_after_new"]} == {"hospital_a.csv"}

    # unlearning: every training row from hospital_b removed; its loss rose
    u = demo["unlearning"]
    b_rows = sum(_file_row(demo, i)[0] == "hospital_b.csv"
                 for i in range(sum(demo["rows_per_file"]) - math.ceil(
                     demo["test_size"] * sum(demo["rows_per_file"]))))
    assert u["status"] == "APPLIED" and u["rows_forgotten"] == u["via"]["row"] == b_rows
    assert u["forget_loss_after"] > u["forget_loss_before"]
    assert u["parameter_distance"] > 0 and u["new_version"] != u["previous_version"]

    # the report validates against the published schema and carries the run's figures
    report = json.loads(Path(demo["report"]["json"]).read_text())
    schema = json.loads((REPO / "docs/schema/compliance-report.schema.json").read_text())
    jsonschema.validate(report, schema)
    (erasure,) = report["erasure_log"]
    # issue 23: asked by the authenticated admin token; the rows reached only through the
    # training split's mean/std were not recomputed, so the erasure is partial, saying so
    assert erasure["requested_by"] == "token=demo-dpo role=admin"
    assert erasure["state"] == "partially_applied"
    assert erasure["state_reason"].endswith("aggregate dependencies retained")
    measured = {t["target"]: t["met"] for t in erasure["targets"]}
    assert measured["distance to retraining"] is None  # the original's is not recorded
    assert all(met is not None for name, met in measured.items()
               if name != "distance to retraining"), erasure["targets"]
    assert report["data_governance"]["leakage"]["status"] == "passed"
    assert report["data_governance"]["declarations_missing"] == []
    # bias examination: the hospitals' label balance differs (computed from the verified
    # files, flagged); the demo declares no examination or measures: reported missing
    bias = report["data_governance"]["bias_examination"]
    assert bias["status"] == "computed" and bias["missing"] == ["bias_examination",
                                                                "bias_measures"]
    (label,) = [d for d in bias["differences"] if d["between"] == "sources"
                and d["column"] == "label"]
    assert label["flagged"] and sum(label["rows"]) == sum(demo["rows_per_file"])
    assert {s["status"] for s in report["sections"]} <= {"verified", "declared", "computed"}
    assert report["record_keeping"]["ok"]
    # Annex IV: metrics and environment as the trainer recorded them, by a named producer
    versions = report["model_lineage"]
    assert sum(1 for v in versions if "test_accuracy" in v["metrics"]) >= len(versions) - 1
    assert all(v["environment"].get("torch") for v in versions if v["metrics"])
    assert all(v["evidence"]["recorded_by"] for v in versions)
    anchoring = demo["anchoring"]
    assert anchoring["trainer_signed_seq"] > 100 and len(anchoring["trainer_key_id"]) == 16
    first, again = erasure["outcomes"]
    assert first["verification"]["forget_loss_after"] == pytest.approx(u["forget_loss_after"])
    # measured again at the version the report covers, by the trainer, and said so
    assert again["status"] == "REVERIFIED"
    assert again["new_version"] == erasure["verified_at_version"] == \
        report["system"]["model_version"]
    assert erasure["version_note"].startswith("measured at the reported version")
    assert again["verification"]["forget_loss_before"] == pytest.approx(
        u["forget_loss_before"])
    samples = report["attribution_samples"]["samples"]
    assert samples and all(s["top_rows"] for s in samples)
    timeline = report["training_timeline"]
    assert timeline["status"] == "computed"
    early = timeline["versions"][0]
    assert {Path(s["uri"]).name for s in early["sources"]} == {"hospital_a.csv",
                                                              "hospital_b.csv"}
    late = timeline["versions"][-1]  # after the erasure only hospital_a trains
    assert {Path(s["uri"]).name for s in late["sources"]} == {"hospital_a.csv"}
    assert "derived from scikit-learn" in demo["stdout"] and "Try next" in demo["stdout"]


def test_printed_commands_work(demo):
    commands = {c["argv"][1] + " " + c["argv"][2]: c["argv"][1:] for c in demo["try_next"]}
    for c in demo["try_next"]:  # every command is printed as it is run here
        assert shlex.join(c["argv"]) in demo["stdout"], c["argv"]
    sql = next(c["argv"][1:] for c in demo["try_next"] if "sources FINAL" in c["argv"][-1])
    done = run_headwater(*sql, "--format", "csv")
    assert done.returncode == 0, done.stderr
    hashes = dict(line.split(",")[0::2] for line in done.stdout.splitlines()[1:])
    for path in demo["files"]:
        assert hashes[Path(path).as_uri()] == file_sha256(Path(path))
    done = run_headwater(*commands["audit check"])
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr
    assert "signature by key" in done.stdout
    done = run_headwater(*commands["audit verify"])
    assert done.returncode == 0 and "intact" in done.stdout, done.stdout + done.stderr
    done = run_headwater(*next(c["argv"][1:] for c in demo["try_next"]
                               if c["argv"][1] == "report"))
    assert done.returncode == 0, done.stderr
    again = demo["out"] / "report-again.json"
    done = run_headwater("audit", "check", str(again), "--allow-unsigned")  # built unsigned
    assert done.returncode == 0, done.stderr
    assert json.loads(again.read_text())["system"]["model_version"] == \
        demo["report"]["model_version"]


@pytest.mark.timeout(600)
def test_demo_report_page_in_headless_chromium(demo, tmp_path):
    browser = chromium()  # fails naming what is missing (support.tools)
    page = Path(demo["report"]["html"])
    pixels, console = screenshot(browser, page, tmp_path, size=(1200, 6400))
    assert console == [], console
    assert pixels.std() > 10
    for colour in (SOURCE_FILL, TRAINING_FILL, BEFORE_FILL, AFTER_FILL, RETRAINED_FILL):
        assert has_colour(pixels, colour, at_least=150), colour
    dom = dump_dom(browser, page, tmp_path)
    for marker in ('<svg id="lineage-graph"', 'class="timeline"', 'class="erasure"',
                   'class="contribution"', "hospital_a.csv row", "Source contributions"):
        assert marker in dom, marker
