"""Uniform width scaling (the paper's Figure 5 baseline): every scalable channel group × α.

The groups MBS may scale (not frozen, with a producer in some macroblock) all get
``⌈α·C⌉`` channels (rounded like the planner), the rest keep their width. :func:`match_alpha`
finds the α whose parameter count is closest to a budget (an MBS plan's): parameters are a
step function of α that only changes at ``α = j/C``, so it bisects over those steps and
the result is within one channel step of the budget.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from onnxmbs.errors import MBSError
from onnxmbs.planning.document import PlanDocument
from onnxmbs.planning.facts import GroupFacts, LayerFacts, ParamSpec
from onnxmbs.planning.planner import Summary, compact_width, summarize


@dataclass(frozen=True)
class UniformPoint:
    """Uniform scaling at ``alpha``: its group widths and predicted size; ``step`` is the parameter
    change between the two α steps around the budget it was matched to (0 when not matched)."""
    alpha: float
    widths: dict[int, int]
    summary: Summary
    step: int = 0


def _scalable(groups: Sequence[GroupFacts], layers: Sequence[LayerFacts]) -> list[GroupFacts]:
    where = {l.name: l.macroblock for l in layers}
    return [g for g in groups if not g.frozen and any(where.get(p) is not None for p in g.producers)]


def uniform_widths(groups: Sequence[GroupFacts], layers: Sequence[LayerFacts], alpha: float, *,
                   round_to: int = 1) -> dict[int, int]:
    """Group id -> width under uniform α-scaling (groups MBS never scales keep theirs)."""
    if not 0 < alpha <= 1:
        raise MBSError(f"uniform width multiplier α must be in (0, 1], got {alpha}")
    scalable = {g.id for g in _scalable(groups, layers)}
    return {g.id: compact_width(g.channels, alpha, round_to=round_to, multiple_of=g.multiple_of)
            if g.id in scalable else g.channels for g in groups}


def uniform_at(groups: Sequence[GroupFacts], layers: Sequence[LayerFacts], specs: Sequence[ParamSpec],
               alpha: float, *, round_to: int = 1) -> UniformPoint:
    widths = uniform_widths(groups, layers, alpha, round_to=round_to)
    return UniformPoint(alpha=alpha, widths=widths, summary=summarize(specs, widths))


def _alphas(groups: Sequence[GroupFacts], layers: Sequence[LayerFacts]) -> list[float]:
    """Every α where some scalable group's width ``⌈α·C⌉`` changes (j/C), ascending."""
    return sorted({j / g.channels for g in _scalable(groups, layers) for j in range(1, g.channels + 1)})


def match_alpha(groups: Sequence[GroupFacts], layers: Sequence[LayerFacts], specs: Sequence[ParamSpec],
                params: int, *, round_to: int = 1) -> UniformPoint:
    """The uniform α whose compact parameter count is closest to ``params`` (ties: the larger α)."""
    alphas = _alphas(groups, layers)
    if not alphas:
        raise MBSError("the model has no channel group that scaling may change — nothing to compare uniform "
                       "scaling with")
    points: dict[int, UniformPoint] = {}

    def at(i: int) -> UniformPoint:
        if i not in points:
            points[i] = uniform_at(groups, layers, specs, alphas[i], round_to=round_to)
        return points[i]

    lo, hi = 0, len(alphas) - 1  # find the first step with params >= budget
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if at(mid).summary.params_compact < params else (lo, mid)
    below = at(lo - 1) if lo > 0 else None
    above = at(lo)
    step = above.summary.params_compact - below.summary.params_compact if below else 0
    best = above if below is None or (abs(above.summary.params_compact - params)
                                      <= abs(below.summary.params_compact - params)) else below
    return replace(best, step=step)


def uniform_document(plan: PlanDocument, point: UniformPoint) -> PlanDocument:
    """``plan`` with the uniform widths of ``point`` in place of MBS's (what ``apply_plan`` takes)."""
    widths = point.widths
    groups = tuple(replace(g, compact_channels=widths[g.id], beta=point.alpha if widths[g.id] < g.channels else 1.0)
                   for g in plan.groups)
    macroblocks = tuple(replace(m, beta=point.alpha) for m in plan.macroblocks)
    layers = tuple(replace(l, compact_out_channels=sum(widths[g] for g in l.output_groups or (l.group,)))
                   for l in plan.layers)
    s = point.summary
    summary = replace(plan.summary, params_compact=s.params_compact, param_reduction=s.param_reduction,
                      flops_compact=s.flops_compact, flop_reduction=s.flop_reduction)
    settings = replace(plan.settings, extra={**plan.settings.extra, "uniform_alpha": point.alpha})
    return replace(plan, groups=groups, layers=layers, macroblocks=macroblocks, summary=summary, settings=settings)
