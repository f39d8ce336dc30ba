"""The CI gate: limits on exported ONNX files, one verdict per model per check.

Static checks (``analyze``, ``max-params``, ``max-flops``) need no data. ``max-redundancy``
(no macroblock may carry more MBS redundancy r than allowed) and ``baseline`` (β per
macroblock and the param reduction stay within a tolerance of a saved plan) need
statistics: calibration data or a ``--stats`` file. Results render as a terminal table,
JUnit XML and GitHub step-summary Markdown.
"""
from __future__ import annotations

import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from onnxmbs.graph.analysis import Analysis, analyze
from onnxmbs.errors import MBSError
from onnxmbs.planning.pipeline import plan_from_statistics
from onnxmbs.planning.document import PlanDocument, read_plan
from onnxmbs.planning.convergence import ConvergeOptions, monitor_for
from onnxmbs.stats.measure import CalibrationOptions, Measured, input_shape_for, measure_or_load
from onnxmbs.reports.text import table, widths_text
from onnxmbs.units import human

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckResult:
    model: str
    check: str
    passed: bool
    message: str
    value: float | None = None
    limit: float | None = None
    seconds: float = 0.0
    error: bool = False  # could not be evaluated (model or data broken), as opposed to a limit exceeded

    @property
    def status(self) -> str:
        return "pass" if self.passed else "error" if self.error else "fail"


@dataclass(frozen=True)
class GateLimits:
    max_params: int | None = None
    max_flops: int | None = None
    max_redundancy: float | None = None
    baselines: tuple[str, ...] = ()
    tolerance: float = 0.02
    k: float | None = None
    round_to: int = 1
    input_shape: tuple[int, ...] | None = None
    converge: ConvergeOptions | None = None  # --until-converged (monitored at k)
    statistic: str = "extended"

    @property
    def needs_statistics(self) -> bool:
        return self.max_redundancy is not None or bool(self.baselines)

    def checks(self) -> list[str]:
        named = [("max-params", self.max_params), ("max-flops", self.max_flops),
                 ("max-redundancy", self.max_redundancy), ("baseline", self.baselines or None)]
        return ["analyze"] + [name for name, value in named if value is not None]


def _count_check(model: str, check: str, what: str, value: int, limit: int | None) -> CheckResult | None:
    if limit is None:
        return None
    if value <= limit:
        return CheckResult(model, check, True, f"{what} {value:,} <= {limit:,}", value, limit)
    over = value - limit
    return CheckResult(model, check, False, f"{what} {value:,} exceed --{check} {limit:,} by {over:,} "
                                            f"({100 * over / limit:.1f}%)", value, limit)


def _replan(analysis: Analysis, measured: Measured, *, k: float | None, z: float | None = None,
            round_to: int) -> PlanDocument:
    return plan_from_statistics(analysis, measured.statistics, k=k, z=z, round_to=round_to,
                                source=measured.source).document


def _redundancy_check(model: str, analysis: Analysis, measured: Measured, limits: GateLimits) -> CheckResult:
    doc = _replan(analysis, measured, k=limits.k, round_to=limits.round_to)
    limit = float(limits.max_redundancy)
    worst = max(doc.macroblocks, key=lambda b: b.redundancy, default=None)
    value = worst.redundancy if worst else 0.0
    over = [b for b in doc.macroblocks if b.redundancy > limit + 1e-12]
    if not over:
        return CheckResult(model, "max-redundancy", True, f"max redundancy r = {value:.4f} <= {limit:g} "
                           f"(k = {doc.settings.k}, RF boundary {doc.settings.rf_boundary})", value, limit)
    widths = doc.widths()
    parts = [f"m{b.index} ({b.out_hw[0]}x{b.out_hw[1]}) r = {b.redundancy:.4f}, β = {b.beta:.4f}, "
             f"MBS widths {widths_text(widths[b.index])}" for b in over]
    message = (f"redundancy above --max-redundancy {limit:g}: " + "; ".join(parts)
               + " — these stages are wider than their receptive field needs")
    return CheckResult(model, "max-redundancy", False, message, value, limit)


