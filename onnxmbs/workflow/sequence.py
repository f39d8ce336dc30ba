"""The one sequence: analyse the model, measure (or load) its statistics, plan or sweep.

:func:`study` is the only place that decides how a model is analysed (``--input-shape``, or the
size of the data for a dynamic input; ``--macroblocks``; ``--statistic``) and where its statistics
come from (saved counts matched by sha256, else a pass over the calibration data, watched by
``--until-converged``, split over ``--workers``/shards). It returns a :class:`Study`; plans, sweeps
and targets are then made from it in milliseconds.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from onnxmbs.data.calibration import CalibrationInfo
from onnxmbs.errors import MBSError
from onnxmbs.graph.analysis import Analysis, analyze
from onnxmbs.planning.convergence import ConvergeOptions, monitor_for
from onnxmbs.planning.build import PlanResult, plan_from_statistics
from onnxmbs.planning.sweep import Solution, SweepPoint, Sweeper, Target, curve, make_sweeper, solve, sweep
from onnxmbs.stats.counting import Statistics
from onnxmbs.stats.measure import CalibrationOptions, Measured, input_shape_for, measure_or_load, measure_source
from onnxmbs.stats.source import DataSource
from onnxmbs.stats.statsfile import save_stats
from onnxmbs.stats.stopping import Convergence

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """How to analyse a model and where its statistics come from: the options every planning command shares."""
    input_shape: tuple[int, ...] | None = None
    macroblocks: Mapping[str, int] | None = None  # --macroblocks: conv name -> level
    statistic: str = "extended"
    calibration: CalibrationOptions = CalibrationOptions()
    stats: tuple[str | Path, ...] = ()  # counts from `onnxmbs profile` (several: matched by sha256)
    converge: ConvergeOptions | None = None  # --until-converged
    ks: tuple[float | None, ...] = (1.0,)  # the thresholds a --until-converged pass watches
    z: float | None = None
    round_to: int | str = 1  # or "auto": the rounding measured fastest (onnxmbs.compact.rounding), per k


@dataclass(frozen=True)
class Study:
    """A model analysed and (unless asked not to) measured; every plan and sweep comes from here.

    ``round_to="auto"``: each plan and sweep point is made at the rounding whose compact model was timed
    fastest for that k (:func:`onnxmbs.compact.rounding.choose_rounding`, once per k; ``timer`` replaces
    the onnxruntime timing in tests). The curve and target solving run at rounding 1 (the β frontier;
    timing every breakpoint would cost minutes): a solved k is then planned at its own fastest rounding.
    """
    analysis: Analysis = field(repr=False)
    measured: Measured | None = field(default=None, repr=False)  # None: analysed only (p = 1 everywhere)
    round_to: int | str = 1
    timer: Any = field(default=None, repr=False, compare=False)
    _choices: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # k, z -> RoundingChoice

    @property
    def statistics(self) -> Statistics | None:
        return self.measured.statistics if self.measured is not None else None

    @property
    def source(self) -> DataSource | None:
        return self.measured.source if self.measured is not None else None

    @property
    def convergence(self) -> Convergence | None:
        return self.measured.convergence if self.measured is not None else None

    @property
    def auto(self) -> bool:
        return self.round_to == "auto"

    @cached_property
    def sweeper(self) -> Sweeper:
        """Algorithm 1's inputs prepared once (a frozen record may still cache: it is never mutated);
        at rounding 1 under ``auto``."""
        return make_sweeper(self.analysis, self.statistics, round_to=1 if self.auto else int(self.round_to))

    def rounding(self, k: float | None = None, z: float | None = None) -> Any:
        """The measured rounding table at ``k``/``z`` (a RoundingChoice), or None without ``auto``."""
        if not self.auto:
            return None
        if (k, z) not in self._choices:
            from onnxmbs.compact.rounding import choose_rounding

            self._choices[(k, z)] = choose_rounding(self.analysis, self.statistics, k=k, z=z, timer=self.timer)
        return self._choices[(k, z)]

    def round_to_at(self, k: float | None = None, z: float | None = None) -> int:
        choice = self.rounding(k, z)
        return choice.chosen if choice is not None else int(self.round_to)

    def plan(self, k: float | None = None, z: float | None = None, *, with_convergence: bool = True) -> PlanResult:
        """The plan (document included) at ``k`` or ``z``; ``with_convergence``: the β bounds of the pass.
        Under ``auto`` the plan keeps the measured table as its ``rounding`` entry."""
        result = plan_from_statistics(self.analysis, self.statistics, k=k, z=z, round_to=self.round_to_at(k, z),
                                      source=self.source, convergence=self.convergence if with_convergence else None)
        choice = self.rounding(k, z)
        if choice is None:
            return result
        doc = replace(result.document, extra={**result.document.extra, "rounding": choice.to_json()})
        return replace(result, document=doc)

    def at(self, k: float) -> SweepPoint:
        if not self.auto:
            return self.sweeper.at(k)
        return replace(self.sweeper, round_to=self.round_to_at(k)).at(k)

    def sweep(self, ks: Sequence[float]) -> tuple[SweepPoint, ...]:
        return tuple(self.at(k) for k in ks) if self.auto else sweep(self.sweeper, ks)

    def curve(self, lo: float, hi: float) -> tuple[SweepPoint, ...]:
        return curve(self.sweeper, lo, hi)

    def solve(self, target: Target) -> Solution:
        return solve(self.sweeper, target)


def analyse(model: Any, request: Request = Request()) -> Analysis:
    """The static analysis, at ``--input-shape`` or (dynamic input) the size of the calibration data."""
    return analyze(model, input_shape=input_shape_for(model, request.input_shape, request.calibration.data),
                   macroblock_override=request.macroblocks, statistic=request.statistic)


def _measure(analysis: Analysis, request: Request) -> Measured:
    round_to = 1 if request.round_to == "auto" else int(request.round_to)  # auto: the widths at 1 converge first
    monitor = monitor_for(request.converge, analysis, ks=request.ks, z=request.z, round_to=round_to)
    if request.stats:
        return measure_or_load(analysis, stats=request.stats, options=request.calibration, monitor=monitor)
    return measure_source(analysis, request.calibration, monitor=monitor)


def study(model: Any, request: Request = Request(), *, measure: bool = True, timer: Any = None) -> Study:
    """Analyse ``model`` (a path, a ModelProto, or an :class:`Analysis` already made) and, with ``measure``,
    measure its statistics on ``request.calibration`` or load them from ``request.stats``. ``timer``:
    what times the candidate roundings of ``round_to="auto"`` (default: onnxruntime here)."""
    analysis = model if isinstance(model, Analysis) else analyse(model, request)
    return Study(analysis=analysis, measured=_measure(analysis, request) if measure else None,
                 round_to=request.round_to, timer=timer)


def save_study(path: str | Path, done: Study, *, shard: tuple[int, int] | None = None) -> Path:
    """``onnxmbs profile``'s stats file: the counts of a measured study, where they came from, how the pass ended."""
    if done.measured is None:
        raise MBSError("no statistics to save: study the model with measure=True")
    src, stats = done.measured.source, done.measured.statistics
    info = CalibrationInfo(source=src.data, images=stats.images, skipped=src.skipped, synthetic=src.synthetic,
                           preprocess=src.preprocess, normalisation=src.normalisation)
    return save_stats(path, done.analysis, stats, info=info, preprocess=info.preprocess, shard=shard,
                      convergence=done.convergence)
