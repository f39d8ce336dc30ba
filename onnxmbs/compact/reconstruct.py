"""Reconstruction, part 5 — re-fit the layers behind each cut so the compact model matches the original.

For every layer chosen by :mod:`onnxmbs.compact.fits`, wave by wave: the compact model (with
the weights fitted so far) gives the layer's input, the original model gives its output,
both at the same sampled positions (:mod:`onnxmbs.compact.sampling`); their normal
equations are accumulated batch by batch (:mod:`onnxmbs.compact.lsq`) and solved for new
weights and bias, which are written into the compact model before the next wave runs.
Only values change: every tensor keeps its shape, so the parameter count is unchanged.

Per wave, one pass over the data with two onnxruntime sessions, each cut down to the
tensors that wave needs (:mod:`onnxmbs.compact.activations`). Memory: one batch of those
tensors plus the normal equations (``dim²`` per layer, ``dim`` = inputs × kernel size),
never all images' activations.
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
from onnx import numpy_helper

from onnxmbs.compact.activations import Probe, Segments, Store, open_batches
from onnxmbs.compact.fits import Fit, FitPlan, plan_fits
from onnxmbs.compact.index import Layout
from onnxmbs.compact.lsq import NormalEquations
from onnxmbs.compact.sampling import (Positions, conv_geometry, conv_rows, conv_targets, matmul_rows, sample_flat,
                                      sample_positions)
from onnxmbs.errors import MBSError
from onnxmbs.graph.analysis import Analysis
from onnxmbs.graph.proto import attr
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

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "waves": self.waves, "seconds": round(self.seconds, 3),
                "positions": self.positions, "ridge": self.ridge, "stage_seconds": dict(self.stages),
                "layers": [{"name": r.name, "op": r.op, "wave": r.wave, "rows": r.rows,
                            "error_inherited": round(r.error_inherited, 6), "error_fitted": round(r.error_fitted, 6),
                            "residual": r.residual} for r in self.layers],
                "inherited": [{"name": n, "reason": why} for n, why in self.skipped]}


class _Layer:
    """One layer's linear system in the compact model: weights <-> (blocks, dim, outputs) solution."""

    def __init__(self, fit: Fit, node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto],
                 shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.fit, self.node = fit, node
        self.w_name = node.input[1]
        self.w = numpy_helper.to_array(inits[self.w_name])
        self.b_name = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
        self.b = numpy_helper.to_array(inits[self.b_name]) if self.b_name else None
        self.x_shape, self.y_shape = shapes[fit.x], shapes[fit.y]
        if fit.op == "Conv":
            self._conv()
        else:
            self._matmul()

    # ---- conv
    def _conv(self) -> None:
        co, ci_g, kh, kw = self.w.shape
        self.groups = int(attr(self.node, "group", 1))
        self.geom = conv_geometry(self.node, self.x_shape[2:], self.y_shape[2:], (kh, kw))
        self.bias = self.b is not None
        self.dim, self.outputs = ci_g * kh * kw, co // self.groups

    def _matmul(self) -> None:
        self.trans = self.fit.op == "Gemm" and bool(attr(self.node, "transB", 0))
        self.alpha = float(attr(self.node, "alpha", 1.0)) if self.fit.op == "Gemm" else 1.0
        self.beta = float(attr(self.node, "beta", 1.0)) if self.fit.op == "Gemm" else 1.0
        k, n = self.w.shape[::-1] if self.trans else self.w.shape
        self.groups, self.dim, self.outputs = 1, k, n
        self.bias = self.b is not None and self.b.size == n
        self.offset = None if self.b is None or self.bias else self.beta * self.b.astype(np.float64)

    def w0(self) -> np.ndarray:
        """The inherited weights as (blocks, dim + bias, outputs)."""
        g, d, o = self.groups, self.dim, self.outputs
        if self.fit.op == "Conv":
            w = self.w.reshape(g, o, d).transpose(0, 2, 1)
            b = self.b.reshape(g, 1, o) if self.bias else None
        else:
            w = self.alpha * (self.w.T if self.trans else self.w)[None]
            b = self.beta * self.b.reshape(1, 1, o) if self.bias else None
        w = w.astype(np.float64)
        return np.concatenate([w, b.astype(np.float64)], axis=1) if b is not None else w

    def sample(self, rng: np.random.Generator, images: int, positions: int) -> Positions:
        if self.fit.op == "Conv":
            return sample_positions(rng, images, self.y_shape[2], self.y_shape[3], positions)
        rows = int(np.prod(self.x_shape[1:-1])) if len(self.x_shape) > 2 else 1
        return sample_flat(rng, images, rows, positions)

    def values(self, tensor: np.ndarray, where: Positions) -> np.ndarray:
        return conv_targets(tensor, where) if self.fit.op == "Conv" else matmul_rows(tensor, where)

    def rows(self, x: np.ndarray, target: np.ndarray, where: Positions) -> tuple[np.ndarray, np.ndarray]:
        n, g = len(where), self.groups
        if self.fit.op == "Conv":
            xr = conv_rows(x, self.geom, where).reshape(n, g, self.dim)
        else:
            xr = matmul_rows(x, where).reshape(n, 1, self.dim)
            if self.offset is not None:
                target = target - np.broadcast_to(self.offset, target.shape)
        if self.bias:
            xr = np.concatenate([xr, np.ones((n, g, 1), xr.dtype)], axis=2)
        return xr, target.reshape(n, g, self.outputs)

    def weights(self, sol: np.ndarray) -> dict[str, np.ndarray]:
        """New initializer values (same names, shapes and dtypes) from the solution."""
        d = self.dim
        out: dict[str, np.ndarray] = {}
        if self.fit.op == "Conv":
            out[self.w_name] = sol[:, :d, :].transpose(0, 2, 1).reshape(self.w.shape)
            if self.bias:
                out[self.b_name] = sol[:, d, :].reshape(self.b.shape)
        else:
            w = sol[0, :d, :] / self.alpha
            out[self.w_name] = w.T if self.trans else w
            if self.bias:
                out[self.b_name] = (sol[0, d, :] / self.beta).reshape(self.b.shape)
        return {k: v.astype(self.w.dtype if k == self.w_name else self.b.dtype) for k, v in out.items()}


