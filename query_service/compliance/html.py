"""The evidence report for people: one self-contained HTML file (inline CSS and SVG, no
scripts, fonts or network; a Content-Security-Policy forbids any). Every string is escaped."""

from __future__ import annotations

import html
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from headwater.query_service.compliance.erasure import MEASURED
from headwater.query_service.compliance.model import (
    BiasExamination,
    Erasure,
    ErasureOutcome,
    Pipeline,
    ReportBody,
    RowContribution,
    TrainingTimeline,
)

SOURCE_FILL = "#1f77b4"
TRAINING_FILL = "#2ca02c"
OP_FILL = "#e8edf3"
POSITIVE_FILL = "#ff7f0e"
NEGATIVE_FILL = "#9467bd"
BEFORE_FILL = "#7f7f7f"
AFTER_FILL = "#d62728"
RETRAINED_FILL = "#17becf"
SOURCE_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
                  "#bcbd22", "#17becf")
MAX_PER_LAYER = 30
_BOX_W, _BOX_H, _COL, _ROW = 180, 46, 220, 62


def e(value: object) -> str:
    """HTML-escape anything shown (quotes too: values also go into attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def short_uri(uri: str) -> str:
    path = urlsplit(uri).path or uri
    return PurePosixPath(path).name or uri


def _clip(text: str, n: int = 24) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


# -- the lineage graph ----------------------------------------------------------------------

@dataclass
class Box:
    """One drawn node: a node, or sibling nodes made alike from the same inputs (×count)."""

    key: str
    label: str
    kind: str  # source | op | training
    layer: int
    count: int = 1
    rows: int = 0
    inputs: set[str] = field(default_factory=set)
    x: float = 0.0
    y: float = 0.0


def layout(pipeline: Pipeline, source_names: dict[str, str]
           ) -> tuple[list[Box], set[tuple[str, str]], int]:
    """Boxes laid out left to right by depth, sibling outputs of the same op from the same
    inputs merged; returns (boxes drawn, edges between them, nodes left out)."""
    nodes = {n.node_id: n for n in pipeline.nodes}
    made_by: dict[str, tuple[str, list[str]]] = {}
    for edge in pipeline.edges:  # edges come in topological order of their ops
        name, inputs = made_by.setdefault(edge.output_node_id, (edge.op_name, []))
        inputs.append(edge.input_node_id)
    order = [n for n in nodes if n not in made_by] + \
        [n for n in dict.fromkeys(e.output_node_id for e in pipeline.edges)]
    box_of: dict[str, str] = {}
    boxes: dict[str, Box] = {}
    for node_id in order:
        node = nodes.get(node_id)
        training = bool(node and node.training)
        if node_id not in made_by:
            label = source_names.get(node.source_id if node else "", "") or node_id
            box = Box(node_id, label, "source" if node and node.kind == "source" else "op", 0,
                      rows=node.rows if node else 0)
            boxes[node_id] = box
            box_of[node_id] = node_id
            continue
        name, inputs = made_by[node_id]
        in_boxes = {box_of.get(i, i) for i in inputs}
        key = f"{name}|{'|'.join(sorted(in_boxes))}|{training}"
        if key not in boxes:
            layer = 1 + max((boxes[b].layer for b in in_boxes if b in boxes), default=0)
            boxes[key] = Box(key, name, "training" if training else "op", layer, count=0,
                             inputs=in_boxes)
        boxes[key].count += 1
        boxes[key].rows += node.rows if node else 0
        box_of[node_id] = key
    by_layer: dict[int, list[Box]] = defaultdict(list)
    for box in boxes.values():
        by_layer[box.layer].append(box)
    drawn: list[Box] = []
    left_out = 0
    for layer in sorted(by_layer):
        placed = {b.key: b for b in drawn}

        def centre(b: Box, placed: dict[str, Box] = placed) -> float:
            ys = [placed[i].y for i in b.inputs if i in placed]
            return sum(ys) / len(ys) if ys else 0.0

        members = sorted(by_layer[layer], key=centre)
        for i, box in enumerate(members[:MAX_PER_LAYER]):
            box.x, box.y = 16 + layer * _COL, 16 + i * _ROW
            drawn.append(box)
        left_out += sum(b.count for b in members[MAX_PER_LAYER:])
    keys = {b.key for b in drawn}
    edges = {(i, b.key) for b in drawn for i in b.inputs if i in keys}
    return drawn, edges, left_out


def lineage_svg(report: ReportBody) -> str:
    """The pipeline from sources (blue) through ops (grey) to training nodes (green)."""
    names = {s.source_id: short_uri(s.uri) for s in report.data_governance.sources}
    boxes, edges, left_out = layout(report.data_governance.pipeline, names)
    if not boxes:
        return '<p class="missing">No lineage recorded for the training nodes.</p>'
    where = {b.key: b for b in boxes}
    width = max(b.x for b in boxes) + _BOX_W + 16
    height = max(b.y for b in boxes) + _BOX_H + 16
    parts = [f'<svg id="lineage-graph" xmlns="http://www.w3.org/2000/svg" role="img" '
             f'aria-label="lineage graph" style="width:100%;max-width:{width:.0f}px;'
             f'height:auto" '
             f'viewBox="0 0 {width:.0f} {height:.0f}">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
             'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#6b7a8f"/>'
             '</marker></defs>']
    for src, dst in sorted(edges):
        x1, y1 = where[src].x + _BOX_W, where[src].y + _BOX_H / 2
        x2, y2 = where[dst].x, where[dst].y + _BOX_H / 2
        mid = (x1 + x2) / 2
        parts.append(f'<path class="edge" d="M{x1:.0f},{y1:.0f} C{mid:.0f},{y1:.0f} '
                     f'{mid:.0f},{y2:.0f} {x2:.0f},{y2:.0f}" fill="none" stroke="#6b7a8f" '
                     'stroke-width="1.5" marker-end="url(#arrow)"/>')
    fills = {"source": SOURCE_FILL, "training": TRAINING_FILL, "op": OP_FILL}
    for b in boxes:
        text = "#ffffff" if b.kind != "op" else "#1b2733"
        label = b.label + (f" ×{b.count}" if b.count > 1 else "")
        sub = {"source": "source", "training": "training", "op": "op"}[b.kind] + \
            f" · {b.rows:,} rows"
        parts.append(
            f'<g class="node {b.kind}"><title>{e(label)}</title>'
            f'<rect x="{b.x:.0f}" y="{b.y:.0f}" width="{_BOX_W}" height="{_BOX_H}" rx="6" '
            f'fill="{fills[b.kind]}" stroke="#44546a" stroke-width="1"/>'
            f'<text x="{b.x + 8:.0f}" y="{b.y + 19:.0f}" fill="{text}" font-size="12" '
            f'font-weight="600">{e(_clip(label))}</text>'
            f'<text x="{b.x + 8:.0f}" y="{b.y + 36:.0f}" fill="{text}" font-size="11">'
            f'{e(sub)}</text></g>')
    parts.append("</svg>")
    note = f'<p class="note">{left_out} more node(s) not drawn.</p>' if left_out else ""
    return "".join(parts) + note


# -- charts and tables ----------------------------------------------------------------------

def contribution_svg(sample_sources: list[tuple[str, float]]) -> str:
    """Horizontal bars: each source's summed influence (orange raised, purple lowered)."""
    if not sample_sources:
        return ""
    top = max(abs(s) for _, s in sample_sources) or 1.0
    label_w, bar_w, row = 200, 360, 26
    height = row * len(sample_sources) + 8
    zero = label_w + bar_w / 2
    parts = [f'<svg class="contribution" xmlns="http://www.w3.org/2000/svg" width="'
             f'{label_w + bar_w + 110}" height="{height}" role="img" '
             'aria-label="source contributions">',
             f'<line x1="{zero}" y1="0" x2="{zero}" y2="{height}" stroke="#44546a"/>']
    for i, (label, score) in enumerate(sample_sources):
        y = 4 + i * row
        length = abs(score) / top * (bar_w / 2 - 4)
        x = zero if score >= 0 else zero - length
        fill = POSITIVE_FILL if score >= 0 else NEGATIVE_FILL
        parts.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" font-size="12">'
                     f'{e(_clip(label, 30))}</text>'
                     f'<rect x="{x:.1f}" y="{y}" width="{max(length, 1):.1f}" height="18" '
                     f'fill="{fill}"><title>{e(label)}: {score:+.6g}</title></rect>'
                     f'<text x="{label_w + bar_w + 6}" y="{y + 15}" font-size="12">'
                     f'{e(f"{score:+.4g}")}</text>')
    parts.append("</svg>")
    return "".join(parts)


