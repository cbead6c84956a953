"""OpenLineage export: a tracked two-file pipeline stored through the sink, exported as
RunEvents, every event rebuilt with openlineage-python's models (which refuse a missing
required field) and compared back; column lineage, determinism, errors, the CLI."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import attr
import numpy as np
import pytest
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    DatasetFacet,
    RunFacet,
    column_lineage_dataset,
    dataset_version_dataset,
    datasource_dataset,
    job_type_job,
    output_statistics_output_dataset,
    parent_run,
    schema_dataset,
)
from openlineage.client.serde import Serde

from conftest import Serve, run_headwater
from headwater.producers import GrpcTransport, LocalTransport, Publisher
from headwater.producers.tracking import Tracker
from headwater.producers.tracking.sources import describe_csv
from headwater.query_service.lineage.openlineage import (
    ColumnMap,
    Op,
    RunLineage,
    UnknownRun,
    dataset_name,
    export_run,
    run_events,
    run_uuid,
    topological,
)
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store, load_migrations
from headwater.v1 import events_pb2

RUN = "ol-run"
ROWS = {"clinic_a.csv": 6, "clinic_b.csv": 4}
HEADER = ("age", "income", "zip")
_URN = "urn:headwater:openlineage:facets:1-0-0:"


# -- the pipeline -------------------------------------------------------------------------

def _csv(path: Path, rows: int, seed: int) -> list[str]:
    """A CSV whose every cell is a distinctive 4+4 digit number; returns the cells."""
    cells = [[f"{v:.4f}" for v in r]
             for r in np.random.default_rng(seed).uniform(1000, 9999, (rows, 3))]
    path.write_text(",".join(HEADER) + "\n" + "\n".join(",".join(r) for r in cells) + "\n")
    return [c for r in cells for c in r]


def _mapping(out: str, i: int, cols: list[str], how: str) -> events_pb2.ColumnMapping:
    return events_pb2.ColumnMapping(output_column=out, input=i, input_columns=cols,
                                    transformation=how)


def publish_pipeline(pub: Publisher, folder: Path) -> dict[str, Any]:
    """clinic_a + clinic_b -> concat -> shuffle -> split (train/test), tracked; and a
    columnar join of the two files (emitted by hand: a frame-level op with ColumnMappings)."""
    tracker = Tracker(pub.publish)
    parts, sources, cells = [], [], []
    for seed, (name, rows) in enumerate(ROWS.items()):
        path = folder / name
        cells += _csv(path, rows, seed)
        src = pub.publish(describe_csv(path, personal=("zip",))).source_registered
        sources.append(src)
        parts.append(tracker.array(np.loadtxt(path, delimiter=",", skiprows=1), source=src))
    data = np.concatenate(parts)
    train, test = tracker.split(tracker.shuffle(data, seed=1), test_size=0.3, seed=2)
    pub.publish(events_pb2.OpRecorded(
        op_id="op-join", op_name="pandas.merge", params_json='{"on": "row"}',
        input_node_ids=[sources[0].source_id, sources[1].source_id], output_node_id="n-joined",
        output_shape=[4, 2], understood=True, output_columns=["age", "income_total"],
        row_map=events_pb2.RowMap(output_rows=4, segments=[
            events_pb2.RowSegment(input=i, out_start=0, length=4,
                                  range=events_pb2.RowRange(start=0, step=1)) for i in (0, 1)]),
        columns=[_mapping("age", 0, ["age"], "IDENTITY"),
                 _mapping("income_total", 0, ["income"], "AGGREGATION"),
                 _mapping("income_total", 1, ["income"], "AGGREGATION"),
                 _mapping("", 1, ["zip"], "FILTER")],
        granularity=events_pb2.OpRecorded.EVERY_OP))
    return {"sources": sources, "cells": cells, "train": train.node_id, "test": test.node_id,
            "concat": data.node_id}


@pytest.fixture
def stored(store: Store, tmp_path: Path) -> tuple[Store, dict[str, Any]]:
    with Publisher(LocalTransport(EventSink(store, "local")), run_id=RUN) as pub:
        made = publish_pipeline(pub, tmp_path)
    return store, made


# -- validation through openlineage-python's models ---------------------------------------

class _Custom:
    """Headwater's own facets as client facet classes (their fields are the contract)."""

    @attr.define
    class Source(DatasetFacet):
        sourceId: str  # noqa: N815
        rowCount: int  # noqa: N815
        format: str
        sizeBytes: int  # noqa: N815
        origin: str
        licence: str
        personalColumns: list[str]  # noqa: N815

        @staticmethod
        def _get_schema() -> str:
            return _URN + "HeadwaterSourceDatasetFacet"

    @attr.define
    class RowLineage(DatasetFacet):
        opId: str  # noqa: N815
        outputRows: int  # noqa: N815
        segments: int
        understood: bool
        granularity: str

        @staticmethod
        def _get_schema() -> str:
            return _URN + "HeadwaterRowLineageDatasetFacet"

    @attr.define
    class OpFacet(RunFacet):
        runId: str  # noqa: N815
        opId: str  # noqa: N815
        opName: str  # noqa: N815
        params: Any
        codeVersion: str  # noqa: N815

        @staticmethod
        def _get_schema() -> str:
            return _URN + "HeadwaterOpRunFacet"


