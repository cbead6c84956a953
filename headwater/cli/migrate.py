"""`headwater migrate`: apply pending schema migrations."""

from __future__ import annotations

from pathlib import Path

import click

from headwater.cli.common import data_dir_option, dsn_option, load_settings


@click.command()
@data_dir_option
@dsn_option
def migrate(data_dir: Path | None, dsn: str | None) -> None:
    """Apply pending schema migrations (serve/process also do this at start-up)."""
    settings = load_settings(data_dir=data_dir, dsn=dsn)
    from headwater.stream_processors.store import Store

    store = Store(settings.resolved_dsn, settings.database, cluster=settings.cluster)
    try:
        applied = store.migrate(settings.events_retention_days)
    finally:
        store.close()
    click.echo(f"{len(applied)} migration(s) applied" + "".join(
        f"\n  {m.version:04d}_{m.name}" for m in applied))