def row_label(r: RowContribution) -> str:
    """'hospital_b.csv row 12' (the first source row) for a training example."""
    if not r.sources:
        return f"{r.node_id}[{r.row}]"
    first = r.sources[0]
    more = f" +{len(r.sources) - 1}" if len(r.sources) > 1 else ""
    return f"{short_uri(first.uri) or first.source_id} row {first.row}{more}"


def source_colours(timeline: TrainingTimeline | None, names: list[str]) -> dict[str, str]:
    """A colour per source id, stable across the charts of one page."""
    ids = list(dict.fromkeys(names + [s.source_id for v in (timeline.versions if timeline
                                                              else []) for s in v.sources]))
    return {sid: SOURCE_PALETTE[i % len(SOURCE_PALETTE)] for i, sid in enumerate(ids)}


def timeline_svg(timeline: TrainingTimeline, labels: dict[str, str],
                 colours: dict[str, str]) -> str:
    """Stacked columns per model version: training-step rows by source; under them, each
    source's TracIn toward the samples as a line (when computed)."""
    versions = timeline.versions
    if not versions:
        return ""
    col, gap, left, top_h, line_h = 34, 14, 60, 170, 110
    width = left + len(versions) * (col + gap) + 20
    most = max(v.examples for v in versions) or 1
    sources = list(dict.fromkeys(s.source_id for v in versions for s in v.sources))
    has_tracin = any(s.tracin is not None for v in versions for s in v.sources)
    excluded = {s.source_id: s.excluded_since for v in versions for s in v.sources
                if s.excluded_since}
    height = top_h + 40 + (line_h + 30 if has_tracin else 0)
    parts = [f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" role="img" aria-label="source contributions over training">',
             '<text x="4" y="12" font-size="11">training-step rows per version</text>']
    for i, v in enumerate(versions):
        x, y = left + i * (col + gap), top_h + 16
        for s in v.sources:
            h = s.examples / most * (top_h - 20)
            y -= h
            parts.append(f'<rect x="{x}" y="{y:.1f}" width="{col}" height="{max(h, 0.5):.1f}" '
                         f'fill="{colours.get(s.source_id, "#999999")}"><title>'
                         f'{e(labels.get(s.source_id, s.uri))} at {e(v.version)}: '
                         f'{s.examples} rows ({s.share:.0%})</title></rect>')
        parts.append(f'<text x="{x + col / 2}" y="{top_h + 30}" font-size="11" '
                     f'text-anchor="middle">{e(_clip(v.version, 6))}</text>')
    if has_tracin:
        base = top_h + 50
        values = [s.tracin or 0.0 for v in versions for s in v.sources]
        lo, hi = min(values + [0.0]), max(values + [0.0])
        span = (hi - lo) or 1.0

        def ypos(t: float) -> float:
            return base + line_h - (t - lo) / span * line_h

        parts.append(f'<text x="4" y="{base - 6}" font-size="11">TracIn toward the samples'
                     '</text>'
                     f'<line x1="{left}" x2="{width - 10}" y1="{ypos(0):.1f}" '
                     f'y2="{ypos(0):.1f}" stroke="#c0c8d2"/>')
        for sid in sources:
            if sid in excluded:  # not scored: no line, never a line at zero
                continue
            points = []
            for i, v in enumerate(versions):
                t = next((s.tracin for s in v.sources if s.source_id == sid), 0.0) or 0.0
                points.append(f"{left + i * (col + gap) + col / 2:.1f},{ypos(t):.1f}")
            parts.append(f'<polyline points="{" ".join(points)}" fill="none" stroke-width="3" '
                         f'stroke="{colours.get(sid, "#999999")}"><title>'
                         f'{e(labels.get(sid, sid))}</title></polyline>')
    parts.append("</svg>")
    legend = "".join(f'<span class="key"><i style="background:{colours.get(sid, "#999")}">'
                     f'</i>{e(labels.get(sid, sid))}'
                     + (f" (TracIn not computed: excluded since request {e(excluded[sid])})"
                        if sid in excluded else "") + "</span>" for sid in sources)
    return "".join(parts) + f'<p class="legend">{legend}</p>'


