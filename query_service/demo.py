"""`headwater demo`: the event path end to end on the embedded default.

Starts `headwater serve` (chDB store), registers two real source files, trains a
logistic-regression model online in NumPy while publishing its per-sample gradients,
model versions and predictions over gRPC, then reads everything back through SQL and
gRPC and verifies the log's hash chains.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from headwater.producers import GrpcTransport, Publisher
from headwater.producers.sources import describe_csv
from headwater.stream_processors.errors import HeadwaterError
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

console = Console()
DATA_NOTE = ("derived from scikit-learn's bundled copy of the public Wisconsin breast-cancer "
             "data set (UCI); split into two files to play two hospitals")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_hospital_files(folder: Path) -> tuple[Path, Path]:
    """Two CSV files made from the bundled breast-cancer data, one per 'hospital'."""
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError:
        raise HeadwaterError("the demo needs scikit-learn: pip install 'headwater[demo]'") \
            from None
    data = load_breast_cancer()
    folder.mkdir(parents=True, exist_ok=True)
    header = [n.replace(" ", "_") for n in data.feature_names] + ["label"]
    rows = np.column_stack([data.data, data.target])
    split = len(rows) * 3 // 5
    paths = (folder / "hospital_a.csv", folder / "hospital_b.csv")
    for path, part in zip(paths, (rows[:split], rows[split:]), strict=True):
        lines = [",".join(header)] + [
            ",".join(f"{v:.6g}" for v in r[:-1]) + f",{int(r[-1])}" for r in part]
        path.write_text("\n".join(lines) + "\n")
    return paths


def _wait_serving(target: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HeadwaterError(f"headwater serve exited with {proc.returncode}: "
                                 f"{proc.stdout.read() if proc.stdout else ''}")
        try:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            return
        except grpc.RpcError:
            time.sleep(0.1)
    raise HeadwaterError(f"headwater serve did not answer at {target} within {timeout}s")


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    return table[:, :-1], table[:, -1]


def train_and_publish(pub: Publisher, sources: list[events_pb2.SourceRegistered],
                      paths: tuple[Path, Path], epochs: int, progress: Progress) -> dict:
    """Online logistic regression (NumPy); publishes what a tracked trainer publishes."""
    parts = [_load(p) for p in paths]
    x = np.vstack([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    origin = np.concatenate([np.full(len(p[1]), i) for i, p in enumerate(parts)])
    local_row = np.concatenate([np.arange(len(p[1])) for p in parts])
    x = (x - x.mean(0)) / x.std(0)
    features = np.hstack([x, np.ones((len(x), 1))])  # bias as a last constant feature
    rng = np.random.default_rng(0)
    test = rng.choice(len(y), size=40, replace=False)
    train = np.setdiff1d(np.arange(len(y)), test)
    theta = np.zeros(features.shape[1])
    lr, batch, step, version = 0.1, 32, 0, "v0"
    node_ids = [s.node_id for s in sources]
    projection = events_pb2.Projection(projection_id="identity-31",
                                       kind=events_pb2.Projection.IDENTITY,
                                       input_dim=features.shape[1],
                                       output_dim=features.shape[1], parameters=["weight", "bias"])
    steps_total = epochs * int(np.ceil(len(train) / batch))
    task = progress.add_task("training, publishing gradients", total=steps_total)
    for _ in range(epochs):
        rng.shuffle(train)
        for start in range(0, len(train), batch):
            idx = train[start:start + batch]
            phi = features[idx]
            p = 1 / (1 + np.exp(-phi @ theta))
            p_y = np.where(y[idx] == 1, p, 1 - p)
            sign = np.where(y[idx] == 1, 1.0, -1.0)
            # d(margin of the true class)/d(theta) = sign * phi; q = 1 - p_y, w = p (1 - p)
            grads = (sign[:, None] * phi).astype("<f4")
            pub.publish(events_pb2.GradientBatch(
                model_id="demo-logreg", model_version=version, step=step, learning_rate=lr,
                row_keys=events_pb2.RowKeys(node_ids=node_ids, node_index=origin[idx].tolist(),
                                            rows=local_row[idx].tolist()),
                dim=phi.shape[1], dtype=events_pb2.FLOAT32, gradients=grads.tobytes(),
                loss=(-np.log(p_y)).tolist(), loss_weight=(1 - p_y).tolist(),
                curvature_weight=(p * (1 - p)).tolist(), projection=projection,
                kind=events_pb2.GradientBatch.TRAINING_STEP, targets=y[idx].tolist(),
                output_function="margin",
            ))
            theta -= lr * phi.T @ (p - y[idx]) / len(idx)
            step += 1
            if step % 25 == 0:
                parent, version = version, f"v{step}"
                pub.publish(events_pb2.ModelVersionRecorded(
                    model_id="demo-logreg", version=version, parent_version=parent,
                    parameter_hash=hashlib.sha256(theta.tobytes()).hexdigest(), step=step,
                    config_json=json.dumps({"lr": lr, "batch": batch}), framework="numpy",
                    parameter_count=theta.size))
            progress.advance(task)
    correct = 0
    for i in test:
        margin = float(features[i] @ theta)
        label = int(margin > 0)
        correct += label == y[i]
        pub.publish(events_pb2.PredictionRecorded(
            prediction_id=f"pred-{i}", model_id="demo-logreg", model_version=version,
            input_rows=events_pb2.RowKeys(node_ids=[node_ids[origin[i]]], rows=[local_row[i]]),
            output=[margin], predicted_label=label, dim=features.shape[1],
            dtype=events_pb2.FLOAT32, gradient_labels=[str(label)], projection=projection,
            test_gradients=((1 if label else -1) * features[i]).astype("<f4").tobytes(),
        ))
    pub.flush()
    return {"steps": step, "version": version, "test_accuracy": correct / len(test)}


def run_demo(output: Path, fast: bool = False) -> dict:
    """Run the demo; returns its figures (the tests assert on them)."""
    output = output.resolve()
    data_dir = output / ".headwater"
    if data_dir.exists():
        import shutil

        shutil.rmtree(data_dir)
    target = f"127.0.0.1:{_free_port()}"
    started = time.monotonic()
    console.rule("[bold]Headwater demo")
    console.print(f"Data: {DATA_NOTE}.")
    paths = write_hospital_files(output / "data")
    proc = subprocess.Popen(
        [sys.executable, "-m", "headwater.query_service.cli", "serve", "--data-dir",
         str(data_dir), "--listen", target],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_serving(target, proc)
        console.print(f"[green]✓[/] headwater serve running at {target} (pid {proc.pid}), "
                      f"store chdb://{data_dir / 'clickhouse'}")
        with Publisher(GrpcTransport(target, batch_size=200), run_id="demo-run") as pub, \
                Progress(console=console, transient=False) as progress:
            sources = []
            for path in paths:
                src = describe_csv(path, origin=DATA_NOTE, licence="CC BY 4.0 (UCI)")
                src.node_id = src.source_id
                pub.publish(src)
                sources.append(src)
            figures = train_and_publish(pub, sources, paths, 2 if fast else 20, progress)
        figures.update(_read_back(target, sources))
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(30)
    figures["seconds"] = round(time.monotonic() - started, 1)
    _summary(figures, target, data_dir)
    (output / "demo-summary.json").write_text(json.dumps(figures, indent=2))
    return figures


def _read_back(target: str, sources: list[events_pb2.SourceRegistered]) -> dict:
    channel = grpc.insecure_channel(target)
    sql = query_pb2_grpc.QueryStub(channel).Sql(query_pb2.SqlRequest(
        sql="SELECT payload_type, count() FROM events FINAL GROUP BY payload_type ORDER BY 1"))
    by_type = dict(json.loads(sql.rows_json))
    lineage = query_pb2_grpc.LineageStub(channel)
    b = lineage.GetSource(query_pb2.GetSourceRequest(source_id=sources[1].source_id))
    verify = query_pb2_grpc.ComplianceStub(channel).VerifyLog(
        query_pb2.VerifyLogRequest(recompute_hashes=True))
    dead = json.loads(query_pb2_grpc.QueryStub(channel).Sql(query_pb2.SqlRequest(
        sql="SELECT count() FROM dead_letters FINAL")).rows_json)[0][0]
    table = Table("source id", "file", "rows", "sha256", title="Sources (Lineage.Sources)")
    for s in lineage.Sources(query_pb2.SourcesRequest(run_id="demo-run")).sources:
        table.add_row(s.source_id, Path(s.uri).name, str(s.row_count), s.content_sha256[:16] + "…")
    console.print(table)
    return {"events_by_type": by_type, "hospital_b_rows": b.row_count, "log_ok": verify.ok,
            "events_verified": verify.events, "dead_letters": dead}


def _summary(f: dict, target: str, data_dir: Path) -> None:
    table = Table("what", "result", title="Summary")
    for kind, n in f["events_by_type"].items():
        table.add_row(f"events stored: {kind}", str(n))
    table.add_row("training steps / final model version", f"{f['steps']} / {f['version']}")
    table.add_row("test accuracy (40 held-out rows)", f"{f['test_accuracy']:.3f}")
    table.add_row("log hash chains re-verified", f"{f['events_verified']} events, "
                  + ("[green]intact[/]" if f["log_ok"] else "[red]BROKEN[/]"))
    table.add_row("dead letters", str(f["dead_letters"]))
    table.add_row("wall time", f"{f['seconds']} s")
    console.print(table)
    console.print("Not built yet, and so not shown: row-level lineage through preprocessing, "
                  "attribution, unlearning and the audit report (issues 3–6).")
    console.print("\n[bold]Try next[/] (the store stays in "
                  f"{data_dir}):\n"
                  f"  headwater sql --data-dir {data_dir} \"SELECT payload_type, count() "
                  "FROM events FINAL GROUP BY payload_type\"\n"
                  f"  headwater status --data-dir {data_dir}\n"
                  f"  headwater serve --data-dir {data_dir}   # then publish with "
                  "headwater.producers.GrpcTransport('127.0.0.1:50051')")
