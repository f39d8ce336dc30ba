"""The statistics pass as one call: open the calibration data, count, and say where the counts came from.

``measure`` runs the instrumented onnxruntime pass; ``measure_or_load`` takes saved counts
from a stats file of the same model instead when there is one.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxmbs.errors import MBSError
from onnxmbs.graph.analysis import Analysis
from onnxmbs.graph.load import declared_input
from onnxmbs.stats.source import DataSource
from onnxmbs.data.calibration import CalibrationInfo
from onnxmbs.stats.counting import Monitor, Statistics, collect_statistics
from onnxmbs.data.size import data_hw
from onnxmbs.data.normalisation import Normalisation, resolve_normalisation
from onnxmbs.stats.sharding import DataSpec, collect_sharded
from onnxmbs.stats.stopping import Convergence
from onnxmbs.stats.statsfile import check_model, read_stats, stats_sha256, tap_counts

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class CalibrationOptions:
    """How to run the statistics pass: the data, its preprocessing, and the onnxruntime settings."""
    data: Any = None  # image folder, .npy/.npz path, or an iterable of NCHW/NHWC batches
    synthetic: int | None = None  # N images of random noise instead of data (the plan says so)
    preprocess: str | None = None  # None: from the model's metadata (onnxmbs.preprocess), else imagenet
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    max_images: int | None = None
    batch_size: int = 32
    provider: str = "auto"
    progress: bool | None = None
    seed: int = 0
    workers: int | None = None  # split the pass over Ray workers (exact)
    ray_address: str | None = None  # join this Ray cluster ("auto": the one `ray start` made here)
    shard: tuple[int, int] | None = None  # count only shard i of n

    @property
    def has_data(self) -> bool:
        return self.data is not None or self.synthetic is not None

    def normalisation(self, loaded: Any) -> Normalisation:
        """The normalisation for images read for ``loaded`` (a LoadedModel): the one rule,
        :func:`~onnxmbs.data.normalisation.resolve_normalisation`."""
        return resolve_normalisation(loaded.metadata, self.preprocess, mean=self.mean, std=self.std,
                                     where=loaded.path)


@dataclass(frozen=True)
class Measured:
    """Statistics for one model and where they came from."""
    statistics: Statistics = field(repr=False)
    source: DataSource
    convergence: Convergence | None = None  # how a --until-converged pass ended


def _fixed_batches(batches: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Models exported with a fixed batch size: drop a short last batch (with a warning)."""
    for batch in batches:
        if batch.shape[0] == size:
            yield batch
        else:
            logger.warning("model has a fixed batch size of %d: the last %d image(s) were not used",
                           size, batch.shape[0])


def input_shape_for(model: Any, input_shape: tuple[int, ...] | None, data: Any) -> tuple[int, ...] | None:
    """``input_shape``, or for a model with dynamic H/W and no ``--input-shape``, the size of the data."""
    if input_shape is not None or data is None:
        return input_shape
    declared = declared_input(model)
    if declared is None or not declared.dynamic_hw:
        return input_shape
    hw = data_hw(data, layout=declared.layout, channels=declared.channels)
    if hw is None:
        return input_shape
    shape = declared.with_hw(hw)
    logger.info("%s has a dynamic input size; using the size of the data: %s", model, shape)
    return shape