def _bias_html(b: BiasExamination, names_of: dict[str, str]) -> str:
    """Art. 10(2)(f),(g): the computed differences (flagged first) and the declarations."""
    out = [f"<h3>Bias examination (Art. 10(2)(f),(g)): {e(b.status)}, {b.flagged} of "
           f"{len(b.differences)} difference(s) over their threshold</h3><p>{e(b.detail)}.</p>"]
    # the flagged ones first, a dozen at most: the page stays readable, the JSON has all
    shown = sorted(b.differences, key=lambda d: (not d.flagged, d.between, d.column))[:12]
    if shown:
        out.append(_table(
            ["column", "between", "rows", "TVD", "SMD", "KS D (critical)", "flagged"],
            [[e(d.column), e(" vs ".join(names_of.get(g, g) for g in d.groups)),
              e(" / ".join(f"{n:,}" for n in d.rows)), _num(d.total_variation),
              _num(d.standardised_mean_difference),
              "—" if d.ks_statistic is None else
              f"{_num(d.ks_statistic)} ({_num(d.ks_critical)})",
              '<span class="bad">yes</span>' if d.flagged else "no"] for d in shown]))
    if len(b.differences) > len(shown):
        out.append(f'<p class="note">{len(b.differences) - len(shown)} more in the JSON '
                   "report.</p>")
    if b.declared_examination is not None:
        out.append(f"<p>Examination (declared by the operator): "
                   f"{e(b.declared_examination)}</p>")
    if b.declared_measures is not None:
        out.append("<p>Measures (declared by the operator):</p><ul>" + "".join(
            f"<li>{e(m)}</li>" for m in b.declared_measures) + "</ul>")
    for name in b.missing:
        out.append(f'<p class="missing">Declaration missing: {e(name)}</p>')
    return "".join(out)


