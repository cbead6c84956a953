"""Builds the evidence report of one model version: the derived tables of the runs it draws
on are rebuilt from the verified event bytes (compliance/evidence.py) and every section is
read from that rebuild, each fact naming its event; the live tables are compared with the
rebuild, and the log's chains verified. Only names, hashes and counts leave the store."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from headwater import __version__
from headwater.errors import ReportError
from headwater.query_service.attribution.engine import AttributionEngine
from headwater.query_service.compliance.checkpoints import check_checkpoint
from headwater.query_service.compliance.config import (
    DEPLOYMENT_FIELDS,
    SYSTEM_FIELDS,
    ComplianceConfig,
    missing,
)
from headwater.query_service.compliance.erasure_log import erasure_log
from headwater.query_service.compliance.evidence import Rebuild, compare_derived, verified_rebuild
from headwater.query_service.compliance.facts import (
    event_refs,
    iso,
    json_or_text,
)
from headwater.query_service.compliance.governance import data_governance
from headwater.query_service.compliance.log_reader import verify_stored_log
from headwater.query_service.compliance.model import (
    SCHEMA_VERSION,
    AttributionSamples,
    BiasExamination,
    ChainProblem,
    DataGovernance,
    Deployment,
    DerivedTableCheck,
    Erasure,
    EventRef,
    ExcludedEvent,
    ModelVersion,
    ProducerChain,
    RecordKeeping,
    ReportBody,
    SectionStatus,
    SystemIdentification,
    TrainingTimeline,
)
from headwater.query_service.compliance.producer_keys import signature_states
from headwater.query_service.compliance.samples import attribution_samples, training_timeline
from headwater.query_service.tables import (
    ModelVersionRecord,
    select,
)
from headwater.stream_processors.store import Store

# -- model version lineage ------------------------------------------------------------------

def _numbers(value: Any) -> dict[str, float]:
    """A recorded {name: number} mapping (anything else: none recorded)."""
    if not isinstance(value, dict):
        return {}
    return {str(k): float(v) for k, v in value.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def _texts(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def version_chain(rows: list[ModelVersionRecord], version: str, model_id: str,
                  refs: dict[str, EventRef]) -> list[ModelVersion]:
    """The versions from the root to `version` (pure; rows from model_versions). An empty
    `version` is the latest recorded one; a parent never recorded ends the chain."""
    if not rows:
        raise ReportError(f"model {model_id!r} has no recorded versions")
    by_version = {r.version: r for r in rows}
    if not version:
        version = max(rows, key=lambda r: (r.recorded_at, r.step)).version
    if version not in by_version:
        raise ReportError(f"model {model_id!r} has no version {version!r} (recorded: "
                          f"{', '.join(sorted(by_version))})")
    chain: list[ModelVersion] = []
    seen: set[str] = set()
    current = version
    while current in by_version and current not in seen:
        seen.add(current)
        r = by_version[current]
        config_value = json_or_text(r.config_json)
        config = config_value if isinstance(config_value, dict) else {}
        status, detail = check_checkpoint(r.checkpoint_uri, r.parameter_hash)
        chain.append(ModelVersion(
            version=r.version, parent_version=r.parent_version, step=int(r.step),
            checkpoint_status=status, checkpoint_detail=detail,
            metrics=_numbers(config.get("metrics")), environment=_texts(config.get("environment")),
            parameter_hash=r.parameter_hash, parameter_count=int(r.parameter_count),
            framework=r.framework,
            config=config_value if isinstance(config_value, dict) else {"raw": config_value},
            checkpoint_uri=r.checkpoint_uri, run_id=r.run_id, recorded_at=iso(r.recorded_at),
            evidence=refs[r.version]))
        current = r.parent_version
    return chain[::-1]


# -- record keeping -------------------------------------------------------------------------

def record_keeping(store: Store, rebuild: Rebuild, recompute_hashes: bool) -> RecordKeeping:
    """verify_stored_log for each run the report draws on, and its derived tables against
    their rebuild from the verified events."""
    runs = rebuild.runs
    producers: list[ProducerChain] = []
    problems: list[ChainProblem] = []
    notes: list[ChainProblem] = []
    events = 0
    retention = None
    for run in runs:
        log = verify_stored_log(store, run, recompute_hashes)
        events += log.events
        retention = getattr(log, "retention_days", None)
        producers += [ProducerChain(producer_id=p.producer_id, run_id=p.run_id,
                                    events=p.events, first_seq=p.first_seq,
                                    last_seq=p.last_seq,
                                    first_emitted_at=iso(p.first_emitted_at) or None,
                                    last_emitted_at=iso(p.last_emitted_at) or None,
                                    head_hash=bytes(getattr(p, "head_hash", b"")).hex(),
                                    key_id=None, signed_seq=0)
                      for p in log.producers]
        problems += [ChainProblem(producer_id=p.producer_id, kind=p.kind, seq=p.seq,
                                  detail=p.detail) for p in log.problems]
        notes += [ChainProblem(producer_id=p.producer_id, kind=p.kind, seq=p.seq,
                               detail=p.detail) for p in getattr(log, "notes", [])]
    signed = signature_states(store, [p.producer_id for p in producers])
    producers = [p.model_copy(update={
        "key_id": signed["producers"][p.producer_id]["key_id"],
        "signed_seq": signed["producers"][p.producer_id]["attested_seq"]}) for p in producers]
    problems += [ChainProblem(producer_id=pid, kind="signed_head", seq=seq, detail=f)
                 for pid, seq, f in signed["failed"]]
    derived = [DerivedTableCheck(table=t.table, equal=t.equal, rows_stored=t.incremental.rows,
                                 rows_from_events=t.replayed.rows, detail=t.detail)
               for t in compare_derived(store, rebuild)]
    excluded = [ExcludedEvent(event_id=e, reason=why) for e, why in
                sorted(rebuild.excluded.items())]
    excluded += [ExcludedEvent(event_id="", reason=f"verified bytes no processor accepts: {r}")
                 for r in rebuild.rejected]
    ok = not problems and not excluded and all(t.equal for t in derived)
    return RecordKeeping(runs=runs, hashes_recomputed=recompute_hashes, ok=ok,
                         events=events, producers=producers, problems=problems, notes=notes,
                         retention_days=retention, derived_tables=derived,
                         excluded_events=excluded)


# -- the report -----------------------------------------------------------------------------

def _model_runs(store: Store, model_id: str) -> set[str]:
    """The runs the live tables name for the model: where to look for its events."""
    found: set[str] = set()
    for table in ("model_versions", "gradients", "forget_requests"):
        found |= {r[0] for r in store.query(
            f"SELECT DISTINCT run_id FROM {table} WHERE model_id = {{m:String}}",
            {"m": model_id})}
    return found - {""}


def _fact_runs(rebuild: Rebuild, chain: list[ModelVersion], governance: DataGovernance,
               erasures: list[Erasure]) -> set[str]:
    """The runs the report's facts come from (as rebuilt from verified events)."""
    nodes = [n.node_id for n in governance.pipeline.nodes]
    node_runs = {r[0] for r in rebuild.store.query(
        "SELECT DISTINCT run_id FROM lineage_nodes FINAL WHERE node_id IN {ids:Array(String)}",
        {"ids": nodes})} if nodes else set()
    return ({v.run_id for v in chain} | node_runs | {e.run_id for e in erasures}) - {""}


