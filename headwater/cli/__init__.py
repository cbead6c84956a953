"""The `headwater` command line. Settings come from HEADWATER_* variables; flags override."""

from __future__ import annotations

import csv
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from headwater import __version__
from headwater.query_service.settings import Settings
from headwater.stream_processors.errors import HeadwaterError

console = Console(stderr=True)
out = Console()


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _open_store(settings: Settings, *, migrate: bool = True):
    from headwater.stream_processors.store import Store

    store = Store(settings.resolved_dsn, settings.database, cluster=settings.cluster)
    if migrate:
        store.migrate(settings.events_retention_days)
    return store


def _reader(settings: Settings, listen: str | None):
    """What a read command reads (query_service/store_access.py): the server at --listen
    (`listen`, the flag), else the existing store, else the serve holding its directory."""
    from headwater.query_service.store_access import open_reader

    return open_reader(settings, listen)


def _bound(listen: str, port: int) -> str:
    """`listen` with the port the server bound (`:0` asks for any free port)."""
    return f"{listen.rpartition(':')[0]}:{port}"


def _configure_telemetry(settings: Settings, service: str) -> None:
    from headwater.producers import telemetry

    telemetry.configure(settings.otlp_endpoint, service)


_data_dir = click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                         help="Embedded data directory [env HEADWATER_DATA_DIR; ./.headwater]")
_dsn = click.option("--dsn", default=None,
                    help="ClickHouse DSN: chdb://DIR or http(s)://host:8123 [HEADWATER_DSN]")
_listen = click.option("--listen", default=None,
                       help="gRPC address HOST:PORT [HEADWATER_LISTEN; 127.0.0.1:50051]")
_kafka = click.option("--kafka-bootstrap", default=None,
                      help="Kafka bootstrap servers [HEADWATER_KAFKA_BOOTSTRAP]")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="headwater")
def cli() -> None:
    """Headwater: streaming lineage and data attribution for ML systems that keep learning."""


@cli.command()
@_data_dir
@_dsn
@_listen
def serve(data_dir: Path | None, dsn: str | None, listen: str | None) -> None:
    """Embedded mode: event log, processors and query service in one process (chDB)."""
    from headwater.query_service.limits import StreamLimits
    from headwater.query_service.server import build_server
    from headwater.query_service.transport_security import check_exposure, server_security
    from headwater.stream_processors.sink import EventSink

    settings = _settings(data_dir=data_dir, dsn=dsn, listen=listen)
    security = server_security(settings)
    check_exposure(settings.listen, security)  # before opening the store
    _configure_telemetry(settings, "headwater-serve")
    store = _open_store(settings)
    sink = EventSink(store, "grpc", settings.event_limits)
    server, port = build_server(store, settings.listen, sink=sink,
                                damping=settings.attribution_damping,
                                decay=settings.attribution_decay, security=security,
                                max_workers=settings.rpc_workers,
                                limits=StreamLimits.from_settings(settings),
                                sql=settings.sql_limits)
    server.start()
    store.record_address(_bound(settings.listen, port))  # CLI reads find this serve
    console.print(f"headwater serve: gRPC on {settings.listen} (port {port}, "
                  f"{security.describe()}), store {store.dsn.redacted}; Ctrl-C to stop")
    _freeze_startup_heap()
    _wait_for_signal()
    server.stop(grace=5).wait()
    store.close()


@cli.command("query-service")
@_dsn
@_listen
def query_service(dsn: str | None, listen: str | None) -> None:
    """Stateless query service over a ClickHouse DSN (distributed mode)."""
    from headwater.query_service.limits import StreamLimits
    from headwater.query_service.server import build_server
    from headwater.query_service.transport_security import check_exposure, server_security

    settings = _settings(dsn=dsn, listen=listen)
    security = server_security(settings)
    check_exposure(settings.listen, security)  # before opening the store
    _configure_telemetry(settings, "headwater-query")
    store = _open_store(settings)
    log = None
    if settings.kafka_bootstrap:
        from headwater.producers.transports.kafka import KafkaTransport
        from headwater.query_service.services.unlearning import LogPublishers

        log = LogPublishers(lambda: KafkaTransport(settings.kafka_bootstrap,
                                                   settings.kafka_topic,
                                                   config=settings.kafka_config))
    server, port = build_server(store, settings.listen, damping=settings.attribution_damping,
                                decay=settings.attribution_decay, log=log, security=security,
                                max_workers=settings.rpc_workers,
                                limits=StreamLimits.from_settings(settings),
                                sql=settings.sql_limits)
    server.start()
    console.print(f"headwater query-service: gRPC on {settings.listen} "
                  f"({security.describe()}), store {store.dsn.redacted}")
    _freeze_startup_heap()
    _wait_for_signal()
    server.stop(grace=5).wait()
    store.close()


