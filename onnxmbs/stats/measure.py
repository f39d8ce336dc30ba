"""The statistics pass as one call: open the calibration data, count, and say where the counts came from.

``measure`` runs the instrumented onnxruntime pass; ``measure_or_load`` takes saved counts
from a stats file of the same model instead when there is one.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from onnxmbs.errors import MBSError
from onnxmbs.graph.analysis import Analysis
from onnxmbs.graph.load import declared_input
from onnxmbs.stats.calibration import CalibrationInfo, data_hw, open_calibration
from onnxmbs.stats.preprocess import preprocess_for
from onnxmbs.stats.counting import Statistics, collect_statistics
from onnxmbs.stats.statsfile import check_model, read_stats, stats_sha256, tap_counts

logger = logging.getLogger(__name__)

DATA_KEYS = ("data", "synthetic", "preprocess", "mean", "std", "max_images", "batch_size", "provider", "progress")


@dataclass(frozen=True)
class Measured:
    """Statistics for one model and the plan settings that say where they came from."""
    statistics: Statistics = field(repr=False)
    settings: Mapping[str, Any]


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


def measure(analysis: Analysis, *, data: Any = None, synthetic: int | None = None, preprocess: str | None = None,
            mean: Sequence[float] | None = None, std: Sequence[float] | None = None, max_images: int | None = None,
            batch_size: int = 32, provider: str = "auto", progress: bool | None = None,
            seed: int = 0) -> tuple[Statistics, CalibrationInfo]:
    """The statistics pass over calibration data (folder, .npy/.npz, iterable, or synthetic noise).

    ``preprocess``/``mean``/``std`` left None come from the model's metadata, else ``imagenet``.
    """
    loaded = analysis.loaded
    fixed = None if loaded.batch_dynamic else loaded.input.shape[0]
    calib = open_calibration(data, shape=loaded.input.shape, layout=loaded.input.layout,
                             preprocess=preprocess_for(loaded.metadata, preprocess, mean=mean, std=std, where=loaded.path),
                             synthetic=synthetic,
                             max_images=max_images, batch_size=fixed or batch_size, seed=seed)
    batches = calib.batches() if fixed is None else _fixed_batches(calib.batches(), fixed)
    stats = collect_statistics(analysis, batches, provider=provider, progress=progress, total=calib.total)
    return stats, calib.info


def load_stats(path: str | Path, analysis: Analysis) -> Measured:
    """Counts saved by :func:`save_stats` as :class:`Statistics` for ``analysis`` (same model checked)."""
    path = Path(path)
    doc = read_stats(path)
    check_model(doc, analysis, path)
    taps = tap_counts(doc, analysis, path)
    stats = Statistics(images=int(doc["images"]), provider=str(doc.get("provider")), taps=taps,
                       seconds=float(doc.get("seconds", 0.0)))
    data = doc.get("data", {})
    settings = {"synthetic": bool(data.get("synthetic")), "data": data.get("source"),
                "skipped": data.get("skipped", 0), "preprocess": data.get("preprocess"), "stats_file": str(path)}
    return Measured(statistics=stats, settings=settings)


def measure_or_load(analysis: Analysis, *, stats: str | Path | Sequence[str | Path] | None = None,
                    seed: int = 0, **data: Any) -> Measured:
    """Statistics for ``analysis``: from the ``stats`` file(s) made from this model, else measured on ``data``.

    With one stats file it must match the model. With several, the one whose sha256
    matches is used; if none does, the model is measured on ``data`` when given.
    """
    paths = [stats] if isinstance(stats, (str, Path)) else list(stats or ())
    for path in paths:  # a stats file that is missing or unreadable is always an error, never a silent fallback
        read_stats(path)
    has_data = data.get("data") is not None or data.get("synthetic") is not None
    if len(paths) == 1 and not has_data:
        return load_stats(paths[0], analysis)
    match = next((p for p in paths if stats_sha256(p) == analysis.loaded.sha256), None)
    if match is not None:
        return load_stats(match, analysis)
    if not has_data:
        raise MBSError(f"no --stats file was made from {analysis.loaded.path} — add one from "
                       "`onnxmbs profile` for this model, or give --data")
    measured, info = measure(analysis, seed=seed, **{k: v for k, v in data.items() if k in DATA_KEYS})
    settings = {"synthetic": info.synthetic, "data": info.source, "skipped": info.skipped,
                "preprocess": info.preprocess, "seconds": round(measured.seconds, 3)}
    return Measured(statistics=measured, settings=settings)