def _facet(cls: Any, d: dict[str, Any], **nested: Any) -> Any:
    fields = {k: v for k, v in d.items() if not k.startswith("_")}
    return cls(producer=d["_producer"], **{**fields, **nested})


def _input_field(d: dict[str, Any]) -> Any:
    cl = column_lineage_dataset
    return cl.InputField(**{**d, "transformations": [cl.Transformation(**t)
                                                     for t in d["transformations"]]})


def _column_lineage(d: dict[str, Any]) -> Any:
    cl = column_lineage_dataset
    fields = {k: cl.Fields(**{**f, "inputFields": [_input_field(i) for i in f["inputFields"]]})
              for k, f in d["fields"].items()}
    return _facet(cl.ColumnLineageDatasetFacet, d, fields=fields,
                  dataset=[_input_field(i) for i in d["dataset"]])


DATASET_FACETS = {
    "schema": lambda d: _facet(schema_dataset.SchemaDatasetFacet, d, fields=[
        schema_dataset.SchemaDatasetFacetFields(**f) for f in d["fields"]]),
    "dataSource": lambda d: _facet(datasource_dataset.DatasourceDatasetFacet, d),
    "version": lambda d: _facet(dataset_version_dataset.DatasetVersionDatasetFacet, d),
    "columnLineage": _column_lineage,
    "headwater_source": lambda d: _facet(_Custom.Source, d),
    "headwater_rowLineage": lambda d: _facet(_Custom.RowLineage, d),
}
RUN_FACETS = {
    "parent": lambda d: _facet(parent_run.ParentRunFacet, d, run=parent_run.Run(**d["run"]),
                               job=parent_run.Job(**d["job"])),
    "headwater_op": lambda d: _facet(_Custom.OpFacet, d),
}


def _dataset(cls: Any, d: dict[str, Any]) -> Any:
    facets = {k: DATASET_FACETS[k](v) for k, v in d["facets"].items()}
    extra = {}
    if "outputFacets" in d:
        extra["outputFacets"] = {k: _facet(
            output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet, v)
            for k, v in d["outputFacets"].items()}
    rest = {k: v for k, v in d.items() if k not in ("facets", "outputFacets")}
    return cls(**rest, facets=facets, **extra)


