"""`headwater attribute` and `headwater forget`: which training rows shaped a prediction,
and asking a run's trainer to remove some."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from headwater.cli.common import call, channel, listen_option, out, run_option
from headwater.errors import HeadwaterError

_AGGREGATE_BY = {"row": "BY_ROW", "source": "BY_SOURCE", "file": "BY_SOURCE_FILE", "op": "BY_OP"}


_METHODS = {"default": "ATTRIBUTION_METHOD_UNSPECIFIED", "influence": "INFLUENCE",
            "tracin": "TRACIN"}
SIGN = ("positive = including the row raised the explained output (the margin of the "
        "prediction's label, or the regression output); negative = it lowered it")


@click.command()
@click.argument("prediction_id")
@click.option("--method", type=click.Choice([*_METHODS, "knn-shapley"]), default="default",
              show_default=True, help="default: the method the service measured best for "
                                      "this kind of model (docs/attribution.md)")
@click.option("--damping", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="influence λ; 0: the L2 recorded with the model version, else the "
                   "spectrum rule")
@click.option("--versions", type=click.IntRange(min=0), default=0, show_default=True,
              help="influence: ensemble over the prediction's latest N model versions; 0: all")
@click.option("--by", "by", type=click.Choice(list(_AGGREGATE_BY)), default="row",
              show_default=True, help="Rows, or sums by source, source file or op")
@click.option("--top-k", type=click.IntRange(1, 10_000), default=10, show_default=True,
              help="Rows in each list (most helpful, most harmful)")
@click.option("--all", "output", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write every training row's (or group's) score to this "
                                 "Parquet file instead (streamed, no cap)")
@click.option("--neighbours", type=click.IntRange(1), default=5, show_default=True,
              help="K of KNN-Shapley")
@run_option(help="The run that recorded PREDICTION_ID (needed when the id was recorded in "
                 "several runs); only that run's training rows are scored")
@listen_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per result line")
def attribute(prediction_id: str, method: str, damping: float, versions: int, by: str,
              top_k: int, output: Path | None, neighbours: int, run_id: str,
              listen: str | None, as_json: bool) -> None:
    """The training rows (with their source-file rows and ops) that most influenced
    PREDICTION_ID: the most helpful and the most harmful apart. Positive = including the
    row raised the explained output; negative = it lowered it.

    Only the training rows of the prediction's own run count, at the model versions on
    its version lineage: another run that reuses the model id or the source files never
    contributes."""
    from headwater.v1 import query_pb2, query_pb2_grpc

    stub = query_pb2_grpc.AttributionStub(channel(listen))
    aggregation = getattr(query_pb2, _AGGREGATE_BY[by])
    if method == "knn-shapley":
        if output is not None:
            raise click.UsageError("--all works with influence and tracin")
        response = call(stub.Value, query_pb2.ValueRequest(
            prediction_id=prediction_id, k_neighbours=neighbours, aggregation=aggregation,
            top_k=top_k, run_id=run_id))
        _print(response.rows, response.groups, "KNN-Shapley value", by, as_json)
        return
    request = query_pb2.AttributeRequest(
        prediction_id=prediction_id, top_k=top_k, aggregation=aggregation, run_id=run_id,
        method=getattr(query_pb2, _METHODS[method]), damping=damping, versions=versions)
    if output is not None:
        _export(stub, request, output, by, as_json)
        return
    response = call(stub.Attribute, request)
    title = f"{response.method} score"
    if not as_json:
        out.print(f"{response.method} at version(s) {response.model_version}"
                  + (f", damping {response.damping:.4g} ({response.damping_source})"
                     if response.damping else "") + f"; {SIGN}")
    if by != "row":
        _print([], response.groups, title, by, as_json)
        return
    for name, rows in (("most helpful", response.helpful), ("most harmful", response.harmful)):
        _print(rows, [], f"{title} ({name})", by, as_json, list_name=name)


def _print(rows: Any, groups: Any, title: str, by: str, as_json: bool,
           list_name: str = "") -> None:
    if by != "row":
        table = Table(by, "label", title, "rows")
        for g in groups:
            if as_json:
                click.echo(json.dumps({"key": g.key, "label": g.label, "score": g.score,
                                       "rows": g.rows}))
            table.add_row(g.key, g.label, f"{g.score:+.6g}", str(g.rows))
        if not as_json:
            out.print(table)
        return
    table = Table("#", title, "training row", "source rows", "ops")
    for i, r in enumerate(rows, 1):
        sources = [{"source_id": s.source_id, "uri": s.uri, "row": s.row} for s in r.sources]
        if as_json:
            click.echo(json.dumps({"node_id": r.node_id, "row": r.row, "score": r.score,
                                   "sources": sources, "ops": [o.op_name for o in r.ops]}
                                  | ({"list": list_name} if list_name else {})))
            continue
        shown = "; ".join(f"{Path(s['uri']).name or s['source_id']}:{s['row']}"
                          for s in sources[:3]) + (" …" if len(sources) > 3 else "")
        table.add_row(str(i), f"{r.score:+.6g}", f"{r.node_id}[{r.row}]", shown or "-",
                      " -> ".join(o.op_name for o in r.ops) or "-")
    if not as_json:
        out.print(table)


def _export(stub: Any, request: Any, path: Path, by: str, as_json: bool) -> None:
    """Every score from Attribution.AttributeAll into one Parquet file: by row, one row per
    training example (its node, row, score and first source row, sources as a list); else
    one row per group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list] = {}
    method = ""
    for chunk in call(stub.AttributeAll, request):
        method = chunk.method
        if by != "row":
            for g in chunk.groups:
                for name, value in (("key", g.key), ("label", g.label), ("score", g.score),
                                    ("rows", g.rows)):
                    columns.setdefault(name, []).append(value)
            continue
        for r in chunk.rows:
            for name, value in (
                    ("node_id", r.node_id), ("row", r.row), ("score", r.score),
                    ("source_id", r.sources[0].source_id if r.sources else ""),
                    ("source_uri", r.sources[0].uri if r.sources else ""),
                    ("source_row", r.sources[0].row if r.sources else -1),
                    ("sources", [f"{s.source_id}:{s.row}" for s in r.sources]),
                    ("ops", [o.op_name for o in r.ops])):
                columns.setdefault(name, []).append(value)
    table = pa.table(columns)
    pq.write_table(table, path)
    if as_json:
        click.echo(json.dumps({"path": str(path), "rows": table.num_rows, "method": method}))
    else:
        out.print(f"{table.num_rows} {method} scores written to {path}; {SIGN}")