@cli.command()
@_dsn
@_kafka
@click.option("--topic", default=None, help="Events topic [HEADWATER_KAFKA_TOPIC]")
@click.option("--group", default=None, help="Consumer group [HEADWATER_KAFKA_GROUP]")
@click.option("--batch-size", type=int, default=None, help="Events per ClickHouse insert")
def process(dsn: str | None, kafka_bootstrap: str | None, topic: str | None,
            group: str | None, batch_size: int | None) -> None:
    """Distributed mode: consume events from Kafka into ClickHouse (a consumer group)."""
    from headwater.stream_processors.kafka_runner import (
        KafkaRunner,
        check_reachable,
        ensure_topic,
        run_until_signalled,
    )
    from headwater.stream_processors.sink import EventSink

    settings = _settings(dsn=dsn, kafka_bootstrap=kafka_bootstrap, kafka_topic=topic,
                         kafka_group=group, batch_size=batch_size)
    if not settings.kafka_bootstrap:
        raise HeadwaterError("no Kafka broker: pass --kafka-bootstrap or set "
                             "HEADWATER_KAFKA_BOOTSTRAP")
    check_reachable(settings.kafka_bootstrap, settings.kafka_config)
    partitions = ensure_topic(settings.kafka_bootstrap, settings.kafka_topic,
                              settings.kafka_partitions, settings.kafka_config)
    _configure_telemetry(settings, "headwater-process")
    store = _open_store(settings)
    progress = _ThroughputLog("headwater process")
    runner = KafkaRunner(EventSink(store, "kafka", settings.event_limits), settings.kafka_bootstrap,
                         settings.kafka_topic, settings.kafka_group,
                         batch_size=settings.batch_size, within=settings.batch_within,
                         kafka_config=settings.kafka_config, on_batch=progress.add)
    console.print(f"headwater process: {settings.kafka_topic} ({partitions} partitions) @ "
                  f"{settings.kafka_bootstrap} -> {store.dsn.redacted} "
                  f"(group {settings.kafka_group}); Ctrl-C to stop")
    try:
        run_until_signalled(runner)
    finally:
        store.close()
    console.print(f"headwater process: stopped after storing {runner.stored} events")


class _ThroughputLog:
    """Progress for a long-running daemon: one line every `every` seconds while working."""

    def __init__(self, name: str, every: float = 10.0) -> None:
        import time

        self._clock = time.monotonic
        self._name, self._every = name, every
        self._total = self._window = 0
        self._since = self._clock()

    def add(self, n: int) -> None:
        self._total += n
        self._window += n
        elapsed = self._clock() - self._since
        if elapsed >= self._every:
            console.print(f"{self._name}: {self._total} events stored "
                          f"({self._window / elapsed:,.0f}/s over the last {elapsed:.0f}s)")
            self._window, self._since = 0, self._clock()


def _read_sql(reader: Any, settings: Settings, sql: str,
              parameters: dict[str, str] | None) -> tuple[list[str], list[tuple]]:
    """An auditor's statement through the same checks and limits as Query.Sql (a local store)
    or through Query.Sql itself (a server)."""
    from headwater.query_service.sql_policy import SqlRefused
    from headwater.query_service.sql_reader import SqlReader
    from headwater.stream_processors.store import Store

    if not isinstance(reader, Store):
        return reader.query_columns(sql, parameters)
    sql_reader = SqlReader(reader, settings.sql_limits)
    try:
        result = sql_reader.run(sql, parameters, settings.sql_max_rows)
    except SqlRefused as exc:
        raise HeadwaterError(f"refused: {exc}") from None
    finally:
        sql_reader.close()
    if result.truncated:
        console.print(f"[yellow]result truncated at {len(result.rows)} rows "
                      "(HEADWATER_SQL_MAX_ROWS)[/]")
    return result.columns, result.rows


