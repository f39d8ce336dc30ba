"""A blocks plan for people: the terminal table, the HTML section of ``onnxmbs report --blocks``, and the
files of :mod:`onnxmbs.reports.formats` (JSON, CSV of the removal order, Markdown, an HTML page)."""
from __future__ import annotations

import csv
import html
import io
import json

from onnxmbs.blocks.document import BlocksPlan
from onnxmbs.reports.markup import html_page, html_table, md_table
from onnxmbs.reports.plots import accuracy_curves
from onnxmbs.reports.text import short, table
from onnxmbs.units import human


def metric_of(plan: BlocksPlan) -> str:
    """What the plan's scores are: top-1, fidelity (to the original) or the user's metric."""
    return plan.settings.metric if plan.settings else "top-1"


def _label(metric: str) -> str:
    return metric.rpartition(":")[2] if metric.startswith("python:") else metric


def _value(metric: str, value: float) -> str:
    return f"{100 * value:.2f}%" if metric == "top-1" else f"{value:.4f}"


def _drop(metric: str, value: float) -> str:
    return f"{100 * value:+.2f}" if metric == "top-1" else f"{value:+.4f}"


def removal_rows(plan: BlocksPlan) -> list[tuple]:
    """Per removed block, in removal order: round, id, join, params, MACs, score and the drop it caused."""
    rows, before, metric = [], plan.baseline_accuracy, metric_of(plan)
    for r in plan.rounds:
        block = plan.block(r.removed)
        rows.append((r.round, r.removed, short(block.join, 40), f"{block.params:,}", human(block.macs),
                     _value(metric, r.accuracy), _drop(metric, before - r.accuracy)))
        before = r.accuracy
    return rows


def row_headers(plan: BlocksPlan) -> tuple[str, ...]:
    metric = metric_of(plan)
    if metric == "top-1":
        return ROW_HEADERS
    return (*ROW_HEADERS[:5], f"{_label(metric)} after", "drop")


ROW_HEADERS = ("round", "block", "join", "params", "MACs", "accuracy after", "drop (points)")


def _summary_line(plan: BlocksPlan) -> str:
    s, metric = plan.summary, metric_of(plan)
    score = f"{_label(metric)} {_value(metric, plan.baseline_accuracy)} -> {_value(metric, s.accuracy_after)}"
    if metric == "fidelity":
        score += f" (relative L2 error to the original {1 - s.accuracy_after:.4f})"
    return (f"params {s.params:,} -> {s.params_after:,} ({100 * (1 - s.params_after / s.params):.2f}% fewer); "
            f"MACs {human(s.macs)} -> {human(s.macs_after)} ({100 * (1 - s.macs_after / s.macs):.2f}% fewer); "
            + score)


def _images(plan: BlocksPlan) -> str:
    st = plan.settings
    kind = "labelled images" if metric_of(plan) == "top-1" else "images (scored against the original)" \
        if metric_of(plan) == "fidelity" else f"images (metric {_label(metric_of(plan))})"
    return f"{st.images if st else '?'} {kind}"


def blocks_text(plan: BlocksPlan) -> str:
    st = plan.settings
    removable = sum(b.removable for b in plan.blocks)
    head = (f"{plan.model.path}: {len(plan.blocks)} residual joins, {removable} removable; "
            f"{_images(plan)}, rescore {st.rescore if st else '?'}")
    lines = [head]
    lines.append(table(row_headers(plan), removal_rows(plan)) if plan.rounds else "no block removed")
    lines.append(_summary_line(plan))
    rec = reconstruction_line(plan)
    return "\n".join(lines + ([rec] if rec else []))


def reconstruction_line(plan: BlocksPlan) -> str | None:
    """What ``--reconstruct`` re-fitted and the score before and after it (None without it)."""
    rec = plan.extra.get("reconstruction")
    if not rec:
        return None
    metric = metric_of(plan)
    if not rec["layers"]:
        return "reconstruct nothing re-fitted: no Conv/Gemm/MatMul reads a removed block's join"
    shards = rec.get("shards", 1)
    where = f" in {shards} shards on Ray" if shards > 1 else ""
    return (f"reconstruct {len(rec['layers'])} layer(s) after the removed blocks re-fitted on {rec['images']} images"
            f"{where} ({rec['seconds']:.1f} s): {_label(metric)} {_value(metric, rec['score_before'])} -> "
            f"{_value(metric, rec['score_after'])}")


def blocks_curve(plan: BlocksPlan) -> str:
    """The SVG of top-1 accuracy after each removal (0 removed: the baseline)."""
    points = [(0, plan.baseline_accuracy)] + [(r.round, r.accuracy) for r in plan.rounds]
    label = _label(metric_of(plan))
    return accuracy_curves({f"{label} (no fine-tuning)": points}, title=f"{label} vs blocks removed")


def blocks_markdown(plan: BlocksPlan) -> str:
    """A Markdown section: the summary and the removal order."""
    rows = removal_rows(plan) or [("-",) * len(ROW_HEADERS)]
    rec = reconstruction_line(plan)
    return "\n".join([f"## Block pruning: {plan.model.path}", "", _summary_line(plan), "",
                      *([rec, ""] if rec else []), md_table(row_headers(plan), rows)])


def blocks_html(plan: BlocksPlan) -> str:
    """An HTML section: the summary, the removal order with the drop per block, and the curve."""
    kept = [b for b in plan.blocks if not b.removable]
    notes = "".join(f"<li>{html.escape(b.id)} ({html.escape(b.join)}): {html.escape(b.reason)}</li>" for b in kept)
    return (f'<section><h2>Block pruning: {html.escape(plan.model.path)}</h2>'
            f'<p class="meta">{html.escape(_summary_line(plan))}; {len(plan.blocks)} residual joins, '
            f'rescore {html.escape(plan.settings.rescore if plan.settings else "?")}, '
            f'{html.escape(_images(plan))}</p>'
            f'<div class="charts">{blocks_curve(plan)}</div>'
            f"<h3>Removal order</h3>{html_table(row_headers(plan), removal_rows(plan))}"
            + (f"<h3>Blocks that cannot be removed</h3><ul>{notes}</ul>" if notes else "") + "</section>")


def to_json(plan: BlocksPlan) -> str:
    return json.dumps(plan.to_json(), indent=1) + "\n"


def to_csv(plan: BlocksPlan) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(row_headers(plan))
    writer.writerows(removal_rows(plan))
    return buf.getvalue()


def to_markdown(plan: BlocksPlan) -> str:
    return blocks_markdown(plan) + "\n"


def to_html(plan: BlocksPlan) -> str:
    return html_page("onnxmbs blocks", blocks_html(plan))
