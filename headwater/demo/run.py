"""`headwater demo`: the whole promise on real data, on the embedded default.

Starts `headwater serve` (chDB store) as a child process, registers two CSV files made from
scikit-learn's breast-cancer data, runs the tracked preprocessing, trains a torch MLP online
with per-sample gradient capture, records predictions, then shows attribution (rows, files,
op chains; by source), forgets one source while the model keeps training (with the
verification figures), writes the signed evidence report (JSON + HTML) and prints commands
to try next. Serve is stopped by pid at the end; the data directory stays.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from headwater.demo.data import DATA_NOTE, write_hospital_files
from headwater.errors import HeadwaterError
from headwater.producers import GrpcTransport, Publisher
from headwater.producers.tracking import Tracker
from headwater.v1 import events_pb2, query_pb2, query_pb2_grpc

console = Console()
RUN_ID = "demo-run"
REPORT_CONFIG = {
    "system_name": "Headwater demo: breast-cancer classifier",
    "intended_purpose": "Demonstration of lineage, attribution and unlearning; not for any "
                        "clinical use",
    "provider": "Headwater demo (local machine)",
    "monitoring": "none: a demonstration run",
}  # deployer, contacts and input-data relevance stay missing: the report lists them


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _bar(what: str, total: float | None = None) -> Iterator[Callable[..., None]]:
    """A progress bar (a spinner when total is None) for one long step."""
    with Progress(SpinnerColumn(), TextColumn("{task.description:<44}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task(what, total=total)
        yield lambda n=1: progress.advance(task, n)
        progress.update(task, total=total or 1, completed=total or 1)


class ServeProcess:
    """`headwater serve` in a child process on a free port; stopped by its pid."""

    def __init__(self, data_dir: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir, self.log, self.env = data_dir, log, env or {}
        self.target = f"127.0.0.1:{_free_port()}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServeProcess:
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "headwater.cli", "serve", "--data-dir",
                 str(self.data_dir), "--listen", self.target], stdout=log,
                stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        try:
            self._wait()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait(self, timeout: float = 90) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        assert self.proc is not None
        stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(self.target))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HeadwaterError(f"headwater serve exited with {self.proc.returncode}: "
                                     f"{self.log.read_text()[-2000:]}")
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                return
            except grpc.RpcError:
                time.sleep(0.1)
        raise HeadwaterError(f"headwater serve did not answer at {self.target} in {timeout}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


def _rows_table(title: str, rows: list[dict]) -> Table:
    table = Table("#", "score", "training row", "source file rows", "op chain", title=title)
    for i, r in enumerate(rows, 1):
        files = "; ".join(f"{Path(s['uri']).name}:{s['row']}" for s in r["sources"][:3])
        ops = dict.fromkeys(o.rsplit(".", 1)[-1] for o in r["ops"])
        table.add_row(str(i), f"{r['score']:+.4g}", f"{r['node_id'][:10]}…[{r['row']}]",
                      files or "-", " → ".join(ops) or "-")
    return table


def _groups_table(title: str, groups: list[dict]) -> Table:
    table = Table("source file", "source id", "summed influence", "examples", title=title)
    for g in groups:
        table.add_row(Path(g["uri"]).name, g["source_id"], f"{g['score']:+.4g}",
                      str(g["examples"]))
    return table


def attribute_rows(channel: grpc.Channel, prediction_id: str, top: int
                   ) -> tuple[list[dict], list[dict]]:
    """The most helpful and the most harmful training rows of a prediction
    (Attribution.Attribute), with files, rows, ops: positive scores raised the explained
    output, negative ones lowered it."""
    response = query_pb2_grpc.AttributionStub(channel).Attribute(query_pb2.AttributeRequest(
        prediction_id=prediction_id, top_k=top, aggregation=query_pb2.BY_ROW), timeout=120)

    def rows(found: Any) -> list[dict]:
        return [{"node_id": r.node_id, "row": r.row, "score": r.score,
                 "sources": [{"source_id": s.source_id, "uri": s.uri, "row": s.row}
                             for s in r.sources],
                 "ops": [o.op_name for o in r.ops]} for r in found]
    return rows(response.helpful), rows(response.harmful)


def attribute_sources(channel: grpc.Channel, prediction_id: str) -> list[dict]:
    response = query_pb2_grpc.AttributionStub(channel).Attribute(query_pb2.AttributeRequest(
        prediction_id=prediction_id, top_k=10, aggregation=query_pb2.BY_SOURCE), timeout=120)
    return [{"source_id": g.key, "uri": g.label, "score": g.score, "examples": g.rows}
            for g in response.groups]


def _sql(channel: grpc.Channel, text: str) -> list:
    return json.loads(query_pb2_grpc.QueryStub(channel).Sql(
        query_pb2.SqlRequest(sql=text), timeout=60).rows_json)


def _signing_key(folder: Path) -> tuple[Any, Path]:
    """A fresh Ed25519 key for the demo's report; its public half is written next to it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    public = folder / "demo-signing.pub.pem"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, public