def _lineage_status(status: str, why: str, chain: list[ModelVersion]) -> SectionStatus:
    wrong = [v.version for v in chain if v.checkpoint_status == "mismatch"]
    if wrong:
        return SectionStatus(section="model_lineage", status="failed",
                             detail=f"checkpoint of {', '.join(wrong)} does not match its "
                                    "recorded parameter hash" + ("" if status == "verified"
                                                                else f"; {why}"))
    checked = sum(v.checkpoint_status == "verified" for v in chain)
    return SectionStatus(section="model_lineage", status=status,
                         detail=why + f"; {checked} of {len(chain)} checkpoint artefact(s) "
                                      "verified against their parameter hashes")


def _sections(record: RecordKeeping, samples: AttributionSamples,
              timeline: TrainingTimeline, chain: list[ModelVersion],
              erasures: list[Erasure], bias: BiasExamination) -> list[SectionStatus]:
    """Per section, how far it is proven (see SectionStatus); a checkpoint artefact that
    does not match its version's parameter hash fails the model lineage."""
    failed = [f"{len(record.problems)} chain problem(s)"] if record.problems else []
    differ = sum(not t.equal for t in record.derived_tables)
    failed += [f"{differ} derived table(s) differ from the verified events"] if differ else []
    failed += [f"{len(record.excluded_events)} stored event(s) failed verification and were "
               "left out"] if record.excluded_events else []
    status = "failed" if failed else "verified"
    why = "; ".join(failed) if failed else (
        "re-derived from event bytes that hash to their chain hashes and match their first "
        "receipts" + ("" if record.hashes_recomputed else "; chain verified on the stored "
                      "columns (hashes not recomputed for the log section)"))
    computed = "failed" if failed else "computed"
    return [
        SectionStatus(section="system", status="declared",
                      detail="system name and purpose from the operator's compliance config"),
        SectionStatus(section="deployment", status="declared",
                      detail="provider/deployer facts from the operator's compliance config"),
        _lineage_status(status, why, chain),
        SectionStatus(section="data_governance", status=status, detail=why),
        SectionStatus(section="record_keeping", status=status, detail=why + (
            f"; {sum(p.key_id is not None for p in record.producers)} of "
            f"{len(record.producers)} producer(s) sign their chain heads with a registered "
            "key (the others' producer_id is an unsigned name)")),
        SectionStatus(section="erasure_log", status=status, detail=why + "".join(
            f"; request {e.request_id}: requester not authenticated (no token auth)"
            for e in erasures if not e.requester_authenticated)),
        SectionStatus(section="attribution_samples", status=computed if
                      samples.status == "computed" else status,
                      detail="influence computed from the verified gradient rows" if
                      samples.status == "computed" else samples.reason or why),
        SectionStatus(section="training_timeline", status=computed if
                      timeline.status == "computed" else status,
                      detail="counts and TracIn computed from the verified gradient rows" if
                      timeline.status == "computed" else timeline.reason or why),
        SectionStatus(section="bias_examination", status=computed if
                      bias.status == "computed" else "declared",
                      detail=(f"{len(bias.differences)} difference(s) computed, {bias.flagged} "
                              "over their threshold; " if bias.status == "computed" else
                              f"no difference computed ({bias.detail}); ")
                      + "examination and measures declared by the operator"
                      + (f" (missing: {', '.join(bias.missing)})" if bias.missing else "")),
    ]