@cli.command()
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Value for a {NAME:Type} placeholder (repeatable)")
@_data_dir
@_dsn
@_listen
def sql(query: str, fmt: str, params: tuple[str, ...], data_dir: Path | None,
        dsn: str | None, listen: str | None) -> None:
    """Run one read-only SQL statement and print the result."""
    parameters = {}
    for p in params:
        name, sep, value = p.partition("=")
        if not sep or not name:
            raise HeadwaterError(f"--param {p!r} must be NAME=VALUE")
        parameters[name] = value
    settings = _settings(data_dir=data_dir, dsn=dsn, listen=listen)
    reader = _reader(settings, listen)
    try:
        columns, rows = _read_sql(reader, settings, query, parameters or None)
    finally:
        reader.close()
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    elif fmt == "json":
        for row in rows:
            click.echo(json.dumps(dict(zip(columns, row, strict=True)), default=str))
    else:
        table = Table(*columns)
        for row in rows:
            table.add_row(*(str(v) for v in row))
        out.print(table)
        out.print(f"{len(rows)} row(s)")


@cli.command()
@_data_dir
@_dsn
@_listen
@_kafka
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables")
def status(data_dir: Path | None, dsn: str | None, listen: str | None,
           kafka_bootstrap: str | None, as_json: bool) -> None:
    """Events by type, dead letters, log integrity and (with Kafka) consumer lag."""
    from headwater.query_service.status import collect_status, consumer_lag

    settings = _settings(data_dir=data_dir, dsn=dsn, listen=listen,
                         kafka_bootstrap=kafka_bootstrap)
    reader = _reader(settings, listen)
    try:
        st = collect_status(reader)
    finally:
        reader.close()
    if settings.kafka_bootstrap:
        try:
            st.lag = consumer_lag(settings.kafka_bootstrap, settings.kafka_topic,
                                  settings.kafka_group, settings.kafka_config)
        except Exception as exc:  # report, do not fail the whole status
            st.lag_error = str(exc)
    problems = [vars(p) for p in st.log.problems]
    if as_json:
        click.echo(json.dumps({
            "events_by_type": st.events_by_type, "dead_letters": st.dead_letters,
            "log_ok": st.log.ok, "producers": len(st.log.producers), "problems": problems,
            "lag": st.lag, "lag_error": st.lag_error,
        }, default=str))
    else:
        t = Table("payload", "events", title="Events stored")
        for k, v in st.events_by_type.items():
            t.add_row(k, str(v))
        out.print(t)
        out.print(f"dead letters: {st.dead_letters}")
        for when, err in st.recent_dead_letters:
            out.print(f"  {when}  {err}")
        verdict = "[green]intact[/]" if st.log.ok else f"[red]{len(problems)} problem(s)[/]"
        out.print(f"log: {st.log.events} events from {len(st.log.producers)} producer(s), "
                  f"{verdict}")
        for p in st.log.problems[:20]:
            out.print(f"  {p.kind:<13} {p.producer_id} seq {p.seq}: {p.detail}")
        if st.lag is not None:
            out.print(f"consumer lag ({settings.kafka_group}): {sum(st.lag.values())} "
                      f"{st.lag}")
        elif st.lag_error:
            out.print(f"consumer lag: unavailable ({st.lag_error})")
    if not st.log.ok:
        sys.exit(1)


@cli.group()
def lineage() -> None:
    """Row-level lineage from a running serve / query-service (gRPC at --listen)."""


def _lineage_stub(listen: str | None):
    from headwater.query_service.channel import open_channel
    from headwater.v1 import query_pb2_grpc

    return query_pb2_grpc.LineageStub(open_channel(_settings(listen=listen)))


def _lineage_call(method, request):
    import grpc

    try:
        return method(request, timeout=60)
    except grpc.RpcError as exc:
        raise HeadwaterError(exc.details() or exc.code().name) from None


