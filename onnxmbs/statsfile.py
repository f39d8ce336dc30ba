"""Saved statistics (schema ``onnxmbs.stats/1``): measure once, plan, sweep, report and gate many times.

``onnxmbs profile`` writes the per-channel non-zero counts of every activation tap with
the model's sha256; ``--stats FILE`` in ``plan``/``sweep``/``report``/``check`` reads them
back instead of running the statistics pass, and refuses counts made from another model
(or the same model at another input shape).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxmbs.analysis import Analysis, analyze
from onnxmbs.calibration import CalibrationInfo
from onnxmbs.errors import MBSError
from onnxmbs.planfile import read_document, write_json
from onnxmbs.statistics import Statistics, TapCounts

logger = logging.getLogger(__name__)

SCHEMA = "onnxmbs.stats/1"
DATA_KEYS = ("data", "synthetic", "preprocess", "mean", "std", "max_images", "batch_size", "provider", "progress")


@dataclass(frozen=True)
class Measured:
    """Statistics for one model and the plan settings that say where they came from."""
    statistics: Statistics = field(repr=False)
    settings: Mapping[str, Any]


def stats_document(analysis: Analysis, stats: Statistics, *, info: CalibrationInfo | None = None,
                   preprocess: str | None = None) -> dict[str, Any]:
    loaded = analysis.loaded
    return {
        "schema": SCHEMA,
        "model": {"path": loaded.path, "sha256": loaded.sha256, "input": loaded.input.name,
                  "shape": list(loaded.input.shape), "layout": loaded.input.layout},
        "images": stats.images, "provider": stats.provider, "seconds": round(stats.seconds, 3),
        "data": {"source": info.source if info else None, "synthetic": bool(info and info.synthetic),
                 "skipped": info.skipped if info else 0, "preprocess": preprocess},
        "taps": [{"tensor": t.tensor, "channels": len(t.nonzero), "per_image": t.per_image,
                  "nonzero": [int(v) for v in t.nonzero]} for t in stats.taps.values()],
    }


def save_stats(path: str | Path, analysis: Analysis, stats: Statistics, *, info: CalibrationInfo | None = None,
               preprocess: str | None = None) -> Path:
    """Write the counts of ``stats`` (measured on ``analysis``'s model) to ``path`` as JSON, atomically."""
    return write_json(path, stats_document(analysis, stats, info=info, preprocess=preprocess))


def read_stats(path: str | Path) -> dict[str, Any]:
    """The raw stats document, schema-checked."""
    return read_document(path, schema=SCHEMA, what="onnxmbs stats file",
                         how=f"write one with `onnxmbs profile MODEL --data ... -o {path}`")


def _check_model(doc: Mapping[str, Any], analysis: Analysis, path: Path) -> None:
    loaded, model = analysis.loaded, doc.get("model", {})
    if model.get("sha256") != loaded.sha256:
        raise MBSError(f"{path} was made from a different model ({model.get('path')}, sha256 "
                       f"{str(model.get('sha256'))[:12]}…, not {loaded.path} {loaded.sha256[:12]}…) — "
                       f"run `onnxmbs profile {loaded.path} --data ... -o {path}` for this model")
    if list(model.get("shape", []))[1:] != list(loaded.input.shape)[1:]:
        raise MBSError(f"{path} was measured at input shape {model.get('shape')}, the model is analysed at "
                       f"{list(loaded.input.shape)} — pass the same --input-shape as for `onnxmbs profile`")


def _tap_counts(doc: Mapping[str, Any], analysis: Analysis, path: Path) -> dict[str, TapCounts]:
    try:
        taps = {t["tensor"]: TapCounts(t["tensor"], np.asarray(t["nonzero"], dtype=np.int64), int(t["per_image"]))
                for t in doc["taps"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise MBSError(f"{path} has a malformed 'taps' list ({exc}) — "
                       "write it again with `onnxmbs profile`") from None
    shapes = analysis.loaded.shapes
    for tap in {t.tensor: t for t in analysis.taps.values() if t is not None}.values():
        got = taps.get(tap.tensor)
        if got is None or len(got.nonzero) != shapes[tap.tensor][tap.channel_axis]:
            raise MBSError(f"{path} has no counts for activation {tap.tensor!r} of this model — "
                           "it was written by another onnxmbs version; run `onnxmbs profile` again")
    return taps


def load_stats(path: str | Path, analysis: Analysis) -> Measured:
    """Counts saved by :func:`save_stats` as :class:`Statistics` for ``analysis`` (same model checked)."""
    path = Path(path)
    doc = read_stats(path)
    _check_model(doc, analysis, path)
    taps = _tap_counts(doc, analysis, path)
    stats = Statistics(images=int(doc["images"]), provider=str(doc.get("provider")), taps=taps,
                       seconds=float(doc.get("seconds", 0.0)))
    data = doc.get("data", {})
    settings = {"synthetic": bool(data.get("synthetic")), "data": data.get("source"),
                "skipped": data.get("skipped", 0), "preprocess": data.get("preprocess"), "stats_file": str(path)}
    return Measured(statistics=stats, settings=settings)


def stats_sha256(path: str | Path) -> str | None:
    """The model hash a stats file was made from (None when it is not a stats file)."""
    try:
        return read_stats(path).get("model", {}).get("sha256")
    except MBSError:
        return None


def measure_or_load(analysis: Analysis, *, stats: str | Path | Sequence[str | Path] | None = None,
                    seed: int = 0, **data: Any) -> Measured:
    """Statistics for ``analysis``: from the ``stats`` file(s) made from this model, else measured on ``data``.

    With one stats file it must match the model. With several, the one whose sha256
    matches is used; if none does, the model is measured on ``data`` when given.
    """
    from onnxmbs.pipeline import measure

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
    measured, info = measure(analysis, seed=seed, **{k: v for k, v in data.items() if k in DATA_KEYS})
    settings = {"synthetic": info.synthetic, "data": info.source, "skipped": info.skipped,
                "preprocess": data.get("preprocess"), "seconds": round(measured.seconds, 3)}
    return Measured(statistics=measured, settings=settings)


def plan_with_stats(model: str | Path, stats: str | Path, *, input_shape: tuple[int, ...] | None = None,
                    k: float | None = None, z: float | None = None, round_to: int = 1,
                    macroblocks: dict[str, int] | None = None):
    """``onnxmbs plan --stats``: analyse, load the saved counts (same model checked), plan."""
    from onnxmbs.pipeline import plan_from_statistics

    analysis = analyze(model, input_shape=input_shape, macroblock_override=macroblocks)
    measured = load_stats(stats, analysis)
    return plan_from_statistics(analysis, measured.statistics, k=k, z=z, round_to=round_to,
                                settings=measured.settings)