def to_model(event: dict[str, Any]) -> RunEvent:
    """The event as the client's RunEvent: an unknown key or a missing field raises."""
    e = dict(event)
    run, job, inputs, outputs = e.pop("run"), e.pop("job"), e.pop("inputs"), e.pop("outputs")
    e.pop("schemaURL")  # the model sets its own; assert_covers compares the two
    return RunEvent(
        **{**e, "eventType": RunState(e["eventType"])},
        run=Run(runId=run["runId"], facets={k: RUN_FACETS[k](v)
                                            for k, v in run["facets"].items()}),
        job=Job(namespace=job["namespace"], name=job["name"], facets={
            k: _facet(job_type_job.JobTypeJobFacet, v) for k, v in job["facets"].items()}),
        inputs=[_dataset(InputDataset, d) for d in inputs],
        outputs=[_dataset(OutputDataset, d) for d in outputs],
    )


def assert_covers(model: Any, ours: Any, where: str = "event") -> None:
    """`ours` equals the model's dict, except for optional fields we leave out, which the
    model fills with empty defaults."""
    if isinstance(ours, dict):
        assert isinstance(model, dict), where
        for k in model.keys() - ours.keys():
            assert model[k] in ([], {}, None), f"{where}.{k}: the model has {model[k]!r}"
        for k, v in ours.items():
            assert k in model, f"{where}.{k} is not in the model"
            assert_covers(model[k], v, f"{where}.{k}")
    elif isinstance(ours, list):
        assert isinstance(model, list) and len(model) == len(ours), where
        for i, (m, o) in enumerate(zip(model, ours, strict=True)):
            assert_covers(m, o, f"{where}[{i}]")
    else:
        assert model == ours, f"{where}: {model!r} != {ours!r}"


def validate(event: dict[str, Any]) -> None:
    assert_covers(Serde.to_dict(to_model(json.loads(json.dumps(event)))), event)


# -- tests ----------------------------------------------------------------------------------

def test_every_event_is_a_valid_openlineage_run_event(stored) -> None:
    store, made = stored
    events = export_run(store, RUN)
    ops = store.query("SELECT count() FROM lineage_ops FINAL WHERE run_id = {r:String}",
                      {"r": RUN})[0][0]
    assert len(events) == ops + 1
    for e in events:
        validate(e)
        assert e["eventType"] == "COMPLETE" and e["eventTime"].endswith("Z")
        assert uuid.UUID(e["run"]["runId"])
    # ops in topological order: every input made by an op was made by an earlier event
    made_so_far: set[tuple[str, str]] = set()
    produced = {(o["namespace"], o["name"]) for e in events[:-1] for o in e["outputs"]}
    for e in events[:-1]:
        for i in e["inputs"]:
            ref = (i["namespace"], i["name"])
            assert ref not in produced or ref in made_so_far, f"{ref} read before made"
        made_so_far |= {(o["namespace"], o["name"]) for o in e["outputs"]}
    names = [e["job"]["name"].split(".", 1)[1] for e in events[:-1]]
    assert [n.rsplit(".", 1)[0] for n in names] == [
        "numpy.concatenate", "headwater.shuffle", "headwater.split", "headwater.split",
        "pandas.merge"]
    # the run's own event comes last: the files in, the nodes nobody read out
    last = events[-1]
    assert (last["job"]["namespace"], last["job"]["name"]) == ("headwater", RUN)
    assert last["job"]["facets"]["jobType"]["jobType"] == "RUN"
    assert last["run"]["runId"] == run_uuid(RUN)
    assert sorted(d["name"] for d in last["inputs"]) == sorted(
        s.uri.removeprefix("file://") for s in made["sources"])
    assert {(d["namespace"], d["name"]) for d in last["outputs"]} == {
        (f"headwater://{RUN}", n) for n in (made["train"], made["test"], "n-joined")}
    for e in events[:-1]:
        assert e["run"]["facets"]["parent"]["run"]["runId"] == run_uuid(RUN)