def _kept(fit: Fit, values: np.ndarray) -> np.ndarray:
    return values if fit.out_pos is None else values[:, fit.out_pos]


def _target(fit: Fit, layer: _Layer, y: np.ndarray, other: np.ndarray | None, comp: Mapping[str, np.ndarray],
            where: Positions) -> np.ndarray:
    """The original output ``y`` (kept channels, sampled), moved by the residual partner's error when there is one
    (``other``: the partner's original values at the same positions and channels)."""
    y = y.astype(np.float64)
    if fit.join is None:
        return y
    slope = fit.join.slope if fit.out_pos is None else fit.join.slope[fit.out_pos]
    gap = other - layer.values(comp[fit.join.other], where)
    safe = np.abs(slope) > 1e-12
    return y + np.where(safe, gap / np.where(safe, slope, 1.0), 0.0)


def _usable(plan: FitPlan, model: onnx.ModelProto, shapes) -> tuple[list[_Layer], list[tuple[str, str]]]:
    """The fits whose weights are plain initializers read by that layer alone."""
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for t in node.input:
            uses[t] = uses.get(t, 0) + 1
    by_output = {n.output[0]: n for n in model.graph.node if n.output}
    layers, skipped = [], list(plan.skipped)
    for fit in plan.fits:
        node = by_output.get(fit.y)
        tensors = [] if node is None else [t for t in node.input[1:] if t]
        if node is None or any(t not in inits or uses.get(t, 0) > 1 for t in tensors):
            skipped.append((fit.name, "its weights are shared with another layer or not stored as initializers"))
            continue
        layers.append(_Layer(fit, node, inits, shapes))
    return layers, skipped


