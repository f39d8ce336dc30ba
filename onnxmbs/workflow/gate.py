"""The CI gate's verdicts: limits on exported ONNX files, one per model per check.

Static checks (``analyze``, ``max-params``, ``max-flops``) need no data. ``max-redundancy``
(no macroblock may carry more MBS redundancy r than allowed) and ``baseline`` (β per
macroblock and the param reduction stay within a tolerance of a saved plan) need
statistics: calibration data or a ``--stats`` file, through the one sequence
(:func:`onnxmbs.workflow.sequence.study`). :mod:`onnxmbs.reports.gate` renders the results
(terminal table, JUnit XML, GitHub step-summary Markdown).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from onnxmbs.errors import MBSError
from onnxmbs.planning.convergence import ConvergeOptions
from onnxmbs.planning.document import PlanDocument, read_plan
from onnxmbs.stats.measure import CalibrationOptions
from onnxmbs.units import before_after, human

if TYPE_CHECKING:
    from onnxmbs.workflow.sequence import Request, Study

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
    round_to: int | str = 1  # or "auto"
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

    def request(self, stats: Sequence[str], calibration: CalibrationOptions) -> Request:
        """The sequence's options: statistics monitored at ``k`` (default 1.0)."""
        from onnxmbs.workflow.sequence import Request

        return Request(input_shape=self.input_shape, statistic=self.statistic, calibration=calibration,
                       stats=tuple(stats), converge=self.converge, ks=(self.k or 1.0,), round_to=self.round_to)


def _count_check(model: str, check: str, what: str, value: int, limit: int | None) -> CheckResult | None:
    if limit is None:
        return None
    if value <= limit:
        return CheckResult(model, check, True, f"{what} {value:,} <= {limit:,}", value, limit)
    over = value - limit
    return CheckResult(model, check, False, f"{what} {value:,} exceed --{check} {limit:,} by {over:,} "
                                            f"({100 * over / limit:.1f}%)", value, limit)


def _replan(done: Study, *, k: float | None, z: float | None = None, round_to: int | str) -> PlanDocument:
    return replace(done, round_to=round_to).plan(k, z, with_convergence=False).document


def _redundancy_check(model: str, done: Study, limits: GateLimits) -> CheckResult:
    doc = _replan(done, k=limits.k, round_to=limits.round_to)
    limit = float(limits.max_redundancy)
    worst = max(doc.macroblocks, key=lambda b: b.redundancy, default=None)
    value = worst.redundancy if worst else 0.0
    over = [b for b in doc.macroblocks if b.redundancy > limit + 1e-12]
    if not over:
        return CheckResult(model, "max-redundancy", True, f"max redundancy r = {value:.4f} <= {limit:g} "
                           f"(k = {doc.settings.k}, RF boundary {doc.settings.rf_boundary})", value, limit)
    widths = doc.widths()
    parts = [f"m{b.index} ({b.out_hw[0]}x{b.out_hw[1]}) r = {b.redundancy:.4f}, β = {b.beta:.4f}, "
             f"MBS widths {before_after(widths[b.index].pairs)}" for b in over]
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


def _baseline_check(model: str, done: Study, limits: GateLimits, baselines: Mapping[str, PlanDocument]) -> CheckResult:
    path, base = _baseline_for(model, baselines)
    st = base.settings
    k, z = (st.k, None) if st.k is not None else (None, st.z)
    doc = _replan(done, k=k, z=z, round_to=st.round_to or 1)
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


def _statistics_checks(model: str, analysed: Study, limits: GateLimits, baselines: Mapping[str, PlanDocument],
                       request: Request) -> list[CheckResult]:
    from onnxmbs.workflow import sequence

    wanted = [c for c in ("max-redundancy", "baseline") if c in limits.checks()]
    start = time.perf_counter()
    try:
        done = sequence.study(analysed.analysis, request)
        results = []
        if limits.max_redundancy is not None:
            results.append(_redundancy_check(model, done, limits))
        if limits.baselines:
            results.append(_baseline_check(model, done, limits, baselines))
    except MBSError as exc:
        return _error_results(model, wanted, str(exc))
    seconds = (time.perf_counter() - start) / max(len(results), 1)
    return [replace(r, seconds=seconds) for r in results]


def check_model(model: str, limits: GateLimits, *, baselines: Mapping[str, PlanDocument] | None = None,
                stats: Sequence[str] = (), calibration: CalibrationOptions = CalibrationOptions()
                ) -> list[CheckResult]:
    """Every requested check for one model; a broken model gives error results, never an exception."""
    from onnxmbs.workflow import sequence

    start, request = time.perf_counter(), limits.request(stats, calibration)
    try:
        analysed = sequence.study(model, request, measure=False)
    except Exception as exc:  # noqa: BLE001 - the gate reports every model
        reason = str(exc) if isinstance(exc, MBSError) else f"unexpected {type(exc).__name__}: {exc}"
        first = CheckResult(model, "analyze", False, reason, seconds=time.perf_counter() - start, error=True)
        return [first] + _error_results(model, limits.checks()[1:], "the model could not be analysed")
    analysis = analysed.analysis
    p, f = analysis.shapes.params, analysis.shapes.flops
    results = [CheckResult(model, "analyze", True, f"{len(analysis.layers)} conv layers, "
                           f"{len(analysis.macroblocks)} macroblocks, {human(p)} params, {human(f)} MACs",
                           seconds=time.perf_counter() - start)]
    results += [r for r in (_count_check(model, "max-params", "params", p, limits.max_params),
                            _count_check(model, "max-flops", "MACs", f, limits.max_flops)) if r is not None]
    if limits.needs_statistics:
        results += _statistics_checks(model, analysed, limits, baselines or {}, request)
    return results


def run_gate(models: Sequence[str], limits: GateLimits, *, stats: Sequence[str] = (),
             calibration: CalibrationOptions = CalibrationOptions()) -> tuple[CheckResult, ...]:
    baselines = {str(p): read_plan(p) for p in limits.baselines}
    results: list[CheckResult] = []
    for model in models:
        results += check_model(model, limits, baselines=baselines, stats=stats, calibration=calibration)
        logger.info("%s: %s", model, ", ".join(f"{r.check} {r.status}" for r in results if r.model == model))
    return tuple(results)


