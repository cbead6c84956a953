"""`headwater audit verify|report|check`: the record-keeping log's integrity, and building,
signing, rendering and verifying the evidence report (`headwater report` is `audit report`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from headwater.cli.common import (
    data_dir_option,
    dsn_option,
    listen_option,
    load_settings,
    open_reader,
    out,
)
from headwater.cli.store_access import HINT, answering_serve, serving_address
from headwater.errors import ConfigError, DataDirLocked, HeadwaterError, NoStore
from headwater.query_service.compliance.config import (
    ComplianceConfig,
    ReportSettings,
    load_config,
    signing_key_path,
)
from headwater.query_service.settings import Settings

_File = click.Path(path_type=Path, dir_okay=False)


@click.group()
def audit() -> None:
    """Compliance: verify the record-keeping log, build and check audit reports."""


def _local(settings: Settings, model: str, version: str, config: ComplianceConfig,
           samples: int, recompute: bool) -> dict[str, Any]:
    """Build through the store itself; DataDirLocked when serve holds the directory."""
    from headwater.query_service.compliance.builder import build_report
    from headwater.stream_processors.store import Store

    store = Store(settings.resolved_dsn, settings.database, create=False)  # a read: no store made
    try:
        return build_report(store, model, version, config, max_samples=samples,
                            recompute_hashes=recompute).model_dump(mode="json")
    finally:
        store.close()


def _remote(settings: Settings, listen: str, model: str, version: str,
            config: ComplianceConfig | None,
            samples: int, recompute: bool) -> dict[str, Any]:
    """Build through a running serve's Compliance.Report (sealed, maybe signed there)."""
    import grpc

    from headwater.query_service.client.channel import open_channel
    from headwater.v1 import query_pb2, query_pb2_grpc

    request = query_pb2.ReportRequest(
        model_id=model, model_version=version, recompute_hashes=recompute, max_samples=samples,
        config_json=config.model_dump_json(exclude={"signing_key"}) if config else "")
    stub = query_pb2_grpc.ComplianceStub(open_channel(settings, listen))
    try:
        response = stub.Report(request, timeout=300)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
            raise HeadwaterError(f"no headwater server answers at {listen}") from None
        raise HeadwaterError(exc.details() or exc.code().name) from None  # type: ignore
    return json.loads(response.json)


@click.command()
@click.option("--model", "model_id", required=True, help="The model to report on")
@click.option("--model-version", default="", help="Version to report [latest recorded]")
@click.option("--out", "out_file", type=_File, default=Path("report.json"), show_default=True,
              help="Where to write the JSON report")
@click.option("--html", "html_file", type=_File, default=None,
              help="Also write the report for people as one self-contained HTML file")
@click.option("--config", "config_file", type=_File, default=None,
              help="Provider/deployer facts, TOML or JSON [HEADWATER_COMPLIANCE_CONFIG]")
@click.option("--signing-key", type=_File, default=None,
              help="Ed25519 private key (PEM) to sign with [HEADWATER_SIGNING_KEY]")
