"""``onnxmbs report``'s measuring half: the sequence per model, a plan at k and a k-sweep each.

A model that fails becomes a :class:`ModelReport` with its reason; the batch goes on. The
rows are rendered by :mod:`onnxmbs.reports.report` (which measures nothing).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from onnxmbs.errors import MBSError
from onnxmbs.planning.convergence import ConvergeOptions
from onnxmbs.planning.document import PlanDocument
from onnxmbs.planning.sweep import SweepPoint
from onnxmbs.progress import progress_bar
from onnxmbs.stats.measure import CalibrationOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportOptions:
    k: float | None = None
    ks: tuple[float, ...] = (0.6, 0.8, 1.0, 1.2, 1.4)
    round_to: int | str = 1  # or "auto"
    input_shape: tuple[int, ...] | None = None
    converge: ConvergeOptions | None = None  # --until-converged
    statistic: str = "extended"

    @property
    def plan_k(self) -> float:
        return 1.0 if self.k is None else self.k


@dataclass(frozen=True)
class ModelReport:
    path: str
    error: str | None = None
    sha256: str | None = None
    seconds: float = 0.0
    plan: PlanDocument | None = field(default=None, repr=False)  # without per-channel rates (reports stay small)
    sweep: tuple[SweepPoint, ...] = field(default=(), repr=False)
    curve: tuple[SweepPoint, ...] = field(default=(), repr=False)
    point: SweepPoint | None = field(default=None, repr=False)  # the sweep point at the plan's k

    @property
    def ok(self) -> bool:
        return self.error is None


def _request(options: ReportOptions, stats: Sequence[str], calibration: CalibrationOptions):
    from onnxmbs.workflow.sequence import Request

    return Request(input_shape=options.input_shape, statistic=options.statistic, calibration=calibration,
                   stats=tuple(stats), converge=options.converge, ks=(options.plan_k, *options.ks),
                   round_to=options.round_to)


def _reason(path: str, exc: Exception) -> str:
    if isinstance(exc, MBSError):
        return str(exc)
    logger.debug("report: %s failed", path, exc_info=True)
    return f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def report_model(path: str, *, options: ReportOptions, stats: Sequence[str] = (),
                 calibration: CalibrationOptions = CalibrationOptions()) -> ModelReport:
    """The sequence (analyse, measure or load --stats), then a plan at ``options.k`` and the sweep."""
    from onnxmbs.workflow import sequence

    start, sha, k = time.perf_counter(), None, options.plan_k
    try:
        analysed = sequence.study(path, _request(options, stats, calibration), measure=False)
        sha = analysed.analysis.loaded.sha256
        done = sequence.study(analysed.analysis, _request(options, stats, calibration))
        return ModelReport(path=str(path), sha256=sha, seconds=time.perf_counter() - start,
                           plan=done.plan(k).document.slim(), sweep=done.sweep(options.ks),
                           curve=done.curve(min(options.ks), max(options.ks)), point=done.at(k))
    except Exception as exc:  # noqa: BLE001 - one broken model must not stop the batch
        reason = _reason(path, exc)
    logger.warning("%s: %s", path, reason)
    return ModelReport(path=str(path), error=reason, sha256=sha, seconds=time.perf_counter() - start)


def report_models(models: Sequence[str], *, options: ReportOptions = ReportOptions(), stats: Sequence[str] = (),
                  calibration: CalibrationOptions = CalibrationOptions()) -> tuple[ModelReport, ...]:
    """One :class:`ModelReport` per model (a progress bar over models on a terminal)."""
    bar, results = progress_bar(calibration.progress, total=len(models), unit="model", desc="report"), []
    quiet = replace(calibration, progress=False)
    for path in models:
        if bar is not None:
            bar.set_postfix_str(Path(path).name)
        results.append(report_model(path, options=options, stats=stats, calibration=quiet))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return tuple(results)