def _figures(er: Erasure) -> ErasureOutcome | None:
    """The outcome whose figures the report uses (at `verified_at_version`)."""
    return next((o for o in reversed(er.outcomes) if o.status in MEASURED
                 and o.new_version == er.verified_at_version), None)


def erasure_svg(er: Erasure) -> str:
    """Grouped bars per figure: before (grey), after (red), retrained (teal)."""
    outcome = _figures(er)
    if outcome is None:
        return ""
    v = outcome.verification
    figures = [("forget-set loss", v.forget_loss_before, v.forget_loss_after,
                v.retrain_forget_loss),
               ("test accuracy", v.test_accuracy_before, v.test_accuracy_after,
                v.retrain_test_accuracy),
               ("membership AUC", v.membership_auc_before, v.membership_auc,
                v.retrain_membership_auc)]
    top = max([x for f in figures for x in f[1:] if x is not None] + [1e-9])
    bar, group, height, base = 26, 130, 150, 130
    parts = [f'<svg class="erasure" xmlns="http://www.w3.org/2000/svg" width="{group * 3 + 40}"'
             f' height="{height + 24}" role="img" aria-label="unlearning before and after">']
    for g, (name, *values) in enumerate(figures):
        x0 = 20 + g * group
        for j, (value, fill, what) in enumerate(zip(values, (BEFORE_FILL, AFTER_FILL,
                                                             RETRAINED_FILL),
                                                    ("before", "after", "retrained"),
                                                    strict=True)):
            if value is None:
                continue
            h = value / top * (base - 20)
            x = x0 + j * (bar + 4)
            parts.append(f'<rect x="{x}" y="{base - h:.1f}" width="{bar}" height="{h:.1f}" '
                         f'fill="{fill}"><title>{e(name)} {what}: {value:.4f}</title></rect>'
                         f'<text x="{x + bar / 2}" y="{base - h - 3:.1f}" font-size="10" '
                         f'text-anchor="middle">{value:.2f}</text>')
        parts.append(f'<text x="{x0 + 45}" y="{base + 16}" font-size="11" '
                     f'text-anchor="middle">{e(name)}</text>')
    parts.append("</svg>")
    legend = "".join(f'<span class="key"><i style="background:{c}"></i>{w}</span>'
                     for c, w in ((BEFORE_FILL, "before"), (AFTER_FILL, "after"),
                                  (RETRAINED_FILL, "retrained without the rows")))
    return "".join(parts) + f'<p class="legend">{legend}</p>'


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """A table whose cells are already-escaped HTML."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _value(v: object) -> str:
    if v is None:
        return '<span class="missing">missing</span>'
    if isinstance(v, list):
        return e(", ".join(f"{c.name} ({c.role}, {c.email})" for c in v))  # contacts
    return e(v)


def _num(v: float | None) -> str:
    return "—" if v is None else e(f"{v:.4f}")


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1b2733}
h1{font-size:22px;margin:0 0 4px}h3{font-size:14px;margin:14px 0 4px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid
#d5dce5;padding-bottom:4px}table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border:1px solid #d5dce5;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f2f5f8}.missing{color:#b00020;font-weight:600}.ok{color:#1a7f37;
font-weight:600}.bad{color:#b00020;font-weight:600}.note{color:#5b6878;font-size:12px}
code{font-size:12px;word-break:break-all}.legend{font-size:12px}.key{margin-right:14px}
.key i{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px}
.charts{display:flex;flex-wrap:wrap;gap:18px}.chain span{display:inline-block;border:1px solid
#44546a;border-radius:6px;padding:4px 8px;margin:2px}.graph{overflow-x:auto}
"""


