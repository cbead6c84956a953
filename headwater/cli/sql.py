"""`headwater sql`: one read-only statement through the same checks and limits as Query.Sql."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from headwater.cli.common import (
    console,
    data_dir_option,
    dsn_option,
    listen_option,
    load_settings,
    open_reader,
    out,
)
from headwater.errors import HeadwaterError
from headwater.query_service.settings import Settings


def _read_sql(reader: Any, settings: Settings, sql: str,
              parameters: dict[str, str] | None) -> tuple[list[str], list[tuple]]:
    """An auditor's statement through the same checks and limits as Query.Sql (a local store)
    or through Query.Sql itself (a server)."""
    from headwater.query_service.sql.policy import SqlRefused
    from headwater.query_service.sql.reader import SqlReader
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


@click.command()
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Value for a {NAME:Type} placeholder (repeatable)")
@data_dir_option
@dsn_option
@listen_option
def sql(query: str, fmt: str, params: tuple[str, ...], data_dir: Path | None,
        dsn: str | None, listen: str | None) -> None:
    """Run one read-only SQL statement and print the result."""
    parameters = {}
    for p in params:
        name, sep, value = p.partition("=")
        if not sep or not name:
            raise HeadwaterError(f"--param {p!r} must be NAME=VALUE")
        parameters[name] = value
    settings = load_settings(data_dir=data_dir, dsn=dsn, listen=listen)
    reader = open_reader(settings, listen)
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
