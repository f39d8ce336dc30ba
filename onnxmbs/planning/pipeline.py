"""The whole job in one call: analyse -> measure -> plan -> plan document.

``plan_model`` is what ``onnxmbs plan`` runs; the stages stay usable one by one.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxmbs.graph.analysis import Analysis, analyze
from onnxmbs.errors import MBSError
from onnxmbs.planning.facts import GroupFacts, LayerFacts
from onnxmbs.planning.document import plan_document
from onnxmbs.planning.planner import Plan, plan
from onnxmbs.planning.scaling import param_specs
from onnxmbs.stats.counting import Statistics
from onnxmbs.stats.measure import input_shape_for, load_stats, measure

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanResult:
    analysis: Analysis = field(repr=False)
    statistics: Statistics | None = field(repr=False)
    plan: Plan
    document: dict[str, Any] = field(repr=False)


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


def plan_from_statistics(analysis: Analysis, stats: Statistics | None, *, k: float | None = None,
                         z: float | None = None, round_to: int = 1,
                         settings: Mapping[str, Any] | None = None) -> PlanResult:
    """Algorithm 1 on measured statistics (or p = 1 everywhere when ``stats`` is None)."""
    facts = layer_facts(analysis, stats)
    result = plan(facts, group_facts(analysis), param_specs(analysis), L=analysis.L,
                  macroblocks=len(analysis.macroblocks), k=k, z=z, round_to=round_to)
    base_settings = {"images": stats.images if stats else 0, "synthetic": False,
                     "provider": stats.provider if stats else None, "round_to": round_to,
                     "statistic": analysis.statistic}
    doc = plan_document(analysis, facts, result, settings={**base_settings, **(settings or {})},
                        channel_rates=_channel_rates(analysis, stats))
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
               provider: str = "auto", progress: bool | None = None, seed: int = 0,
               statistic: str = "extended") -> PlanResult:
    """Analyse ``model``, measure its activation statistics on ``data`` and plan MBS widths.

    ``statistic="paper"`` measures ReLU-family activations only (the paper); the default also counts
    the outputs > 0 after SiLU/GELU/HardSwish/LeakyReLU/PReLU. ``preprocess``/``mean``/``std`` left None
    come from the model's metadata (``onnxmbs.preprocess`` ...), else ``imagenet``.
    """
    analysis = analyze(model, input_shape=input_shape_for(model, input_shape, data), macroblock_override=macroblocks,
                       statistic=statistic)
    stats, info = measure(analysis, data=data, synthetic=synthetic, preprocess=preprocess, mean=mean, std=std,
                          max_images=max_images, batch_size=batch_size, provider=provider, progress=progress,
                          seed=seed)
    settings = {"synthetic": info.synthetic, "data": info.source, "skipped": info.skipped,
                "preprocess": info.preprocess, "seconds": round(stats.seconds, 3)}
    return plan_from_statistics(analysis, stats, k=k, z=z, round_to=round_to, settings=settings)


def plan_with_stats(model: str | Path, stats: str | Path, *, input_shape: tuple[int, ...] | None = None,
                    k: float | None = None, z: float | None = None, round_to: int = 1,
                    macroblocks: dict[str, int] | None = None, statistic: str = "extended"):
    """``onnxmbs plan --stats``: analyse, load the saved counts (same model checked), plan."""
    analysis = analyze(model, input_shape=input_shape, macroblock_override=macroblocks, statistic=statistic)
    measured = load_stats(stats, analysis)
    return plan_from_statistics(analysis, measured.statistics, k=k, z=z, round_to=round_to,
                                settings=measured.settings)
