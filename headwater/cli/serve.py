"""`headwater serve`, `headwater query-service` and `headwater process`: the long-running
processes (embedded mode; the stateless query service; the Kafka consumer group)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import click

from headwater.cli.common import (
    data_dir_option,
    dsn_option,
    kafka_option,
    listen_option,
    load_settings,
    open_store,
)
from headwater.errors import HeadwaterError
from headwater.logs import status
from headwater.query_service.settings import Settings


def _bound(listen: str, port: int) -> str:
    """`listen` with the port the server bound (`:0` asks for any free port)."""
    return f"{listen.rpartition(':')[0]}:{port}"


def configure_telemetry(settings: Settings, service: str) -> None:
    """OTLP export (HEADWATER_OTLP_ENDPOINT or the OTEL_* variables) and the Prometheus
    endpoint (HEADWATER_METRICS_PORT), as the settings ask."""
    from headwater.producers import telemetry

    address = (None if settings.metrics_port is None
               else (settings.metrics_host, settings.metrics_port))
    telemetry.configure(settings.otlp_endpoint, service, metrics_address=address)
    port = telemetry.metrics_port()
    if port is not None:
        status(f"{service}: metrics on http://{settings.metrics_host}:{port}/metrics")


def observe_store(store: Any) -> None:
    from headwater.stream_processors.gauges import observe_store as observe

    observe(store)


def group_options(f: Any) -> Any:
    """--topic, --group and --partitions: the events topic and the consumer group."""
    f = click.option("--partitions", type=int, default=None, help="Partitions the topic must "
                     "have [HEADWATER_KAFKA_PARTITIONS; 8]")(f)
    f = click.option("--group", default=None, help="Consumer group [HEADWATER_KAFKA_GROUP]")(f)
    f = click.option("--topic", default=None, help="Events topic [HEADWATER_KAFKA_TOPIC]")(f)
    return kafka_option(f)


def checked_topic(settings: Settings) -> Any:
    """The events topic's shape once the broker answers and the topic matches the
    configuration (checked before a store is opened)."""
    from headwater.stream_processors.kafka_runner import check_reachable
    from headwater.stream_processors.kafka_topics import check_topic

    if not settings.kafka_bootstrap:
        raise HeadwaterError("no Kafka broker: pass --kafka-bootstrap or set "
                             "HEADWATER_KAFKA_BOOTSTRAP")
    check_reachable(settings.kafka_bootstrap, settings.kafka_config)
    # managed, never auto-created: a missing topic or another partition count stops here
    return check_topic(settings.kafka_bootstrap, settings.kafka_topic,
                       settings.kafka_partitions, settings.kafka_config)


@click.command()
@data_dir_option
@dsn_option
@listen_option
@click.option("--consume-kafka/--no-consume-kafka", default=None,
              help="Also consume the events topic as a member of the consumer group, into "
                   "this serve's store; forget requests go to the topic "
                   "[HEADWATER_SERVE_CONSUME_KAFKA; off]")
@group_options
def serve(data_dir: Path | None, dsn: str | None, listen: str | None,
          consume_kafka: bool | None, kafka_bootstrap: str | None, topic: str | None,
          group: str | None, partitions: int | None) -> None:
    """Embedded mode: event log, processors and query service in one process (chDB);
    with --consume-kafka also a member of the Kafka consumer group."""
    from headwater.query_service.server.app import build_server
    from headwater.query_service.server.limits import StreamLimits
    from headwater.query_service.server.transport_security import check_exposure, server_security

    settings = load_settings(data_dir=data_dir, dsn=dsn, listen=listen,
                             serve_consume_kafka=consume_kafka, kafka_bootstrap=kafka_bootstrap,
                             kafka_topic=topic, kafka_group=group, kafka_partitions=partitions)
    kafka_flags = [n for n, v in (("--kafka-bootstrap", kafka_bootstrap), ("--topic", topic),
                                  ("--group", group), ("--partitions", partitions))
                   if v is not None]
    if kafka_flags and not settings.serve_consume_kafka:
        raise click.UsageError(f"{', '.join(kafka_flags)} without --consume-kafka: serve "
                               "reads Kafka only as a member of the consumer group")
    security = server_security(settings)
    check_exposure(settings.listen, security)  # before opening the store
    shape: Any = checked_topic(settings) if settings.serve_consume_kafka else None
    configure_telemetry(settings, "headwater-serve")
    store = open_store(settings)
    observe_store(store)
    witness = _witness(store)  # a misconfigured witness stops serve before it listens
    sink, live = event_sink(settings, store, "grpc")
    member = _GroupMember(settings, store) if shape is not None else None
    server, port = build_server(store, settings.listen, sink=sink,
                                damping=settings.attribution_damping,
                                decay=settings.attribution_decay, security=security,
                                max_workers=settings.rpc_workers,
                                limits=StreamLimits.from_settings(settings),
                                sql=settings.sql_limits,
                                log=member.log if member is not None else None)
    server.start()
    store.record_address(_bound(settings.listen, port))  # CLI reads find this serve
    if witness is not None:
        witness.start()
        status(f"headwater serve: chain heads checkpointed to the witness every "
               f"{witness.interval_s:g} s")
    status(f"headwater serve: gRPC on {settings.listen} (port {port}, "
                  f"{security.describe()}), store {store.dsn.redacted}; Ctrl-C to stop")
    if member is not None:
        member.start()
        status(f"headwater serve: consuming {settings.kafka_topic} ({shape.partitions} "
               f"partitions) @ {settings.kafka_bootstrap} (group {settings.kafka_group})")
    _freeze_startup_heap()
    _wait_for_signal()
    if member is not None:
        member.stop()  # the batch in hand stored and committed, the group left
    server.stop(grace=5).wait()
    if witness is not None:
        witness.stop()  # a last checkpoint of the heads as serve leaves them
    if live is not None:
        live.close()
    store.close()


def _witness(store: Any) -> Any:
    """serve's periodic witness checkpoints (HEADWATER_WITNESS, _KEY, _INTERVAL_S), or None."""
    from headwater.query_service.compliance.periodic_witness import from_settings

    return from_settings(store)


