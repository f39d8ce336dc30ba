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
from onnxmbs.stats.calibration import CalibrationInfo, make_preprocess
from onnxmbs.stats.counting import Monitor, Statistics, collect_statistics
from onnxmbs.stats.sharding import DataSpec, collect_sharded
from onnxmbs.stats.statsfile import check_model, read_stats, stats_sha256, tap_counts

logger = logging.getLogger(__name__)

DATA_KEYS = ("data", "synthetic", "preprocess", "mean", "std", "max_images", "batch_size", "provider", "progress",
             "workers", "ray_address", "shard")


@dataclass(frozen=True)
class Convergence:
    """How a ``--until-converged`` pass ended: images read, whether the plan had converged, and β ±
    its bound per macroblock at each monitored threshold (``entries``: {"k", "z", "macroblocks":
    [{"index", "beta", "bound"}]})."""
    images: int
    converged: bool
    tolerance: float
    checkpoint: int
    checkpoints: int
    entries: tuple[Mapping[str, Any], ...] = ()

    def at(self, z: float) -> Mapping[str, Any] | None:
        """The entry monitored at threshold ``z`` (pixels), if any."""
        return next((e for e in self.entries if abs(float(e["z"]) - float(z)) < 1e-9), None)

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "converged": self.converged, "tolerance": self.tolerance,
                "checkpoint": self.checkpoint, "checkpoints": self.checkpoints, "entries": list(self.entries)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Convergence:
        return cls(images=int(doc["images"]), converged=bool(doc["converged"]), tolerance=float(doc["tolerance"]),
                   checkpoint=int(doc["checkpoint"]), checkpoints=int(doc["checkpoints"]),
                   entries=tuple(doc.get("entries", ())))


@dataclass(frozen=True)
class Measured:
    """Statistics for one model and the plan settings that say where they came from."""
    statistics: Statistics = field(repr=False)
    settings: Mapping[str, Any]
    convergence: Convergence | None = None


def _fixed_batches(batches: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Models exported with a fixed batch size: drop a short last batch (with a warning)."""
    for batch in batches:
        if batch.shape[0] == size:
            yield batch
        else:
            logger.warning("model has a fixed batch size of %d: the last %d image(s) were not used",
                           size, batch.shape[0])


def measure(analysis: Analysis, *, data: Any = None, synthetic: int | None = None, preprocess: str | None = "imagenet",
            mean: Sequence[float] | None = None, std: Sequence[float] | None = None, max_images: int | None = None,
            batch_size: int = 32, provider: str = "auto", progress: bool | None = None, seed: int = 0,
            workers: int | None = None, ray_address: str | None = None, shard: tuple[int, int] | None = None,
            monitor: Monitor | None = None, shuffle: int | None = None,
            task_images: int | None = None) -> tuple[Statistics, CalibrationInfo]:
    """The statistics pass over calibration data (folder, .npy/.npz, iterable, or synthetic noise).

    ``workers``/``ray_address``: split it over Ray tasks (exact); ``shard=(i, n)``: count only
    shard i of n; ``monitor``: may stop the pass early (``shuffle``: read in a seeded random order).
    """
    loaded = analysis.loaded
    fixed = None if loaded.batch_dynamic else loaded.input.shape[0]
    spec = DataSpec(data=data, synthetic=synthetic, preprocess=make_preprocess(preprocess, mean=mean, std=std),
                    shape=tuple(loaded.input.shape), layout=loaded.input.layout, max_images=max_images,
                    batch_size=fixed or batch_size, seed=seed, shuffle=shuffle)
    if workers is not None or ray_address is not None:
        if shard is not None:
            raise MBSError("--shard runs one shard here; --workers runs all shards on Ray — choose one")
        return collect_sharded(analysis, spec, workers=workers, address=ray_address, provider=provider,
                               monitor=monitor, task_images=task_images, progress=progress)
    calib = spec.open(shard=shard)
    if shard is not None and calib.total == 0:
        raise MBSError(f"shard {shard[0]}/{shard[1]} holds no images (shards are cut between batches of "
                       f"{spec.batch_size}) — use fewer shards or a smaller --batch-size")
    batches = calib.batches() if fixed is None else _fixed_batches(calib.batches(), fixed)
    stats = collect_statistics(analysis, batches, provider=provider, progress=progress, total=calib.total,
                               monitor=monitor)
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
    convergence = Convergence.from_json(doc["convergence"]) if doc.get("convergence") else None
    return Measured(statistics=stats, settings=settings, convergence=convergence)


def measure_or_load(analysis: Analysis, *, stats: str | Path | Sequence[str | Path] | None = None,
                    seed: int = 0, monitor: Monitor | None = None, **data: Any) -> Measured:
    """Statistics for ``analysis``: from the ``stats`` file(s) made from this model, else measured on ``data``.

    With one stats file it must match the model. With several, the one whose sha256
    matches is used; if none does, the model is measured on ``data`` when given.
    """
    paths = [stats] if isinstance(stats, (str, Path)) else list(stats or ())
    has_data = data.get("data") is not None or data.get("synthetic") is not None
    if len(paths) == 1 and not has_data:
        return load_stats(paths[0], analysis)
    match = next((p for p in paths if stats_sha256(p) == analysis.loaded.sha256), None)
    if match is not None:
        return load_stats(match, analysis)
    if not has_data:
        raise MBSError(f"no --stats file was made from {analysis.loaded.path} — add one from "
                       "`onnxmbs profile` for this model, or give --data")
    measured, info = measure(analysis, seed=seed, monitor=monitor, shuffle=seed if monitor is not None else None,
                             task_images=getattr(monitor, "checkpoint", None),
                             **{k: v for k, v in data.items() if k in DATA_KEYS})
    settings = {"synthetic": info.synthetic, "data": info.source, "skipped": info.skipped,
                "preprocess": data.get("preprocess"), "seconds": round(measured.seconds, 3)}
    return Measured(statistics=measured, settings=settings,
                    convergence=monitor.result() if monitor is not None else None)


