"""A small real pipeline for the audit tests: two CSV sources, a standardising op, a
linear model with two versions, gradients, a prediction and a forget request with its
outcome, published through the real sink into a store. Also runnable as a script that
fills an embedded data directory (for the CLI tests, which need a process of their own)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from headwater.producers import LocalTransport, Publisher
from headwater.producers.capture import LinearCapture
from headwater.producers.tracking import Tracker, row_keys
from headwater.producers.tracking.sources import load_csv
from headwater.stream_processors.sink import EventSink
from headwater.stream_processors.store import Store
from headwater.v1 import events_pb2


def _csv(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    cols = [f"f{i}" for i in range(x.shape[1])] + ["label"]
    rows = [",".join(f"{v:.6f}" for v in r) + f",{int(t)}" for r, t in zip(x, y, strict=True)]
    path.write_text(",".join(cols) + "\n" + "\n".join(rows) + "\n")
    return path


def fill(store: Store, folder: Path, run_id: str = "audit-run") -> dict:
    """Publish the pipeline of `run_id` into `store`; the ids the audit queries ask about."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] + 0.3 * rng.normal(size=40) > 0).astype(float)
    folder.mkdir(parents=True, exist_ok=True)
    with Publisher(LocalTransport(EventSink(store, "local")), run_id=run_id) as pub:
        tracker = Tracker(pub.publish)
        a = load_csv(tracker, _csv(folder / f"{run_id}_clinic_a.csv", x[:25], y[:25]),
                     columns=["f0", "f1", "f2"], origin="clinic A", licence="consent")
        b = load_csv(tracker, _csv(folder / f"{run_id}_clinic_b.csv", x[25:], y[25:]),
                     columns=["f0", "f1", "f2"], origin="clinic B", licence="consent")
        both = np.concatenate([a, b])
        train = (both - both.mean(0)) / both.std(0)
        capture = LinearCapture(pub.publish, "clf", 3)
        capture.set_parameters(np.array([1.0, 0.1, -0.1]), 0.0)
        capture.record_version(step=1)
        capture.capture(np.asarray(train), y, row_keys(train), learning_rate=0.1, step=1)
        capture.set_parameters(np.array([1.2, 0.1, -0.2]), 0.05)
        version = capture.record_version(step=2)
        capture.record_prediction(np.asarray(train)[0], label=int(y[0]),
                                  prediction_id=f"{run_id}-p0")
        pub.flush()
        source_b = store.query("SELECT source_id FROM sources FINAL WHERE run_id = {r:String} "
                               "AND uri LIKE '%clinic_b.csv'", {"r": run_id})
        pub.publish(events_pb2.ForgetRequested(
            request_id=f"{run_id}-forget-1", model_id="clf", reason="clinic B withdrew",
            target=events_pb2.ForgetTarget(source_ids=[r[0] for r in source_b]),
            requested_by="dpo@example.org", method=events_pb2.NEWTON))
        pub.publish(events_pb2.UnlearningApplied(
            request_id=f"{run_id}-forget-1", model_id="clf", previous_version=version,
            new_version="v3", method=events_pb2.NEWTON, rows_forgotten=15,
            status=events_pb2.UnlearningApplied.APPLIED,
            verification=events_pb2.Verification(forget_loss_before=0.2, forget_loss_after=0.6,
                                                 membership_auc=0.51)))
    source = store.query("SELECT source_id FROM sources FINAL WHERE run_id = {r:String} "
                         "AND uri LIKE '%clinic_b.csv'", {"r": run_id})[0][0]
    producer = store.query("SELECT DISTINCT producer_id FROM events FINAL "
                           "WHERE run_id = {r:String}", {"r": run_id})[0][0]
    return {"run": run_id, "model": "clf", "version": version, "prediction": f"{run_id}-p0",
            "source": source, "node": row_keys(train).node_ids[0], "producer": producer,
            "request": f"{run_id}-forget-1"}


def rewrite_raw(store: Store, producer: str, seq: int, old: bytes, new: bytes) -> None:
    """Tamper: store new bytes for an event under its own key (the replacing row wins)."""
    assert len(old) == len(new)
    store.command(
        "INSERT INTO events SELECT * REPLACE (replaceOne(raw, {o:String}, {n:String}) AS raw) "
        "FROM events FINAL WHERE producer_id = {p:String} AND seq = {s:UInt64}",
        {"o": old.decode(), "n": new.decode(), "p": producer, "s": seq})


def fill_in_child(data_dir: Path, timeout: float = 180) -> str:
    """An embedded data directory holding the pipeline's one run, made by a child process
    (chDB opens one data path per process; the test's own is taken); its producer id."""
    done = subprocess.run([sys.executable, __file__, str(data_dir), "--one"],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A fresh Ed25519 key written as PEM files: (private NAME.pem, public NAME.pub.pem)."""
    key = Ed25519PrivateKey.generate()
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


if __name__ == "__main__":  # audit_pipeline.py DATA_DIR [--one]: two runs, one tampered
    data_dir = Path(sys.argv[1])
    with Store(f"chdb://{data_dir / 'clickhouse'}") as s:
        s.migrate()
        if sys.argv[2:] == ["--one"]:  # fill_in_child: the one clean run
            print(fill(s, data_dir / "csv")["producer"])
            sys.exit(0)
        fill(s, data_dir / "csv", "clean-run")
        ids = fill(s, data_dir / "csv", "tampered-run")
        rewrite_raw(s, ids["producer"], 1, b"clinic A", b"clinic Z")
        s.command("DELETE FROM events WHERE producer_id = {p:String} AND seq = 4",
                  {"p": ids["producer"]})
        print(ids["producer"])
