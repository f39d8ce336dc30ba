"""The stats file (schema ``onnxmbs.stats/1``): measure once, plan, sweep, report and gate many times.

``onnxmbs profile`` writes the per-channel non-zero counts of every activation tap with
the model's sha256; ``--stats FILE`` in ``plan``/``sweep``/``report``/``check`` reads them
back instead of running the statistics pass, and refuses counts made from another model
(or the same model at another input shape). :class:`StatsFile` is the file as a typed record
(``onnxmbs.read_stats(path)``); reading it checks every field and names a bad one in one line.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from onnxmbs.data.calibration import CalibrationInfo
from onnxmbs.data.normalisation import Normalisation
from onnxmbs.errors import MBSError
from onnxmbs.files import read_document, suggested_output, write_json
from onnxmbs.graph.analysis import Analysis
from onnxmbs.graph.record import INPUT_CONVERT
from onnxmbs.records import (FieldError, Record, boolean, choice, damaged, integer, items, number, optional, text,
                             wrong)
from onnxmbs.stats.counting import Statistics, TapCounts
from onnxmbs.stats.source import NORMALISATION
from onnxmbs.stats.stopping import Convergence

logger = logging.getLogger(__name__)

SCHEMA = "onnxmbs.stats/1"
REWRITE = "rewrite it with `onnxmbs profile MODEL --data ... -o STATS.json`"
STATISTICS = ("extended", "paper")
UNRECORDED = "unrecorded"  # files written before --statistic was recorded have no "statistic"


@dataclass(frozen=True)
class StatsModel(Record):
    """The model the counts were measured on: file, sha256 and image input (a plan's model record less L)."""
    path: str | None
    sha256: str
    input: str
    shape: tuple[int, ...]
    layout: str
    extra: Mapping[str, Any] = field(default_factory=dict)
    NAME: ClassVar = "model"
    CONVERT: ClassVar = INPUT_CONVERT


@dataclass(frozen=True)
class StatsData(Record):
    """The calibration data: where from, how many skipped, how normalised, which shard."""
    source: str | None
    synthetic: bool
    skipped: int
    preprocess: str | None
    normalisation: Normalisation | None = None  # how the normalisation was decided (an addition)
    shard: tuple[int, int] | None = None  # `profile --shard i/n`: (i, n)
    missing_shards: tuple[str, ...] | None = None  # `stats merge --partial`: the shards "i/n" not counted
    extra: Mapping[str, Any] = field(default_factory=dict)
    NAME: ClassVar = "data"
    CONVERT: ClassVar = {"source": optional(text), "synthetic": boolean, "skipped": integer(),
                         "preprocess": optional(text), "normalisation": optional(NORMALISATION),
                         "shard": optional(items(integer(), length=2)), "missing_shards": optional(items(text))}
    OMIT_NONE: ClassVar = frozenset({"normalisation", "shard", "missing_shards"})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StatsData:
        record = super().from_json(data)
        if record.shard is not None and not record.shard[0] < record.shard[1]:
            raise wrong("[i, n] with 0 ≤ i < n", list(record.shard), path=("shard",))
        return record


@dataclass(frozen=True)
class TapRecord(Record):
    """The counts of one activation tap: per channel, summed over images and positions."""
    tensor: str
    channels: int
    per_image: int  # positions per channel and image (H·W)
    nonzero: tuple[int, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)
    NAME: ClassVar = "tap"
    CONVERT: ClassVar = {"tensor": text, "channels": integer(low=1), "per_image": integer(low=1),
                         "nonzero": items(integer())}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TapRecord:
        tap = super().from_json(data)
        if len(tap.nonzero) != tap.channels:
            raise wrong(f"a list of {{channels}} = {tap.channels} counts", list(tap.nonzero), path=("nonzero",),
                        refs={"channels": ("channels",)})
        return tap


@dataclass(frozen=True)
class StatsFile(Record):
    """A stats file: ``stats.model.sha256``, ``stats.images``, ``stats.taps[i].nonzero``, ``stats.data.shard``."""
    schema: str
    model: StatsModel
    images: int
    provider: str
    seconds: float
    data: StatsData
    taps: tuple[TapRecord, ...]
    statistic: str = UNRECORDED  # --statistic: "extended" | "paper"
    convergence: Convergence | None = None  # --until-converged: how the pass ended
    merged: tuple[str, ...] | None = None  # `stats merge`: the files added up
    extra: Mapping[str, Any] = field(default_factory=dict)
    NAME: ClassVar = "stats file"
    CONVERT: ClassVar = {"schema": text, "model": StatsModel.from_json, "images": integer(), "provider": text,
                         "seconds": number(low=0), "statistic": choice(*STATISTICS), "data": StatsData.from_json,
                         "taps": items(TapRecord.from_json), "convergence": optional(Convergence.from_json),
                         "merged": optional(items(text))}
    OMIT_NONE: ClassVar = frozenset({"convergence", "merged"})
    OMIT_DEFAULT: ClassVar = frozenset({"statistic"})
    ORDER: ClassVar = ("schema", "model", "images", "provider", "seconds", "statistic", "data", "taps",
                       "convergence", "merged")  # the keys as `onnxmbs profile` writes them

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, path: str | Path | None = None) -> StatsFile:
        """The one schema check: a stats/1 document, or one MBSError line naming the bad field (and ``path``)."""
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
            raise MBSError(f"not an onnxmbs stats file (schema {SCHEMA!r} expected) — {REWRITE}")
        try:
            return super().from_json(data)._counted()
        except FieldError as exc:
            raise damaged(exc, path=path, how=REWRITE) from None

    def _counted(self) -> StatsFile:
        """Itself, once no count exceeds what its images can hold (images × positions)."""
        for i, tap in enumerate(self.taps):
            top = self.images * tap.per_image
            for c, count in enumerate(tap.nonzero):
                if count > top:
                    raise wrong(f"≤ {{images}} × {{per_image}} = {self.images} × {tap.per_image} = {top}", count,
                                path=("taps", i, "nonzero", c), record=self.NAME,
                                refs={"images": ("images",), "per_image": ("taps", i, "per_image")})
        return self

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        keys = [k for k in self.ORDER if k in out]
        return {**{k: out[k] for k in keys}, **{k: v for k, v in out.items() if k not in keys}}

    @property
    def recorded_statistic(self) -> str | None:
        return None if self.statistic == UNRECORDED else self.statistic


