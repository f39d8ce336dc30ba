"""Reconstruction, part 7 — where the fitters run: in this process, or one per data shard on Ray.

:func:`open_fitters` gives the driver (:func:`onnxmbs.compact.reconstruct.refit`) one object
with the data's batch and image counts and ``equations(wave, updates)``: the wave's normal
equations summed over every share of the data. ``--workers N`` (``options.data.workers``)
cuts the data into N shards between whole batches, each held by a Ray actor that keeps its
shard's targets between waves (:class:`RemoteFitter`); the fitted values of each wave are put
in the object store once and every actor applies those it has not seen. A restarted actor
(its process died) is rebuilt from the same arguments, catches up from the whole list of
updates and answers the same call, so every shard is counted once.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from onnxmbs.compact.activations import batch_rows
from onnxmbs.compact.lsq import NormalEquations
from onnxmbs.compact.passes import Clock, FitJob, Fitter
from onnxmbs.data.sources import shard_rows
from onnxmbs.errors import MBSError

logger = logging.getLogger(__name__)


class RemoteFitter(Fitter):
    """A :class:`Fitter` as a Ray actor: updates come as object references, resolved when first needed."""

    def __init__(self, job: FitJob, rows: tuple[int, int]) -> None:
        super().__init__(job, rows)

    def ready(self) -> tuple[int, int]:
        return self.count, self.images

    def equations(self, wave: int, updates: Sequence[Any]) -> list[NormalEquations]:
        import ray

        fresh = list(updates[self.applied:])
        self.apply(ray.get(fresh) if fresh else [])
        return self.wave(wave)


class LocalFitters:
    """All the data in this process: one :class:`Fitter`."""

    def __init__(self, job: FitJob, tick: Callable[[int], None] | None) -> None:
        self.fitter = Fitter(job, tick=tick)
        self.shards = 1
        self.count, self.images, self.clock = self.fitter.count, self.fitter.images, self.fitter.clock

    def equations(self, wave: int, updates: Sequence[Mapping[str, np.ndarray]]) -> list[NormalEquations]:
        return self.fitter.equations(wave, updates)

    def close(self) -> None:
        self.fitter.close()


class RayFitters:
    """One :class:`RemoteFitter` actor per shard; the shards' equations are summed in shard order."""

    def __init__(self, ray: Any, pool: Any, tick: Callable[[int], None] | None) -> None:
        self.ray, self.pool, self.tick, self.clock = ray, pool, tick, Clock()
        self.shards = len(pool)
        counts = pool.call("ready", done=None)
        self.batches = [c for c, _ in counts]
        self.count, self.images = sum(self.batches), sum(n for _, n in counts)
        if tick is not None:
            tick(self.count)
        self.refs: list[Any] = []

    def equations(self, wave: int, updates: Sequence[Mapping[str, np.ndarray]]) -> list[NormalEquations]:
        self.refs += [self.ray.put(dict(values)) for values in updates[len(self.refs):]]
        done = (lambda i: self.tick(self.batches[i])) if self.tick is not None else None
        parts = self.pool.call("equations", wave, list(self.refs), done=done)
        total = parts[0]
        for part in parts[1:]:
            for eq, other in zip(total, part):
                eq.merge(other)
        return total


def shard_ranges(job: FitJob, workers: int) -> list[tuple[int, int]]:
    """``workers`` row ranges of the data, cut between whole batches (empty ones left out)."""
    total, size = batch_rows(job.loaded, job.options.data)
    if total is None:
        raise MBSError("reconstruction with --workers needs data of a known size — pass a path (image folder, "
                       ".npy, .npz) or an array")
    ranges = [shard_rows(total, i, workers, batch_size=size) for i in range(workers)]
    return [r for r in ranges if r[1] > r[0]]


@contextlib.contextmanager
def open_fitters(job: FitJob, *, tick: Callable[[int], None] | None = None,
                 fitter: type = RemoteFitter) -> Iterator[LocalFitters | RayFitters]:
    """The fitters of ``job``: local, or with ``job.options.data.workers`` one Ray actor per shard
    (a local Ray, or the cluster at ``ray_address``); ``fitter``: the actor class."""
    data = job.options.data
    if not data.workers and not data.ray_address:
        local = LocalFitters(job, tick)
        try:
            yield local
        finally:
            local.close()
        return
    from onnxmbs.runtime.cluster import actors, connect

    with connect(data.ray_address, workers=data.workers) as ray:
        workers = data.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        threads = max(1, (os.cpu_count() or 1) // workers) if data.ray_address is None else None
        shared = FitJob(plan=job.plan, original=job.original, compact=job.compact, loaded=job.loaded,
                        options=job.options, threads=threads)
        ranges = shard_ranges(shared, workers)
        if len(ranges) < workers:
            logger.warning("--workers %d: the data is only %d batch(es) of %d images, so it runs in %d shard(s) — "
                           "pass more images or a smaller --batch-size to use every worker", workers, len(ranges),
                           batch_rows(shared.loaded, data)[1], len(ranges))
        with actors(fitter, [(r,) for r in ranges], shared=shared) as pool:
            yield RayFitters(ray, pool, tick)
