"""Batch reports rendered: JSON (schema ``onnxmbs.report/1``), CSV (one summary row per model),
Markdown or one self-contained HTML file (inline SVG + CSS; no JavaScript, no network).

The rows (:class:`ModelReport`: a plan and a k-sweep per model, or a failure with its reason)
come from :mod:`onnxmbs.workflow.batch`, which runs the statistics; this module only renders.
"""
from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from typing import Any

from onnxmbs import __version__
from onnxmbs.blocks.document import BlocksPlan
from onnxmbs.handbook.record import Handbook
from onnxmbs.reports import plots
from onnxmbs.compact.record import DeploymentTable
from onnxmbs.reports.blocks import blocks_html, blocks_markdown, blocks_text
from onnxmbs.reports.deployment import deployment_html, deployment_markdown, deployment_text
from onnxmbs.reports.handbook import handbook_html, handbook_markdown, handbook_text
from onnxmbs.reports.markup import CSS, html_table, md_table
from onnxmbs.planning.document import PlanDocument
from onnxmbs.workflow.batch import ModelReport, ReportOptions
from onnxmbs.reports.text import (config_text, convergence_text, is_numeric, macroblock_rows, sweep_table,
                                  table)
from onnxmbs.units import human

logger = logging.getLogger(__name__)

SCHEMA = "onnxmbs.report/1"
CSV_COLUMNS = ("model", "status", "error", "sha256", "L", "images", "synthetic", "k", "z", "rf_boundary",
               "macroblocks", "beta", "widths", "configuration", "max_redundancy", "params", "params_compact",
               "param_reduction", "flops", "flops_compact", "flop_reduction", "seconds")


@dataclass(frozen=True)
class Report:
    models: tuple[ModelReport, ...]
    settings: Mapping[str, Any]
    blocks: tuple[BlocksPlan, ...] = ()  # block-pruning plans shown after the models
    handbooks: tuple[Handbook, ...] = ()  # accuracy handbooks (the paper's Figures 4 and 5) shown last
    deployments: tuple[DeploymentTable, ...] = ()  # compact outputs: original / compact / INT8 side by side

    @property
    def failed(self) -> tuple[ModelReport, ...]:
        return tuple(m for m in self.models if not m.ok)

    def deployments_of(self, m: ModelReport) -> tuple[DeploymentTable, ...]:
        """The deployment tables made from this model (matched by sha256), shown in its section."""
        return tuple(d for d in self.deployments if m.sha256 and d.sha256 == m.sha256)

    @property
    def unmatched_deployments(self) -> tuple[DeploymentTable, ...]:
        """Deployment tables of models not in the report (shown after the models)."""
        shas = {m.sha256 for m in self.models if m.sha256}
        return tuple(d for d in self.deployments if d.sha256 not in shas)