def _parse_rows(spec: str, what: str) -> tuple[str, list[int]]:
    """'ID:1,2,5-9' -> ('ID', [1, 2, 5, 6, 7, 8, 9]); a clear error naming the bad part."""
    name, sep, rows = spec.rpartition(":")
    if not sep or not name or not rows:
        raise click.BadParameter(f"{spec!r}: expected ID:ROWS, e.g. src-1a2b:0,4,10-19",
                                 param_hint=what)
    picked: list[int] = []
    for part in rows.split(","):
        lo, dash, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise click.BadParameter(f"{spec!r}: {part!r} is not a row or a range a-b",
                                     param_hint=what) from None
        if first < 0 or last < first:
            raise click.BadParameter(f"{spec!r}: {part!r} is not a range of rows >= 0",
                                     param_hint=what)
        picked.extend(range(first, last + 1))
    return name, picked


@click.command()
@run_option(required=True, help="The training run whose trainer applies the request; the "
                                "target resolves to this run's training rows only")
@click.option("--model", "model_id", required=True, help="The model to unlearn from")
@click.option("--source", "sources", multiple=True, help="A source id: forget all its rows")
@click.option("--source-rows", "source_rows", multiple=True,
              help="SOURCE_ID:ROWS, e.g. src-1a2b:0,4,10-19 (source-file rows)")
@click.option("--rows", "row_keys", multiple=True,
              help="NODE_ID:ROWS training-row keys (they stand for their source rows)")
@click.option("--reason", default="", help="Recorded with the request")
@click.option("--method", type=click.Choice(["auto", "newton", "fine-tune"]), default="auto",
              show_default=True)
@click.option("--verify-retrain", is_flag=True,
              help="Also retrain from scratch without the rows and report the gap closed")
@click.option("--wait/--no-wait", default=False, show_default=True,
              help="Follow the request's status until the trainer has applied it, through "
                   "failed attempts the listener retries; an error (exit 2) if it fails for good")
@click.option("--timeout", type=click.FloatRange(min=1), default=3600.0, show_default=True,
              help="Seconds to wait with --wait")
