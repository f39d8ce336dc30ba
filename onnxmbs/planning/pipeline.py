"""The plan document from statistics, and the whole job in one call: analyse -> measure -> plan.

``plan_from_statistics`` is Algorithm 1 on measured counts (pure numpy). ``plan_model`` is what
``onnxmbs plan`` runs: the one sequence, :func:`onnxmbs.workflow.sequence.study` (same stage,
imported when called: the workflow builds on this module).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from onnxmbs.errors import MBSError
from onnxmbs.planning.build import PlanResult, plan_document, plan_from_statistics  # noqa: F401  (the API)
from onnxmbs.planning.gather import group_facts, layer_facts  # noqa: F401  (the API)
from onnxmbs.stats.measure import CalibrationOptions

if TYPE_CHECKING:
    from onnxmbs.planning.convergence import ConvergeOptions

logger = logging.getLogger(__name__)

__all__ = ["PlanResult", "group_facts", "layer_facts", "plan_document", "plan_from_statistics", "plan_measured",
           "plan_model", "plan_with_stats", "read_macroblock_map"]


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