def report_settings(options: ReportOptions, *, stats: Sequence[str] = (), data: Any = None,
                    synthetic: int | None = None) -> dict[str, Any]:
    """The report's settings block: plan k, sweep, the data or stats it was measured on, version and time."""
    return {"k": options.plan_k, "sweep_k": list(options.ks), "round_to": options.round_to,
            "data": None if data is None else str(data), "synthetic": synthetic,
            "stats": [str(s) for s in stats], "onnxmbs": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


# ------------------------------------------------------------ rows shared by the formats
def summary_row(m: ModelReport) -> dict[str, Any]:
    """The CSV columns for one model (failure rows carry only model, status, error, sha256)."""
    row: dict[str, Any] = dict.fromkeys(CSV_COLUMNS, "")
    row.update(model=m.path, status="ok" if m.ok else "failed", error=m.error or "", sha256=m.sha256 or "",
               seconds=round(m.seconds, 3))
    if not m.ok:
        return row
    doc, point = m.plan, m.point
    s, st = doc.summary, doc.settings
    row.update(L=doc.model.L, images=st.images, synthetic=st.synthetic, k=st.k, z=st.z, rf_boundary=st.rf_boundary,
               macroblocks=len(doc.macroblocks), beta=";".join(f"{mb.beta:.4f}" for mb in doc.macroblocks),
               widths=config_text(point.widths) if point else "",
               configuration=config_text(point.configuration) if point else "",
               max_redundancy=round(max((mb.redundancy for mb in doc.macroblocks), default=0.0), 6),
               params=s.params, params_compact=s.params_compact, param_reduction=round(s.param_reduction, 6),
               flops=s.flops, flops_compact=s.flops_compact, flop_reduction=round(s.flop_reduction, 6))
    return row


MB_HEADERS = ("mb", "resolution", "layers", "E_total", "E_base", "r", "β", "widths")


def _summary_cells(m: ModelReport) -> tuple:
    r = summary_row(m)
    if not m.ok:
        return (m.path, "FAILED", m.error, "", "", "", "")
    return (m.path, "ok", f"{r['images']}{' (synthetic)' if r['synthetic'] else ''}", r["beta"].replace(";", " "),
            r["configuration"], f"{r['params']:,} → {r['params_compact']:,} ({100 * r['param_reduction']:.2f}%)",
            f"{human(r['flops'])} → {human(r['flops_compact'])} ({100 * r['flop_reduction']:.2f}%)")


SUMMARY_HEADERS = ("model", "status", "images", "β per macroblock", "configuration", "params", "MACs")


def _notes(doc: PlanDocument) -> list[str]:
    notes = []
    if doc.settings.synthetic:
        notes.append("statistics from SYNTHETIC noise, not real data: β is only indicative")
    unmeasured = sum(1 for l in doc.layers if not l.measured)
    if unmeasured:
        notes.append(f"{unmeasured} conv layer(s) have no activation that is counted: p = 1, not measured")
    if doc.convergence is not None:
        notes.append(convergence_text(doc.convergence))
    routine = ("model input", "reaches graph output")  # every CNN has these two
    frozen = [g for g in doc.groups if g.frozen and not g.frozen.startswith(routine)]
    if frozen:
        shown = "; ".join(f"group {g.id}: {g.frozen}" for g in frozen[:3])
        notes.append(f"{len(frozen)} channel group(s) kept at full width (frozen): {shown}"
                     + ("; …" if len(frozen) > 3 else ""))
    return notes


# ------------------------------------------------------------ formats
def to_json(report: Report) -> str:
    import json
    models = [{"path": m.path, "status": "ok" if m.ok else "failed", "error": m.error, "sha256": m.sha256,
               "seconds": round(m.seconds, 3), "summary": summary_row(m), "plan": m.plan.to_json() if m.plan else None,
               "sweep": [p.as_dict() for p in m.sweep], "curve": [p.as_dict() for p in m.curve]}
              for m in report.models]
    doc = {"schema": SCHEMA, "settings": dict(report.settings), "models": models,
           "totals": {"models": len(report.models), "failed": len(report.failed)}}
    if report.blocks:
        doc["blocks"] = [plan.to_json() for plan in report.blocks]
    if report.handbooks:
        doc["handbooks"] = [book.to_json() for book in report.handbooks]
    if report.deployments:
        doc["deployments"] = [dep.to_json() for dep in report.deployments]
    return json.dumps(doc, indent=1) + "\n"


def to_csv(report: Report) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary_row(m) for m in report.models)
    return buf.getvalue()


def _handbook_title(book: Handbook) -> str:
    return f"Accuracy handbook: {book.settings.model}"


def to_markdown(report: Report) -> str:
    st = report.settings
    parts = ["# onnxmbs report", "",
             f"{len(report.models)} model(s), {len(report.failed)} failed; plan at k = {st['k']:g}, sweep "
             f"k = {', '.join(f'{k:g}' for k in st['sweep_k'])}; onnxmbs {st['onnxmbs']}, {st['created']}", "",
             md_table(SUMMARY_HEADERS, (_summary_cells(m) for m in report.models))]
    for m in report.models:
        parts += ["", f"## {m.path}", ""]
        if not m.ok:
            parts.append(f"**FAILED**: {m.error}")
            continue
        doc = m.plan
        parts += [f"RF boundary {doc.settings.rf_boundary} (z = {doc.settings.z:g} px, "
                  f"L = {doc.model.L}), {doc.settings.images} images, sha256 `{m.sha256[:16]}`", "",
                  md_table(MB_HEADERS, macroblock_rows(doc, arrow="→")), "", "k sweep:", "",
                  md_table(*sweep_table(m.sweep, terminal=False))]
        notes = _notes(doc)
        parts += ([""] + [f"- note: {n}" for n in notes]) if notes else []
        parts += [part for dep in report.deployments_of(m) for part in ("", "#" + deployment_markdown(dep))]
    parts += [part for dep in report.unmatched_deployments for part in ("", deployment_markdown(dep))]
    parts += [part for plan in report.blocks for part in ("", blocks_markdown(plan))]
    parts += [part for book in report.handbooks
              for part in ("", handbook_markdown(book, title=f"## {_handbook_title(book)}"))]
    return "\n".join(parts) + "\n"


