"""`headwater replay`: rebuild the derived tables from the event log and compare them with
the incremental ones (docs/operations.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from headwater.cli.common import console, data_dir_option, dsn_option, load_settings
from headwater.errors import ConfigError
from headwater.query_service.settings import Settings
from headwater.stream_processors.dsn import parse_dsn


def _target_dsn(into: str | None, source_dsn: str) -> str:
    """--into: a DSN as is, a directory as a data dir (chdb://DIR/clickhouse, like
    --data-dir); none: the source store itself (a database of its own)."""
    if not into:
        return source_dsn
    if "://" in into:
        return into
    return f"chdb://{Path(into) / 'clickhouse'}"


def _same_engine_path(a: str, b: str) -> bool | None:
    """True/False for two chDB DSNs (same directory or not); None unless both are chDB."""
    da, db = parse_dsn(a), parse_dsn(b)
    if not (da.embedded and db.embedded):
        return None
    assert da.path is not None and db.path is not None
    return da.path.resolve() == db.path.resolve()


@click.command()
@data_dir_option
@dsn_option
@click.option("--run", "run_id", default="", help="Only the events of this run")
@click.option("--into", default=None, metavar="DSN_OR_DIR",
              help="Store to rebuild into [default: the source store]")
@click.option("--into-database", default=None,
              help="Database to rebuild into [default: <database>_replay]")
@click.option("--in-place", is_flag=True,
              help="Truncate the derived tables of the source and rebuild them there")
@click.option("--replace", is_flag=True,
              help="Empty the target's derived tables first (else they must be empty)")
@click.option("--batch-size", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object")
def replay(data_dir: Path | None, dsn: str | None, run_id: str, into: str | None,
           into_database: str | None, in_place: bool, replace: bool, batch_size: int,
           as_json: bool) -> None:
    """Rebuild every derived table from the stored events (in seq order per producer,
    through the processors' own row builders) and compare with the incremental tables;
    exit status 1 when they differ."""
    from headwater.stream_processors import replay as rp
    from headwater.stream_processors.store import Store

    settings = load_settings(data_dir=data_dir, dsn=dsn)
    if in_place and (into or into_database or run_id):
        raise ConfigError("--in-place rebuilds every run of the source store itself; it "
                          "takes no --into, --into-database or --run")
    source = Store(settings.resolved_dsn, settings.database, cluster=settings.cluster)
    target = None
    try:
        source.migrate(settings.events_retention_days)
        total = rp.count_events(source, run_id)
        if in_place:
            before = rp.digests(source)
            rp.truncate_derived(source)
            target, target_name = source, f"{source.dsn.redacted} (in place)"
        else:
            target, target_name = _open_target(source, settings, into, into_database, replace)
        with _progress(total, as_json) as advance:
            stats = rp.replay(source, target, run_id, batch_size, on_batch=advance)
        tables = rp.compare(before if in_place else rp.digests(source, run_id),
                            rp.digests(target, run_id))
    finally:
        if target is not None and target is not source:
            target.close()
        source.close()
    report = rp.ReplayReport(source=source.dsn.redacted, target=target_name, in_place=in_place,
                             run_id=run_id, stats=stats, tables=tables)
    _print(report, as_json)
    if not report.equal:
        sys.exit(1)


def _open_target(source, settings: Settings, into: str | None, into_database: str | None,
                 replace: bool):
    """The replay's target store, migrated, its derived tables empty."""
    from headwater.stream_processors import replay as rp
    from headwater.stream_processors.store import Store

    dsn = _target_dsn(into, settings.resolved_dsn)
    database = into_database or f"{settings.database}_replay"
    same_path = _same_engine_path(settings.resolved_dsn, dsn)
    if same_path is False:
        raise ConfigError(
            f"chDB opens one data directory per process: cannot replay {settings.resolved_dsn}"
            f" into {dsn}; replay into a database of the same store (--into-database) or "
            "into a ClickHouse server (--into http://...)")
    if (same_path or dsn == settings.resolved_dsn) and database == settings.database:
        raise ConfigError(f"the target is the source database {database!r}: pass another "
                          "--into-database, or --in-place to rebuild the source itself")
    target = Store(dsn, database, lock=not same_path, cluster=settings.cluster)
    try:
        target.migrate(settings.events_retention_days)
        if replace:
            rp.truncate_derived(target)
        filled = {t: n for t, n in rp.derived_rows(target).items() if n}
        if filled:
            raise ConfigError(f"target {target.dsn.redacted} database {database} is not "
                              f"empty ({filled}); pass --replace to empty it first")
    except BaseException:
        target.close()
        raise
    return target, f"{target.dsn.redacted} database {database}"


class _progress:
    """A rich progress bar over events (silent with --json); yields `advance(n)`."""

    def __init__(self, total: int, quiet: bool) -> None:
        self._bar = Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), console=console, disable=quiet)
        self._task = self._bar.add_task("events", total=total)

    def __enter__(self):
        self._bar.start()
        return lambda n: self._bar.advance(self._task, n)

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()


def _print(report, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.model_dump(mode="json") | {"equal": report.equal}))
        return
    out = Console()
    table = Table("table", "rows (incremental)", "rows (replayed)", "checksum (incremental)",
                  "checksum (replayed)", "equal", title=f"Replay into {report.target}")
    for t in report.tables:
        table.add_row(t.table, str(t.incremental.rows), str(t.replayed.rows),
                      t.incremental.checksum, t.replayed.checksum,
                      "[green]yes[/]" if t.equal else f"[red]no[/] {t.detail}")
    out.print(table)
    s = report.stats
    out.print(f"replayed {s.events} event(s), {s.rejected} no longer accepted"
              + "".join(f"\n  {e}" for e in s.errors))
    out.print("[green]derived tables equal the replay[/]" if report.equal
              else "[red]derived tables differ from the replay[/]")
