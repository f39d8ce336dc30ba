"""The plan document from statistics: ``plan_from_statistics`` is Algorithm 1 on measured counts (pure
numpy), with the facts gathered from the analysis and the plan JSON built from the result."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from onnxmbs.graph.analysis import Analysis
from onnxmbs.planning.facts import LayerFacts
from onnxmbs.planning.gather import group_facts, layer_facts  # noqa: F401  (re-exported: sweep, the API)
from onnxmbs.planning.document import (SCHEMA, GroupRecord, LayerRecord, MacroblockRecord, PlanDocument, Settings,
                                       Summary)
from onnxmbs.planning.planner import Plan, plan
from onnxmbs.planning.scaling import param_specs
from onnxmbs.stats.counting import Statistics
from onnxmbs.stats.measure import DataSource
from onnxmbs.stats.stopping import Convergence


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanResult:
    analysis: Analysis = field(repr=False)
    statistics: Statistics | None = field(repr=False)
    plan: Plan
    document: PlanDocument = field(repr=False)


def _channel_rates(analysis: Analysis, stats: Statistics | None) -> dict[str, np.ndarray]:
    if stats is None:
        return {}
    return {c.name: stats.channel_rates(t.tensor, slice(t.start, t.stop)) for c in analysis.layers
            if (t := analysis.taps[c.name]) is not None and t.tensor in stats.taps}


def _layer_record(conv, facts: LayerFacts, analysis: Analysis, result: Plan, widths: Mapping[int, int],
                  rates: np.ndarray | None) -> LayerRecord:
    tap = analysis.taps[conv.name]
    groups = tuple(facts.output_groups or (facts.group,))
    return LayerRecord(
        name=conv.name, macroblock=facts.macroblock, out_hw=tuple(conv.out_hw), in_channels=conv.in_channels,
        out_channels=conv.out_channels, groups=conv.groups, kernel=tuple(conv.kernel), stride=tuple(conv.stride),
        dilation=tuple(conv.dilation), rf=conv.rf, flops=conv.flops, params=conv.params,
        activation=tap.node if tap else None, p_nonzero=facts.p_nonzero, measured=tap is not None,
        statistic=tap.statistic if tap else None,
        base=result.base[conv.name], group=facts.group, compact_out_channels=sum(widths[g] for g in groups),
        output_groups=groups, input_groups=tuple(analysis.channels.conv_input_groups.get(conv.name, ())),
        channel_p_nonzero=None if rates is None else tuple(round(float(r), 6) for r in rates))


def plan_document(analysis: Analysis, facts: Sequence[LayerFacts], result: Plan, *, settings: Settings,
                  channel_rates: Mapping[str, np.ndarray]) -> PlanDocument:
    """The plan document: model, settings, layers, macroblocks, groups, summary."""
    widths = result.widths()
    info = {g.id: g for g in analysis.channels.groups}
    s = result.summary
    return PlanDocument(
        schema=SCHEMA, model=analysis.loaded.record(), settings=settings,
        layers=tuple(_layer_record(c, f, analysis, result, widths, channel_rates.get(c.name))
                     for c, f in zip(analysis.layers, facts)),
        macroblocks=tuple(MacroblockRecord(index=mb.index, level=mb.level, out_hw=tuple(mb.out_hw),
                                           layers=tuple(mb.layers), e_total=p.e_total, e_base=p.e_base,
                                           redundancy=p.redundancy, beta=p.beta)
                          for mb, p in zip(analysis.macroblocks, result.macroblocks)),
        groups=tuple(GroupRecord(id=g.id, channels=g.channels, compact_channels=g.compact_channels, beta=g.beta,
                                 frozen=g.frozen, producers=tuple(info[g.id].producers),
                                 followers=tuple(info[g.id].followers), multiple_of=info[g.id].multiple_of)
                     for g in result.groups),
        summary=Summary(params=s.params, params_compact=s.params_compact, param_reduction=s.param_reduction,
                        flops=s.flops, flops_compact=s.flops_compact, flop_reduction=s.flop_reduction,
                        model_params=analysis.shapes.params, model_flops=analysis.shapes.flops,
                        unknown_ops=dict(analysis.shapes.unknown_ops)))


def plan_from_statistics(analysis: Analysis, stats: Statistics | None, *, k: float | None = None,
                         z: float | None = None, round_to: int = 1, source: DataSource | None = None,
                         convergence: Convergence | None = None) -> PlanResult:
    """Algorithm 1 on measured statistics (or p = 1 everywhere when ``stats`` is None)."""
    facts = layer_facts(analysis, stats)
    result = plan(facts, group_facts(analysis), param_specs(analysis), L=analysis.L,
                  macroblocks=len(analysis.macroblocks), k=k, z=z, round_to=round_to)
    settings = Settings(k=result.k, z=result.z, rf_boundary=result.rf_boundary, images=stats.images if stats else 0,
                        synthetic=bool(source and source.synthetic), provider=stats.provider if stats else None,
                        round_to=round_to, source=source, statistic=analysis.statistic)
    doc = plan_document(analysis, facts, result, settings=settings, channel_rates=_channel_rates(analysis, stats))
    if convergence is not None:  # --until-converged: β ± bound at this plan's threshold
        doc = replace(doc, convergence=convergence.for_plan(result.z))
    return PlanResult(analysis=analysis, statistics=stats, plan=result, document=doc)