ROLES = {"producer": "demo-trainer", "unlearner": "demo-trainer-listener",
         "auditor": "demo-auditor", "admin": "demo-dpo"}


def write_tokens(folder: Path) -> tuple[Path, dict[str, str]]:
    """Fresh bearer tokens, one per role (the data-protection officer is the admin who asks
    for the erasure), and serve's token file of their digests (mode 0600)."""
    import secrets

    from headwater.query_service.server.auth import hash_token

    folder.mkdir(parents=True, exist_ok=True)
    tokens = {role: secrets.token_urlsafe(24) for role in ROLES}
    path = folder / "tokens"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("".join(f"sha256:{hash_token(t)} {role} {ROLES[role]}\n"
                            for role, t in tokens.items()))
    return path, tokens


class _Heads:
    """Wraps a publisher's publish: keeps the newest event it built, so the trainer can sign
    the chain head it computed itself (not one read back from the store)."""

    def __init__(self, publish: Callable[[Any], events_pb2.Event]) -> None:
        import threading

        self._publish = publish
        self.last: events_pb2.Event | None = None
        self._lock = threading.Lock()

    def __call__(self, payload: Any) -> events_pb2.Event:
        event = self._publish(payload)
        with self._lock:
            if self.last is None or event.seq > self.last.seq:
                self.last = event
        return event


