"""Pure code imports no I/O: the processors, row maps, envelope, projection, policy and
attribution maths load without grpc, confluent_kafka, clickhouse_connect, chdb or torch
(each checked in a fresh interpreter, so nothing imported by other tests hides a leak)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("grpc", "confluent_kafka", "clickhouse_connect", "chdb", "torch")
PURE = [
    "headwater.stream_processors.processors.decode",
    "headwater.stream_processors.processors.validate",
    "headwater.stream_processors.processors.rows",
    "headwater.stream_processors.processors.gradients",
    "headwater.stream_processors.processors.gradient_columns",
    "headwater.stream_processors.processors.gradient_screen",
    "headwater.stream_processors.processors.sketch",
    "headwater.stream_processors.processors.chunks",
    "headwater.stream_processors.processors.derived",
    "headwater.stream_processors.processors.first_write",
    "headwater.stream_processors.processors.batch_bounds",
    "headwater.stream_processors.log_integrity",
    "headwater.stream_processors.lineage_resolve",
    "headwater.query_service.compliance.witness_receipts",
    "headwater.query_service.compliance.bias",
    "headwater.producers.envelope",
    "headwater.producers.rowmap",
    "headwater.producers.capture.projection",
    "headwater.producers.capture.kronecker",
    "headwater.producers.transports.base",
    "headwater.producers.tracking",
    "headwater.producers.tracking.registry",
    "headwater.producers.tracking.moves",
    "headwater.producers.tracking.writes",
    "headwater.producers.tracking.pending",
    "headwater.producers.tracking.frame_rows",
    "headwater.producers.unlearning.api",
    "headwater.producers.unlearning.choice",
    "headwater.producers.unlearning.recipe",
    "headwater.producers.transports.chunking",
    "headwater.producers.transports.bundling",
    "headwater.stream_processors.processors.bundles",
    "headwater.producers.transports.spec",
    "headwater.producers.worker.ring",
    "headwater.producers.worker.pipe",
    "headwater.query_service.sql.policy",
    "headwater.query_service.attribution.scoring",
    "headwater.query_service.attribution.knn_shapley",
    "headwater.query_service.compliance.erasure",
    "headwater.query_service.compliance.witness",
]


@pytest.mark.parametrize("module", PURE)
def test_pure_module_loads_no_transport(module: str) -> None:
    code = (f"import sys, {module}\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"{module} loads {done.stdout.strip()}"


def test_the_check_sees_a_leak() -> None:
    """The probe itself: a module known to use grpc is reported."""
    code = ("import sys, headwater.producers.transports.grpc\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert "grpc" in done.stdout