def stats_document(analysis: Analysis, stats: Statistics, *, info: CalibrationInfo | None = None,
                   preprocess: str | None = None, shard: tuple[int, int] | None = None,
                   convergence: Convergence | None = None, normalisation: Normalisation | None = None) -> StatsFile:
    """The stats file of ``stats`` (measured on ``analysis``'s model)."""
    loaded = analysis.loaded
    normalisation = info.normalisation if info is not None and info.normalisation is not None else normalisation
    data = StatsData(source=info.source if info else None, synthetic=bool(info and info.synthetic),
                     skipped=info.skipped if info else 0,
                     preprocess=info.preprocess if info and info.preprocess else preprocess,
                     normalisation=normalisation, shard=None if shard is None else tuple(shard))
    model = StatsModel(path=loaded.path, sha256=loaded.sha256, input=loaded.input.name,
                       shape=tuple(loaded.input.shape), layout=loaded.input.layout)
    return StatsFile(schema=SCHEMA, model=model, images=stats.images, provider=stats.provider,
                     seconds=round(stats.seconds, 3), statistic=analysis.statistic, data=data,
                     taps=tuple(TapRecord(t.tensor, len(t.nonzero), t.per_image, tuple(int(v) for v in t.nonzero))
                                for t in stats.taps.values()), convergence=convergence)


def save_stats(path: str | Path, analysis: Analysis, stats: Statistics, *, info: CalibrationInfo | None = None,
               preprocess: str | None = None, shard: tuple[int, int] | None = None,
               convergence: Convergence | None = None, normalisation: Normalisation | None = None) -> Path:
    """Write the counts of ``stats`` (measured on ``analysis``'s model) to ``path`` as JSON, atomically."""
    return write_json(path, stats_document(analysis, stats, info=info, preprocess=preprocess, shard=shard,
                                           convergence=convergence, normalisation=normalisation))


def read_stats(path: str | Path) -> StatsFile:
    """Read and check a stats file written by ``onnxmbs profile`` (or ``onnxmbs stats merge``)."""
    doc = read_document(path, schema=SCHEMA, what="onnxmbs stats file",
                        how="write one with `onnxmbs profile MODEL --data ... -o {output}`")
    return StatsFile.from_json(doc, path=path)


def check_model(doc: StatsFile, analysis: Analysis, path: Path) -> None:
    loaded, model = analysis.loaded, doc.model
    if model.sha256 != loaded.sha256:
        # the same file re-exported: its stats file may be replaced; another model's must not be
        same_file = model.path is not None and str(model.path) == str(loaded.path)
        target = suggested_output(path if same_file else Path(loaded.path).with_suffix(".stats.json"))
        raise MBSError(f"{path} was made from a different model ({model.path}, sha256 "
                       f"{model.sha256[:12]}…, not {loaded.path} {loaded.sha256[:12]}…) — "
                       f"run `onnxmbs profile {loaded.path} --data ... -o {target}` for this model")
    if list(model.shape)[1:] != list(loaded.input.shape)[1:]:
        raise MBSError(f"{path} was measured at input shape {list(model.shape)}, the model is analysed at "
                       f"{list(loaded.input.shape)} — pass the same --input-shape as for `onnxmbs profile`")


