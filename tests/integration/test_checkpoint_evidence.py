"""Issue 23, item 5: checkpoint artefacts checked against the parameter hash their version
recorded, when reachable: verified, then a swapped file is a mismatch that fails the model
lineage section, a missing file is unreachable, no URI is none recorded."""

from __future__ import annotations

import torch

from headwater.producers import LocalTransport, Publisher
from headwater.producers.capture.torch import TorchCapture
from headwater.query_service.compliance.builder import build_report
from headwater.stream_processors.sink import EventSink


def _versions(store) -> tuple[dict, dict]:
    report = build_report(store, "ckpt-model", max_samples=0).model_dump(mode="json")
    sections = {s["section"]: s for s in report["sections"]}
    return {v["version"]: v for v in report["model_lineage"]}, sections["model_lineage"]


def test_checkpoints_are_checked_against_parameter_hashes(store, tmp_path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    path = tmp_path / "step-0.pt"
    torch.save({"model": model.state_dict(), "optimizer": {}}, path)
    with Publisher(LocalTransport(EventSink(store, "local")), run_id="ckpt-run") as pub:
        capture = TorchCapture(pub.publish, model, "ckpt-model", k=16, seed=0)
        capture.record_version(0, checkpoint_uri=path.as_uri())
        capture.record_version(1)
        pub.flush()
    versions, lineage = _versions(store)
    assert versions["v1"]["checkpoint_status"] == "verified", versions["v1"]
    assert versions["v2"]["checkpoint_status"] == "none recorded"
    assert lineage["status"] == "verified" and "1 of 2 checkpoint" in lineage["detail"]

    with torch.no_grad():
        model[0].weight.add_(1.0)
    torch.save({"model": model.state_dict()}, path)  # another artefact under the same URI
    versions, lineage = _versions(store)
    assert versions["v1"]["checkpoint_status"] == "mismatch"
    assert lineage["status"] == "failed" and "checkpoint of v1" in lineage["detail"]

    path.unlink()
    versions, _ = _versions(store)
    assert versions["v1"]["checkpoint_status"] == "unreachable"