class _GroupMember:
    """serve's Kafka consumer: the runner on a thread of its own storing into serve's
    store, and the publishers that put forget requests on the topic (keyed by run, so the
    member holding the run's partition stores them)."""

    def __init__(self, settings: Settings, store: Any) -> None:
        from headwater.producers.transports.kafka import KafkaTransport
        from headwater.query_service.services.unlearning import LogPublishers
        from headwater.stream_processors.kafka_runner import KafkaRunner

        assert settings.kafka_bootstrap is not None
        bootstrap = settings.kafka_bootstrap
        self.log = LogPublishers(lambda: KafkaTransport(
            bootstrap, settings.kafka_topic, config=settings.kafka_config,
            compression=settings.kafka_compression))
        sink, self._live = event_sink(settings, store, "kafka")
        self.runner = KafkaRunner(sink, bootstrap, settings.kafka_topic,
                                  settings.kafka_group, batch_size=settings.batch_size,
                                  within=settings.batch_within,
                                  kafka_config=settings.kafka_config)
        self._thread = threading.Thread(target=self._run, name="kafka-member", daemon=True)
        _observe_lag(settings)

    def _run(self) -> None:
        try:
            self.runner.run()
        except Exception as exc:  # noqa: BLE001 - a fatal Kafka error ends serve, loudly
            status(f"headwater serve: the Kafka consumer stopped: {exc}")
            signal.raise_signal(signal.SIGTERM)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.runner.stop()
        self._thread.join(60)
        if self._live is not None:
            self._live.close()
        self.log.close()
        status(f"headwater serve: the Kafka member stored {self.runner.stored} events "
               f"({self.runner.dead_lettered} records dead-lettered)")


@click.command("query-service")
@dsn_option
@listen_option
@kafka_option
@click.option("--topic", default=None, help="Events topic forget requests are published to "
              "[HEADWATER_KAFKA_TOPIC]")
