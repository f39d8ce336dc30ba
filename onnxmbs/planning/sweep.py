"""The paper's trade-off "handbook" (Fig. 4): one statistics pass, a plan for every k.

Planning is pure numpy, so a :class:`Sweeper` prepares the per-layer facts once and
re-plans in milliseconds. The plan depends on k only through the RF boundary
``⌈k·L⌉_RF`` (the smallest conv RF above z), so every reduction is a step function of k,
non-increasing, changing only at ``k = RF/L``. :func:`solve` bisects over those steps
for the largest k that still meets a target.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from onnxmbs.graph.analysis import Analysis
from onnxmbs.errors import MBSError
from onnxmbs.planning.facts import GroupFacts, LayerFacts, ParamSpec
from onnxmbs.planning.document import macroblock_widths
from onnxmbs.planning.build import PlanResult, plan_from_statistics
from onnxmbs.planning.gather import group_facts, layer_facts
from onnxmbs.planning.planner import Plan, Summary, plan
from onnxmbs.planning.scaling import param_specs
from onnxmbs.stats.counting import Statistics
from onnxmbs.stats.measure import DataSource
from onnxmbs.stats.stopping import Convergence
from onnxmbs.units import human

logger = logging.getLogger(__name__)

MAX_POINTS = 1000


@dataclass(frozen=True)
class SweepPoint(Summary):
    """One k of the sweep: β and compact widths per macroblock, params and MACs before/after."""
    k: float
    z: float
    rf_boundary: int | None
    beta: tuple[float, ...]
    redundancy: tuple[float, ...]
    widths: tuple[tuple[int, ...], ...]  # original widths per macroblock
    configuration: tuple[tuple[int, ...], ...]  # compact widths per macroblock
    round_to: int = 1  # the rounding of these widths (under --round-to auto: the one measured fastest at k)

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.update(param_reduction=self.param_reduction, flop_reduction=self.flop_reduction,
                   beta=list(self.beta), redundancy=list(self.redundancy),
                   widths=[list(w) for w in self.widths], configuration=[list(c) for c in self.configuration])
        return doc


@dataclass(frozen=True)
class Sweeper:
    """Everything Algorithm 1 needs, computed once; :meth:`at` plans one k in milliseconds."""
    analysis: Analysis = field(repr=False)
    statistics: Statistics | None = field(repr=False)
    layers: tuple[LayerFacts, ...] = field(repr=False)
    groups: tuple[GroupFacts, ...] = field(repr=False)
    specs: tuple[ParamSpec, ...] = field(repr=False)
    round_to: int = 1

    def plan(self, k: float) -> Plan:
        return plan(self.layers, self.groups, self.specs, L=self.analysis.L,
                    macroblocks=len(self.analysis.macroblocks), k=k, round_to=self.round_to)

    def at(self, k: float) -> SweepPoint:
        result = self.plan(k)
        s = result.summary
        widths, config = _configuration(self.analysis, self.layers, result.widths())
        return SweepPoint(k=float(k), z=result.z, rf_boundary=result.rf_boundary,
                          beta=tuple(m.beta for m in result.macroblocks),
                          redundancy=tuple(m.redundancy for m in result.macroblocks), widths=widths,
                          configuration=config, params=s.params, params_compact=s.params_compact,
                          flops=s.flops, flops_compact=s.flops_compact, round_to=self.round_to)

    def document(self, k: float, source: DataSource | None = None, convergence: Convergence | None = None) -> PlanResult:
        """The full plan (document included) at ``k`` (``convergence``: from ``--until-converged``)."""
        return plan_from_statistics(self.analysis, self.statistics, k=k, round_to=self.round_to, source=source,
                                    convergence=convergence)

    def boundaries(self) -> tuple[int, ...]:
        """The distinct finite conv RFs: the values ``⌈z⌉_RF`` can take."""
        return tuple(sorted({l.rf for l in self.layers if l.rf is not None}))

    def breakpoints(self) -> tuple[float, ...]:
        """The k values where the plan changes (``RF/L``); constant in between, right-continuous."""
        return tuple(rf / self.analysis.L for rf in self.boundaries())


def make_sweeper(analysis: Analysis, stats: Statistics | None, *, round_to: int = 1) -> Sweeper:
    return Sweeper(analysis=analysis, statistics=stats, layers=tuple(layer_facts(analysis, stats)),
                   groups=tuple(group_facts(analysis)), specs=tuple(param_specs(analysis)), round_to=round_to)


def _configuration(analysis: Analysis, layers: Sequence[LayerFacts],
                   widths: Mapping[int, int]) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """Per macroblock: the distinct output widths of its convs, before and after scaling."""
    per_mb = macroblock_widths(((f.macroblock, conv.out_channels, sum(widths[g] for g in f.output_groups or (f.group,)))
                                for conv, f in zip(analysis.layers, layers)), len(analysis.macroblocks))
    return tuple(m.before for m in per_mb), tuple(m.after for m in per_mb)


def sweep(sweeper: Sweeper, ks: Sequence[float]) -> tuple[SweepPoint, ...]:
    return tuple(sweeper.at(k) for k in ks)


def curve(sweeper: Sweeper, lo: float, hi: float) -> tuple[SweepPoint, ...]:
    """The exact step function on [lo, hi]: one point at ``lo`` and at every breakpoint inside."""
    ks = sorted({lo, hi, *(b for b in sweeper.breakpoints() if lo < b < hi)})
    return sweep(sweeper, ks)


def parse_ks(text: str) -> tuple[float, ...]:
    """``"0.6:1.4:0.2"`` (start:stop:step, stop included) or ``"0.5,1,2"``."""
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            n = math.floor((stop - start) / step + 1e-9) + 1
            ks = tuple(round(start + i * step, 10) for i in range(n))
        else:
            ks = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise MBSError(f"--k {text!r} is not a range like 0.6:1.4:0.2 (start:stop:step) or a list like 0.5,1,2 "
                       "— fix the value") from None
    if not ks or min(ks) <= 0 or len(ks) > MAX_POINTS:
        raise MBSError(f"--k {text!r} must give 1 to {MAX_POINTS} positive values — e.g. 0.6:1.4:0.2")
    return ks


# ------------------------------------------------------------ solving for a target
TARGETS = {  # metric -> (what it limits, higher-is-better?)
    "param_reduction": ("param reduction", True),
    "flop_reduction": ("MAC reduction", True),
    "params": ("compact params", False),
    "flops": ("compact MACs", False),
}


@dataclass(frozen=True)
class Target:
    metric: str
    value: float

    def __post_init__(self) -> None:
        if self.metric not in TARGETS:
            raise MBSError(f"unknown target {self.metric!r} — use one of {', '.join(TARGETS)}")
        if self.metric.endswith("reduction") and not 0 <= self.value < 1:
            raise MBSError(f"target {self.metric.replace('_', ' ')} {self.value} must be a fraction in [0, 1) — "
                           "e.g. 0.3 for 30%")
        if not self.metric.endswith("reduction") and self.value <= 0:
            raise MBSError(f"target {self.metric} {self.value} must be a positive count")

    def achieved(self, point: SweepPoint) -> float:
        return float(getattr(point, {"params": "params_compact", "flops": "flops_compact"}.get(self.metric,
                                                                                                self.metric)))

    def meets(self, point: SweepPoint) -> bool:
        value, higher = self.achieved(point), TARGETS[self.metric][1]
        return value >= self.value - 1e-12 if higher else value <= self.value

    def describe(self, value: float | None = None) -> str:
        value = self.value if value is None else value
        shown = f"{100 * value:.2f}%" if self.metric.endswith("reduction") else f"{human(value)} ({value:,.0f})"
        return f"{TARGETS[self.metric][0]} {shown}"


@dataclass(frozen=True)
class Solution:
    """The largest k meeting ``target``: every k in [k_low, k_high) gives the same plan."""
    target: Target
    k: float
    k_low: float
    k_high: float  # math.inf when the target holds for every larger k
    point: SweepPoint


def _interval(bounds: Sequence[int], i: int, L: int) -> tuple[float, float]:  # noqa: N803
    """k interval giving RF boundary ``bounds[i]`` (i == len(bounds): no boundary, all β = 1)."""
    lo = bounds[i - 1] / L if i > 0 else 0.0
    hi = bounds[i] / L if i < len(bounds) else math.inf
    return lo, hi


def _representative(lo: float, hi: float) -> float:
    """The largest 2- or 3-decimal k inside [lo, hi) (the midpoint if none), for hi = ∞ just above lo."""
    if math.isinf(hi):
        return math.ceil(lo * 100 + 1e-9) / 100 if lo else 1.0
    for scale in (100, 1000, 10000):
        k = math.floor(hi * scale - 1e-6) / scale
        if k >= lo and k > 0:
            return k
    return (lo + hi) / 2


def solve(sweeper: Sweeper, target: Target) -> Solution:
    """Bisect over the RF-boundary steps for the largest k whose plan meets ``target``."""
    bounds, L = sweeper.boundaries(), sweeper.analysis.L  # noqa: N806
    points: dict[int, SweepPoint] = {}

    def point(i: int) -> SweepPoint:
        if i not in points:
            lo, hi = _interval(bounds, i, L)
            found = sweeper.at(_representative(lo, hi))
            if found.rf_boundary != (bounds[i] if i < len(bounds) else None):  # float rounding at an edge
                found = sweeper.at((lo + hi) / 2 if not math.isinf(hi) else lo + 1.0)
            points[i] = found
        return points[i]

    if not target.meets(point(0)):
        best = point(0)
        raise MBSError(f"target {target.describe()} cannot be reached: the most MBS gives this model is "
                       f"{target.describe(target.achieved(best))} at k < {_interval(bounds, 0, L)[1]:.4g} "
                       f"(RF boundary {best.rf_boundary}) — relax the target")
    lo, hi = 0, len(bounds)  # invariant: meets(lo); answer in [lo, hi]
    if target.meets(point(hi)):
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if target.meets(point(mid)) else (lo, mid)
    k_low, k_high = _interval(bounds, lo, L)
    logger.debug("solved %s: step %d of %d, k in [%g, %g)", target, lo, len(bounds), k_low, k_high)
    return Solution(target=target, k=point(lo).k, k_low=k_low, k_high=k_high, point=point(lo))