def tap_counts(doc: StatsFile, analysis: Analysis, path: Path) -> dict[str, TapCounts]:
    taps = {t.tensor: TapCounts(t.tensor, np.asarray(t.nonzero, dtype=np.int64), t.per_image) for t in doc.taps}
    shapes = analysis.loaded.shapes
    for tap in {t.tensor: t for t in analysis.taps.values() if t is not None}.values():
        got = taps.get(tap.tensor)
        if got is None or len(got.nonzero) != shapes[tap.tensor][tap.channel_axis]:
            made = doc.recorded_statistic
            why = (f"it was profiled with --statistic {made}" if made and made != analysis.statistic
                   else "it was written by another onnxmbs version")
            raise MBSError(f"{path} has no counts for activation {tap.tensor!r} of this model — {why}; run "
                           f"`onnxmbs profile` again (with --statistic {analysis.statistic}), or plan with "
                           f"--statistic {made or 'paper'}")
    return taps


def stats_sha256(path: str | Path) -> str | None:
    """The model hash a stats file was made from (None when it is not a stats file)."""
    try:
        return read_stats(path).model.sha256
    except MBSError:
        return None


def _same(docs: Sequence[tuple[Path, StatsFile]], what: str, get) -> None:
    (first_path, first), *rest = docs
    for path, doc in rest:
        if get(doc) != get(first):
            raise MBSError(f"cannot merge {path} with {first_path}: different {what} ({get(doc)!r} vs "
                           f"{get(first)!r}) — merge only shards of one `onnxmbs profile` setting")


def missing_shards(docs: Sequence[tuple[Path, StatsFile]]) -> list[str]:
    """The shards ``i/n`` of the files' split that none of them holds (files without a shard: none).
    A shard given twice, or shards of different splits, cannot be merged at all."""
    shards = [d.data.shard for _, d in docs if d.data.shard]
    twice = sorted({s for s in shards if shards.count(s) > 1})
    if twice:
        raise MBSError(f"shard {twice[0][0]}/{twice[0][1]} is given twice — merge each shard once")
    splits = sorted({n for _, n in shards})
    if len(splits) > 1:
        raise MBSError(f"cannot merge shards of different splits ({', '.join(f'i/{n}' for n in splits)}): "
                       "they overlap — merge the shards of one `onnxmbs profile --shard i/n` split")
    return [f"{i}/{splits[0]}" for i in range(splits[0]) if (i, splits[0]) not in shards] if splits else []


def merge_stats(paths: Sequence[str | Path], *, partial: bool = False) -> StatsFile:
    """One stats file whose counts are the sum of ``paths`` (same model, input shape, preprocessing
    and activations; e.g. the shards of ``profile --shard i/n``). An incomplete shard set is refused
    unless ``partial``; the merged file then lists the missing shards (``data.missing_shards``)."""
    docs = [(Path(p), read_stats(p)) for p in paths]
    _same(docs, "models (sha256)", lambda d: d.model.sha256)
    _same(docs, "input shapes", lambda d: list(d.model.shape)[1:])
    _same(docs, "preprocessing", lambda d: d.data.preprocess)
    _same(docs, "activations", lambda d: [(t.tensor, t.channels, t.per_image) for t in d.taps])
    _same(docs, "data (synthetic vs real)", lambda d: d.data.synthetic)
    missing = missing_shards(docs)
    if missing and not partial:
        raise MBSError(f"shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                       f"{'are' if len(missing) > 1 else 'is'} missing — add {'their' if len(missing) > 1 else 'its'}"
                       " file(s) to merge the whole pass, or pass --partial to merge only these shards")
    first = docs[0][1]
    taps = tuple(replace(t, nonzero=tuple(int(v) for v in np.sum([np.asarray(d.taps[i].nonzero, np.int64)
                                                                  for _, d in docs], axis=0)))
                 for i, t in enumerate(first.taps))
    data = replace(first.data, source="; ".join(str(d.data.source) for _, d in docs),
                   skipped=sum(d.data.skipped for _, d in docs), shard=None,
                   missing_shards=tuple(missing) if missing else first.data.missing_shards)
    providers = sorted({d.provider for _, d in docs})
    return replace(first, convergence=None, images=sum(d.images for _, d in docs),
                   provider=providers[0] if len(providers) == 1 else ", ".join(providers),
                   seconds=round(sum(float(d.seconds) for _, d in docs), 3), data=data, taps=taps,
                   merged=tuple(str(p) for p, _ in docs))