def anchor(admin: grpc.Channel, auditor: grpc.Channel, target: str, heads: _Heads,
           producer_id: str, witness_dir: Path) -> dict:
    """The trainer's key registered (admin) and its chain head signed and witnessed; then an
    operator checkpoint of every chain head, signed with the witness key."""
    from datetime import datetime, timezone

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from headwater.query_service.client.remote import RemoteStore
    from headwater.query_service.compliance.signing import public_pem
    from headwater.query_service.compliance.witness import FileWitness, checkpoints, signed

    now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    trainer_key, witness_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    stub = query_pb2_grpc.ComplianceStub(admin)
    registered = stub.RegisterProducerKey(query_pb2.RegisterProducerKeyRequest(
        producer_id=producer_id, public_key_pem=public_pem(trainer_key.public_key())),
        timeout=30)
    last = heads.last
    if last is None:
        raise HeadwaterError("the trainer published no event to sign")
    head = signed(producer_id, RUN_ID, last.seq, last.hash.hex(), now, trainer_key)
    stub.AttestHead(query_pb2.AttestHeadRequest(
        producer_id=head.producer_id, run_id=head.run_id, seq=head.seq,
        head_hash=head.head_hash, written_at=head.written_at, key_id=head.key_id,
        signature=head.signature), timeout=30)
    log = RemoteStore(target, channel=auditor).verify_log()
    FileWitness(witness_dir / "checkpoints.jsonl").append(checkpoints(log, witness_key, now))
    public = witness_dir / "witness.pub.pem"
    public.write_bytes(witness_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return {"witness": str(witness_dir / "checkpoints.jsonl"), "witness_public_key": str(public),
            "trainer_key_id": registered.key_id, "trainer_signed_seq": head.seq,
            "producer_id": producer_id}


def write_report(channel: grpc.Channel, output: Path) -> dict:
    """Compliance.Report from serve, signed here, written as JSON and HTML."""
    from headwater.query_service.compliance.html import render_html
    from headwater.query_service.compliance.model import ComplianceReport
    from headwater.query_service.compliance.signing import report_text, seal

    response = query_pb2_grpc.ComplianceStub(channel).Report(query_pb2.ReportRequest(
        model_id="demo-mlp", recompute_hashes=True, max_samples=3,
        config_json=json.dumps(REPORT_CONFIG)), timeout=300)
    key, public = _signing_key(output)
    sealed = seal(json.loads(response.json), key)
    report = ComplianceReport.model_validate(sealed)
    json_path, html_path = output / "report.json", output / "report.html"
    json_path.write_text(report_text(sealed))
    html_path.write_text(render_html(report))
    assert report.integrity is not None and report.integrity.signature is not None
    return {"json": str(json_path), "html": str(html_path), "public_key": str(public),
            "content_sha256": report.integrity.content_sha256,
            "key_id": report.integrity.signature.key_id,
            "model_version": report.system.model_version,
            "sections": {x.section: x.status for x in report.sections},
            "leakage": report.data_governance.leakage.status,
            "erasure_state": [e.state for e in report.erasure_log],
            "requested_by": [e.requested_by for e in report.erasure_log]}


def _forget(channel: grpc.Channel, source_id: str) -> query_pb2.ForgetResponse:
    return query_pb2_grpc.UnlearningStub(channel).Forget(query_pb2.ForgetRequest(
        run_id=RUN_ID, model_id="demo-mlp", reason="hospital_b withdrew consent",
        verify_with_retrain=True, target=events_pb2.ForgetTarget(source_ids=[source_id])),
        timeout=60)


def run_demo(output: Path, fast: bool = False) -> dict:
    """Run the demo; returns its figures (also written to demo-summary.json)."""
    from headwater.demo.train import MODEL_ID, Recipe

    recipe = Recipe.of(fast)
    output = output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    data_dir = output / ".headwater"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    started = time.monotonic()
    console.rule("[bold]Headwater demo")
    console.print(f"[bold]Data[/]: {DATA_NOTE}.")
    paths = write_hospital_files(output / "data")
    f: dict[str, Any] = {"data_dir": str(data_dir), "files": [str(p) for p in paths],
                         "seed": recipe.seed, "test_size": recipe.test_size,
                         "model_id": MODEL_ID, "run_id": RUN_ID}
    witness_dir = output / "witness"
    if witness_dir.exists():
        shutil.rmtree(witness_dir)
    witness_dir.mkdir(parents=True)
    tokens_file, tokens = write_tokens(output / ".demo-auth")
    serve = ServeProcess(data_dir, output / "serve.log", {
        "HEADWATER_AUTH_TOKENS_FILE": str(tokens_file),
        "HEADWATER_WITNESS": str(witness_dir / "checkpoints.jsonl")})
    with _bar("starting headwater serve (embedded chDB)"):
        serve.__enter__()
    try:
        console.print(f"[green]✓[/] headwater serve at {serve.target} (pid "
                      f"{serve.proc.pid if serve.proc else '?'}), store {data_dir}")
        f.update(_session(serve.target, paths, recipe, output, tokens))
    finally:
        serve.stop()
    f.update(_local_checks(data_dir, f))
    f["seconds"] = round(time.monotonic() - started, 1)
    f["try_next"] = try_next(data_dir, output, f)
    _summary(f)
    (output / "demo-summary.json").write_text(json.dumps(f, indent=2))
    return f


def _session(target: str, paths: tuple[Path, ...], recipe: Any, output: Path,
             tokens: dict[str, str]) -> dict:
    """Everything that talks to serve: publish, train, attribute, forget, report. Every
    client holds a token of its role; the erasure is asked for by the admin demo-dpo."""
    from headwater.demo.train import Trainer, code_version, prepare
    from headwater.producers.transports.channel import with_token

    channel = with_token(grpc.insecure_channel(target), tokens["auditor"])
    admin = with_token(grpc.insecure_channel(target), tokens["admin"])
    f: dict[str, Any] = {}
    publisher = Publisher(GrpcTransport(target, batch_size=200, token=tokens["producer"]),
                          run_id=RUN_ID)
    heads = _Heads(publisher.publish)
    setattr(publisher, "publish", heads)  # noqa: B010 - every user below publishes through it
    try:
        with _bar("registering files, tracked preprocessing"):
            data = prepare(Tracker(publisher.publish, code_version=code_version()), paths,
                           recipe)
            publisher.flush()
        sources = query_pb2_grpc.LineageStub(channel).Sources(
            query_pb2.SourcesRequest(run_id=RUN_ID), timeout=30).sources
        table = Table("file", "source id", "rows", "sha256", title="Registered sources")
        for s in sources:
            table.add_row(Path(s.uri).name, s.source_id, str(s.row_count),
                          s.content_sha256[:16] + "…")
        console.print(table)
        source_b = next(s.source_id for s in sources if s.uri.endswith("hospital_b.csv"))
        f["train_node"], f["test_node"] = data.x_train.node_id, data.x_test.node_id
        f["rows_per_file"] = data.rows_per_file
        trainer = Trainer(publisher, target, data, recipe, listener_token=tokens["unlearner"])
        steps = -(-len(trainer.x) // recipe.batch)
        with _bar("training, capturing per-sample gradients", steps * recipe.epochs_before) \
                as advance:
            for _ in range(recipe.epochs_before):
                for _ in trainer.run_epoch():
                    advance()
        with _bar("featurising training rows, recording predictions"):
            trainer.featurise()
            before_ids = trainer.predict("before")
            publisher.flush()
        f["accuracy_before_forget"] = trainer.test_accuracy()
        pid = before_ids[0]
        with _bar(f"attributing prediction {pid}"):
            helpful, harmful = attribute_rows(channel, pid, 5)
            by_source_before = attribute_sources(channel, pid)
        console.print(_rows_table(f"Most helpful training rows for prediction {pid} "
                                  "(raised its output)", helpful))
        console.print(_rows_table(f"Most harmful training rows for prediction {pid} "
                                  "(lowered its output)", harmful))
        top = helpful + harmful
        console.print(_groups_table(f"{pid} by source", by_source_before))
        f.update(prediction_id=pid, top_rows=top, helpful_rows=helpful, harmful_rows=harmful,
                 by_source_before=by_source_before)

        console.print(f"[bold]Forgetting hospital_b[/] ({source_b}) while training goes on")
        sent: list[query_pb2.ForgetResponse] = []

        def ask_once() -> None:  # the data-protection officer asks, mid-epoch
            if not sent and trainer.step >= 2:
                sent.append(_forget(admin, source_b))

        with _bar("training on; the listener applies the request", steps * recipe.epochs_after) \
                as advance:
            for _ in range(recipe.epochs_after):
                for _ in trainer.run_epoch(ask_once):
                    advance()
        if not trainer.listener.applied:
            trainer.listener.poll(force=True)
        if not sent or not trainer.listener.applied:
            raise HeadwaterError("the forget request was not applied by the trainer")
        trainer.listener.reverify()  # the erasure's figures measured at the final version too
        f["unlearning"] = _unlearning_figures(sent[0], trainer.listener.applied[0])
        f["unlearning"]["steps_after_request"] = recipe.epochs_after * steps
        _print_unlearning(f["unlearning"])
        with _bar("featurising kept rows, recording predictions"):
            trainer.featurise()
            after_ids = trainer.predict("after")
            publisher.flush()
        f["test_accuracy"] = trainer.test_accuracy()
        f["steps"], f["final_version"] = trainer.step, trainer.capture.version
        with _bar("attributing again after forgetting"):
            f["by_source_after"] = attribute_sources(channel, pid)
            f["by_source_after_new"] = attribute_sources(channel, after_ids[0])
        console.print(_groups_table(f"{pid} by source, after forgetting hospital_b",
                                    f["by_source_after"]))
        f["prediction_after"] = after_ids[0]
    finally:
        publisher.close()
    with _bar("signing the trainer's chain head, checkpointing to the witness"):
        f["anchoring"] = anchor(admin, channel, target, heads, publisher.producer_id,
                                output / "witness")
    with _bar("verifying the event log and derived tables, writing the evidence report"):
        f["events_by_type"] = dict(_sql(channel, "SELECT payload_type, count() FROM events "
                                                 "FINAL GROUP BY payload_type ORDER BY 1"))
        verify = query_pb2_grpc.ComplianceStub(channel).VerifyLog(
            query_pb2.VerifyLogRequest(recompute_hashes=True, check_derived=True), timeout=300)
        f["log_ok"], f["events_verified"] = verify.ok, verify.events
        f["dead_letters"] = _sql(channel, "SELECT count() FROM dead_letters FINAL")[0][0]
        f["report"] = write_report(channel, output)
    console.print(f"[green]✓[/] evidence report: {f['report']['json']} and "
                  f"{f['report']['html']} (signed, key {f['report']['key_id']})")
    return f


def _unlearning_figures(response: query_pb2.ForgetResponse,
                        applied: events_pb2.UnlearningApplied) -> dict:
    v = applied.verification
    via = {a.via: len(a.rows.rows) for a in response.affected}
    return {"request_id": response.request_id, "rows_reached": response.rows,
            "via": via, "rows_forgotten": applied.rows_forgotten,
            "status": events_pb2.UnlearningApplied.Status.Name(applied.status),
            "method": events_pb2.UnlearningMethod.Name(applied.method),
            "previous_version": applied.previous_version, "new_version": applied.new_version,
            "seconds": round(applied.duration_seconds, 3),
            "forget_loss_before": v.forget_loss_before, "forget_loss_after": v.forget_loss_after,
            "test_accuracy_before": v.test_accuracy_before,
            "test_accuracy_after": v.test_accuracy_after, "membership_auc": v.membership_auc,
            "parameter_distance": v.parameter_distance,
            "retrain_forget_loss": v.retrain_forget_loss, "gap_closed": v.gap_closed,
            "retrain_test_accuracy": v.retrain_test_accuracy}


def _print_unlearning(u: dict) -> None:
    console.print(f"request {u['request_id']}: reached {u['rows_reached']} training rows "
                  f"({', '.join(f'{k}: {n}' for k, n in u['via'].items())}); the trainer "
                  f"removed {u['rows_forgotten']} ({u['method']}, {u['seconds']} s), model "
                  f"{u['previous_version']} → {u['new_version']}")
    table = Table("figure", "before", "after", "retrained without hospital_b",
                  title="Unlearning verification")
    table.add_row("forget-set loss", f"{u['forget_loss_before']:.4f}",
                  f"{u['forget_loss_after']:.4f}", f"{u['retrain_forget_loss']:.4f}")
    table.add_row("test accuracy", f"{u['test_accuracy_before']:.4f}",
                  f"{u['test_accuracy_after']:.4f}", f"{u['retrain_test_accuracy']:.4f}")
    table.add_row("membership-inference AUC", "", f"{u['membership_auc']:.4f}", "")
    console.print(table)
    console.print(f"gap closed {u['gap_closed']:.3f} (1 = the forget-set loss moved as far as "
                  f"retraining moves it); parameter distance {u['parameter_distance']:.4g}")


def _local_checks(data_dir: Path, f: dict) -> dict:
    """After serve stopped: the store re-opened directly, as the printed commands do."""
    from headwater.stream_processors.store import Store

    with Store(f"chdb://{data_dir / 'clickhouse'}") as store:
        erasures = store.query("SELECT count() FROM unlearning_applied FINAL "
                               "WHERE model_id = {m:String}", {"m": f["model_id"]})[0][0]
    return {"erasures_stored": int(erasures)}


def try_next(data_dir: Path, output: Path, f: dict) -> list[dict]:
    """Commands that work on what the demo leaves (serve is stopped: the data dir is free)."""
    d, hw = str(data_dir), "headwater"
    port = "127.0.0.1:50051"
    return [
        {"what": "the sources, with their hashes (SQL on the store)",
         "argv": [hw, "sql", "--data-dir", d, "SELECT uri, row_count, content_sha256 FROM "
                  "sources FINAL ORDER BY uri"]},
        {"what": "the erasure, as an auditor sees it (audit view)",
         "argv": [hw, "sql", "--data-dir", d, "SELECT * FROM audit_erasures"]},
        {"what": "verify the event log, the derived tables and the signed chain heads against "
                 "the witness",
         "argv": [hw, "audit", "verify", "--data-dir", d, "--recompute-hashes", "--witness",
                  f["anchoring"]["witness"], "--witness-public-key",
                  f["anchoring"]["witness_public_key"]]},
        {"what": "check the report's hash and signature",
         "argv": [hw, "audit", "check", f["report"]["json"], "--public-key",
                  f["report"]["public_key"]]},
        {"what": "rebuild the report (JSON + HTML) from the store",
         "argv": [hw, "report", "--model", f["model_id"], "--data-dir", d, "--out",
                  str(output / "report-again.json"), "--html", str(output / "report-again.html")]},
        {"what": "serve the store again (then the gRPC commands below)",
         "argv": [hw, "serve", "--data-dir", d, "--listen", port], "background": True},
        {"what": "gRPC: the prediction's training rows, by source",
         "argv": [hw, "attribute", f["prediction_id"], "--by", "source", "--listen", port]},
        {"what": "gRPC: a training row back to its file row and op chain",
         "argv": [hw, "lineage", "trace", f["top_rows"][0]["node_id"],
                  str(f["top_rows"][0]["row"]), "--listen", port]},
    ]


def _summary(f: dict) -> None:
    u = f["unlearning"]
    table = Table("what", "result", title="Summary")
    for kind, n in f["events_by_type"].items():
        table.add_row(f"events stored: {kind}", str(n))
    table.add_row("training steps / final model version", f"{f['steps']} / {f['final_version']}")
    table.add_row("test accuracy (held-out rows)", f"{f['test_accuracy']:.3f}")
    top = f["top_rows"][0]
    src = top["sources"][0] if top["sources"] else {"uri": "-", "row": "-"}
    table.add_row(f"top training row behind {f['prediction_id']}",
                  f"{Path(src['uri']).name} row {src['row']} (score {top['score']:+.3g})")
    table.add_row("sources behind it before / after forgetting",
                  f"{len(f['by_source_before'])} / {len(f['by_source_after'])}")
    table.add_row("hospital_b forgotten", f"{u['rows_forgotten']} rows, {u['method']}, "
                  f"forget-set loss {u['forget_loss_before']:.3f} → {u['forget_loss_after']:.3f}"
                  f", gap closed {u['gap_closed']:.2f}")
    table.add_row("log hash chains and derived tables re-verified",
                  f"{f['events_verified']} events, "
                  + ("[green]intact[/]" if f["log_ok"] else "[red]BROKEN[/]"))
    a = f["anchoring"]
    table.add_row("trainer's chain head signed (its own key) and witnessed",
                  f"seq {a['trainer_signed_seq']}, key {a['trainer_key_id']}")
    r = f["report"]
    table.add_row("erasure (state decided by verification targets)",
                  f"{', '.join(r['erasure_state'])}; asked by {', '.join(r['requested_by'])}")
    table.add_row("leakage check (from lineage)", r["leakage"])
    table.add_row("dead letters", str(f["dead_letters"]))
    table.add_row("evidence report", f"{f['report']['json']}\n{f['report']['html']}")
    table.add_row("wall time", f"{f['seconds']} s")
    console.print(table)
    console.print(f"[bold]Data note[/]: the files in {Path(f['files'][0]).parent} are "
                  f"{DATA_NOTE}.")
    console.print(f"\n[bold]Try next[/] (serve is stopped; the store stays in {f['data_dir']}):")
    for c in f["try_next"]:
        line = " ".join(_quote(a) for a in c["argv"]) + (" &" if c.get("background") else "")
        console.print(f"  [dim]# {c['what']}[/]\n  {line}", soft_wrap=True, highlight=False)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
