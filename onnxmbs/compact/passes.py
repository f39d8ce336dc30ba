"""Reconstruction, part 6 — the passes over the data: one :class:`Fitter` per share of the images.

A fitter holds its rows of the data (all of them in one process, one shard on a Ray worker):
when it is made, one pass of the original model keeps every layer's targets at its sampled
positions (:class:`~onnxmbs.compact.activations.Store`, spilled to disk beyond a budget); then
:meth:`Fitter.equations` runs, per wave, the compact model over the same rows (only the
nodes that wave still needs, :class:`~onnxmbs.compact.activations.Segments`) and returns the
wave's normal equations. The positions are drawn per *global* batch index, so shards cut
between whole batches sample exactly what one process samples, and the shards' equations
add up to one process's (to float rounding).

The weights fitted in earlier waves come as a list of updates; a fitter applies those it has
not seen yet, so a fitter rebuilt from scratch (a restarted worker) catches up from the
whole list and computes the same equations.
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxmbs.compact.activations import SampledProbe, Segments, Store, open_batches
from onnxmbs.compact.fits import FitPlan
from onnxmbs.compact.lsq import NormalEquations, blas_threads
from onnxmbs.compact.sampling import Positions
from onnxmbs.compact.systems import LayerSystem, kept, target, usable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitJob:
    """What every fitter shares: the fit plan, both models, the original's load record and the options
    (a ``ReconstructOptions`` whose provider is already chosen)."""
    plan: FitPlan
    original: onnx.ModelProto = field(repr=False)
    compact: onnx.ModelProto = field(repr=False)
    loaded: Any = field(repr=False)
    options: Any
    threads: int | None = None  # onnxruntime and BLAS threads of one fitter (None: their defaults)


class Clock:
    """Seconds per stage of the reconstruction."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, began: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - began
        return now

    def merge(self, other: Mapping[str, float]) -> None:
        for stage, seconds in other.items():
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


def write_values(model: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> None:
    """Replace initializers of ``model`` in place (same names; new values)."""
    for tensor in model.graph.initializer:
        if tensor.name in values:
            tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(values[tensor.name]), tensor.name))


class Fitter:
    """One share of the data: the original's targets kept, and per wave the compact model's normal equations.

    ``rows``: [start, stop) of the data, cut between whole batches (None: all of it); ``tick(n)``
    is called as batches finish (a progress bar)."""

    def __init__(self, job: FitJob, rows: tuple[int, int] | None = None, *,
                 tick: Callable[[int], None] | None = None) -> None:
        began = time.perf_counter()
        self.job, self.tick, self.clock = job, tick, Clock()
        self.options = job.options
        self.model = copy.deepcopy(job.compact)
        self.layers, _ = usable(job.plan, self.model, job.loaded.shapes)
        self.index = {f.name: i for i, f in enumerate(job.plan.fits)}
        self.batches = open_batches(job.loaded, self.options.data, rows=rows)
        size = self.options.data.batch_size if job.loaded.batch_dynamic else job.loaded.input.shape[0]
        self.first = 0 if rows is None else rows[0] // size  # the global index of this share's first batch
        self.store = Store()
        self.applied = 0  # how many of the driver's updates are in self.model
        self.input_name = job.loaded.input.name
        with blas_threads(job.threads):
            self.count, self.images = self._targets()
        self.segments = Segments(self.model, input_name=self.input_name, provider=self.options.data.provider,
                                 store=self.store, threads=job.threads)
        self.segments.batches = self.count
        self.clock.add("original pass", began)

    def _where(self, layer: LayerSystem, b: int, images: int) -> Positions:
        rng = np.random.default_rng([self.options.seed, self.index[layer.fit.name], self.first + b])
        return layer.sample(rng, images, self.options.positions)

    def _targets(self) -> tuple[int, int]:
        """One pass of the original: every layer's targets (and its residual partner's values) at its sampled
        positions, gathered inside the session, into the store; the number of batches and images."""
        shapes = self.job.loaded.shapes
        taps = [(kind, layer, t) for layer in self.layers
                for kind, t in [("y", layer.fit.y)] + ([("j", layer.fit.join.other)] if layer.fit.join else [])]
        probe = SampledProbe(self.job.original, [(t, layer.tap(shapes[layer.fit.y])) for _, layer, t in taps],
                             input_name=self.input_name, provider=self.options.data.provider, threads=self.job.threads)
        count = images = 0
        for b, batch in enumerate(self.batches()):
            at = {layer.fit.name: layer.at(self._where(layer, b, batch.shape[0])) for layer in self.layers}
            values = probe.run(batch, [at[layer.fit.name] for _, layer, _ in taps])
            for (kind, layer, _), value in zip(taps, values):
                self.store.put((kind, layer.fit.name, b), kept(layer.fit, value))
            count, images = b + 1, images + batch.shape[0]
            if self.tick is not None:
                self.tick(1)
        return count, images

    def equations(self, wave: int, updates: Sequence[Mapping[str, np.ndarray]]) -> list[NormalEquations]:
        """The normal equations of ``wave``'s layers on this share, after applying the weights of ``updates``
        (every wave's fitted values so far, in order) not yet applied."""
        self.apply(updates[self.applied:])
        return self.wave(wave)

    def apply(self, updates: Sequence[Mapping[str, np.ndarray]]) -> None:
        """Write the next ``updates`` (fitted values, in wave order) into this fitter's compact model."""
        for values in updates:
            write_values(self.model, values)
        self.applied += len(updates)

    def wave(self, wave: int) -> list[NormalEquations]:
        """The normal equations of ``wave``'s layers on this share, with the weights applied so far."""
        with blas_threads(self.job.threads):
            return self._wave([x for x in self.layers if x.fit.wave == wave])

    def _wave(self, layers: list[LayerSystem]) -> list[NormalEquations]:
        store, clock = self.store, self.clock
        needed = [x.fit.x for x in layers] + [x.fit.join.other for x in layers if x.fit.join is not None]
        eqs = [NormalEquations(layer.groups, layer.dim + layer.bias, layer.outputs) for layer in layers]
        began = time.perf_counter()
        for b, comp in enumerate(self.segments.run(self.model, needed, self.batches)):
            began = clock.add("compact passes", began)
            for layer, eq in zip(layers, eqs):
                fit = layer.fit
                where = self._where(layer, b, comp[fit.x].shape[0])
                other = store.get(("j", fit.name, b)) if fit.join is not None else None
                y = target(fit, layer, store.get(("y", fit.name, b)), other, comp, where)
                x, y = layer.rows(comp[fit.x], y, where)
                began = clock.add("rows", began)
                eq.add(x, y)
                began = clock.add("gram", began)
            if self.tick is not None:
                self.tick(1)
        began = clock.add("compact passes", began)
        for eq in eqs:
            eq.flush()
        clock.add("gram", began)
        for layer in layers:
            for b in range(self.count):
                store.drop(("y", layer.fit.name, b))
                store.drop(("j", layer.fit.name, b))
        return eqs

    def close(self) -> None:
        self.store.close()
