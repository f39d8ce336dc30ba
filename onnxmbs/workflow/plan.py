"""The whole job in one call: analyse -> measure (or load ``--stats``) -> plan, through the one
sequence (:func:`onnxmbs.workflow.sequence.study`). ``plan_model`` is the public API; ``plan_measured``
and ``plan_with_stats`` are what ``onnxmbs plan`` calls."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from onnxmbs.planning.build import PlanResult
from onnxmbs.planning.convergence import ConvergeOptions
from onnxmbs.stats.measure import CalibrationOptions
from onnxmbs.workflow import sequence
from onnxmbs.workflow.sequence import Request


def plan_model(model: str | Path | onnx.ModelProto, *, data: Any = None, synthetic: int | None = None,
               input_shape: tuple[int, ...] | None = None, macroblocks: Mapping[str, int] | None = None,
               k: float | None = None, z: float | None = None,
               round_to: int | str = 1, preprocess: str | None = None, mean: Sequence[float] | None = None,
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
                  k: float | None = None, z: float | None = None, round_to: int | str = 1,
                  converge: ConvergeOptions | None = None, statistic: str = "extended") -> PlanResult:
    """:func:`plan_model` with typed calibration options (what the CLI calls): the workflow's sequence."""
    request = Request(input_shape=input_shape, macroblocks=macroblocks, statistic=statistic, calibration=options,
                      converge=converge, ks=(k,), z=z, round_to=round_to)
    return sequence.study(model, request).plan(k, z)


def plan_with_stats(model: str | Path, stats: str | Path, *, input_shape: tuple[int, ...] | None = None,
                    k: float | None = None, z: float | None = None, round_to: int | str = 1,
                    macroblocks: Mapping[str, int] | None = None, statistic: str = "extended") -> PlanResult:
    """``onnxmbs plan --stats``: analyse, load the saved counts (same model checked), plan."""
    request = Request(input_shape=input_shape, macroblocks=macroblocks, statistic=statistic, stats=(stats,),
                      ks=(k,), z=z, round_to=round_to)
    return sequence.study(model, request).plan(k, z)
