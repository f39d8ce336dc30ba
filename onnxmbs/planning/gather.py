"""The pure-data facts the planner reads, gathered from an analysis and measured statistics."""
from __future__ import annotations

from onnxmbs.graph.analysis import Analysis
from onnxmbs.planning.facts import GroupFacts, LayerFacts
from onnxmbs.stats.counting import Statistics


def layer_facts(analysis: Analysis, stats: Statistics | None) -> list[LayerFacts]:
    where = analysis.macroblock_of()
    facts = []
    for conv in analysis.layers:
        tap = analysis.taps[conv.name]
        measured = stats is not None and tap is not None
        p = stats.p_nonzero(tap.tensor, slice(tap.start, tap.stop)) if measured else 1.0
        facts.append(LayerFacts(name=conv.name, macroblock=where.get(conv.name), rf=conv.rf, flops=conv.flops,
                                p_nonzero=p, group=analysis.channels.conv_group[conv.name],
                                output_groups=analysis.channels.conv_output_groups[conv.name]))
    return facts


def group_facts(analysis: Analysis) -> list[GroupFacts]:
    return [GroupFacts(id=g.id, channels=g.channels, producers=g.producers, frozen=g.frozen,
                       multiple_of=g.multiple_of) for g in analysis.channels.groups]