def query_service(dsn: str | None, listen: str | None, kafka_bootstrap: str | None,
                  topic: str | None) -> None:
    """Stateless query service over a ClickHouse DSN (distributed mode)."""
    from headwater.query_service.server.app import build_server
    from headwater.query_service.server.limits import StreamLimits
    from headwater.query_service.server.transport_security import check_exposure, server_security

    settings = load_settings(dsn=dsn, listen=listen, kafka_bootstrap=kafka_bootstrap,
                             kafka_topic=topic)
    security = server_security(settings)
    check_exposure(settings.listen, security)  # before opening the store
    configure_telemetry(settings, "headwater-query")
    store = open_store(settings)
    observe_store(store)
    log = None
    if settings.kafka_bootstrap:
        from headwater.producers.transports.kafka import KafkaTransport
        from headwater.query_service.services.unlearning import LogPublishers

        log = LogPublishers(lambda: KafkaTransport(settings.kafka_bootstrap,
                                                   settings.kafka_topic,
                                                   config=settings.kafka_config,
                                                   compression=settings.kafka_compression))
    server, port = build_server(store, settings.listen, damping=settings.attribution_damping,
                                decay=settings.attribution_decay, log=log, security=security,
                                max_workers=settings.rpc_workers,
                                limits=StreamLimits.from_settings(settings),
                                sql=settings.sql_limits)
    server.start()
    status(f"headwater query-service: gRPC on {settings.listen} "
                  f"({security.describe()}), store {store.dsn.redacted}")
    _freeze_startup_heap()
    _wait_for_signal()
    server.stop(grace=5).wait()
    if log is not None:
        log.close()
    store.close()


@click.command()
@dsn_option
@group_options
@click.option("--batch-size", type=int, default=None, help="Most Kafka messages per ClickHouse "
              "insert (a bundle of events counts once) [HEADWATER_BATCH_SIZE, 256]")
def process(dsn: str | None, kafka_bootstrap: str | None, topic: str | None,
            group: str | None, partitions: int | None, batch_size: int | None) -> None:
    """Distributed mode: consume events from Kafka into ClickHouse (a consumer group)."""
    from headwater.stream_processors.kafka_runner import KafkaRunner, run_until_signalled

    settings = load_settings(dsn=dsn, kafka_bootstrap=kafka_bootstrap, kafka_topic=topic,
                         kafka_group=group, kafka_partitions=partitions,
                         batch_size=batch_size)
    shape = checked_topic(settings)
    assert settings.kafka_bootstrap is not None
    configure_telemetry(settings, "headwater-process")
    store = open_store(settings)
    observe_store(store)
    _observe_lag(settings)
    progress = _ThroughputLog("headwater process")
    sink, live = event_sink(settings, store, "kafka")
    runner = KafkaRunner(sink, settings.kafka_bootstrap,
                         settings.kafka_topic, settings.kafka_group,
                         batch_size=settings.batch_size, within=settings.batch_within,
                         kafka_config=settings.kafka_config, on_batch=progress.add)
    status(f"headwater process: {settings.kafka_topic} ({shape.partitions} partitions) @ "
                  f"{settings.kafka_bootstrap} -> {store.dsn.redacted} "
                  f"(group {settings.kafka_group}); Ctrl-C to stop")
    try:
        run_until_signalled(runner)
    finally:
        if live is not None:
            live.close()
        store.close()
    status(f"headwater process: stopped after storing {runner.stored} events "
           f"({runner.dead_lettered} records dead-lettered)")


def event_sink(settings: Settings, store: Any, transport: str) -> tuple[Any, Any]:
    """The sink storing events, and its live OpenLineage delivery (None unless
    HEADWATER_OPENLINEAGE_LIVE; then a transport must be configured, checked at start)."""
    from headwater.stream_processors.sink import EventSink

    if not settings.openlineage_live:
        return EventSink(store, transport, settings.event_limits), None
    from headwater.query_service.lineage.openlineage_delivery import configured_client
    from headwater.query_service.lineage.openlineage_live import LiveLineage, LiveLineageSink

    live = LiveLineage(store, configured_client())
    return LiveLineageSink(store, transport, live, settings.event_limits), live


def _observe_lag(settings: Settings) -> None:
    """The consumer group's lag as a gauge, asked of the broker as `headwater status` does."""
    from headwater.cli.status import consumer_lag
    from headwater.stream_processors.gauges import observe_lag

    assert settings.kafka_bootstrap is not None
    bootstrap = settings.kafka_bootstrap
    observe_lag(lambda: consumer_lag(bootstrap, settings.kafka_topic, settings.kafka_group,
                                     settings.kafka_config, timeout=2.0))


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
            status(f"{self._name}: {self._total} events stored "
                          f"({self._window / elapsed:,.0f}/s over the last {elapsed:.0f}s)")
            self._window, self._since = 0, self._clock()


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