@listen_option
@click.option("--json", "as_json", is_flag=True, help="JSON instead of tables")
def forget(run_id: str, model_id: str, sources: tuple[str, ...], source_rows: tuple[str, ...],
           row_keys: tuple[str, ...], reason: str, method: str, verify_retrain: bool,
           wait: bool, timeout: float, listen: str | None, as_json: bool) -> None:
    """Ask the trainer of RUN to remove the influence of a source, source rows or training
    rows from MODEL; prints the request id and every training row the target reaches.

    The target resolves within RUN: another run that trained the same model id on the
    same source files is not touched (send it its own request)."""
    import grpc
    from google.protobuf.json_format import MessageToDict

    from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

    if not (sources or source_rows or row_keys):
        raise click.UsageError("name what to forget: --source, --source-rows or --rows")
    target = events_pb2.ForgetTarget(source_ids=list(sources))
    for spec in source_rows:
        source_id, rows = _parse_rows(spec, "--source-rows")
        target.source_rows.add(source_id=source_id, rows=rows)
    for spec in row_keys:
        node_id, rows = _parse_rows(spec, "--rows")
        index = list(target.row_keys.node_ids)
        if node_id not in index:
            target.row_keys.node_ids.append(node_id)
            index.append(node_id)
        target.row_keys.node_index.extend([index.index(node_id)] * len(rows))
        target.row_keys.rows.extend(rows)

    stub = query_pb2_grpc.UnlearningStub(channel(listen))
    response = call(stub.Forget, query_pb2.ForgetRequest(
        run_id=run_id, model_id=model_id, target=target, reason=reason,
        method={"auto": events_pb2.UNLEARNING_METHOD_UNSPECIFIED, "newton": events_pb2.NEWTON,
                "fine-tune": events_pb2.FINE_TUNE}[method],
        verify_with_retrain=verify_retrain))
    via = {a.via: len(a.rows.rows) for a in response.affected}
    removed = sum(n for name, n in via.items() if name != "aggregation")
    if as_json:
        click.echo(json.dumps({"request_id": response.request_id, "rows": response.rows,
                               "removed": removed, "affected": via}))
    else:
        out.print(f"request [bold]{response.request_id}[/bold]: reaches {response.rows} "
                  f"training rows, removes {removed}")
        table = Table("reached via", "training rows", "removed")
        for name, count in via.items():
            table.add_row(name, str(count), "no (reported)" if name == "aggregation" else "yes")
        out.print(table)
    if not wait:
        return
    import time

    until, last = time.monotonic() + timeout, ("", "")
    while True:  # the server ends a stream after HEADWATER_STREAM_MAX_SECONDS: call again
        try:
            for status in stub.Status(query_pb2.UnlearningStatusRequest(
                    request_id=response.request_id), timeout=max(until - time.monotonic(), 1)):
                if (status.state, status.applied.error) == last:
                    continue
                last = (status.state, status.applied.error)
                if as_json:
                    click.echo(json.dumps(MessageToDict(status,
                                                        preserving_proto_field_name=True)))
                elif status.state == "retrying":  # a failed attempt; the listener retries
                    out.print(f"{status.request_id}: retrying - the trainer's attempt failed: "
                              f"{status.applied.error}")
                else:
                    out.print(f"{status.request_id}: {status.state}")
                if status.state == "applied" and not as_json:
                    _print_verification(status.applied)
                if status.state == "failed":
                    raise HeadwaterError(
                        f"request {status.request_id} failed and the trainer's listener will "
                        f"not try it again: {status.applied.error or 'no error given'}")
            return
        except grpc.RpcError as exc:
            if (exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() < until - 1
                    and "HEADWATER_STREAM_MAX_SECONDS" in (exc.details() or "")):
                continue
            _status_error(exc, response.request_id, timeout)


def _status_error(exc: Any, request_id: str, timeout: float) -> None:
    """Raise the one-line error of a failed Unlearning.Status stream."""
    import grpc

    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        raise HeadwaterError(f"request {request_id} was not applied within {timeout:g} s; "
                             "is the run's trainer listening?") from None
    raise HeadwaterError(exc.details() or exc.code().name) from None


def _print_verification(applied: Any) -> None:
    v = applied.verification
    table = Table("figure", "before", "after", "retrained")
    retrained = v.retrained

    def r(value: float) -> str:
        return f"{value:.4f}" if retrained else "-"

    table.add_row("forget-set loss", f"{v.forget_loss_before:.4f}", f"{v.forget_loss_after:.4f}",
                  r(v.retrain_forget_loss))
    table.add_row("test accuracy", f"{v.test_accuracy_before:.4f}",
                  f"{v.test_accuracy_after:.4f}", r(v.retrain_test_accuracy))
    table.add_row("membership AUC", "", f"{v.membership_auc:.4f}", r(v.retrain_membership_auc))
    out.print(f"model {applied.model_id}: {applied.previous_version} -> {applied.new_version}, "
              f"{applied.rows_forgotten} rows in {applied.duration_seconds:.3f} s; parameter "
              f"distance {v.parameter_distance:.4g}"
              + (f"; gap closed {v.gap_closed:.3f}, distance to retrained "
                 f"{v.distance_to_retrained:.4g}" if retrained else ""))
    out.print(table)