def _baseline_for(model: str, baselines: Mapping[str, PlanDocument]) -> tuple[str, PlanDocument]:
    if len(baselines) == 1:
        return next(iter(baselines.items()))
    name = Path(model).name
    for path, doc in baselines.items():
        if Path(str(doc.model.path or "")).name == name:
            return path, doc
    raise MBSError(f"none of the --baseline plans is for {name} — give one plan per model (matched by file name)")


def _baseline_check(model: str, analysis: Analysis, measured: Measured, limits: GateLimits,
                    baselines: Mapping[str, PlanDocument]) -> CheckResult:
    path, base = _baseline_for(model, baselines)
    st = base.settings
    k, z = (st.k, None) if st.k is not None else (None, st.z)
    doc = _replan(analysis, measured, k=k, z=z, round_to=st.round_to or 1)
    tol = limits.tolerance
    old, new = base.macroblocks, doc.macroblocks
    if len(old) != len(new):
        return CheckResult(model, "baseline", False, f"macroblock count changed: {len(new)} now, {len(old)} in "
                           f"{path} — the architecture changed; write a new baseline with `onnxmbs plan`", None, tol)
    deltas = [abs(a.beta - b.beta) for a, b in zip(new, old)]
    d_red = abs(doc.summary.param_reduction - base.summary.param_reduction)
    worst = max(deltas, default=0.0)
    bad = [f"m{i}: β {a.beta:.4f} vs {b.beta:.4f}" for i, (a, b, d) in enumerate(zip(new, old, deltas)) if d > tol]
    if d_red > tol:
        bad.append(f"param reduction {100 * doc.summary.param_reduction:.2f}% vs "
                   f"{100 * base.summary.param_reduction:.2f}%")
    value = max(worst, d_red)
    if not bad:
        return CheckResult(model, "baseline", True, f"β and param reduction within ±{tol:g} of {path} "
                           f"(max difference {value:.4f})", value, tol)
    return CheckResult(model, "baseline", False, f"differs from {path} by more than ±{tol:g}: " + "; ".join(bad),
                       value, tol)


def _error_results(model: str, checks: Sequence[str], reason: str) -> list[CheckResult]:
    return [CheckResult(model, c, False, f"not checked: {reason}", error=True) for c in checks]


def _statistics_checks(model: str, analysis: Analysis, limits: GateLimits, baselines: Mapping[str, PlanDocument],
                       stats: Sequence[str], calibration: CalibrationOptions) -> list[CheckResult]:
    wanted = [c for c in ("max-redundancy", "baseline") if c in limits.checks()]
    start = time.perf_counter()
    try:
        monitor = monitor_for(limits.converge, analysis, ks=(limits.k or 1.0,), round_to=limits.round_to)
        measured = measure_or_load(analysis, stats=stats, options=calibration, monitor=monitor)
        results = []
        if limits.max_redundancy is not None:
            results.append(_redundancy_check(model, analysis, measured, limits))
        if limits.baselines:
            results.append(_baseline_check(model, analysis, measured, limits, baselines))
    except MBSError as exc:
        return _error_results(model, wanted, str(exc))
    seconds = (time.perf_counter() - start) / max(len(results), 1)
    return [replace(r, seconds=seconds) for r in results]