def test_a_missing_required_field_fails_validation(stored) -> None:
    store, _ = stored
    event = export_run(store, RUN)[-2]
    validate(event)
    for path in (("eventTime",), ("run", "runId"), ("job", "name"), ("inputs", 0, "namespace"),
                 ("outputs", 0, "facets", "columnLineage", "fields", "age", "inputFields", 0,
                  "field")):
        broken = json.loads(json.dumps(event))
        parent = broken
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]
        with pytest.raises((TypeError, KeyError)):
            validate(broken)
    bad = json.loads(json.dumps(event))
    bad["run"]["runId"] = "not-a-uuid"
    with pytest.raises(ValueError):
        validate(bad)


def test_column_lineage_facet_for_a_columnar_op(stored) -> None:
    store, made = stored
    events = export_run(store, RUN)
    join = next(e for e in events if e["job"]["name"].endswith(".op-join"))
    (out,) = join["outputs"]
    a, b = (("file", s.uri.removeprefix("file://")) for s in made["sources"])
    lineage = out["facets"]["columnLineage"]

    def field(ref: tuple[str, str], name: str, subtype: str, kind: str = "DIRECT") -> dict:
        return {"namespace": ref[0], "name": ref[1], "field": name,
                "transformations": [{"type": kind, "subtype": subtype}]}

    assert lineage["fields"] == {
        "age": {"inputFields": [field(a, "age", "IDENTITY")]},
        "income_total": {"inputFields": [field(a, "income", "AGGREGATION"),
                                         field(b, "income", "AGGREGATION")]}}
    assert lineage["dataset"] == [field(b, "zip", "FILTER", "INDIRECT")]
    assert [f["name"] for f in out["facets"]["schema"]["fields"]] == ["age", "income_total"]
    assert out["outputFacets"]["outputStatistics"]["rowCount"] == 4
    row = out["facets"]["headwater_rowLineage"]
    assert (row["opId"], row["segments"], row["understood"]) == ("op-join", 2, True)
    assert join["run"]["facets"]["headwater_op"]["params"] == {"on": "row"}
    # ops without column mappings carry no column lineage
    assert all("columnLineage" not in o["facets"] for e in events if e is not join
               for o in e["outputs"])
    # the mappings are stored as JSON auditors can read with SQL
    text, cols = store.query("SELECT columns_json, output_columns FROM lineage_ops FINAL "
                             "WHERE op_id = 'op-join'")[0]
    assert json.loads(text)[3] == {"output_column": "", "input": 1, "input_columns": ["zip"],
                                   "transformation": "FILTER"}
    assert list(cols) == ["age", "income_total"]


def test_sources_are_file_datasets_and_no_value_is_exported(stored) -> None:
    store, made = stored
    events = export_run(store, RUN)
    concat = events[0]
    assert concat["job"]["name"].startswith(f"{RUN}.numpy.concatenate.")
    for dataset, src in zip(concat["inputs"], made["sources"], strict=True):
        assert (dataset["namespace"], dataset["name"]) == dataset_name(src.uri)
        assert dataset["namespace"] == "file" and dataset["name"].endswith(".csv")
        facets = dataset["facets"]
        assert facets["schema"]["fields"] == [{"name": c, "type": "float64"} for c in HEADER]
        assert facets["version"]["datasetVersion"] == src.content_sha256
        assert facets["dataSource"]["uri"] == src.uri
        assert facets["headwater_source"]["personalColumns"] == ["zip"]
        assert facets["headwater_source"]["rowCount"] == src.row_count
    text = json.dumps(events)
    leaked = [c for c in made["cells"] if c in text]
    assert not leaked, f"cell values in the export: {leaked[:5]}"


def test_export_is_deterministic(stored) -> None:
    store, _ = stored
    first = json.dumps(export_run(store, RUN))
    assert json.dumps(export_run(store, RUN)) == first
    ids = [e["run"]["runId"] for e in json.loads(first)]
    assert len(set(ids)) == len(ids)


def test_unknown_run_is_named(store: Store) -> None:
    with pytest.raises(UnknownRun, match="no lineage recorded for run 'nope'"):
        export_run(store, "nope")