@lineage.command("trace")
@click.argument("node_id")
@click.argument("rows", nargs=-1, type=int, required=True)
@_listen
@click.option("--json", "as_json", is_flag=True, help="One JSON object per row")
def lineage_trace(node_id: str, rows: tuple[int, ...], listen: str | None,
                  as_json: bool) -> None:
    """Source-file rows (and the ops in between) behind ROWS of NODE_ID."""
    from headwater.v1 import events_pb2, query_pb2

    response = _lineage_call(_lineage_stub(listen).TraceRows, query_pb2.TraceRowsRequest(
        rows=events_pb2.RowKeys(node_ids=[node_id], rows=list(rows))))
    for t in response.traces:
        if as_json:
            click.echo(json.dumps({"node_id": t.node_id, "row": t.row, "ops": list(t.op_ids),
                                   "sources": [{"source_id": s.source_id, "uri": s.uri,
                                                "row": s.row} for s in t.sources]}))
            continue
        out.print(f"[bold]{t.node_id}[/] row {t.row}  via {' -> '.join(t.op_ids) or '-'}")
        by_file: dict[str, list[int]] = {}
        for s in t.sources:
            by_file.setdefault(s.uri or s.source_id, []).append(s.row)
        for uri, file_rows in by_file.items():
            shown = ", ".join(map(str, file_rows[:20])) + (" …" if len(file_rows) > 20 else "")
            out.print(f"  {uri}: {len(file_rows)} row(s): {shown}")


@lineage.command("ops")
@click.argument("node_id")
@_listen
def lineage_ops(node_id: str, listen: str | None) -> None:
    """The op chain that produced NODE_ID, oldest first."""
    from headwater.v1 import query_pb2

    response = _lineage_call(_lineage_stub(listen).Ops, query_pb2.NodeRequest(node_id=node_id))
    table = Table("op", "name", "inputs", "output", "understood")
    for o in response.ops:
        table.add_row(o.op_id, o.op_name, ", ".join(o.input_node_ids), o.output_node_id,
                      "yes" if o.understood else "[red]no: depends on all rows[/]")
    out.print(table)


@lineage.command("describe")
@click.argument("node_id")
@_listen
def lineage_describe(node_id: str, listen: str | None) -> None:
    """A node: source or op output, shape, columns, and its ancestors."""
    from headwater.v1 import query_pb2

    stub = _lineage_stub(listen)
    node = _lineage_call(stub.DescribeNode, query_pb2.NodeRequest(node_id=node_id))
    ancestors = _lineage_call(stub.Ancestors, query_pb2.NodeRequest(node_id=node_id))
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
@_data_dir
@_dsn
@_listen
def lineage_openlineage(run_id: str, out_file: Path | None, fmt: str, data_dir: Path | None,
                        dsn: str | None, listen: str | None) -> None:
    """A run's datasets and jobs as OpenLineage RunEvents (one per op, then the run).

    Reads like `headwater sql`: the store itself, or a running serve's SQL when serve
    holds the embedded data directory."""
    from headwater.query_service.openlineage import export_run

    reader = _reader(_settings(data_dir=data_dir, dsn=dsn, listen=listen), listen)
    try:
        events = export_run(reader, run_id)
    except ValueError as exc:  # stored lineage the export cannot express: name it
        raise HeadwaterError(f"run {run_id!r}: {exc}") from None
    finally:
        reader.close()
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


@cli.command()
@_data_dir
@_dsn
def migrate(data_dir: Path | None, dsn: str | None) -> None:
    """Apply pending schema migrations (serve/process also do this at start-up)."""
    settings = _settings(data_dir=data_dir, dsn=dsn)
    from headwater.stream_processors.store import Store

    store = Store(settings.resolved_dsn, settings.database, cluster=settings.cluster)
    try:
        applied = store.migrate(settings.events_retention_days)
    finally:
        store.close()
    click.echo(f"{len(applied)} migration(s) applied" + "".join(
        f"\n  {m.version:04d}_{m.name}" for m in applied))


@cli.command()
@click.option("--fast", is_flag=True, help="Smaller run, for tests")
@click.option("--output", type=click.Path(path_type=Path), default=Path("demo-output"),
              help="Where the demo writes its data and files")
