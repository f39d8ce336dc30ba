"""Reconstruction, part 8 — re-fit the layers behind each cut so the compact model matches the original.

For every layer chosen by :mod:`onnxmbs.compact.fits`, wave by wave: the compact model (with
the weights fitted so far) gives the layer's input, the original model gives its output,
both at the same sampled positions (:mod:`onnxmbs.compact.sampling`); their normal
equations are accumulated batch by batch (:mod:`onnxmbs.compact.lsq`) and solved for new
weights and bias, which are written into the compact model before the next wave runs.
Only values change: every tensor keeps its shape, so the parameter count is unchanged.

The passes over the data are the fitters' (:mod:`onnxmbs.compact.passes`): one pass of the
original keeps every layer's targets; per wave, the compact model runs only the nodes that
wave still needs. With ``--workers`` the data is split into shards, one Ray actor each, and
the shards' normal equations are summed (:mod:`onnxmbs.compact.shards`). Memory: one batch of
the needed tensors (what is kept between passes spills to disk) plus the normal equations
(``dim²`` per layer, ``dim`` = inputs × kernel size), never all images' activations.
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from onnxmbs.compact.fits import FitPlan, plan_fits
from onnxmbs.compact.index import Layout
from onnxmbs.compact.lsq import NormalEquations
from onnxmbs.compact.passes import Clock, FitJob, write_values
from onnxmbs.compact.shards import LocalFitters, open_fitters
from onnxmbs.compact.systems import LayerSystem, usable
from onnxmbs.errors import MBSError
from onnxmbs.graph.analysis import Analysis
from onnxmbs.progress import progress_bar
from onnxmbs.runtime.session import choose_provider
from onnxmbs.stats.measure import CalibrationOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconstructOptions:
    data: CalibrationOptions  # images, preprocessing, batch size, provider, progress bars
    positions: int = 32  # sampled output positions per image and layer
    ridge: float = 1e-3  # λ, relative to the mean diagonal of xᵀx
    seed: int = 0


@dataclass(frozen=True)
class LayerReport:
    name: str
    op: str
    wave: int
    rows: int
    error_inherited: float  # relative squared error of the inherited weights on the reconstructed inputs
    error_fitted: float
    residual: bool  # the target was moved to match a residual sum
    inputs: int = 0  # unknowns per output (inputs × kernel, per group): fewer rows than this is underdetermined

    @property
    def underdetermined(self) -> bool:
        return 0 < self.rows < self.inputs


@dataclass(frozen=True)
class Reconstruction:
    model: onnx.ModelProto = field(repr=False)
    layers: tuple[LayerReport, ...]
    skipped: tuple[tuple[str, str], ...]  # (layer, reason): kept inherited
    images: int
    waves: int
    seconds: float
    positions: int
    ridge: float
    stages: Mapping[str, float] = field(default_factory=dict)  # seconds per stage
    shards: int = 1  # data shards, one Ray worker each (1: this process)

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "waves": self.waves, "seconds": round(self.seconds, 3), "shards": self.shards,
                "positions": self.positions, "ridge": self.ridge, "stage_seconds": dict(self.stages),
                "layers": [{"name": r.name, "op": r.op, "wave": r.wave, "rows": r.rows,
                            "error_inherited": round(r.error_inherited, 6), "error_fitted": round(r.error_fitted, 6),
                            "residual": r.residual, "inputs": r.inputs} for r in self.layers],
                "inherited": [{"name": n, "reason": why} for n, why in self.skipped]}


def _solve(members: list[LayerSystem], eqs: list[NormalEquations], wave: int, ridge: float) -> tuple[dict, list]:
    values: dict[str, np.ndarray] = {}
    reports = []
    for layer, eq in zip(members, eqs):
        w0 = layer.w0()
        sol, inherited, fitted = eq.fit(w0, ridge)
        values.update(layer.weights(sol))
        reports.append(LayerReport(layer.fit.name, layer.fit.op, wave, eq.rows, inherited, fitted,
                                   layer.fit.join is not None, inputs=eq.sums.shape[-1]))
        logger.info("reconstruct %s: error %.4g -> %.4g (%d rows)", layer.fit.name, reports[-1].error_inherited,
                    reports[-1].error_fitted, eq.rows)
    return values, reports


def reconstruct(analysis: Analysis, layouts: Mapping[str, Layout], consts: Mapping[str, np.ndarray],
                original: onnx.ModelProto, compact: onnx.ModelProto, options: ReconstructOptions) -> Reconstruction:
    """``compact`` with the layers behind every cut re-fitted to ``original``'s outputs (a new proto).

    ``original`` is the model as the user gave it (its input's batch size as in the file), ``analysis``
    its analysis, ``layouts``/``consts`` what the channel surgery used.
    """
    began = time.perf_counter()
    plan = plan_fits(analysis, layouts, consts)
    return refit(plan, original, compact, analysis.loaded, options, began=began)


def refit(plan: FitPlan, original: onnx.ModelProto, model: onnx.ModelProto, loaded: Any,
          options: ReconstructOptions, *, began: float | None = None) -> Reconstruction:
    """``model`` (a new proto) with the layers of ``plan`` re-fitted, wave by wave, so that each layer's
    output matches ``original``'s same-named tensor on ``options.data``; ``loaded``: the original's
    LoadedModel (its input and tensor shapes). The one loop behind ``compact --reconstruct`` and
    ``blocks --reconstruct``."""
    if options.positions < 1 or options.ridge < 0:
        raise MBSError("reconstruction needs positions >= 1 and ridge >= 0 — fix the options")
    options = replace(options, data=replace(options.data, provider=choose_provider(options.data.provider)))
    began = time.perf_counter() if began is None else began
    clock = Clock()
    model = copy.deepcopy(model)
    layers, skipped = usable(plan, model, loaded.shapes)
    waves = sorted({layer.fit.wave for layer in layers})
    reports: list[LayerReport] = []
    images, shards = 0, 1
    if layers:
        job = FitJob(plan=plan, original=original, compact=model, loaded=loaded, options=options)
        reports, images, shards = _run(job, layers, waves, model, clock, began)
    under = [r for r in reports if r.underdetermined]
    if under:
        logger.warning("%d layer(s) were fitted from fewer sampled rows than unknowns (e.g. %s: %d rows, %d inputs); "
                       "the ridge towards the inherited weights decides there and the fit may not carry over to new "
                       "images — give more --data images or --positions", len(under), under[0].name, under[0].rows,
                       under[0].inputs)
    if skipped:
        logger.warning("%d layer(s) keep inherited weights: %s", len(skipped),
                       ", ".join(f"{n} ({why})" for n, why in skipped[:5]))
    return Reconstruction(model=model, layers=tuple(reports), skipped=tuple(skipped), images=images,
                          waves=len(waves), seconds=time.perf_counter() - began, positions=options.positions,
                          ridge=options.ridge, stages={k: round(v, 3) for k, v in clock.seconds.items()},
                          shards=shards)


def _run(job: FitJob, layers: list[LayerSystem], waves: list[int], model: onnx.ModelProto, clock: Clock,
         began: float) -> tuple[list[LayerReport], int, int]:
    """Wave by wave over the fitters: the summed normal equations of its layers, solved, written into ``model``
    (and sent to the fitters with the next wave); the reports, the number of images and of shards."""
    bar = progress_bar(job.options.data.progress, total=None, unit="batch", desc="reconstruct")
    tick = bar.update if bar is not None else None
    reports: list[LayerReport] = []
    updates: list[dict[str, np.ndarray]] = []
    try:
        step = clock.add("setup", began)
        with open_fitters(job, tick=tick) as fitters:
            step = clock.add("original pass", step)
            if bar is not None:
                bar.total = fitters.count * (1 + len(waves))
                bar.refresh()
            for w, wave in enumerate(waves):
                if bar is not None:
                    bar.set_postfix_str(f"wave {w + 1}/{len(waves)}")
                members = [layer for layer in layers if layer.fit.wave == wave]
                eqs = fitters.equations(wave, updates)
                step = clock.add("waves", step)
                values, done = _solve(members, eqs, wave, job.options.ridge)
                step = clock.add("solve", step)
                reports += done
                updates.append(values)
                write_values(model, values)
                step = clock.add("write", step)
            images, shards = fitters.images, fitters.shards
            local = fitters.clock.seconds if isinstance(fitters, LocalFitters) else {}
    finally:
        if bar is not None:
            bar.close()
    if local:  # in one process the wall time of the waves splits into the fitter's stages
        clock.seconds.pop("waves", None)
        clock.seconds.pop("original pass", None)
        clock.merge(local)
    return reports, images, shards
