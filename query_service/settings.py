"""Configuration: HEADWATER_* environment variables, overridden by command-line flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from headwater.query_service.redaction import redact_config
from headwater.query_service.sql.policy import SqlLimits
from headwater.stream_processors.dsn import redact_dsn
from headwater.stream_processors.processors.validate import Limits
from headwater.stream_processors.retention import (
    DEFAULT_EVENTS_RETENTION_DAYS,
    MIN_EVENTS_RETENTION_DAYS,
    retention_problem,
)


class Settings(BaseSettings):
    """Every setting of the service side; see docs/configuration.md."""

    # hide_input_in_errors: a bad value may hold a secret (a DSN or Kafka password);
    # env_ignore_empty: HEADWATER_X="" means unset (not Path("."), which would be a file)
    model_config = SettingsConfigDict(env_prefix="HEADWATER_", extra="ignore",
                                      hide_input_in_errors=True, env_ignore_empty=True)

    data_dir: Path = Field(Path(".headwater"), description="embedded mode: chDB lives here")
    dsn: str | None = Field(None, description="ClickHouse DSN; default chdb://DATA_DIR/clickhouse")
    database: str = "headwater"
    cluster: str | None = Field(None, description="ClickHouse cluster name: the schema is "
                                "created ON CLUSTER, replicated + Distributed (None: one node)")
    listen: str = Field("127.0.0.1:50051", description="gRPC address of serve / query-service")
    kafka_bootstrap: str | None = None
    kafka_topic: str = "headwater.events"
    kafka_group: str = "headwater-processors"
    kafka_partitions: int = Field(8, gt=0, description="the events topic's partitions: "
                                  "`headwater topics create` makes it so, `process` refuses "
                                  "a topic with another count")
    kafka_replication: int = Field(1, gt=0, description="replication factor `headwater "
                                   "topics create` gives the events topic")
    serve_consume_kafka: bool = Field(False, description="`headwater serve` also consumes "
                                      "the events topic as a member of the group, into its "
                                      "own store (the one-machine distributed recipe)")
    kafka_config: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict,
        description="extra librdkafka/aiokafka settings (SASL, TLS) as a JSON object",
    )
    kafka_compression: Literal["zstd", "lz4", "snappy", "gzip", "none"] = Field(
        "zstd", description="codec of the service's own Kafka producer (serve's control "
        "events); trainers pass KafkaTransport(compression=...)")
    batch_size: int = Field(256, gt=0, description="most Kafka messages per batch (one "
                            "insert per table); a bundle message counts once, whatever "
                            "events it carries")
    batch_within: float = Field(0.5, gt=0)
    otlp_endpoint: str | None = Field(None, description="OTLP/gRPC collector; the standard "
                                      "OTEL_* variables work too (docs/operations.md)")
    metrics_port: int | None = Field(None, ge=0, lt=65536, description="serve Prometheus "
                                     "text on http://METRICS_HOST:PORT/metrics (0: any free "
                                     "port); unset: no endpoint")
    metrics_host: str = Field("127.0.0.1", description="address the metrics endpoint binds")
    openlineage_live: bool = Field(False, description="serve / process send each op's "
                                   "OpenLineage event as it is stored (OPENLINEAGE_URL or "
                                   "openlineage.yml)")
    log_level: str = Field("warning", description="debug, info, warning, error or critical")
    log_format: str = Field("text", description="text, or json: one JSON object per line")
    attribution_damping: float = Field(
        0.0, ge=0, description="influence damping λ; 0: the recorded L2, else the spectrum rule")
    attribution_decay: float = Field(
        1.0, gt=0, le=1, description="influence ensemble weight per version of age "
        "(continual learning: < 1 favours recent versions)")
    events_retention_days: int = Field(
        DEFAULT_EVENTS_RETENTION_DAYS, description="days the event log is kept (ClickHouse TTL "
        f"on events); at least {MIN_EVENTS_RETENTION_DAYS}: Art. 19 / 26(6) EU AI Act")

    # what one event may cost (serve and process refuse an event over one, naming the field)
    max_event_bytes: int = Field(64 * 1024 * 1024, gt=0, description="bytes of one event")
    max_gradient_dim: int = Field(4096, gt=0, description="projected gradient width k of a "
                                  "GradientBatch or prediction (curvature is k x k)")
    max_gradient_rows: int = Field(65_536, gt=0, description="rows of one GradientBatch")
    max_op_rows: int = Field(1_000_000_000, gt=0, description="output rows of one op")
    max_months_per_batch: int = Field(24, gt=0, le=90, description="distinct emitted_at "
                                      "months one stored batch may span")

    # Query.Sql / `headwater sql` (see docs/sql.md): limits no statement can change
    sql_timeout_seconds: float = Field(30.0, gt=0, description="longest a statement runs "
                                       "(the caller's deadline, if sooner, wins)")
    sql_max_memory_bytes: int = Field(1 << 30, gt=0, description="memory one statement "
                                      "may use")
    sql_max_rows: int = Field(100_000, gt=0, description="most rows one result returns "
                              "(more are cut off, streamed, not fetched)")
    sql_max_concurrent: int = Field(2, gt=0, description="statements running at once; "
                                    "more answer RESOURCE_EXHAUSTED")

    # server side (serve / query-service); see docs/security.md
    auth_tokens_file: Path | None = Field(None, description="SHA-256 token digests -> roles; "
                                          "unset: no auth (loopback only)")
    tls_cert_file: Path | None = Field(None, description="server certificate chain (PEM)")
    tls_key_file: Path | None = Field(None, description="server private key (PEM)")
    tls_client_ca_file: Path | None = Field(None, description="CA of client certificates: "
                                            "mutual TLS")
    # client side (CLI commands reaching a server)
    tls_ca_file: Path | None = Field(None, description="CA that signed the server's "
                                     "certificate; set: clients use TLS")
    tls_client_cert_file: Path | None = None
    tls_client_key_file: Path | None = None
    token: SecretStr | None = Field(None, description="bearer token clients send")
    token_file: Path | None = Field(None, description="file holding the bearer token")
    # availability (serve / query-service); see docs/security.md and query_service/server/limits.py
    rpc_workers: int = Field(8, gt=0, description="threads for unary calls; health checks "
                             "and streams have pools of their own")
    streams_per_role: int = Field(8, gt=0, description="concurrent streaming calls "
                                  "(Ingest.Publish, Unlearning.Status) per role; one more is "
                                  "refused RESOURCE_EXHAUSTED")
    stream_idle_seconds: float = Field(60.0, gt=0, description="a client stream that sends "
                                       "nothing this long is ended (DEADLINE_EXCEEDED)")
    stream_max_seconds: float = Field(3600.0, gt=0, description="a server stream "
                                      "(Unlearning.Status) is ended after this long")
    tls_cert_warn_days: int = Field(14, ge=0, description="warn at start when the server "
                                    "certificate expires within this many days")

    def __repr_args__(self) -> Any:
        """repr/str without secrets: the DSN password and secret Kafka settings redacted."""
        for name, value in super().__repr_args__():
            if name == "dsn" and value:
                value = redact_dsn(value)
            elif name == "kafka_config":
                value = redact_config(value)
            yield name, value

    @field_validator("events_retention_days")
    @classmethod
    def _retention(cls, value: int) -> int:
        problem = retention_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("kafka_config", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"HEADWATER_KAFKA_CONFIG is not a JSON object: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("kafka_config must be a JSON object")
        return value

    @field_validator("log_level", "log_format")
    @classmethod
    def _log_choice(cls, value: str, info: Any) -> str:
        from headwater.logs import FORMATS, LEVELS

        choices = LEVELS if info.field_name == "log_level" else FORMATS
        if value.lower() not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value.lower()

    @field_validator("listen")
    @classmethod
    def _address(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"listen address {value!r} must be HOST:PORT")
        return value

    @property
    def event_limits(self) -> Limits:
        return Limits(self.max_event_bytes, self.max_gradient_dim, self.max_gradient_rows,
                      self.max_op_rows, self.max_months_per_batch)

    @property
    def sql_limits(self) -> SqlLimits:
        return SqlLimits(self.sql_timeout_seconds, self.sql_max_memory_bytes,
                         self.sql_max_rows, self.sql_max_concurrent)

    @property
    def resolved_dsn(self) -> str:
        return self.dsn or f"chdb://{self.data_dir / 'clickhouse'}"


ENV_PREFIX = "HEADWATER_"


def settings_problem(exc: ValidationError | SettingsError, flags: Any = ()) -> str:
    """A bad setting named the way the user set it: the HEADWATER_* variable (or, for a
    field in `flags`, the command-line flag), the field, and what was wrong."""
    if isinstance(exc, SettingsError):
        return str(exc)
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        where = (f"setting {field} (its command-line flag)" if field in flags
                 else f"{ENV_PREFIX}{field.upper()} (setting {field})")
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)