def demo(fast: bool, output: Path) -> None:
    """The whole flow on real data: lineage, attribution, unlearning, the audit report."""
    from headwater.query_service.demo import run_demo

    run_demo(output, fast=fast)


_AGGREGATE_BY = {"row": "BY_ROW", "source": "BY_SOURCE", "file": "BY_SOURCE_FILE", "op": "BY_OP"}


@cli.command()
@click.argument("prediction_id")
@click.option("--method", type=click.Choice(["influence", "tracin", "knn-shapley"]),
              default="influence", show_default=True)
@click.option("--by", "by", type=click.Choice(list(_AGGREGATE_BY)), default="row",
              show_default=True, help="Rows, or sums by source, source file or op")
@click.option("--top-k", type=click.IntRange(1, 10_000), default=10, show_default=True)
@click.option("--neighbours", type=click.IntRange(1), default=5, show_default=True,
              help="K of KNN-Shapley")
@_listen
@click.option("--json", "as_json", is_flag=True, help="One JSON object per result line")
def attribute(prediction_id: str, method: str, by: str, top_k: int, neighbours: int,
              listen: str | None, as_json: bool) -> None:
    """The training rows (with their source-file rows and ops) that most influenced
    PREDICTION_ID; positive = the row raised the explained output."""
    from headwater.query_service.channel import open_channel
    from headwater.v1 import query_pb2, query_pb2_grpc

    stub = query_pb2_grpc.AttributionStub(open_channel(_settings(listen=listen)))
    aggregation = getattr(query_pb2, _AGGREGATE_BY[by])
    if method == "knn-shapley":
        response = _lineage_call(stub.Value, query_pb2.ValueRequest(
            prediction_id=prediction_id, k_neighbours=neighbours, aggregation=aggregation,
            top_k=top_k))
        title = "KNN-Shapley value"
    else:
        response = _lineage_call(stub.Attribute, query_pb2.AttributeRequest(
            prediction_id=prediction_id, top_k=top_k, aggregation=aggregation,
            method=query_pb2.TRACIN if method == "tracin" else query_pb2.INFLUENCE))
        title = f"{method} score"
    if by != "row":
        table = Table(by, "label", title, "rows")
        for g in response.groups:
            if as_json:
                click.echo(json.dumps({"key": g.key, "label": g.label, "score": g.score,
                                       "rows": g.rows}))
            table.add_row(g.key, g.label, f"{g.score:+.6g}", str(g.rows))
        if not as_json:
            out.print(table)
        return
    table = Table("#", title, "training row", "source rows", "ops")
    for i, r in enumerate(response.rows, 1):
        sources = [{"source_id": s.source_id, "uri": s.uri, "row": s.row} for s in r.sources]
        if as_json:
            click.echo(json.dumps({"node_id": r.node_id, "row": r.row, "score": r.score,
                                   "sources": sources, "ops": [o.op_name for o in r.ops]}))
            continue
        shown = "; ".join(f"{Path(s['uri']).name or s['source_id']}:{s['row']}"
                          for s in sources[:3]) + (" …" if len(sources) > 3 else "")
        table.add_row(str(i), f"{r.score:+.6g}", f"{r.node_id}[{r.row}]", shown or "-",
                      " -> ".join(o.op_name for o in r.ops) or "-")
    if not as_json:
        out.print(table)

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


@cli.command()
@click.option("--run", "run_id", required=True, help="The training run")
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
              help="Follow the request's status until the trainer has applied it")
@click.option("--timeout", type=click.FloatRange(min=1), default=3600.0, show_default=True,
              help="Seconds to wait with --wait")
