"""Where a read command (`sql`, `status`, `audit verify`, `audit report`, `lineage
openlineage`) gets its data, so that it never answers from the wrong store:

- `--listen HOST:PORT` given: that server, always (no local store is opened);
- else the store the settings name (`--data-dir`, `--dsn`), which must exist: a read never
  creates a store (NoStore: "no Headwater store at ./.headwater; pass --data-dir, --dsn or
  --listen");
- a data directory held by `headwater serve`: the address that serve recorded in the
  directory's lock, checked with a health call; failing that, an error naming its pid and
  address (never whatever server listens on the default port).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headwater.errors import DataDirLocked, HeadwaterError, NoStore
from headwater.producers.transports.channel import host_of, is_loopback_host
from headwater.query_service.settings import Settings
from headwater.stream_processors.dsn import parse_dsn

HINT = "pass --data-dir, --dsn or --listen"
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]", "": "127.0.0.1"}


def _where(settings: Settings) -> Path:
    """What to name in messages: the data directory, or the DSN's chDB path."""
    return settings.data_dir if settings.dsn is None else Path(parse_dsn(settings.dsn).path or "")


def _lock_dir(settings: Settings) -> Path | None:
    """The chDB directory holding the lock, for an embedded store; None for a server DSN."""
    dsn = parse_dsn(settings.resolved_dsn)
    return dsn.path if dsn.embedded else None


def dial_address(address: str) -> str:
    """A serve listening on a wildcard address is dialled on loopback."""
    host, _, port = address.rpartition(":")
    return f"{_WILDCARDS.get(host, host)}:{port}" if host in _WILDCARDS else address


def _same_server(a: str, b: str) -> bool:
    (host_a, _, port_a), (host_b, _, port_b) = a.rpartition(":"), b.rpartition(":")
    if port_a != port_b:
        return False
    host_a, host_b = host_of(dial_address(a)), host_of(dial_address(b))
    return host_a == host_b or (is_loopback_host(host_a) and is_loopback_host(host_b))


def answering_serve(settings: Settings, pid: str, address: str | None, directory: Path) -> str:
    """The address of the serve (pid) holding `directory`, once it answers a health check."""
    if not address:
        raise HeadwaterError(
            f"data directory {directory} is held by pid {pid}, which records no gRPC address "
            "(not a headwater serve, or one still starting); pass --listen HOST:PORT of the "
            "serve holding it, or stop that process")
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from headwater.query_service.client.channel import open_channel

    target = dial_address(address)
    channel = open_channel(settings, target)
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    except grpc.RpcError as exc:
        raise HeadwaterError(
            f"data directory {directory} is held by headwater serve pid {pid} at {address}, "
            f"which does not answer ({exc.code().name}: {exc.details()}); "  # type: ignore
            "is it stuck, or does it need TLS settings (HEADWATER_TLS_CA_FILE)?") from None
    finally:
        channel.close()
    return target


def serving_address(settings: Settings, listen: str | None) -> str | None:
    """The gRPC address a read command must use, or None to read the store itself (which
    then exists). `listen`: the --listen flag as given (None: not given)."""
    from headwater.stream_processors.store import lock_holder

    lock_dir = _lock_dir(settings)
    holder = lock_holder(lock_dir) if lock_dir is not None else None
    if listen is not None:
        named = "data_dir" in settings.model_fields_set or "dsn" in settings.model_fields_set
        if named and holder and holder[1] and not _same_server(listen, holder[1]):
            raise HeadwaterError(
                f"--listen {listen} is not the serve holding {_where(settings)} (pid "
                f"{holder[0]} at {holder[1]}); drop --listen or --data-dir")
        return listen
    if holder is not None:
        return answering_serve(settings, holder[0], holder[1], _where(settings))
    if lock_dir is not None and not lock_dir.is_dir():
        raise NoStore(f"no Headwater store at {_where(settings)}; {HINT}")
    return None


def open_store_for_read(settings: Settings) -> Any:
    """The store the settings name, never created nor migrated (a read changes nothing)."""
    from headwater.stream_processors.store import Store

    try:
        return Store(settings.resolved_dsn, settings.database, cluster=settings.cluster,
                     create=False)
    except NoStore as exc:
        raise NoStore(f"{exc}; {HINT}") from None


def open_reader(settings: Settings, listen: str | None) -> Any:
    """A Store, or a RemoteStore over the right server's read-only SQL (see the module)."""
    from headwater.query_service.client.channel import open_channel
    from headwater.query_service.client.remote import RemoteStore

    address = serving_address(settings, listen)
    if address is None:
        try:
            return open_store_for_read(settings)
        except DataDirLocked as exc:  # a serve took the directory meanwhile
            address = answering_serve(settings, exc.pid, exc.address, _where(settings))
    return RemoteStore(address, channel=open_channel(settings, address))
