"""Issue 23, item 4: the leakage check computed from lineage. The demo's own pipeline
(split, then standardise with the training rows' mean/std) passes; its deliberately leaky
variant (standardise with the mean/std of all rows, then split) fails, naming the ops."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.demo_pipeline import publish_demo_pipeline

from headwater.query_service.compliance.builder import build_report
from headwater.stream_processors.store import Store


def _governance(store: Store, folder: Path, leaky: bool) -> dict:
    publish_demo_pipeline(store, folder, "leak-run", predictions=3, leaky=leaky)
    return build_report(store, "clf", max_samples=0).model_dump(mode="json")["data_governance"]


@pytest.mark.parametrize("leaky", [False, True], ids=["demo-pipeline", "leaky-variant"])
def test_leakage_check_from_lineage(store, tmp_path, leaky) -> None:
    governance = _governance(store, tmp_path, leaky)
    leakage = governance["leakage"]
    assert leakage["training_rows"] == 455 and leakage["test_rows"] == 3
    if not leaky:
        assert leakage["status"] == "passed" and leakage["findings"] == [], leakage
    else:
        assert leakage["status"] == "failed"
        assert {f["op_name"] for f in leakage["findings"]} == {"numpy.mean", "numpy.std"}
        assert all(f["training_rows"] == 455 and f["shared_source_rows"] == 3
                   for f in leakage["findings"])
    # per split: where the rows come from (computed from lineage, never typed)
    splits = {s["split"]: s for s in governance["split_statistics"]["splits"]}
    assert sum(splits["training"]["source_rows"].values()) == 455
    assert sum(splits["test/prediction"]["source_rows"].values()) == 3
    assert governance["declarations_missing"] == []  # personal columns and code versions
    # per source and split: missing values and class balance, counted from the files
    stats = {s["source_id"]: s for s in governance["split_statistics"]["sources"]}
    assert {s["status"] for s in stats.values()} == {"computed"}
    for sid, st in stats.items():
        label = {split: next(c for c in cols if c["column"] == "label")
                 for split, cols in st["by_split"].items()}
        assert sum(label["training"]["value_counts"].values()) == \
            splits["training"]["source_rows"][sid]
        assert sum(label["all rows"]["value_counts"].values()) in (341, 228)
        # the label is declared personal: its balance shows, its values do not
        assert set(label["all rows"]["value_counts"]) == {"value 1", "value 2"}
        assert all(c["missing"] == 0 for c in st["by_split"]["all rows"])
        assert next(c for c in st["by_split"]["all rows"] if c["column"] == "mean_radius")[
            "value_counts"] is None  # many distinct values: no values leave the store


def test_a_changed_source_file_is_not_counted(store, tmp_path) -> None:
    _governance(store, tmp_path / "a", leaky=False)
    path = tmp_path / "a" / "hospital_b.csv"
    path.write_text(path.read_text().replace("\n1", "\n0", 1))  # one value changed
    governance = build_report(store, "clf", max_samples=0).model_dump(
        mode="json")["data_governance"]
    by_uri = {s["source_id"]: s for s in governance["split_statistics"]["sources"]}
    b = next(s for s in governance["sources"] if s["uri"].endswith("hospital_b.csv"))
    assert by_uri[b["source_id"]]["status"] == "not computed"
    assert "no longer hashes to the registered SHA-256" in by_uri[b["source_id"]]["detail"]


def test_undeclared_personal_data_and_code_version_are_reported_missing(store, tmp_path):
    from support.audit_pipeline import fill

    fill(store, tmp_path)
    governance = build_report(store, "clf", max_samples=0).model_dump(
        mode="json")["data_governance"]
    missing = governance["declarations_missing"]
    assert sum("no column declared personal" in m for m in missing) == 2
    assert any("recorded no code_version" in m for m in missing)
