"""The stats file (schema ``onnxmbs.stats/1``): measure once, plan, sweep, report and gate many times.

``onnxmbs profile`` writes the per-channel non-zero counts of every activation tap with
the model's sha256; ``--stats FILE`` in ``plan``/``sweep``/``report``/``check`` reads them
back instead of running the statistics pass, and refuses counts made from another model
(or the same model at another input shape).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxmbs.graph.analysis import Analysis
from onnxmbs.data.calibration import CalibrationInfo
from onnxmbs.errors import MBSError
from onnxmbs.files import read_document, suggested_output, write_json
from onnxmbs.stats.counting import Statistics, TapCounts

logger = logging.getLogger(__name__)

SCHEMA = "onnxmbs.stats/1"


def stats_document(analysis: Analysis, stats: Statistics, *, info: CalibrationInfo | None = None,
                   preprocess: str | None = None, shard: tuple[int, int] | None = None,
                   convergence: Any = None, normalisation: Any = None) -> dict[str, Any]:
    loaded = analysis.loaded
    doc = {
        "schema": SCHEMA,
        "model": {"path": loaded.path, "sha256": loaded.sha256, "input": loaded.input.name,
                  "shape": list(loaded.input.shape), "layout": loaded.input.layout},
        "images": stats.images, "provider": stats.provider, "seconds": round(stats.seconds, 3),
        "statistic": analysis.statistic,
        "data": {"source": info.source if info else None, "synthetic": bool(info and info.synthetic),
                 "skipped": info.skipped if info else 0,
                 "preprocess": info.preprocess if info and info.preprocess else preprocess},
        "taps": [{"tensor": t.tensor, "channels": len(t.nonzero), "per_image": t.per_image,
                  "nonzero": [int(v) for v in t.nonzero]} for t in stats.taps.values()],
    }
    normalisation = info.normalisation if info is not None and info.normalisation is not None else normalisation
    if normalisation is not None:  # additions: how the normalisation was decided,
        doc["data"]["normalisation"] = normalisation.to_json()
    if shard is not None:  # which shard of the data (`profile --shard i/n`), how the pass ended
        doc["data"]["shard"] = list(shard)
    if convergence is not None:
        doc["convergence"] = convergence.to_json()
    return doc


def save_stats(path: str | Path, analysis: Analysis, stats: Statistics, *, info: CalibrationInfo | None = None,
               preprocess: str | None = None, shard: tuple[int, int] | None = None, convergence: Any = None,
               normalisation: Any = None) -> Path:
    """Write the counts of ``stats`` (measured on ``analysis``'s model) to ``path`` as JSON, atomically."""
    return write_json(path, stats_document(analysis, stats, info=info, preprocess=preprocess, shard=shard,
                                           convergence=convergence, normalisation=normalisation))


def read_stats(path: str | Path) -> dict[str, Any]:
    """The raw stats document, schema-checked."""
    return read_document(path, schema=SCHEMA, what="onnxmbs stats file",
                         how="write one with `onnxmbs profile MODEL --data ... -o {output}`")


def check_model(doc: Mapping[str, Any], analysis: Analysis, path: Path) -> None:
    loaded, model = analysis.loaded, doc.get("model", {})
    if model.get("sha256") != loaded.sha256:
        # the same file re-exported: its stats file may be replaced; another model's must not be
        same_file = model.get("path") is not None and str(model.get("path")) == str(loaded.path)
        target = suggested_output(path if same_file else Path(loaded.path).with_suffix(".stats.json"))
        raise MBSError(f"{path} was made from a different model ({model.get('path')}, sha256 "
                       f"{str(model.get('sha256'))[:12]}…, not {loaded.path} {loaded.sha256[:12]}…) — "
                       f"run `onnxmbs profile {loaded.path} --data ... -o {target}` for this model")
    if list(model.get("shape", []))[1:] != list(loaded.input.shape)[1:]:
        raise MBSError(f"{path} was measured at input shape {model.get('shape')}, the model is analysed at "
                       f"{list(loaded.input.shape)} — pass the same --input-shape as for `onnxmbs profile`")


def tap_counts(doc: Mapping[str, Any], analysis: Analysis, path: Path) -> dict[str, TapCounts]:
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
            made = doc.get("statistic")
            why = (f"it was profiled with --statistic {made}" if made and made != analysis.statistic
                   else "it was written by another onnxmbs version")
            raise MBSError(f"{path} has no counts for activation {tap.tensor!r} of this model — {why}; run "
                           f"`onnxmbs profile` again (with --statistic {analysis.statistic}), or plan with "
                           f"--statistic {made or 'paper'}")
    return taps


def stats_sha256(path: str | Path) -> str | None:
    """The model hash a stats file was made from (None when it is not a stats file)."""
    try:
        return read_stats(path).get("model", {}).get("sha256")
    except MBSError:
        return None


def _same(docs: Sequence[tuple[Path, Mapping[str, Any]]], what: str, get) -> None:
    (first_path, first), *rest = docs
    for path, doc in rest:
        if get(doc) != get(first):
            raise MBSError(f"cannot merge {path} with {first_path}: different {what} ({get(doc)!r} vs "
                           f"{get(first)!r}) — merge only shards of one `onnxmbs profile` setting")


def missing_shards(docs: Sequence[tuple[Path, Mapping[str, Any]]]) -> list[str]:
    """The shards ``i/n`` of the files' split that none of them holds (files without a shard: none).
    A shard given twice, or shards of different splits, cannot be merged at all."""
    shards = [tuple(d["data"]["shard"]) for _, d in docs if d.get("data", {}).get("shard")]
    twice = sorted({s for s in shards if shards.count(s) > 1})
    if twice:
        raise MBSError(f"shard {twice[0][0]}/{twice[0][1]} is given twice — merge each shard once")
    splits = sorted({int(n) for _, n in shards})
    if len(splits) > 1:
        raise MBSError(f"cannot merge shards of different splits ({', '.join(f'i/{n}' for n in splits)}): "
                       "they overlap — merge the shards of one `onnxmbs profile --shard i/n` split")
    return [f"{i}/{splits[0]}" for i in range(splits[0]) if (i, splits[0]) not in shards] if splits else []


def merge_stats(paths: Sequence[str | Path], *, partial: bool = False) -> dict[str, Any]:
    """One stats document whose counts are the sum of ``paths`` (same model, input shape, preprocessing
    and activations; e.g. the shards of ``profile --shard i/n``). An incomplete shard set is refused
    unless ``partial``; the merged file then lists the missing shards (``data.missing_shards``)."""
    docs = [(Path(p), read_stats(p)) for p in paths]
    _same(docs, "models (sha256)", lambda d: d.get("model", {}).get("sha256"))
    _same(docs, "input shapes", lambda d: list(d.get("model", {}).get("shape", []))[1:])
    _same(docs, "preprocessing", lambda d: d.get("data", {}).get("preprocess"))
    _same(docs, "activations", lambda d: [(t.get("tensor"), t.get("channels"), t.get("per_image"))
                                          for t in d.get("taps", [])])
    _same(docs, "data (synthetic vs real)", lambda d: bool(d.get("data", {}).get("synthetic")))
    missing = missing_shards(docs)
    if missing and not partial:
        raise MBSError(f"shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                       f"{'are' if len(missing) > 1 else 'is'} missing — add {'their' if len(missing) > 1 else 'its'}"
                       " file(s) to merge the whole pass, or pass --partial to merge only these shards")
    first = docs[0][1]
    taps = [{**t, "nonzero": [int(v) for v in np.sum([np.asarray(d["taps"][i]["nonzero"], np.int64)
                                                        for _, d in docs], axis=0)]}
            for i, t in enumerate(first["taps"])]
    data = {**first["data"], "source": "; ".join(str(d["data"].get("source")) for _, d in docs),
            "skipped": sum(int(d["data"].get("skipped", 0)) for _, d in docs)}
    data.pop("shard", None)
    if missing:
        data["missing_shards"] = missing
    providers = sorted({str(d.get("provider")) for _, d in docs})
    return {**{k: v for k, v in first.items() if k != "convergence"}, "images": sum(int(d["images"]) for _, d in docs),
            "provider": providers[0] if len(providers) == 1 else ", ".join(providers),
            "seconds": round(sum(float(d.get("seconds", 0.0)) for _, d in docs), 3), "data": data, "taps": taps,
            "merged": [str(p) for p, _ in docs]}