def render_html(report: ReportBody) -> str:
    """The whole report as one HTML document (sealed or not)."""
    s, d, dg = report.system, report.deployment, report.data_governance
    title = f"{s.system_name or s.model_id} — evidence report"
    out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
           '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
           'style-src \'unsafe-inline\'; img-src data:">',
           f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{e(title)}</h1>",
           f'<p class="note">Model <code>{e(s.model_id)}</code> version '
           f'<code>{e(s.model_version)}</code> · generated {e(report.generated_at)} by '
           f'{e(report.generator)} · schema {e(report.schema_version)}</p>']

    out.append("<h2>Pipeline lineage: sources → preparation → training</h2>")
    out.append(f'<div class="graph">{lineage_svg(report)}</div>')
    out.append("<h2>What this report proves, section by section</h2>")
    out.append(_table(["section", "status", "basis"], [
        [e(x.section), f'<span class="{"bad" if x.status == "failed" else "ok"}">'
         f'{e(x.status)}</span>', e(x.detail)] for x in report.sections]))
    out.append("<h2>System and deployment (Art. 13, 26)</h2>")
    out.append(_table(["field", "value"], [
        ["system name", _value(s.system_name)], ["intended purpose", _value(s.intended_purpose)],
        ["provider", _value(d.provider)], ["deployer", _value(d.deployer)],
        ["human oversight contacts", _value(d.human_oversight_contacts)],
        ["monitoring", _value(d.monitoring)],
        ["input-data relevance", _value(d.input_data_relevance)]]))
    gaps = s.missing + d.missing
    if gaps:
        out.append(f'<p class="missing">Not configured: {e(", ".join(gaps))}</p>')

    out.append("<h2>Model version lineage</h2><p class=\"chain\">" + " → ".join(
        f'<span title="{e(v.parameter_hash)}"><b>{e(v.version)}</b> step {v.step} · '
        f'{e(v.parameter_hash[:12])}</span>' for v in report.model_lineage) + "</p>")
    out.append(_table(["version", "parent", "step", "parameter hash", "framework",
                       "metrics (recorded)", "config", "checkpoint", "run", "recorded by",
                       "recorded"],
                      [[e(v.version), e(v.parent_version), e(v.step),
                        f"<code>{e(v.parameter_hash)}</code>", e(v.framework),
                        e(", ".join(f"{k} {x:.4f}" for k, x in v.metrics.items()) or "none"),
                        f"<code>{e(json.dumps(v.config, sort_keys=True))}</code>",
                        e(f"{v.checkpoint_status}: {v.checkpoint_detail}"),
                        e(v.run_id), e(v.evidence.recorded_by), e(v.recorded_at)]
                       for v in report.model_lineage]))

    out.append("<h2>Data governance (Art. 10(2))</h2>")
    names_of = {src.source_id: short_uri(src.uri) for src in dg.sources}
    out.append(_table(
        ["source", "origin", "licence", "SHA-256", "rows", "registered / used",
         "personal columns", "preparation"],
        [[f"<code>{e(src.uri)}</code><br>{e(src.source_id)}", e(src.origin) or _value(None),
          e(src.licence) or _value(None), f"<code>{e(src.content_sha256)}</code>",
          e(f"{src.row_count:,}"),
          e(f"{src.time_range.registered_at} / {src.time_range.first_used_at or '—'} … "
            f"{src.time_range.last_used_at or '—'}"),
          e(", ".join(src.personal_columns) or "none"),
          e(f"{len(src.preparation)} op(s): ") + e(" → ".join(dict.fromkeys(
              p.op_name for p in src.preparation)))]
         for src in dg.sources]))
    for note in dg.notes:
        out.append(f'<p class="note">{e(note)}</p>')
    leak = dg.leakage
    out.append(f'<h3>Leakage check (from lineage): <span class="'
               f'{"bad" if leak.status == "failed" else "ok"}">{e(leak.status)}</span></h3>'
               f"<p>{e(leak.detail)} ({leak.training_rows:,} training rows, "
               f"{leak.test_rows:,} test/prediction rows).</p>")
    if leak.findings:
        out.append(_table(["op", "aggregated node", "training rows", "shared source rows"],
                          [[e(f.op_name), f"<code>{e(f.aggregated_node_id)}</code>",
                            e(f.training_rows), e(f.shared_source_rows)]
                           for f in leak.findings]))
    out.append(_table(["split", "rows", "source rows (row-wise) by source"], [
        [e(x.split), e(f"{x.rows:,}"), e(", ".join(f"{names_of.get(k, k)}: {n:,} "
                                                    f"({x.share.get(k, 0):.0%})"
                                                    for k, n in x.source_rows.items()))]
        for x in dg.split_statistics.splits]))
    rows = []
    for st in dg.split_statistics.sources:
        if st.status != "computed":
            rows.append([e(names_of.get(st.source_id, st.source_id)), "—", "—",
                         f'<span class="missing">not computed: {e(st.detail)}</span>'])
            continue
        for split, cols in st.by_split.items():
            balance = "; ".join(f"{c.column}: " + ", ".join(f"{v} ×{n}" for v, n in
                                                            (c.value_counts or {}).items())
                                for c in cols if c.value_counts)
            rows.append([e(names_of.get(st.source_id, st.source_id)), e(split),
                         e(sum(c.missing for c in cols)), e(balance or "—")])
    if rows:
        out.append(_table(["source", "rows", "missing values", "value counts (few-valued "
                           "columns: class balance)"], rows))
    for line in dg.split_statistics.absent:
        out.append(f'<p class="missing">Not reported: {e(line)}</p>')
    out.append(_bias_html(dg.bias_examination, names_of))
    for line in dg.declarations_missing:
        out.append(f'<p class="missing">Declaration missing: {e(line)}</p>')

    rk = report.record_keeping
    verdict = ('<span class="ok">intact</span>' if rk.ok else
               f'<span class="bad">{len(rk.problems)} problem(s)</span>')
    out.append("<h2>Record-keeping (Art. 12)</h2>")
    out.append(f"<p>Log verification: {verdict} — {rk.events:,} events from "
               f"{len(rk.producers)} producer(s) in run(s) {e(', '.join(rk.runs))}; hashes "
               f"{'recomputed' if rk.hashes_recomputed else 'chained (not recomputed)'}.</p>")
    if rk.problems:
        out.append(_table(["producer", "kind", "seq", "detail"],
                          [[e(p.producer_id), e(p.kind), e(p.seq), e(p.detail)]
                           for p in rk.problems[:50]]))
    out.append(_table(["producer", "events", "seq", "head hash", "signing key", "signed up to"],
                      [[e(p.producer_id), e(p.events), e(f"{p.first_seq}..{p.last_seq}"),
                        f"<code>{e(p.head_hash[:16])}</code>",
                        e(p.key_id) if p.key_id else '<span class="missing">none: an '
                        'unsigned name</span>', e(p.signed_seq or "—")]
                       for p in rk.producers]))
    differ = [t for t in rk.derived_tables if not t.equal]
    out.append(f"<p>Derived tables against their rebuild from the verified events: "
               f"{len(rk.derived_tables) - len(differ)} of {len(rk.derived_tables)} equal.</p>")
    if differ:
        out.append(_table(["table", "rows stored", "rows from events", "detail"],
                          [[e(t.table), e(t.rows_stored), e(t.rows_from_events), e(t.detail)]
                           for t in differ]))
    if rk.excluded_events:
        out.append(_table(["event left out", "why"],
                          [[f"<code>{e(x.event_id)}</code>", e(x.reason)]
                           for x in rk.excluded_events[:50]]))

    out.append("<h2>Erasure log</h2>")
    if not report.erasure_log:
        out.append("<p>No forget requests for this model.</p>")
    rows = []
    for er in report.erasure_log:
        outcome = next((o for o in reversed(er.outcomes) if o.status != "REVERIFIED"), None)
        measured = _figures(er)
        v = measured.verification if measured else None
        rows.append([
            f"<code>{e(er.request_id)}</code>", e(er.requested_at), e(er.reason),
            e(er.state), e(f"{er.affected_rows:,}"),
            e(outcome.rows_forgotten if outcome else "—"),
            e(f"{outcome.previous_version} → {outcome.new_version}" if outcome else "—"),
            e(f"{outcome.method}: {outcome.method_reason}" if outcome else "—"),
            _num(v.forget_loss_before if v else None) + " → " +
            _num(v.forget_loss_after if v else None),
            _num(v.test_accuracy_before if v else None) + " → " +
            _num(v.test_accuracy_after if v else None),
            _num(v.membership_auc_before if v else None) + " → " +
            _num(v.membership_auc if v else None), _num(v.gap_closed if v else None)])
    if rows:
        out.append(_table(["request", "requested", "reason", "state", "rows reached",
                           "rows forgotten", "versions", "method (why)",
                           "forget-set loss before → after", "test accuracy before → after",
                           "membership AUC before → after", "gap closed"],
                          rows))
    for er in report.erasure_log:
        who = (e(er.requested_by) if er.requester_authenticated else
               '<span class="bad">not authenticated (no token auth on the server)</span>')
        out.append(f"<h3>Request <code>{e(er.request_id)}</code>: {e(er.state)}</h3>"
                   f"<p>Requested by {who}. {e(er.state_reason)}. Verification: "
                   f"{e(er.version_note)}.</p>")
        if er.targets:
            out.append(_table(["target", "rule", "value", "met"], [
                [e(t.target), e(t.rule), _num(t.value),
                 "not measured" if t.met is None else
                 ('<span class="ok">yes</span>' if t.met else '<span class="bad">no</span>')]
                for t in er.targets]))
        out.append(_table(["what", "count", "status", "detail"], [
            [e(d.item.replace("_", " ")), e(d.count), e(d.status),
             e(d.detail + (": " + "; ".join(d.versions) if d.versions else ""))]
            for d in er.dispositions]))
    for er in report.erasure_log:
        chart = erasure_svg(er)
        if chart:
            out.append(f"<h3>Unlearning before / after: <code>{e(er.request_id)}</code> "
                       f"({e(er.reason) or 'no reason given'})</h3>{chart}")

    a = report.attribution_samples
    out.append("<h2>Attribution samples: source contributions</h2>")
    if a.status == "skipped":
        out.append(f'<p class="note">Skipped: {e(a.reason)}</p>')
    names = {src.source_id: short_uri(src.uri) for src in dg.sources}
    for sample in a.samples:
        out.append(f"<h3>Prediction <code>{e(sample.prediction_id)}</code> "
                   f"(label {sample.predicted_label}, {e(sample.method)})</h3>")
        if sample.error:
            out.append(f'<p class="bad">{e(sample.error)}</p>')
        out.append('<div class="charts"><div><p class="note">by source</p>'
                   + contribution_svg([(names.get(c.source_id) or short_uri(c.uri)
                                        or c.source_id, c.score) for c in sample.top_sources])
                   + '</div><div><p class="note">top training rows (source file row)</p>'
                   + contribution_svg([(row_label(r), r.score) for r in sample.top_rows])
                   + "</div></div>")

    timeline = report.training_timeline
    out.append("<h2>Source contributions over training time</h2>")
    if timeline is None:
        out.append('<p class="note">Not in this report (made before the timeline existed).'
                   '</p>')
    elif timeline.status == "skipped":
        out.append(f'<p class="note">Skipped: {e(timeline.reason)}</p>')
    else:
        labels = {**{s.source_id: short_uri(s.uri) for v in timeline.versions
                     for s in v.sources}, **names}
        colours = source_colours(timeline, list(names))
        out.append(timeline_svg(timeline, labels, colours))
        for note in timeline.notes:
            out.append(f'<p class="note">{e(note)}</p>')

    out.append("<h2>Integrity</h2>")
    integrity = getattr(report, "integrity", None)
    if integrity is None:
        out.append('<p class="missing">Not sealed: no content hash.</p>')
    else:
        out.append(f"<p>Content SHA-256 <code>{e(integrity.content_sha256)}</code> over "
                   f"{e(integrity.canonicalization)}.</p>")
        if integrity.signature:
            out.append(f"<p>Signed ({e(integrity.signature.algorithm)}) by key "
                       f"<code>{e(integrity.signature.key_id)}</code>; check with "
                       "<code>headwater audit check report.json</code>.</p>")
        else:
            out.append(f'<p class="missing">Unsigned: {e(integrity.unsigned_reason)}</p>')
    out.append("</body></html>\n")
    return "".join(out)
