"""Configuration: HEADWATER_* environment variables, overridden by command-line flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from headwater.stream_processors.retention import (
    DEFAULT_EVENTS_RETENTION_DAYS,
    MIN_EVENTS_RETENTION_DAYS,
    retention_problem,
)


class Settings(BaseSettings):
    """Every setting of the service side; see docs/configuration.md."""

    model_config = SettingsConfigDict(env_prefix="HEADWATER_", extra="ignore")

    data_dir: Path = Field(Path(".headwater"), description="embedded mode: chDB lives here")
    dsn: str | None = Field(None, description="ClickHouse DSN; default chdb://DATA_DIR/clickhouse")
    database: str = "headwater"
    cluster: str | None = Field(None, description="ClickHouse cluster name: the schema is "
                                "created ON CLUSTER, replicated + Distributed (None: one node)")
    listen: str = Field("127.0.0.1:50051", description="gRPC address of serve / query-service")
    kafka_bootstrap: str | None = None
    kafka_topic: str = "headwater.events"
    kafka_group: str = "headwater-processors"
    kafka_partitions: int = Field(8, gt=0, description="partitions when `process` creates "
                                  "the topic")
    kafka_config: dict[str, Any] = Field(
        default_factory=dict,
        description="extra librdkafka/aiokafka settings (SASL, TLS) as a JSON object",
    )
    batch_size: int = Field(2000, gt=0)
    batch_within: float = Field(0.5, gt=0)
    otlp_endpoint: str | None = None
    attribution_damping: float = Field(
        0.0, ge=0, description="influence damping λ; 0: 1e-3 x the mean curvature diagonal")
    attribution_decay: float = Field(
        1.0, gt=0, le=1, description="influence ensemble weight per version of age "
        "(continual learning: < 1 favours recent versions)")
    events_retention_days: int = Field(
        DEFAULT_EVENTS_RETENTION_DAYS, description="days the event log is kept (ClickHouse TTL "
        f"on events); at least {MIN_EVENTS_RETENTION_DAYS}: Art. 19 / 26(6) EU AI Act")

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

    @field_validator("listen")
    @classmethod
    def _address(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"listen address {value!r} must be HOST:PORT")
        return value

    @property
    def resolved_dsn(self) -> str:
        return self.dsn or f"chdb://{self.data_dir / 'clickhouse'}"
