"""The statistics pass split into shards, each run by a Ray task with its own onnxruntime session.

Counts are integers, so the pass is exact in any split: the sum of the shards' counts equals
the single-process counts. Shards are cut between whole batches (:func:`shard_rows`), so the
shards run exactly the batches of the single pass. With a :class:`Monitor` (``--until-converged``)
the shards are small, their per-batch counts come back, and the coordinator feeds them to the
monitor in data order, so the pass stops at the same batch as a single process would; shards
past that point are cancelled or dropped, never counted.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from onnxmbs.errors import MBSError
from onnxmbs.graph.analysis import Analysis
from onnxmbs.data.calibration import Calibration, CalibrationInfo, open_calibration
from onnxmbs.runtime.session import choose_provider
from onnxmbs.stats.counting import Counter, Instrumented, Monitor, Statistics, instrument
from onnxmbs.data.normalisation import Normalisation, Preprocess
from onnxmbs.data.sources import Order, shard_rows

logger = logging.getLogger(__name__)

TASKS_PER_WORKER = 4  # a full pass: shards per worker (finer progress, cheaper retries)


@dataclass(frozen=True)
class DataSpec:
    """How to open the calibration data, on this machine or a worker (same paths on every node)."""
    data: Any
    synthetic: int | None
    preprocess: Preprocess | Normalisation  # decided by resolve_normalisation (recorded in the info)
    shape: tuple[int, ...]
    layout: str
    max_images: int | None = None
    batch_size: int = 32
    seed: int = 0
    shuffle: int | None = None  # seed of the fixed pseudo-random order (--until-converged)

    def open(self, *, rows: tuple[int, int] | None = None, shard: tuple[int, int] | None = None) -> Calibration:
        return open_calibration(self.data, shape=self.shape, layout=self.layout, preprocess=self.preprocess,
                                synthetic=self.synthetic, max_images=self.max_images, batch_size=self.batch_size,
                                seed=self.seed, order=Order(shuffle=self.shuffle, rows=rows, shard=shard))


@dataclass(frozen=True)
class CountJob:
    """What every shard task shares: the counting copy of the model and how to read the data."""
    counting: Instrumented = field(repr=False)
    provider: str
    data: DataSpec
    per_batch: bool = False  # return each batch's counts (for a monitor), not only the sum
    threads: int | None = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # one session per worker process and job


@dataclass(frozen=True)
class ShardCounts:
    images: int
    skipped: int
    counts: np.ndarray = field(repr=False)  # summed over the shard
    batches: tuple[tuple[np.ndarray, int], ...] = field(default=(), repr=False)  # (counts, images) per batch


def count_rows(job: CountJob, rows: tuple[int, int]) -> ShardCounts:
    """One shard: rows [start, stop) of the data's order, counted in this process (a Ray task body)."""
    counter = _counter(job)
    calib = job.data.open(rows=rows)
    total = np.zeros(len(job.counting.per_image), np.int64)
    batches, images, fixed = [], 0, job.counting.fixed_batch
    for batch in calib.batches():
        if fixed is not None and batch.shape[0] != fixed:  # as the single pass: a short last batch is dropped
            logger.warning("model has a fixed batch size of %d: the last %d image(s) were not used",
                           fixed, batch.shape[0])
            continue
        counts = counter.run(batch)
        total += counts
        images += batch.shape[0]
        if job.per_batch:
            batches.append((counts, batch.shape[0]))
    return ShardCounts(images=images, skipped=calib.info.skipped, counts=total, batches=tuple(batches))


_COUNTERS: dict[str, Counter] = {}


def _counter(job: CountJob) -> Counter:
    """The worker process's session for ``job``: made by its first shard, reused by the next ones."""
    if job.token not in _COUNTERS:
        _COUNTERS.clear()
        _COUNTERS[job.token] = Counter(job.counting, job.provider, threads=job.threads)
    return _COUNTERS[job.token]


def _task(job: CountJob, rows: tuple[int, int]) -> ShardCounts:
    return count_rows(job, rows)


def plan_rows(total: int, *, batch_size: int, workers: int, task_images: int | None) -> list[tuple[int, int]]:
    """Contiguous row ranges cut between batches: ``task_images`` each, or TASKS_PER_WORKER per worker."""
    batches = -(-total // batch_size)
    if task_images:
        count = -(-batches // max(1, task_images // batch_size))
    else:
        count = min(batches, workers * TASKS_PER_WORKER)
    ranges = [shard_rows(total, i, count, batch_size=batch_size) for i in range(count)]
    return [r for r in ranges if r[1] > r[0]]


def collect_sharded(analysis: Analysis, spec: DataSpec, *, workers: int | None = None, address: str | None = None,
                    provider: str = "auto", monitor: Monitor | None = None, task_images: int | None = None,
                    progress: bool | None = None) -> tuple[Statistics, CalibrationInfo]:
    """The statistics pass over ``workers`` Ray workers (a local Ray, or the cluster at ``address``;
    ``workers`` None: one per CPU of the cluster)."""
    from onnxmbs.runtime.cluster import connect, require_ray, run_ordered

    require_ray()
    start = time.perf_counter()
    provider = choose_provider(provider)
    counting = instrument(analysis)
    whole = spec.open()
    if whole.total is None:
        raise MBSError("--workers needs data of a known size — pass a path (image folder, .npy, .npz)")
    if monitor is not None:
        monitor.start(counting)
    with connect(address, workers=workers) as ray:
        workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        ranges = plan_rows(whole.total, batch_size=spec.batch_size, workers=workers,
                           task_images=task_images if monitor is not None else None)
        threads = max(1, (os.cpu_count() or 1) // workers) if address is None else None
        job = CountJob(counting=counting, provider=provider, data=spec, per_batch=monitor is not None,
                       threads=threads)
        results = run_ordered(_task, [(r,) for r in ranges], shared=job, window=2 * workers if monitor else len(ranges),
                              weights=[b - a for a, b in ranges], progress=progress, desc="statistics", unit="img")
        total, images, skipped = _gather(results, monitor, np.zeros(len(counting.per_image), np.int64))
    stats = counting.statistics(total, images=images, provider=provider, seconds=time.perf_counter() - start)
    return stats, replace(whole.info, images=images, skipped=skipped)


def _gather(results, monitor: Monitor | None, total: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Sum the shards' counts in data order; with a monitor, batch by batch until it says stop."""
    images = skipped = 0
    for shard in results:
        skipped += shard.skipped
        if monitor is None:
            total, images = total + shard.counts, images + shard.images
            continue
        for counts, n in shard.batches:
            total, images = total + counts, images + n
            if monitor(counts, n):
                results.close()  # cancels the shards still running
                return total, images, skipped
    return total, images, skipped
