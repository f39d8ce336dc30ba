"""The deployment table of ``onnxmbs report --deployment COMPACT.onnx``: original, compact and compact
INT8 side by side — params, MACs, file size, latency and accuracy (with labels) or fidelity to the
original (without). The numbers come from the records ``onnxmbs compact`` wrote
(:func:`onnxmbs.compact.record.read_deployment`); this module only renders."""
from __future__ import annotations

import html

from onnxmbs.compact.record import DeploymentRow, DeploymentTable
from onnxmbs.reports.markup import html_table, md_table
from onnxmbs.reports.text import table
from onnxmbs.units import human

NAMES = {"original": "original (fp32)", "compact": "compact (fp32)", "int8": "compact INT8"}


def deployment_headers(dep: DeploymentTable) -> tuple[str, ...]:
    quality = {"accuracy": ("top-1", "agreement"), "fidelity": ("rel. L2 to original", "cosine")}.get(
        dep.quality or "", ())
    return ("variant", "params", "MACs", "file", "latency (ms)", "speed-up", *quality)


def deployment_rows(dep: DeploymentTable) -> list[tuple]:
    base = dep.rows[0]
    return [_row(dep, r, base) for r in dep.rows]


def _row(dep: DeploymentTable, r: DeploymentRow, base: DeploymentRow) -> tuple:
    speedup = base.latency_ms / r.latency_ms if base.latency_ms and r.latency_ms else None
    cells = [NAMES[r.variant], f"{r.params:,}", human(r.flops), _size(r.bytes),
             "-" if r.latency_ms is None else f"{r.latency_ms:.3f}", "-" if speedup is None else f"×{speedup:.2f}"]
    if dep.quality == "accuracy":
        cells += [_percent(r.top1), "-" if r.variant == "original" else _percent(r.agreement)]
    elif dep.quality == "fidelity":
        cells += ["0 (reference)" if r.variant == "original" else _number(r.relative_l2),
                  "1 (reference)" if r.variant == "original" else _number(r.cosine)]
    return tuple(cells)


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _meta(dep: DeploymentTable) -> str:
    t = dep.timing
    timing = (f"latency: onnxruntime {t.get('provider', '?')}, batch {t.get('batch', '?')}, "
              f"{t.get('threads', '?')} thread(s), median of {t.get('repeats', '?')}" if t else "latency not measured")
    where = dep.quality_data or ("the labelled --eval-data" if dep.quality == "accuracy" else "the calibration images")
    quality = {"accuracy": f"top-1 on {where}", "fidelity": f"fidelity of the outputs to the original's on {where} "
               "(no labels)"}.get(dep.quality or "", "no accuracy measured")
    return f"from {dep.model or 'the original'}; {timing}; {quality}"


def deployment_text(dep: DeploymentTable) -> str:
    return "\n".join([f"deployment of {dep.compact} ({_meta(dep)})",
                      table(deployment_headers(dep), deployment_rows(dep))])


def deployment_markdown(dep: DeploymentTable) -> str:
    return "\n".join([f"## Deployment: {dep.compact}", "", _meta(dep), "",
                      md_table(deployment_headers(dep), deployment_rows(dep))])


def deployment_html(dep: DeploymentTable) -> str:
    return (f"<section><h2>Deployment: {html.escape(dep.compact)}</h2><p class=\"meta\">{html.escape(_meta(dep))}</p>"
            f"{html_table(deployment_headers(dep), deployment_rows(dep))}</section>")