def measure(analysis: Analysis, options: CalibrationOptions = CalibrationOptions(), *,
            monitor: Monitor | None = None, task_images: int | None = None) -> tuple[Statistics, CalibrationInfo]:
    """The statistics pass over calibration data (folder, .npy/.npz, iterable, or synthetic noise).

    ``options.preprocess``/``mean``/``std`` left None come from the model's metadata, else ``imagenet``.
    ``options.workers``/``ray_address``: split over Ray tasks (exact); ``options.shard=(i, n)``:
    count only shard i of n; ``monitor``: may stop the pass early, and the data is then read in a
    fixed pseudo-random order (seeded by ``options.seed``).
    """
    loaded = analysis.loaded
    fixed = None if loaded.batch_dynamic else loaded.input.shape[0]
    spec = DataSpec(data=options.data, synthetic=options.synthetic, preprocess=options.normalisation(loaded),
                    shape=tuple(loaded.input.shape), layout=loaded.input.layout, max_images=options.max_images,
                    batch_size=fixed or options.batch_size, seed=options.seed,
                    shuffle=options.seed if monitor is not None else None)
    shard = options.shard
    if options.workers is not None or options.ray_address is not None:
        if shard is not None:
            raise MBSError("--shard runs one shard here; --workers runs all shards on Ray — choose one")
        return collect_sharded(analysis, spec, workers=options.workers, address=options.ray_address,
                               provider=options.provider, monitor=monitor, task_images=task_images,
                               progress=options.progress)
    calib = spec.open(shard=shard)
    if shard is not None and calib.total == 0:
        raise MBSError(f"shard {shard[0]}/{shard[1]} holds no images (shards are cut between batches of "
                       f"{spec.batch_size}) — use fewer shards or a smaller --batch-size")
    batches = calib.batches() if fixed is None else _fixed_batches(calib.batches(), fixed)
    stats = collect_statistics(analysis, batches, provider=options.provider, progress=options.progress,
                               total=calib.total, monitor=monitor)
    return stats, calib.info


def measure_source(analysis: Analysis, options: CalibrationOptions, *, monitor: Monitor | None = None) -> Measured:
    """:func:`measure`, with the record of where the counts came from (and how a monitored pass ended)."""
    stats, info = measure(analysis, options, monitor=monitor, task_images=getattr(monitor, "checkpoint", None))
    return Measured(statistics=stats, source=DataSource(synthetic=info.synthetic, data=info.source,
                                                        skipped=info.skipped, preprocess=info.preprocess,
                                                        seconds=round(stats.seconds, 3),
                                                        normalisation=info.normalisation),
                    convergence=monitor.result() if monitor is not None else None)


def load_stats(path: str | Path, analysis: Analysis) -> Measured:
    """Counts saved by :func:`save_stats` as :class:`Statistics` for ``analysis`` (same model checked)."""
    path = Path(path)
    doc = read_stats(path)
    check_model(doc, analysis, path)
    taps = tap_counts(doc, analysis, path)
    stats = Statistics(images=doc.images, provider=doc.provider, taps=taps, seconds=float(doc.seconds))
    data = doc.data
    return Measured(statistics=stats, source=DataSource(
        synthetic=data.synthetic, data=data.source, skipped=data.skipped, preprocess=data.preprocess,
        stats_file=str(path), normalisation=data.normalisation), convergence=doc.convergence)


def measure_or_load(analysis: Analysis, *, stats: str | Path | Sequence[str | Path] | None = None,
                    options: CalibrationOptions = CalibrationOptions(), monitor: Monitor | None = None) -> Measured:
    """Statistics for ``analysis``: from the ``stats`` file(s) made from this model, else measured on ``data``.

    With one stats file it must match the model. With several, the one whose sha256
    matches is used; if none does, the model is measured on ``data`` when given.
    """
    paths = [stats] if isinstance(stats, (str, Path)) else list(stats or ())
    for path in paths:  # a stats file that is missing or unreadable is always an error, never a silent fallback
        read_stats(path)
    if len(paths) == 1 and not options.has_data:
        return load_stats(paths[0], analysis)
    match = next((p for p in paths if stats_sha256(p) == analysis.loaded.sha256), None)
    if match is not None:
        return load_stats(match, analysis)
    if not options.has_data:
        raise MBSError(f"no --stats file was made from {analysis.loaded.path} — add one from "
                       "`onnxmbs profile` for this model, or give --data")
    return measure_source(analysis, options, monitor=monitor)