def build_report(store: Store, model_id: str, version: str = "",
                 config: ComplianceConfig | None = None, *, max_samples: int = 5,
                 top_sources: int = 5, recompute_hashes: bool = False,
                 now: datetime | None = None) -> ReportBody:
    """The report of `model_id` at `version` (default: the latest recorded), unsealed.

    The runs the live tables name for the model are rebuilt from their verified events;
    when the rebuilt facts name further runs, those are added and the rebuild repeated."""
    if not model_id:
        raise ReportError("model id is empty")
    runs = _model_runs(store, model_id)
    if not runs:
        raise ReportError(f"model {model_id!r} has no recorded versions")
    for _ in range(3):
        with verified_rebuild(store, sorted(runs)) as rebuild:
            body = _build(store, rebuild, model_id, version, config or ComplianceConfig(),
                          max_samples, top_sources, recompute_hashes, now)
            more = _fact_runs(rebuild, body.model_lineage, body.data_governance,
                              body.erasure_log) - runs
        if not more:
            return body
        runs |= more
    raise ReportError(f"the runs behind model {model_id!r} keep growing: {sorted(runs)}")


def _build(store: Store, rebuild: Rebuild, model_id: str, version: str,
           config: ComplianceConfig, max_samples: int, top_sources: int,
           recompute_hashes: bool, now: datetime | None) -> ReportBody:
    facts = rebuild.store
    refs = event_refs(rebuild, "model_versions", "version", "model_id = {m:String}",
                      {"m": model_id})
    chain = version_chain(select(facts, ModelVersionRecord, "model_versions",
                                 "model_id = {m:String}", {"m": model_id}), version, model_id,
                          refs)
    version = chain[-1].version
    governance = data_governance(rebuild, model_id, [v.version for v in chain], config)
    erasures = erasure_log(rebuild, model_id, chain)
    deployment_missing = missing(config, DEPLOYMENT_FIELDS)
    engine = AttributionEngine(facts)
    samples = attribution_samples(facts, engine, model_id, version, max_samples, top_sources)
    timeline = training_timeline(facts, engine, model_id, chain, samples, erasures)
    record = record_keeping(store, rebuild, recompute_hashes)
    return ReportBody(
        schema_version=SCHEMA_VERSION,
        generated_at=iso(now or datetime.now(timezone.utc)),
        generator=f"headwater {__version__}",
        system=SystemIdentification(
            system_name=config.system_name if "system_name" not in
            missing(config, SYSTEM_FIELDS) else None,
            intended_purpose=config.intended_purpose if "intended_purpose" not in
            missing(config, SYSTEM_FIELDS) else None,
            model_id=model_id, model_version=version, missing=missing(config, SYSTEM_FIELDS)),
        deployment=Deployment(**{f: None if f in deployment_missing else getattr(config, f)
                                 for f in DEPLOYMENT_FIELDS}, missing=deployment_missing),
        model_lineage=chain,
        data_governance=governance,
        record_keeping=record,
        erasure_log=erasures,
        attribution_samples=samples,
        training_timeline=timeline,
        sections=_sections(record, samples, timeline, chain, erasures,
                           governance.bias_examination))
