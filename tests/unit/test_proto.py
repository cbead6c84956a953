"""The committed generated code is exactly what `make proto` produces."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from conftest import REPO


def _generate_module():
    spec = importlib.util.spec_from_file_location("proto_generate", REPO / "proto" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regeneration_changes_nothing(tmp_path: Path) -> None:
    written = _generate_module().generate(tmp_path)
    committed_dir = REPO / "proto" / "headwater" / "v1"
    names = sorted(p.name for p in written)
    assert names == sorted(p.name for p in committed_dir.glob("*_pb2*.py*"))
    stale = [p.name for p in written if p.read_bytes() != (committed_dir / p.name).read_bytes()]
    assert not stale, f"generated code is stale, run `make proto`: {stale}"


def test_every_design_payload_is_in_the_envelope() -> None:
    from headwater.v1 import events_pb2

    oneof = events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"]
    assert {f.message_type.name for f in oneof.fields} == {
        "SourceRegistered", "OpRecorded", "ModelVersionRecorded", "GradientBatch",
        "PredictionRecorded", "ForgetRequested", "UnlearningApplied",
    }
    envelope = [f.name for f in events_pb2.Event.DESCRIPTOR.fields if f.containing_oneof is None]
    assert envelope == ["event_id", "schema_version", "producer_id", "run_id", "seq",
                        "emitted_at", "prev_hash", "hash"]


def test_services_are_declared() -> None:
    from headwater.v1 import query_pb2

    services = query_pb2.DESCRIPTOR.services_by_name
    assert {"Ingest", "Lineage", "Attribution", "Unlearning", "Compliance"} <= set(services)
    publish = services["Ingest"].methods_by_name["Publish"]
    assert publish.client_streaming and not publish.server_streaming