def _html_model(i: int, m: ModelReport, deployments: tuple[DeploymentTable, ...] = ()) -> str:
    head = f'<section id="model-{i}"><h2>{escape(m.path)}</h2>'
    if not m.ok:
        return head + f'<p class="error">FAILED: {escape(m.error or "")}</p></section>'
    doc, st = m.plan, m.plan.settings
    source = (st.source.data or st.source.stats_file) if st.source else None
    meta = (f"input {escape(str(list(doc.model.shape)))} {doc.model.layout}, L = {doc.model.L}; "
            f"{st.images} images from {escape(str(source or '-'))}; "
            f"k = {st.k:g}, z = {st.z:g} px, RF boundary "
            f"{st.rf_boundary if st.rf_boundary is not None else 'none (every conv is base: β = 1)'}; "
            f"sha256 {m.sha256[:16]}…")
    charts = [plots.depth_profile(doc.layers, rf_boundary=st.rf_boundary, z=st.z), plots.beta_bars(doc.macroblocks),
              plots.tradeoff_curve(m.curve, marks=m.sweep, chosen_k=st.k)]
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in _notes(doc))
    return (head + f'<p class="meta">{meta}</p>{notes}<div class="charts">{"".join(charts)}</div>'
            f"<h3>Macroblocks</h3>{html_table(MB_HEADERS, macroblock_rows(doc, arrow='→'))}"
            f"<h3>k sweep</h3>{html_table(*sweep_table(m.sweep, terminal=False))}"
            + "".join(deployment_html(dep).replace("h2>", "h3>") for dep in deployments) + "</section>")


def _html_summary_row(i: int, m: ModelReport) -> str:
    link = f'<td><a href="#model-{i}">{escape(m.path)}</a></td>'
    if not m.ok:
        return (f'<tr class="failed">{link}<td>FAILED</td>'
                f'<td colspan="{len(SUMMARY_HEADERS) - 2}">{escape(m.error or "")}</td></tr>')
    cells = _summary_cells(m)[1:]
    return f"<tr>{link}" + "".join(f'<td{" class=num" if is_numeric(c) else ""}>{escape(str(c))}</td>'
                                   for c in cells) + "</tr>"


def to_html(report: Report) -> str:
    st = report.settings
    rows = "".join(_html_summary_row(i, m) for i, m in enumerate(report.models))
    summary = ("<table><thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in SUMMARY_HEADERS)
               + f"</tr></thead><tbody>{rows}</tbody></table>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>onnxmbs report</title><style>{CSS}</style></head><body>"
            f"<h1>onnxmbs report</h1><p class=\"meta\">{len(report.models)} model(s), {len(report.failed)} failed; "
            f"plan at k = {st['k']:g}; onnxmbs {escape(st['onnxmbs'])}; {escape(st['created'])}</p>{summary}"
            + "".join(_html_model(i, m, report.deployments_of(m)) for i, m in enumerate(report.models))
            + "".join(deployment_html(dep) for dep in report.unmatched_deployments)
            + "".join(blocks_html(plan) for plan in report.blocks)
            + "".join(handbook_html(book, title=_handbook_title(book), heading="h2") for book in report.handbooks)
            + "</body></html>\n")


def report_text(report: Report) -> str:
    """The terminal summary: one row per model that worked, one line per failure."""
    ok = [m for m in report.models if m.ok]
    lines = [table(SUMMARY_HEADERS, [_summary_cells(m) for m in ok])] if ok else []
    lines += [f"FAILED {m.path}: {m.error}" for m in report.failed]
    return "\n\n".join(["\n".join(lines), *(deployment_text(dep) for dep in report.deployments),
                         *(blocks_text(plan) for plan in report.blocks),
                         *(handbook_text(book) for book in report.handbooks)])