def check_model(model: str, limits: GateLimits, *, baselines: Mapping[str, PlanDocument] | None = None,
                stats: Sequence[str] = (), calibration: CalibrationOptions = CalibrationOptions()
                ) -> list[CheckResult]:
    """Every requested check for one model; a broken model gives error results, never an exception."""
    start = time.perf_counter()
    try:
        analysis = analyze(model, input_shape=input_shape_for(model, limits.input_shape, calibration.data),
                           statistic=limits.statistic)
    except Exception as exc:  # noqa: BLE001 - the gate reports every model
        reason = str(exc) if isinstance(exc, MBSError) else f"unexpected {type(exc).__name__}: {exc}"
        first = CheckResult(model, "analyze", False, reason, seconds=time.perf_counter() - start, error=True)
        return [first] + _error_results(model, limits.checks()[1:], "the model could not be analysed")
    p, f = analysis.shapes.params, analysis.shapes.flops
    results = [CheckResult(model, "analyze", True, f"{len(analysis.layers)} conv layers, "
                           f"{len(analysis.macroblocks)} macroblocks, {human(p)} params, {human(f)} MACs",
                           seconds=time.perf_counter() - start)]
    results += [r for r in (_count_check(model, "max-params", "params", p, limits.max_params),
                            _count_check(model, "max-flops", "MACs", f, limits.max_flops)) if r is not None]
    if limits.needs_statistics:
        results += _statistics_checks(model, analysis, limits, baselines or {}, stats, calibration)
    return results


def run_gate(models: Sequence[str], limits: GateLimits, *, stats: Sequence[str] = (),
             calibration: CalibrationOptions = CalibrationOptions()) -> tuple[CheckResult, ...]:
    baselines = {str(p): read_plan(p) for p in limits.baselines}
    results: list[CheckResult] = []
    for model in models:
        results += check_model(model, limits, baselines=baselines, stats=stats, calibration=calibration)
        logger.info("%s: %s", model, ", ".join(f"{r.check} {r.status}" for r in results if r.model == model))
    return tuple(results)


# ------------------------------------------------------------ output
def results_text(results: Sequence[CheckResult]) -> str:
    rows = [(r.model, r.check, r.status.upper(), r.message) for r in results]
    failed = sum(not r.passed for r in results)
    verdict = "PASS" if not failed else f"FAIL ({failed} of {len(results)} checks)"
    return table(["model", "check", "result", "details"], rows) + f"\n{verdict}"


def junit_xml(results: Sequence[CheckResult]) -> str:
    """JUnit XML: one testsuite per model, one testcase per check."""
    root = ET.Element("testsuites", name="onnxmbs check", tests=str(len(results)),
                      failures=str(sum(r.status == "fail" for r in results)),
                      errors=str(sum(r.status == "error" for r in results)),
                      time=f"{sum(r.seconds for r in results):.3f}")
    for model in dict.fromkeys(r.model for r in results):
        mine = [r for r in results if r.model == model]
        suite = ET.SubElement(root, "testsuite", name=model, tests=str(len(mine)),
                              failures=str(sum(r.status == "fail" for r in mine)),
                              errors=str(sum(r.status == "error" for r in mine)),
                              time=f"{sum(r.seconds for r in mine):.3f}")
        for r in mine:
            case = ET.SubElement(suite, "testcase", classname=model, name=r.check, time=f"{r.seconds:.3f}")
            if r.status == "pass":
                ET.SubElement(case, "system-out").text = r.message
            else:
                ET.SubElement(case, "failure" if r.status == "fail" else "error", message=r.message,
                              type=r.check).text = r.message
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def summary_markdown(results: Sequence[CheckResult]) -> str:
    """GitHub step-summary Markdown (appended to $GITHUB_STEP_SUMMARY)."""
    failed = sum(not r.passed for r in results)
    models = len(dict.fromkeys(r.model for r in results))
    head = (f"### onnxmbs check: {'✅ PASS' if not failed else '❌ FAIL'} — {models} model(s), "
            f"{len(results)} check(s), {failed} failed")
    icon = {"pass": "✅", "fail": "❌", "error": "⚠️"}
    rows = [f"| `{r.model}` | {r.check} | {icon[r.status]} {r.status} | {r.message.replace('|', '/')} |"
            for r in results]
    return "\n".join([head, "", "| model | check | result | details |", "|---|---|---|---|", *rows, ""]) + "\n"


def append_step_summary(path: str | Path, results: Sequence[CheckResult]) -> None:
    with open(path, "a", encoding="utf-8") as fh:  # appending: other steps write the same file
        fh.write(summary_markdown(results))