class _Clock:
    """Seconds per stage of the reconstruction."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, began: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - began
        return now


def _where(layer: _Layer, options: ReconstructOptions, index: Mapping[str, int], b: int, images: int) -> Positions:
    return layer.sample(np.random.default_rng([options.seed, index[layer.fit.name], b]), images, options.positions)


def _targets(layers: list[_Layer], original: onnx.ModelProto, batches, name: str, options: ReconstructOptions,
             index: Mapping[str, int], store: Store, shapes, bar) -> tuple[int, int]:
    """One pass of the original: every layer's targets (and its residual partner's values) at its sampled
    positions, into ``store``; the number of batches and images. Large batches run in chunks so the exposed tensors stay small."""
    names = list(dict.fromkeys([x.fit.y for x in layers] + [x.fit.join.other for x in layers if x.fit.join]))
    probe = Probe(original, names, input_name=name, provider=options.data.provider)
    per_image = sum(4 * int(np.prod(shapes.get(t, (1, 1))[1:])) for t in names)
    chunk = max(1, (256 << 20) // max(per_image, 1))
    count = images = 0
    for b, batch in enumerate(batches()):
        wheres = [_where(x, options, index, b, batch.shape[0]) for x in layers]
        parts: dict[tuple[str, str], list[np.ndarray]] = {}
        for s in range(0, batch.shape[0], chunk):
            out = probe.run(batch[s:s + chunk])
            for layer, where in zip(layers, wheres):
                sel = (where.image >= s) & (where.image < s + chunk)
                sub = Positions(image=where.image[sel] - s, a=where.a[sel], b=where.b[sel])
                tensors = [("y", layer.fit.y)] + ([("j", layer.fit.join.other)] if layer.fit.join else [])
                for kind, t in tensors:
                    parts.setdefault((kind, layer.fit.name), []).append(_kept(layer.fit, layer.values(out[t], sub)))
        for (kind, layer_name), values in parts.items():
            store.put((kind, layer_name, b), np.concatenate(values))
        count, images = b + 1, images + batch.shape[0]
        if bar is not None:
            bar.update(1)
    return count, images


def _wave(layers: list[_Layer], segments: Segments, model: onnx.ModelProto, batches, options: ReconstructOptions,
          index: Mapping[str, int], store: Store, clock: _Clock, bar) -> list[NormalEquations]:
    """One pass of the compact model (only the nodes this wave still needs): the normal equations of its layers."""
    needed = [x.fit.x for x in layers] + [x.fit.join.other for x in layers if x.fit.join is not None]
    eqs = [NormalEquations(layer.groups, layer.dim + layer.bias, layer.outputs) for layer in layers]
    passes = iter(segments.run(model, needed, batches))
    began = time.perf_counter()
    for b, comp in enumerate(passes):
        began = clock.add("compact passes", began)
        for layer, eq in zip(layers, eqs):
            fit = layer.fit
            where = _where(layer, options, index, b, comp[fit.x].shape[0])
            other = store.get(("j", fit.name, b)) if fit.join is not None else None
            x, y = layer.rows(comp[fit.x], _target(fit, layer, store.get(("y", fit.name, b)), other, comp, where),
                              where)
            began = clock.add("rows", began)
            eq.add(x, y)
            began = clock.add("gram", began)
        if bar is not None:
            bar.update(1)
    began = clock.add("compact passes", began)
    for eq in eqs:
        eq.flush()
    clock.add("gram", began)
    for layer in layers:
        for b in range(segments.batches):
            store.drop(("y", layer.fit.name, b))
            store.drop(("j", layer.fit.name, b))
    return eqs


def _write(model: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> None:
    for tensor in model.graph.initializer:
        if tensor.name in values:
            tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(values[tensor.name]), tensor.name))


def _solve(members: list[_Layer], eqs: list[NormalEquations], wave: int, ridge: float) -> tuple[dict, list]:
    values: dict[str, np.ndarray] = {}
    reports = []
    for layer, eq in zip(members, eqs):
        w0 = layer.w0()
        sol = eq.solve(w0, ridge)
        values.update(layer.weights(sol))
        reports.append(LayerReport(layer.fit.name, layer.fit.op, wave, eq.rows, eq.residual(w0),
                                   eq.residual(sol), layer.fit.join is not None))
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


def _waves(layers: list[_Layer], model: onnx.ModelProto, batches, options: ReconstructOptions,
           index: Mapping[str, int], store: Store, clock: _Clock, bar, *, name: str, count: int) -> list[LayerReport]:
    """Wave by wave: accumulate the normal equations of its layers in one pass, solve, write into ``model``."""
    waves = sorted({layer.fit.wave for layer in layers})
    segments = Segments(model, input_name=name, provider=options.data.provider, store=store)
    segments.batches = count
    reports: list[LayerReport] = []
    for w, wave in enumerate(waves):
        if bar is not None:
            bar.set_postfix_str(f"wave {w + 1}/{len(waves)}")
        members = [layer for layer in layers if layer.fit.wave == wave]
        eqs = _wave(members, segments, model, batches, options, index, store, clock, bar)
        step = time.perf_counter()
        values, done = _solve(members, eqs, wave, options.ridge)
        step = clock.add("solve", step)
        reports += done
        _write(model, values)
        clock.add("write", step)
    return reports


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
    clock = _Clock()
    model = copy.deepcopy(model)
    layers, skipped = _usable(plan, model, loaded.shapes)
    batches = open_batches(loaded, options.data)
    index = {f.name: i for i, f in enumerate(plan.fits)}
    name = loaded.input.name
    waves = sorted({layer.fit.wave for layer in layers})
    store = Store()
    bar = progress_bar(options.data.progress, total=None, unit="batch", desc="reconstruct") if layers else None
    try:
        step = clock.add("setup", began)
        count, images = _targets(layers, original, batches, name, options, index, store, loaded.shapes,
                                 bar) if layers else (0, 0)
        step = clock.add("original pass", step)
        if bar is not None:
            bar.total = count * (1 + len(waves))
            bar.refresh()
        reports = _waves(layers, model, batches, options, index, store, clock, bar, name=name, count=count)
    finally:
        store.close()
        if bar is not None:
            bar.close()
    if skipped:
        logger.warning("%d layer(s) keep inherited weights: %s", len(skipped),
                       ", ".join(f"{n} ({why})" for n, why in skipped[:5]))
    return Reconstruction(model=model, layers=tuple(reports), skipped=tuple(skipped), images=images,
                          waves=len(waves), seconds=time.perf_counter() - began, positions=options.positions,
                          ridge=options.ridge, stages={k: round(v, 3) for k, v in clock.seconds.items()})