def test_migration_0007_is_idempotent(store: Store) -> None:
    (mig,) = [m for m in load_migrations() if m.version == 7]
    for statement in mig.statements():  # already applied by the fixture: runs again cleanly
        store.command(statement)
    columns = dict(store.query("SELECT name, type FROM system.columns WHERE database = "
                               "{db:String} AND table = 'lineage_ops'", {"db": store.database}))
    assert columns["columns_json"] == "String"
    assert columns["output_columns"] == "Array(String)"


# -- pure functions ---------------------------------------------------------------------------

def _op(op_id: str, inputs: tuple[str, ...], output: str, columns=()) -> Op:
    return Op(op_id, "f", "{}", inputs, output, 1, True, "EVERY_OP", "", 1, tuple(columns), (),
              0)


def test_topological_order_and_cycles() -> None:
    ops = [_op("c", ("n2",), "n3"), _op("b", ("n1",), "n2"), _op("a", ("src",), "n1"),
           _op("z", ("src",), "n9")]
    # the earliest-listed ready op goes first: b and c (listed before z) follow a at once
    assert [o.op_id for o in topological(ops)] == ["a", "b", "c", "z"]
    with pytest.raises(ValueError, match=r"\['x', 'y'\] form a cycle"):
        topological([_op("x", ("m2",), "m1"), _op("y", ("m1",), "m2")])


@pytest.mark.parametrize(("uri", "expected"), [
    ("file:///data/a%20b.csv", ("file", "/data/a b.csv")),
    ("file://nas1/share/x.csv", ("file://nas1", "/share/x.csv")),
    ("s3://bucket/dir/x.parquet", ("s3://bucket", "dir/x.parquet")),
    ("https://example.org/d/x.csv", ("https://example.org", "/d/x.csv")),
    ("/plain/path.npy", ("file", "/plain/path.npy")),
])
def test_dataset_names(uri: str, expected: tuple[str, str]) -> None:
    assert dataset_name(uri) == expected


@pytest.mark.parametrize(("mapping", "message"), [
    (ColumnMap("y", 3, ("x",), "IDENTITY"), "names input 3 but the op has 1 inputs"),
    (ColumnMap("y", 0, ("x",), "SHUFFLE"), "transformation 'SHUFFLE'"),
])
def test_bad_column_mappings_are_named(mapping: ColumnMap, message: str) -> None:
    lineage = RunLineage("r", (_op("op-1", ("n0",), "n1", [mapping]),), {})
    with pytest.raises(ValueError, match=f"op op-1: .*{message}"):
        run_events(lineage)


# -- the command line -------------------------------------------------------------------------

def test_cli_through_serve_and_on_the_store(serve: Serve, tmp_path: Path) -> None:
    with Publisher(GrpcTransport(serve.target), run_id=RUN) as pub:
        publish_pipeline(pub, tmp_path)
    via_serve = serve.cli("lineage", "openlineage", "--run", RUN)  # serve holds the store
    assert via_serve.returncode == 0, via_serve.stderr
    events = [json.loads(line) for line in via_serve.stdout.splitlines()]
    assert len(events) == 6
    for e in events:
        validate(e)
    assert "columnLineage" in events[4]["outputs"][0]["facets"]
    missing = serve.cli("lineage", "openlineage", "--run", "nope")
    assert missing.returncode == 2
    assert "no lineage recorded for run 'nope'" in missing.stderr
    serve.stop()
    out = tmp_path / "run.json"
    # --listen always means that server (issue 14 item 6): it no longer answers
    gone = serve.cli("lineage", "openlineage", "--run", RUN)
    assert gone.returncode == 2 and serve.target in gone.stderr
    direct = run_headwater("lineage", "openlineage", "--run", RUN, "--format", "json",
                           "--out", str(out), "--data-dir", str(serve.data_dir))
    assert direct.returncode == 0, direct.stderr  # nothing serves: the store is read directly
    assert json.loads(out.read_text()) == events
