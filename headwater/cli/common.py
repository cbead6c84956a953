"""What every `headwater` command shares: the common options (defined once here), settings
with flags over HEADWATER_* variables, the store or reader a command opens, its consoles."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from headwater.errors import ConfigError, HeadwaterError
from headwater.query_service.settings import Settings

console = Console(stderr=True, soft_wrap=True)  # one line however wide: log files never wrap
out = Console()

F = TypeVar("F", bound=Callable[..., Any])

LISTEN_HELP = "gRPC address HOST:PORT [HEADWATER_LISTEN; 127.0.0.1:50051]"


def data_dir_option(f: F) -> F:
    """--data-dir: the embedded data directory."""
    return click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                        help="Embedded data directory [env HEADWATER_DATA_DIR; ./.headwater]")(f)


def dsn_option(f: F) -> F:
    """--dsn: the ClickHouse store."""
    return click.option("--dsn", default=None,
                        help="ClickHouse DSN: chdb://DIR or http(s)://host:8123 "
                             "[HEADWATER_DSN]")(f)


def listen_option(f: F | None = None, *, help: str = LISTEN_HELP) -> Any:
    """--listen: the gRPC address served, or of the server a client command reads."""
    decorator = click.option("--listen", default=None, help=help)
    return decorator(f) if f is not None else decorator


RUN_HELP = ("The training run. A model id, its version names, prediction ids and source "
            "files may recur in other runs; answers never mix runs")


def run_option(f: F | None = None, *, required: bool = False, help: str = RUN_HELP) -> Any:
    """--run: the training run a query is scoped to (never mixed with another run's rows)."""
    decorator = click.option("--run", "run_id", required=required, default=None if required
                             else "", help=help)
    return decorator(f) if f is not None else decorator


def kafka_option(f: F) -> F:
    """--kafka-bootstrap: the Kafka brokers."""
    return click.option("--kafka-bootstrap", default=None,
                        help="Kafka bootstrap servers [HEADWATER_KAFKA_BOOTSTRAP]")(f)


def load_settings(**overrides: Any) -> Settings:
    """Settings from HEADWATER_* variables, the flags given (not None) overriding them; a
    bad value is a ConfigError naming the variable (or flag) it came from."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from headwater.query_service.settings import settings_problem

    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except (ValidationError, SettingsError) as exc:
        raise ConfigError(settings_problem(exc, given)) from None


def open_store(config: Settings, *, migrate: bool = True) -> Any:
    """The store the settings name, migrated (a long-running command's own store)."""
    from headwater.stream_processors.store import Store

    store = Store(config.resolved_dsn, config.database, cluster=config.cluster)
    if migrate:
        store.migrate(config.events_retention_days)
    return store


def open_reader(config: Settings, listen: str | None) -> Any:
    """What a read command reads (headwater/cli/store_access.py): the server at --listen
    (`listen`, the flag), else the existing store, else the serve holding its directory."""
    from headwater.cli import store_access

    return store_access.open_reader(config, listen)


def channel(listen: str | None) -> Any:
    """A gRPC channel to the server at --listen (or HEADWATER_LISTEN)."""
    from headwater.query_service.client.channel import open_channel

    return open_channel(load_settings(listen=listen))


def call(method: Any, request: Any) -> Any:
    """One unary call; a failure becomes a one-line HeadwaterError with the server's words."""
    import grpc

    try:
        return method(request, timeout=60)
    except grpc.RpcError as exc:
        raise HeadwaterError(exc.details() or exc.code().name) from None  # type: ignore
