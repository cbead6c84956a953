"""The `headwater` command line: one module per command group, the common options and
settings in common.py. Settings come from HEADWATER_* variables; flags override.

    serve.py        serve, query-service, process   (the long-running processes)
    sql.py          sql                             (read-only SQL, as Query.Sql)
    status.py       status                          (stored events, dead letters, lag)
    lineage.py      lineage trace|ops|describe|openlineage
    audit.py        audit verify|report|check, and `report` (= audit report)
    attribution.py  attribute, forget
    replay.py       replay
    topics.py       topics create|check                 (the Kafka events topic)
    migrate.py      migrate
    demo.py         demo                            (headwater.demo)
    witness.py      witness serve                   (a second party's checkpoint witness)
"""

from __future__ import annotations

import sys

import click
from pydantic import ValidationError

from headwater import __version__, logs
from headwater.cli.attribution import attribute, forget
from headwater.cli.audit import audit, report
from headwater.cli.demo import demo
from headwater.cli.lineage import lineage
from headwater.cli.migrate import migrate
from headwater.cli.replay import replay
from headwater.cli.serve import process, query_service, serve
from headwater.cli.sql import sql
from headwater.cli.status import status
from headwater.cli.topics import topics
from headwater.cli.witness import witness
from headwater.errors import HeadwaterError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="headwater")
@click.option("--log-level", default=None, help="debug, info, warning, error or critical "
              "[HEADWATER_LOG_LEVEL; warning]")
@click.option("--log-format", default=None, help="text, or json: one JSON object per line "
              "[HEADWATER_LOG_FORMAT; text]")
def cli(log_level: str | None, log_format: str | None) -> None:
    """Headwater: streaming lineage and data attribution for ML systems that keep learning."""
    from headwater.cli.common import load_settings

    settings = load_settings(log_level=log_level, log_format=log_format)
    logs.configure(settings.log_level, settings.log_format)


# in the order `headwater --help` lists them (alphabetical); `report` is `audit report`
for command in (serve, query_service, process, sql, status, lineage, migrate, demo, attribute,
                forget, audit, report, replay, topics, witness):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    logs.configure()  # until the group's options are read
    try:
        cli.main(args=argv, prog_name="headwater", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except HeadwaterError as exc:
        logs.error(str(exc))
        sys.exit(2)
    except ValidationError as exc:  # settings built outside load_settings
        from headwater.query_service.settings import settings_problem

        logs.error(settings_problem(exc))
        sys.exit(2)
