"""`headwater lineage trace|ops|describe|openlineage`: row-level lineage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from headwater.cli.common import (
    call,
    channel,
    console,
    data_dir_option,
    dsn_option,
    listen_option,
    load_settings,
    open_reader,
    out,
    run_option,
)
from headwater.errors import HeadwaterError


@click.group()
def lineage() -> None:
    """Row-level lineage from a running serve / query-service (gRPC at --listen)."""


_RUN_HELP = ("Only answer for a node of this run (source nodes, named by their content, "
             "belong to every run that registered them)")


def _stub(listen: str | None) -> Any:
    from headwater.v1 import query_pb2_grpc

    return query_pb2_grpc.LineageStub(channel(listen))


_PAGE = 1000  # traces per TraceRows reply


@lineage.command("trace")
@click.argument("node_id")
@click.argument("rows", nargs=-1, type=int, required=True)
@run_option(help=_RUN_HELP)
@listen_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per row")
@click.option("--expand", is_flag=True,
              help="Also list every row an aggregate (a mean, a std, ...) depends on")
def lineage_trace(node_id: str, rows: tuple[int, ...], run_id: str, listen: str | None,
                  as_json: bool, expand: bool) -> None:
    """Source-file rows behind ROWS of NODE_ID: the op chain by name, each row's own
    (direct) source rows first, then one line per aggregate it depends on ("all N rows of
    node X via numpy.mean")."""
    from headwater.v1 import events_pb2, query_pb2

    stub = _stub(listen)
    keys = events_pb2.RowKeys(node_ids=[node_id], rows=list(rows))
    token = ""
    while True:
        page = call(stub.TraceRows, query_pb2.TraceRowsRequest(
            rows=keys, run_id=run_id, expand_aggregates=expand, page_size=_PAGE,
            page_token=token))
        _print_traces(page, as_json)
        token = page.next_page_token
        if not token:
            break


def _print_traces(page: Any, as_json: bool) -> None:
    names = {o.op_id: o.op_name for o in page.ops}
    for t in page.traces:
        aggregates = [page.aggregates[k] for k in t.aggregate_refs]
        if as_json:
            click.echo(json.dumps({
                "node_id": t.node_id, "row": t.row, "ops": list(t.op_ids),
                "op_names": [names.get(o, "") for o in t.op_ids],
                "sources": [{"source_id": s.source_id, "uri": s.uri, "row": s.row}
                            for s in t.sources],
                "aggregates": [{"op_id": a.op_id, "op_name": a.op_name, "node_id": a.node_id,
                                "node_rows": a.node_rows, "reason": a.reason,
                                "sources": [{"source_id": c.source_id, "uri": c.uri,
                                             "rows": c.rows} for c in a.sources]}
                               for a in aggregates]}))
            continue
        chain = " -> ".join(names.get(o) or o for o in t.op_ids) or "-"
        out.print(f"[bold]{t.node_id}[/] row {t.row}  via {chain}")
        by_file: dict[str, list[int]] = {}
        for s in t.sources:
            by_file.setdefault(s.uri or s.source_id, []).append(s.row)
        for uri, file_rows in by_file.items():
            shown = ", ".join(map(str, file_rows[:20])) + (" …" if len(file_rows) > 20 else "")
            out.print(f"  {uri}: {len(file_rows)} row(s): {shown}")
        for a in aggregates:
            files = ", ".join(f"{c.uri or c.source_id}: {c.rows}" for c in a.sources)
            out.print(f"  depends on all {a.node_rows} rows of node {a.node_id} via "
                      f"{a.op_name} ({a.reason})" + (f"; from {files}" if files else ""),
                      soft_wrap=True)


@lineage.command("ops")
@click.argument("node_id")
@run_option(help=_RUN_HELP)
@listen_option
def lineage_ops(node_id: str, run_id: str, listen: str | None) -> None:
    """The op chain that produced NODE_ID, oldest first."""
    from headwater.v1 import query_pb2

    response = call(_stub(listen).Ops, query_pb2.NodeRequest(node_id=node_id, run_id=run_id))
    table = Table("op", "name", "inputs", "output", "understood")
    for o in response.ops:
        table.add_row(o.op_id, o.op_name, ", ".join(o.input_node_ids), o.output_node_id,
                      "yes" if o.understood else "[red]no: depends on all rows[/]")
    out.print(table)


@lineage.command("describe")
@click.argument("node_id")
@run_option(help=_RUN_HELP)
@listen_option
def lineage_describe(node_id: str, run_id: str, listen: str | None) -> None:
    """A node: source or op output, shape, columns, and its ancestors."""
    from headwater.v1 import query_pb2

    stub = _stub(listen)
    node = call(stub.DescribeNode, query_pb2.NodeRequest(node_id=node_id, run_id=run_id))
    ancestors = call(stub.Ancestors, query_pb2.NodeRequest(node_id=node_id, run_id=run_id))
    out.print(f"{node.node_id}: {node.kind}, shape {list(node.shape)}, run {node.run_id}"
              + (f", source {node.source_id}" if node.source_id else "")
              + (f", made by {node.produced_by_op}" if node.produced_by_op else ""))
    if node.columns:
        out.print(f"  columns: {', '.join(node.columns)}")
    for a in ancestors.nodes:
        out.print(f"  ancestor {a.node_id} ({a.kind}{', ' + a.source_id if a.source_id else ''})")


@lineage.command("openlineage")
@click.option("--run", "run_id", required=True, help="The run whose lineage to export")
@click.option("--out", "out_file", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="Write here instead of standard output")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "json"]), default="jsonl",
              help="jsonl: one RunEvent per line (what OpenLineage's file transport writes); "
                   "json: one JSON array")
@click.option("--emit", is_flag=True,
              help="Send the events through openlineage-python's transport instead of "
                   "printing them: OPENLINEAGE_URL (HTTP, e.g. Marquez) or openlineage.yml")
@data_dir_option
@dsn_option
@listen_option
def lineage_openlineage(run_id: str, out_file: Path | None, fmt: str, emit: bool,
                        data_dir: Path | None, dsn: str | None, listen: str | None) -> None:
    """A run's datasets and jobs as OpenLineage RunEvents (one per op, then the run).

    Reads like `headwater sql`: the store itself, or a running serve's SQL when serve
    holds the embedded data directory."""
    from headwater.query_service.lineage.openlineage import export_run

    client = None
    if emit:
        from headwater.query_service.lineage import openlineage_delivery

        client = openlineage_delivery.configured_client()  # before reading: fail early
    reader = open_reader(load_settings(data_dir=data_dir, dsn=dsn, listen=listen), listen)
    try:
        events = export_run(reader, run_id)
    except ValueError as exc:  # stored lineage the export cannot express: name it
        raise HeadwaterError(f"run {run_id!r}: {exc}") from None
    finally:
        reader.close()
    if client is not None:
        sent = openlineage_delivery.emit(events, client)
        console.print(f"headwater: {sent} OpenLineage event(s) of run {run_id} sent through "
                      f"the {client.transport.kind} transport")
        return
    if fmt == "json":
        text = json.dumps(events, indent=1) + "\n"
    else:
        text = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events)
    if out_file is None:
        click.echo(text, nl=False)
    else:
        out_file.write_text(text)
        console.print(f"headwater: {len(events)} OpenLineage event(s) of run {run_id} "
                      f"written to {out_file}")