@click.option("--samples", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Recorded predictions to attribute as samples")
@click.option("--recompute-hashes", is_flag=True,
              help="Log evidence: re-hash every stored event, not only check the chain")
@data_dir_option
@dsn_option
@listen_option(help="gRPC address of a running serve [HEADWATER_LISTEN; 127.0.0.1:50051]")
def report(model_id: str, model_version: str, out_file: Path, html_file: Path | None,
           config_file: Path | None, signing_key: Path | None, samples: int,
           recompute_hashes: bool, data_dir: Path | None, dsn: str | None,
           listen: str | None) -> None:
    """The EU AI Act evidence report of a model version, each section saying how far it is
    proven: JSON (sealed, signed when a key is configured) and, with --html, a page for
    people. Reads the store directly, or a running serve's Compliance.Report when serve
    holds the data directory."""
    from headwater.query_service.compliance.model import ComplianceReport
    from headwater.query_service.compliance.signing import (
        load_private_key,
        report_text,
        seal,
    )

    settings = load_settings(data_dir=data_dir, dsn=dsn, listen=listen)
    given = config_file or ReportSettings().compliance_config
    config = load_config(given)
    key_path = signing_key_path(config, signing_key)
    key = load_private_key(key_path) if key_path else None
    # --listen: that server; else the store (never created), or the serve holding its
    # directory (the address in its lock), never whatever answers on the default port
    address = serving_address(settings, listen)
    if address is None:
        try:
            body = _local(settings, model_id, model_version, config, samples, recompute_hashes)
            sealed = seal(body, key)
            via = "the store"
        except NoStore as exc:
            raise NoStore(f"{exc}; {HINT}") from None
        except DataDirLocked as exc:  # a serve took the directory meanwhile
            address = answering_serve(settings, exc.pid, exc.address, settings.data_dir)
    if address is not None:
        sealed = _remote(settings, address, model_id, model_version,
                         config if given else None, samples, recompute_hashes)
        via = f"serve at {address}"
        if key is not None:  # sign here, with the key given to this command
            sealed = seal(sealed, key)
    parsed = ComplianceReport.model_validate(sealed)  # what we write is what we publish
    out_file.write_text(report_text(sealed))
    integrity = parsed.integrity
    assert integrity is not None
    signed = (f"signed by key {integrity.signature.key_id}" if integrity.signature
              else f"unsigned: {integrity.unsigned_reason}")
    click.echo(f"headwater: report of {model_id} {parsed.system.model_version} (via {via}) "
               f"written to {out_file}; sha256 {integrity.content_sha256}, {signed}", err=True)
    gaps = parsed.system.missing + parsed.deployment.missing
    if gaps:
        click.echo(f"  missing from the compliance config: {', '.join(gaps)}", err=True)
    if html_file is not None:
        from headwater.query_service.compliance.html import render_html

        html_file.write_text(render_html(parsed))
        click.echo(f"  HTML written to {html_file}", err=True)


@click.command()
@click.argument("report_file", metavar="REPORT.json", type=click.Path(
    path_type=Path, dir_okay=False, exists=True))
@click.option("--public-key", type=_File, default=None,
              help="Trusted Ed25519 public key (PEM) the report must be signed with "
                   "[HEADWATER_REPORT_PUBLIC_KEY]; required for a signed report")
@click.option("--allow-unsigned", is_flag=True, help="Accept a report with no signature")
def check(report_file: Path, public_key: Path | None, allow_unsigned: bool) -> None:
    """Verify a report: schema, content hash, and its signature by a trusted key (without
    one the check fails: an embedded key proves nothing). Exits 1 naming what failed."""
    from headwater.query_service.compliance.signing import check as check_report
    from headwater.query_service.compliance.signing import load_public_key

    public_key = public_key or ReportSettings().report_public_key
    key = load_public_key(public_key) if public_key else None
    result = check_report(report_file.read_bytes(), key, allow_unsigned)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if not result.ok:
        for failure in result.failures:
            click.echo(f"FAILED {failure}", err=True)
        click.echo(f"{report_file}: {len(result.failures)} check(s) failed", err=True)
        sys.exit(1)
    click.echo(f"{report_file}: OK (schema valid, sha256 {result.content_sha256}"
               + (f", signature by key {result.key_id} valid)" if result.key_id
                  else ", unsigned)"))


@click.command("verify")
@click.option("--run", "run_id", default="", help="Only the producers of this run")
@click.option("--recompute-hashes", is_flag=True,
              help="Also re-hash every stored event and compare its columns with its bytes")
@click.option("--witness", default=None,
              help="Checkpoint file, or URL of a `headwater witness serve`, to check the "
                   "chain heads against [HEADWATER_WITNESS]")
@click.option("--witness-public-key", type=_File, default=None,
              help="Ed25519 public key (PEM) the checkpoints (a file) or the receipts (a "
                   "URL) must be signed with [HEADWATER_WITNESS_PUBLIC_KEY]")
@click.option("--tsa-ca-file", type=_File, default=None,
              help="Root certificate(s) (PEM) of the RFC 3161 time-stamp authority: every "
                   "witnessed checkpoint must carry a valid timestamp "
                   "[HEADWATER_WITNESS_TSA_CA_FILE]")
@data_dir_option
@dsn_option
@listen_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object")
def verify(run_id: str, recompute_hashes: bool, witness: str | None,
           witness_public_key: Path | None, tsa_ca_file: Path | None, data_dir: Path | None,
           dsn: str | None, listen: str | None, as_json: bool) -> None:
    """Art. 12 record-keeping: every producer's seq continuity and hash chain, the time
    span the log covers, every derived table against its rebuild from the verified events,
    and (with a witness) every checkpointed chain head; exit status 1 when a problem is
    found, a table differs or a checkpointed head is gone."""
    from headwater.query_service.client.remote import RemoteStore
    from headwater.query_service.compliance.evidence import check_derived, runs_of
    from headwater.query_service.compliance.log_reader import verify_stored_log
    from headwater.query_service.compliance.producer_keys import signature_states
    from headwater.stream_processors.log_integrity import report_as_dict

    settings = load_settings(data_dir=data_dir, dsn=dsn, listen=listen)
    env = ReportSettings()
    witness = witness or env.witness
    witness_key = _witness_key(witness, witness_public_key or env.witness_public_key)
    tsa_ca_file = tsa_ca_file or env.witness_tsa_ca_file
    if tsa_ca_file is not None and witness is None:
        raise ConfigError("--tsa-ca-file checks the timestamps of a witness's checkpoints: "
                          "give --witness too")
    roots = _tsa_roots(tsa_ca_file)
    stamps: dict[str, Any] = {}
    reader = open_reader(settings, listen)
    tables: list[Any] = []
    excluded: dict[str, str] = {}
    witnessed: list[str] = []
    signed: dict[str, Any] = {}
    try:
        if isinstance(reader, RemoteStore):
            report, tables, excluded = reader.verify_log_and_derived(run_id, recompute_hashes)
        else:
            report = verify_stored_log(reader, run_id, recompute_hashes)
            tables, excluded, rejected = check_derived(reader, runs_of(reader, run_id))
            excluded.update({f"(rejected {i})": r for i, r in enumerate(rejected)})
        signed = signature_states(reader, [p.producer_id for p in report.producers])
        if witness is not None and witness_key is not None:
            witnessed, stamps = _check_witness(reader, witness, witness_key,
                                               signed["trusted"], run_id, roots)
    finally:
        reader.close()
    data = report_as_dict(report)
    derived_ok = all(t.equal for t in tables) and not excluded
    data["derived_tables"] = [
        {"table": t.table, "equal": t.equal, "rows_stored": t.incremental.rows,
         "rows_from_events": t.replayed.rows, "detail": t.detail} for t in tables]
    data["excluded_events"] = excluded
    data["witness"] = None if witness is None else {"witness": witness,
                                                     "failures": witnessed, **stamps}
    data["producer_signatures"] = signed["producers"]
    data["producer_signature_failures"] = signed["failures"]
    data["ok"] = report.ok and derived_ok and not witnessed and not signed["failures"]
    if as_json:
        click.echo(json.dumps(data))
    else:
        table = Table("producer", "run", "events", "seq", "first emitted", "last emitted",
                      "head hash", title="Event log by producer")
        for p in data["producers"]:
            table.add_row(p["producer_id"], p["run_id"], str(p["events"]),
                          f"{p['first_seq']}..{p['last_seq']}", p["first_emitted_at"],
                          p["last_emitted_at"], p["head_hash"][:16])
        out.print(table)
        verdict = "[green]intact[/]" if report.ok else f"[red]{len(report.problems)} problem(s)[/]"
        out.print(f"log: {report.events} events from {len(report.producers)} producer(s), "
                  f"{data['first_emitted_at']} .. {data['last_emitted_at']}; hashes "
                  f"{'recomputed' if report.hashes_recomputed else 'not recomputed'}; retention "
                  f"{report.retention_days or 'none'} days; {verdict}")
        for p in report.problems:
            out.print(f"  {p.kind:<15} {p.producer_id} seq {p.seq}: {p.detail}")
        for p in report.notes:
            out.print(f"  note: {p.kind:<9} {p.producer_id} seq {p.seq}: {p.detail}")
        _print_derived(tables, excluded)
        for pid, state in signed["producers"].items():
            out.print(f"producer {pid}: " + (
                f"key {state['key_id']}, heads signed up to seq {state['attested_seq']} of "
                f"{state['last_seq']}" if state["key_id"] else
                "[yellow]no registered key[/]: its producer_id is an unsigned name"))
        for failure in signed["failures"]:
            out.print(f"  [red]FAILED[/] {failure}")
        if witness is None:
            out.print("witness: none given (--witness): a deleted tail of a chain cannot be "
                      "told from a shorter chain")
        else:
            out.print(f"witness {witness}: " + ("[green]every checkpointed head is stored[/]"
                                                if not witnessed else "[red]FAILED[/]"))
            for failure in witnessed:
                out.print(f"  {failure}")
            if stamps.get("timestamps_verified"):
                out.print(f"  {stamps['timestamps_verified']} RFC 3161 timestamp(s) verified, "
                          f"TSA times {stamps['tsa_first']} .. {stamps['tsa_last']}")
            if stamps.get("timestamps_not_checked"):
                out.print(f"  note: {stamps['timestamps_not_checked']} checkpoint(s) carry RFC "
                          "3161 timestamps not checked: no --tsa-ca-file")
    if not data["ok"]:
        sys.exit(1)


def _witness_key(witness: str | None, public: Path | None) -> Any:
    """The witness key to trust: required with a witness (a checkpoint or receipt anyone
    could have signed anchors nothing)."""
    from headwater.query_service.compliance.signing import load_public_key

    if witness is None:
        return None
    if public is None:
        raise ConfigError("--witness needs the witness's public key (--witness-public-key "
                          "or HEADWATER_WITNESS_PUBLIC_KEY) to trust its checkpoints")
    return load_public_key(public)


def _tsa_roots(path: Path | None) -> Any:
    from headwater.query_service.compliance.timestamps import load_roots

    return None if path is None else load_roots(path)


def _check_witness(reader: Any, witness: str, witness_key: Any, producers: dict[str, Any],
                   run_id: str, roots: Any) -> tuple[list[str], dict[str, Any]]:
    """A file's checkpoints must be signed by a trusted key; a witness endpoint's receipts
    by the witness key (its own unbroken chain). Then every held head must be stored, and
    with TSA roots every checkpoint's RFC 3161 timestamp must verify."""
    from headwater.query_service.compliance.producer_keys import stored_heads
    from headwater.query_service.compliance.signing import key_id
    from headwater.query_service.compliance.timestamps import check_timestamp
    from headwater.query_service.compliance.witness import (
        FileWitness,
        Trusted,
        check_witness,
        missing_heads,
    )
    from headwater.query_service.compliance.witness_client import HttpWitness, is_url
    from headwater.query_service.compliance.witness_receipts import check_receipts

    if is_url(witness):
        receipts = HttpWitness(witness).receipts()
        failures = check_receipts(receipts, witness_key)
        found = [r.checkpoint for r in receipts if not run_id or r.checkpoint.run_id == run_id]
    else:
        found = [c for c in FileWitness(Path(witness)).read()
                 if not run_id or c.run_id == run_id]
        failures = []
    if not found:
        return failures + [f"witness {witness} holds no checkpoint"
                           + (f" of run {run_id}" if run_id else "")], {}
    stored = stored_heads(reader, [c.producer_id for c in found])
    if is_url(witness):
        failures += missing_heads(found, stored)
    else:
        failures += check_witness(found, stored, {**producers,
                                                  key_id(witness_key): Trusted(witness_key)})
    if roots is None:
        return failures, {"timestamps_not_checked": sum(bool(c.timestamp) for c in found)}
    checked = [check_timestamp(c, roots) for c in found]
    times = sorted(at for at, why in checked if at and not why)
    return failures + [why for _, why in checked if why], {
        "timestamps_verified": len(times), "tsa_first": times[0] if times else None,
        "tsa_last": times[-1] if times else None}


@click.command()
@click.option("--witness", default=None,
              help="The append-only checkpoint file, or URL of a `headwater witness serve` "
                   "[HEADWATER_WITNESS]")
@click.option("--key", "key_file", type=_File, default=None,
              help="Ed25519 private key (PEM) that signs checkpoints [HEADWATER_WITNESS_KEY]")
@data_dir_option
@dsn_option
@listen_option
def checkpoint(witness: str | None, key_file: Path | None, data_dir: Path | None,
               dsn: str | None, listen: str | None) -> None:
    """Append a signed checkpoint of every producer's chain head to the witness (run it
    periodically, e.g. from cron); refused while the log has problems."""
    from datetime import datetime, timezone

    from headwater.query_service.client.remote import RemoteStore
    from headwater.query_service.compliance.log_reader import verify_stored_log
    from headwater.query_service.compliance.signing import load_private_key, load_public_key
    from headwater.query_service.compliance.timestamps import stamp
    from headwater.query_service.compliance.witness import checkpoints
    from headwater.query_service.compliance.witness_client import open_witness

    env = ReportSettings()
    witness, key_file = witness or env.witness, key_file or env.witness_key
    if witness is None or key_file is None:
        raise ConfigError("audit checkpoint needs --witness (HEADWATER_WITNESS) and --key "
                          "(HEADWATER_WITNESS_KEY)")
    key = load_private_key(key_file)
    reader = open_reader(load_settings(data_dir=data_dir, dsn=dsn, listen=listen), listen)
    try:
        log = (reader.verify_log() if isinstance(reader, RemoteStore)
               else verify_stored_log(reader))
    finally:
        reader.close()
    if not log.ok:
        raise HeadwaterError(f"the log has {len(log.problems)} problem(s) (see `headwater "
                             "audit verify`): a checkpoint would anchor a broken chain")
    now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    made = stamp(checkpoints(log, key, now), env.witness_tsa_url)  # RFC 3161 when set
    public = env.witness_public_key  # a witness endpoint's receipts are checked with it
    open_witness(witness, load_public_key(public) if public else None).append(made)
    click.echo(f"headwater: {len(made)} chain head(s) checkpointed to {witness}", err=True)


def _print_derived(tables: list[Any], excluded: dict[str, str]) -> None:
    differ = [t for t in tables if not t.equal]
    out.print(f"derived tables: {len(tables) - len(differ)} of {len(tables)} equal to their "
              "rebuild from the verified events"
              + ("" if not differ else " — [red]DIFFERENT[/]:"))
    for t in differ:
        out.print(f"  {t.table}: {t.detail}")
    for event_id, why in excluded.items():
        out.print(f"  [red]left out[/] {event_id}: {why}")


audit.add_command(verify)
audit.add_command(report)
audit.add_command(check)
audit.add_command(checkpoint)