@_listen
@click.option("--json", "as_json", is_flag=True, help="JSON instead of tables")
def forget(run_id: str, model_id: str, sources: tuple[str, ...], source_rows: tuple[str, ...],
           row_keys: tuple[str, ...], reason: str, method: str, verify_retrain: bool,
           wait: bool, timeout: float, listen: str | None, as_json: bool) -> None:
    """Ask the trainer of RUN to remove the influence of a source, source rows or training
    rows from MODEL; prints the request id and every training row the target reaches."""
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
    from headwater.query_service.channel import open_channel

    stub = query_pb2_grpc.UnlearningStub(open_channel(_settings(listen=listen)))
    response = _lineage_call(stub.Forget, query_pb2.ForgetRequest(
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

    until, last = time.monotonic() + timeout, None
    while True:  # the server ends a stream after HEADWATER_STREAM_MAX_SECONDS: call again
        try:
            for status in stub.Status(query_pb2.UnlearningStatusRequest(
                    request_id=response.request_id), timeout=max(until - time.monotonic(), 1)):
                if status.state == last:
                    continue
                last = status.state
                if as_json:
                    click.echo(json.dumps(MessageToDict(status,
                                                        preserving_proto_field_name=True)))
                else:
                    out.print(f"{status.request_id}: {status.state}")
                if status.state == "applied" and not as_json:
                    _print_verification(status.applied)
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


@cli.group()
def audit() -> None:
    """Compliance: verify the record-keeping log, build and check audit reports."""


from headwater.query_service.report_cli import check, report  # noqa: E402

audit.add_command(report)
audit.add_command(check)
cli.add_command(report)  # `headwater report`: the same command as `headwater audit report`
from headwater.query_service.replay_cli import replay  # noqa: E402

cli.add_command(replay)

@audit.command("verify")
@click.option("--run", "run_id", default="", help="Only the producers of this run")
@click.option("--recompute-hashes", is_flag=True,
              help="Also re-hash every stored event and compare its columns with its bytes")
@_data_dir
@_dsn
@_listen
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object")
def audit_verify(run_id: str, recompute_hashes: bool, data_dir: Path | None, dsn: str | None,
                 listen: str | None, as_json: bool) -> None:
    """Art. 12 record-keeping: every producer's seq continuity and hash chain, and the time
    span the log covers; exit status 1 when a problem is found."""
    from headwater.query_service.log_reader import verify_stored_log
    from headwater.query_service.remote import RemoteStore
    from headwater.stream_processors.log_integrity import report_as_dict

    reader = _reader(_settings(data_dir=data_dir, dsn=dsn, listen=listen), listen)
    try:
        if isinstance(reader, RemoteStore):
            report = reader.verify_log(run_id, recompute_hashes)
        else:
            report = verify_stored_log(reader, run_id, recompute_hashes)
    finally:
        reader.close()
    data = report_as_dict(report)
    if as_json:
        click.echo(json.dumps(data))
    else:
        table = Table("producer", "run", "events", "seq", "first emitted", "last emitted",
                      "head hash", title="Event log by producer")
        for p in data["producers"]:
            table.add_row(p["producer_id"], p["run_id"], str(p["events"]),
                          f"{p['first_seq']}..{p['last_seq']}", p["first_emitted_at"],
                          p["last_emitted_at"], p["head_hash"][:16])
        out.print(table)
        verdict = "[green]intact[/]" if report.ok else f"[red]{len(report.problems)} problem(s)[/]"
        out.print(f"log: {report.events} events from {len(report.producers)} producer(s), "
                  f"{data['first_emitted_at']} .. {data['last_emitted_at']}; hashes "
                  f"{'recomputed' if report.hashes_recomputed else 'not recomputed'}; retention "
                  f"{report.retention_days or 'none'} days; {verdict}")
        for p in report.problems:
            out.print(f"  {p.kind:<15} {p.producer_id} seq {p.seq}: {p.detail}")
        for p in report.notes:
            out.print(f"  note: {p.kind:<9} {p.producer_id} seq {p.seq}: {p.detail}")
    if not report.ok:
        sys.exit(1)


def _freeze_startup_heap() -> None:
    """Move everything alive at start-up (modules, torch, the store, the server) to the
    permanent generation: it never becomes garbage, and full collections during requests
    that allocate many objects (10k-key lineage traces) then skip it — ~30 ms a query."""
    import gc

    gc.collect()
    gc.freeze()


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cli.main(args=argv, prog_name="headwater", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except HeadwaterError as exc:
        click.echo(f"headwater: error: {exc}", err=True)
        sys.exit(2)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        click.echo(f"headwater: error: setting {where}: {first['msg']}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
