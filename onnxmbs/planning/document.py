"""The plan document (schema ``onnxmbs.plan/1``) as typed, frozen records.

Every stage after planning (text, reports, the gate, compact, the adapters, the zoo,
retrain) takes a :class:`PlanDocument`, never a dict. ``from_json``/``to_json`` are the
one place the JSON is read and written: key for key what ``onnxmbs.plan/1`` always was,
so plans written before these records existed still load. Keys a newer onnxmbs adds are
kept in ``extra`` and written back unchanged.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from onnxmbs.errors import MBSError
from onnxmbs.files import read_document
from onnxmbs.graph.record import ModelRecord
from onnxmbs.records import (FieldError, Record, boolean, choice, damaged, integer, items, mapping, number,
                             optional, text)
from onnxmbs.stats.source import DataSource
from onnxmbs.stats.stopping import Convergence

SCHEMA = "onnxmbs.plan/1"
HOW = "pass the JSON written by `onnxmbs plan`"
REWRITE = "rewrite it with `onnxmbs plan MODEL --data ... -o PLAN.json`"


_SOURCE_KEYS = ("data", "skipped", "preprocess", "seconds", "stats_file", "normalisation")
UNRECORDED = "unrecorded"  # a key a plan written before it existed does not have (not written back)


FRACTION = number(low=0, high=1)


@dataclass(frozen=True)
class Settings(Record):
    """How the plan was made: threshold, statistics and their source."""
    k: float | None
    z: float
    rf_boundary: int | None
    images: int
    synthetic: bool
    provider: str | None
    round_to: int
    source: DataSource | None = None
    statistic: str = UNRECORDED  # "extended" | "paper" (--statistic)
    extra: Mapping[str, Any] = field(default_factory=dict)
    CONVERT: ClassVar = {"k": optional(number(low=0)), "z": number(low=0), "rf_boundary": optional(integer()),
                         "images": integer(), "synthetic": boolean, "provider": optional(text),
                         "round_to": integer(low=1), "source": optional(DataSource.from_json),
                         "statistic": choice("extended", "paper")}
    OMIT_DEFAULT: ClassVar = frozenset({"statistic"})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Settings:
        if not isinstance(data, Mapping):
            return super().from_json(data)  # the error: not a JSON object
        base = {k: v for k, v in data.items() if k not in _SOURCE_KEYS}
        source = (DataSource.from_json({"synthetic": data.get("synthetic", False), **{  # a source needs its data
            k: data[k] for k in _SOURCE_KEYS if k in data}}) if any(k in data for k in _SOURCE_KEYS) else None)
        return replace(super().from_json({**base, "source": None}), source=source)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("source", "extra") and not self.omitted(f, getattr(self, f.name))}
        if self.source is not None:
            out.update({k: v for k, v in self.source.to_json().items() if k != "synthetic"})
        out.update(self.extra)
        return out

    @property
    def preprocess(self) -> str | None:
        return self.source.preprocess if self.source else None

    @property
    def normalisation(self) -> Any:
        """The recorded :class:`~onnxmbs.data.normalisation.Normalisation` (None in older plans)."""
        return self.source.normalisation if self.source else None


@dataclass(frozen=True)
class LayerRecord(Record):
    """One conv layer: geometry, costs, statistics and its compact width."""
    name: str
    macroblock: int | None
    out_hw: tuple[int, ...]
    in_channels: int
    out_channels: int
    groups: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    rf: int | None
    flops: int
    params: int
    activation: str | None
    p_nonzero: float
    measured: bool
    base: bool
    group: int
    compact_out_channels: int
    output_groups: tuple[int, ...]
    input_groups: tuple[int, ...]
    channel_p_nonzero: tuple[float, ...] | None = None
    statistic: str | None = UNRECORDED  # "nonzero" (ReLU family, the paper) | "positive" (outputs > 0) | None
    extra: Mapping[str, Any] = field(default_factory=dict)
    NAME: ClassVar = "layer"
    CONVERT: ClassVar = {
        "name": text, "macroblock": optional(integer()), "out_hw": items(integer()), "in_channels": integer(low=1),
        "out_channels": integer(low=1), "groups": integer(low=1), "kernel": items(integer(low=1)),
        "stride": items(integer(low=1)), "dilation": items(integer(low=1)), "rf": optional(integer()),
        "flops": integer(), "params": integer(), "activation": optional(text), "p_nonzero": FRACTION,
        "measured": boolean, "base": boolean, "group": integer(), "compact_out_channels": integer(low=1),
        "output_groups": items(integer()), "input_groups": items(integer()),
        "channel_p_nonzero": optional(items(number(low=0, high=1, as_float=True))),
        "statistic": optional(choice("nonzero", "positive"))}
    OMIT_NONE: ClassVar = frozenset({"channel_p_nonzero"})
    OMIT_DEFAULT: ClassVar = frozenset({"statistic"})

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels


@dataclass(frozen=True)
class MacroblockRecord(Record):
    index: int
    level: int
    out_hw: tuple[int, ...]
    layers: tuple[str, ...]
    e_total: float
    e_base: float
    redundancy: float
    beta: float
    extra: Mapping[str, Any] = field(default_factory=dict)
    NAME: ClassVar = "macroblock"
    CONVERT: ClassVar = {"index": integer(), "level": integer(), "out_hw": items(integer()), "layers": items(text),
                         "e_total": number(low=0), "e_base": number(low=0),
                         "redundancy": number(low=0, high=1, as_float=True), "beta": number(low=0, high=1, as_float=True)}


@dataclass(frozen=True)
class GroupRecord(Record):
    """A channel group: channels tied together, and its compact width."""
    id: int
    channels: int
    compact_channels: int
    beta: float
    frozen: str | None
    producers: tuple[str, ...]
    followers: tuple[str, ...]
    multiple_of: int
    extra: Mapping[str, Any] = field(default_factory=dict)
    NAME: ClassVar = "group"
    CONVERT: ClassVar = {"id": integer(), "channels": integer(low=1), "compact_channels": integer(low=1),
                         "beta": FRACTION, "frozen": optional(text), "producers": items(text),
                         "followers": items(text), "multiple_of": integer(low=1)}


@dataclass(frozen=True)
class Summary(Record):
    params: int
    params_compact: int
    param_reduction: float
    flops: int
    flops_compact: int
    flop_reduction: float
    model_params: int
    model_flops: int
    unknown_ops: Mapping[str, int]
    extra: Mapping[str, Any] = field(default_factory=dict)
    CONVERT: ClassVar = {"params": integer(), "params_compact": integer(), "param_reduction": number(high=1),
                         "flops": integer(), "flops_compact": integer(), "flop_reduction": number(high=1),
                         "model_params": integer(), "model_flops": integer(), "unknown_ops": mapping(integer())}


@dataclass(frozen=True)
class MacroblockWidths:
    """The distinct (before, after) output widths of one macroblock's convs, in layer order."""
    index: int
    pairs: tuple[tuple[int, int], ...]

    @property
    def before(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(a for a, _ in self.pairs))

    @property
    def after(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(b for _, b in self.pairs))


