"""The plan document from statistics, and the whole job in one call: analyse -> measure -> plan.

``plan_from_statistics`` is Algorithm 1 on measured counts (pure numpy). ``plan_model`` is what
``onnxmbs plan`` runs: the one sequence, :func:`onnxmbs.workflow.sequence.study` (same stage,
imported when called: the workflow builds on this module).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxmbs.graph.analysis import Analysis
from onnxmbs.errors import MBSError
from onnxmbs.planning.facts import GroupFacts, LayerFacts
from onnxmbs.planning.document import (SCHEMA, GroupRecord, LayerRecord, MacroblockRecord, PlanDocument, Settings,
                                       Summary)
from onnxmbs.planning.planner import Plan, plan
from onnxmbs.planning.scaling import param_specs
from onnxmbs.stats.counting import Statistics
from onnxmbs.stats.measure import CalibrationOptions, DataSource
from onnxmbs.stats.stopping import Convergence

if TYPE_CHECKING:
    from onnxmbs.planning.convergence import ConvergeOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanResult:
    analysis: Analysis = field(repr=False)
    statistics: Statistics | None = field(repr=False)
    plan: Plan
    document: PlanDocument = field(repr=False)


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


def read_macroblock_map(path: str | Path) -> dict[str, int]:
    """A JSON object ``{"conv node name": level, ...}`` that regroups convs by hand."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise MBSError(f"cannot read macroblock map {path} ({exc}) — "
                       "give a JSON object {\"layer\": level}") from None
    if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
        raise MBSError(f"macroblock map {path} must be a JSON object of layer name -> integer level, "
                       "e.g. {\"conv1\": 0, \"conv2\": 1}")
    return data


def plan_model(model: str | Path | onnx.ModelProto, *, data: Any = None, synthetic: int | None = None,
               input_shape: tuple[int, ...] | None = None, macroblocks: Mapping[str, int] | None = None,
               k: float | None = None, z: float | None = None,
               round_to: int = 1, preprocess: str | None = None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, max_images: int | None = None, batch_size: int = 32,
               provider: str = "auto", progress: bool | None = None, seed: int = 0, workers: int | None = None,
               ray_address: str | None = None, converge: ConvergeOptions | None = None,
               statistic: str = "extended") -> PlanResult:
    """Analyse ``model``, measure its activation statistics on ``data`` and plan MBS widths.

    ``statistic="paper"`` measures ReLU-family activations only (the paper); the default also counts
    the outputs > 0 after SiLU/GELU/HardSwish/LeakyReLU/PReLU. ``preprocess``/``mean``/``std`` left None
    come from the model's metadata (``onnxmbs.preprocess`` ...), else ``imagenet``. A model with a dynamic
    input size is analysed at the size of the data when ``input_shape`` is not given.
    ``converge`` stops the pass once the plan has converged (``--until-converged``);
    ``workers``/``ray_address`` split the pass over Ray (exact).
    """
    options = CalibrationOptions(data=data, synthetic=synthetic, preprocess=preprocess, mean=mean, std=std,
                                 max_images=max_images, batch_size=batch_size, provider=provider,
                                 progress=progress, seed=seed, workers=workers, ray_address=ray_address)
    return plan_measured(model, options, input_shape=input_shape, macroblocks=macroblocks, k=k, z=z,
                         round_to=round_to, converge=converge, statistic=statistic)


def plan_measured(model: str | Path | onnx.ModelProto, options: CalibrationOptions, *,
                  input_shape: tuple[int, ...] | None = None, macroblocks: Mapping[str, int] | None = None,
                  k: float | None = None, z: float | None = None, round_to: int = 1,
                  converge: ConvergeOptions | None = None, statistic: str = "extended") -> PlanResult:
    """:func:`plan_model` with typed calibration options (what the CLI calls): the workflow's sequence."""
    from onnxmbs.workflow.sequence import Request, study

    request = Request(input_shape=input_shape, macroblocks=macroblocks, statistic=statistic, calibration=options,
                      converge=converge, ks=(k,), z=z, round_to=round_to)
    return study(model, request).plan(k, z)


def plan_with_stats(model: str | Path, stats: str | Path, *, input_shape: tuple[int, ...] | None = None,
                    k: float | None = None, z: float | None = None, round_to: int = 1,
                    macroblocks: Mapping[str, int] | None = None, statistic: str = "extended") -> PlanResult:
    """``onnxmbs plan --stats``: analyse, load the saved counts (same model checked), plan."""
    from onnxmbs.workflow.sequence import Request, study

    request = Request(input_shape=input_shape, macroblocks=macroblocks, statistic=statistic, stats=(stats,),
                      ks=(k,), z=z, round_to=round_to)
    return study(model, request).plan(k, z)