def macroblock_widths(entries: Iterable[tuple[int | None, int, int]], count: int) -> tuple[MacroblockWidths, ...]:
    """Widths before -> after per macroblock from ``(macroblock, out_channels, compact_out)`` per layer."""
    pairs: list[dict[tuple[int, int], None]] = [{} for _ in range(count)]
    for mb, before, after in entries:
        if mb is not None:
            pairs[mb][(before, after)] = None
    return tuple(MacroblockWidths(index=i, pairs=tuple(p)) for i, p in enumerate(pairs))


@dataclass(frozen=True)
class PlanDocument(Record):
    """The plan: ``plan.summary.params_compact``, ``plan.macroblocks[0].beta``, ``plan.layers[i]...``."""
    schema: str
    model: ModelRecord
    settings: Settings
    layers: tuple[LayerRecord, ...]
    macroblocks: tuple[MacroblockRecord, ...]
    groups: tuple[GroupRecord, ...]
    summary: Summary
    convergence: Convergence | None = None  # only with --until-converged: how the statistics pass ended
    extra: Mapping[str, Any] = field(default_factory=dict)
    NAME: ClassVar = "plan"
    OMIT_NONE: ClassVar = frozenset({"convergence"})
    CONVERT: ClassVar = {
        "schema": text, "convergence": optional(Convergence.from_json),
        "model": ModelRecord.from_json, "settings": Settings.from_json, "summary": Summary.from_json,
        "layers": items(LayerRecord.from_json), "macroblocks": items(MacroblockRecord.from_json),
        "groups": items(GroupRecord.from_json)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, path: str | Path | None = None) -> PlanDocument:
        """The one schema check: a plan/1 document, or one MBSError line naming the bad field (and ``path``)."""
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
            raise MBSError(f"not an onnxmbs plan (schema {SCHEMA!r} expected) — {HOW}")
        try:
            return super().from_json(data)
        except FieldError as exc:
            raise damaged(exc, path=path, how=REWRITE) from None

    def layer(self, name: str) -> LayerRecord:
        return next(l for l in self.layers if l.name == name)

    def widths(self) -> tuple[MacroblockWidths, ...]:
        """Widths before -> after per macroblock (what every table and the gate show)."""
        return macroblock_widths(((l.macroblock, l.out_channels, l.compact_out_channels) for l in self.layers),
                                 len(self.macroblocks))

    def group_widths(self) -> dict[int, int]:
        return {g.id: g.compact_channels for g in self.groups}

    def slim(self) -> PlanDocument:
        """The same plan without per-channel statistics (for reports)."""
        return replace(self, layers=tuple(replace(l, channel_p_nonzero=None) for l in self.layers))


def as_plan(plan: PlanDocument | Mapping[str, Any] | str | Path) -> PlanDocument:
    """A plan given as the record, its JSON dict, or the path of a plan file."""
    if isinstance(plan, PlanDocument):
        return plan
    if isinstance(plan, (str, Path)):
        return read_plan(plan)
    return PlanDocument.from_json(plan)


def read_plan(path: str | Path) -> PlanDocument:
    """Read and check a plan file written by ``onnxmbs plan``."""
    doc = read_document(path, schema=SCHEMA, what="onnxmbs plan",
                        how="create one with `onnxmbs plan MODEL --data ... -o {output}`")
    return PlanDocument.from_json(doc, path=path)
